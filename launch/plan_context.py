"""The planner's context-parallel figures (launch/plan.py, `--mesh context=N`).

With `mesh.context = c` every device holds T/c tokens of each of its rows (train/context.py):
XLA's buffer assignment of the compiled step, the planner's memory figure, already splits the
sequence-proportional activations c ways. Attention gathers each layer's keys and values over
the context axis (models/attention.py), so per device and layer the gathered K and V are full
length, and the xla/jax kernels' float32 scores are T/c x T per head (fused kernels keep none).
This module states those two as figures of their own, and the K/V traffic that the roofline adds
to the other collectives: per attention layer, a ring all-gather of K and V in the forward pass
(again in the backward pass when remat recomputes the layer) and a reduce-scatter of their
gradients, each sending (c-1)/c x rows x T x kv_heads x head_dim x bytes x 2 per device.
"""

from __future__ import annotations

from launch import plan_pipeline
from train.hardware import dtype_bytes

MESH_KEYS = ("data", "stage", "fsdp", "context", "tensor")


def _attentions(model_config, batch) -> list[tuple[int, int, int, int, int]]:
    """(layers, key length, kv heads, head dim, query heads) of each kind of attention whose keys
    and values are gathered over the context axis."""
    t = batch["input_ids"].shape[1]
    m = model_config
    if m.family != "encoder_decoder":
        return [(m.num_layers, t, m.kv_heads, m.dim_per_head, m.num_heads)]
    dec = m.decoder_config()
    t_dec = batch["decoder_input_ids"].shape[1]
    layers = m.decoder_layers
    return [
        (m.num_layers, t, m.kv_heads, m.dim_per_head, m.num_heads),  # encoder self-attention
        (layers, t_dec, dec.kv_heads, dec.dim_per_head, dec.num_heads),  # decoder self-attention
        (layers, t, dec.kv_heads, dec.dim_per_head, dec.num_heads),  # cross: the encoder's K/V
    ]


def _local(heads: int, tensor: int) -> float:
    """Heads per device: the `heads` rule splits them over the tensor axis when it divides them."""
    return heads / tensor if heads % tensor == 0 else heads


def kv_traffic(model_config, batch, shape: dict) -> dict:
    """Bytes each device sends per step for the keys and values of context parallelism: the
    forward all-gathers (twice with remat) and the backward reduce-scatters; 0 at context 1.
    With pipeline stages a device runs its stage's layers, bubble iterations included."""
    c = shape.get("context", 1)
    rows = batch["input_ids"].shape[0] / (shape["data"] * shape["fsdp"])
    nbytes = dtype_bytes(model_config.dtype)
    gathered = sum(
        layers * rows * length * _local(kv, shape["tensor"]) * dim * nbytes * 2
        for layers, length, kv, dim, _ in _attentions(model_config, batch)
    )
    moved = gathered * (c - 1) / c * plan_pipeline.layer_share(model_config)
    passes = 1 if model_config.remat_policy == "none" else 2  # remat gathers again to recompute
    return {"kv_all_gather": passes * moved, "kv_reduce_scatter": moved}


def report(config, model_config, batch, shape: dict, balanced: bool) -> dict:
    """The report's `context` section: the split, and the per-device, per-layer buffers that
    do not shrink with it (the largest attention's, per microbatch)."""
    c = shape.get("context", 1)
    micro = config.microbatches * model_config.pipeline_microbatches  # pipeline: 1 without stages
    rows = batch["input_ids"].shape[0] / (shape["data"] * shape["fsdp"] * micro)
    tensor = shape["tensor"]
    kv = scores = 0.0
    for _, length, kv_heads, dim, heads in _attentions(model_config, batch):
        both = rows * length * _local(kv_heads, tensor) * dim * dtype_bytes(model_config.dtype) * 2
        kv = max(kv, both)
        scores = max(scores, rows * _local(heads, tensor) * (length / c) * length * 4)
    traffic = kv_traffic(model_config, batch, shape)
    return {
        "size": c,
        "load_balance": balanced,
        "tokens_per_device": rows * batch["input_ids"].shape[1] / c,  # per row slice, microbatch
        "kv_gathered_per_layer": kv,
        "attention_scores_per_layer_xla": scores,
        "kv_all_gather_bytes_per_device": traffic["kv_all_gather"],
        "kv_reduce_scatter_bytes_per_device": traffic["kv_reduce_scatter"],
    }


def format_lines(r: dict) -> list[str]:
    """The text report's lines for the context section (none at context 1)."""
    ctx = r.get("context")
    if not ctx or ctx["size"] == 1:
        return []
    gb = 1e9
    return [
        "",
        f"context parallelism ({ctx['size']} ways, load balance "
        f"{'on' if ctx['load_balance'] else 'off'})",
        f"  tokens / device      {ctx['tokens_per_device']:10,.0f}   per microbatch",
        f"  gathered K+V / layer {ctx['kv_gathered_per_layer'] / gb:8.2f} GB   (full length)",
        f"  scores / layer       {ctx['attention_scores_per_layer_xla'] / gb:8.2f} GB   "
        "(T/context x T per head, xla/jax kernels; fused kernels keep none)",
        f"  K/V all-gather       {ctx['kv_all_gather_bytes_per_device'] / gb:8.2f} GB / step"
        " (forward, and again with remat)",
        f"  K/V reduce-scatter   {ctx['kv_reduce_scatter_bytes_per_device'] / gb:8.2f} GB / step"
        " (backward)",
    ]
