"""The planner's pipeline-parallel figures (launch/plan.py, `--mesh stage=S`).

With `mesh.stage = S` the step is compiled with the pipelined model the loop trains
(train/stages.py, models/pipeline.py): the stacked (L, ...) layer weights and their optimizer
state are split over the `stage` axis (rule `layers -> stage`), so XLA's per-device figures are
already per stage: L/S layers, plus the embeddings, the head and the final norm, which every
stage holds whole. This module states that split, the schedule's bubble and the point-to-point
traffic that the roofline adds:

- the bubble (S-1)/(R.M+S-1) of S stages, M microbatches and R repeats idles every stage for
  that share of the R.M+S-1 iterations, so the roofline's compute time divides by (1 - bubble),
  and the per-layer collectives (tensor, context K/V) run on L/S layers, (R.M+S-1)/(R.M) times;
- each iteration every stage sends one microbatch's activations, B/(A.M.data.fsdp) rows x
  T/context x d_model x the compute dtype's bytes (A = config.microbatches, gradient
  accumulation), to the next stage, and their gradient back in the backward pass: per step
  2 x A x (R.M+S-1) sends per layer stack. The stages of one pipeline share a process
  (train/stages.py check_hosts), so these collective permutes stay on the intra-node link.
  (XLA:CPU's compiled step moves bf16 activations as float32; the figure is the compute dtype's,
  as a GPU or TPU sends them);
- with fsdp > 1 each layer's weights are all-gathered where the layer runs, in every iteration:
  per pass R.M+S-1 times L/(S.R) layers, M/(1 - bubble) times the stage's weights, where the
  unpipelined step gathers each layer once.
"""

from __future__ import annotations

import math

from models.pipeline import STAGE_AXIS, Schedule
from train.hardware import dtype_bytes

LINK = "intra-node (NVLink / ICI): a pipeline's stages share a process"


def schedule(model_config) -> Schedule:
    """The step's schedule (1 stage without pipeline parallelism)."""
    return Schedule.of(model_config)


def layer_share(model_config) -> float:
    """Layer calls per device over the unpipelined model's, per row: (R.M+S-1)/(S.R.M) — L/S
    layers, bubble iterations included (1 without stages)."""
    s = schedule(model_config)
    return s.iterations / (s.stages * s.repeats * s.microbatches)


def _on_stage(x) -> bool:
    spec = getattr(x.sharding, "spec", ())
    return any(STAGE_AXIS in (a if isinstance(a, tuple) else (a,)) for a in spec if a)


def stage_split(tree) -> dict:
    """Bytes of the leaves split over `stage` (the stacked layers) and of the rest (embeddings,
    head, norms: whole on every stage), in total and per device."""
    import jax

    out = {"layers_total": 0, "other_total": 0, "layers_per_device": 0, "other_per_device": 0}
    for x in jax.tree.leaves(tree):
        kind = "layers" if _on_stage(x) else "other"
        out[f"{kind}_total"] += x.size * x.dtype.itemsize
        out[f"{kind}_per_device"] += math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
    return out


def held_bytes(params, shape: dict) -> float:
    """The parameter bytes one stage group holds (and gathers, and reduces the gradients of):
    all of them without stages, else the layers / S plus the rest."""
    split = stage_split(params)
    return split["layers_total"] / shape.get("stage", 1) + split["other_total"]


def regathers(model_config) -> float:
    """How many times per pass FSDP all-gathers a stage's layer weights: once per layer call, so
    in every iteration of the schedule, R.M+S-1 times L/(S.R) layers = M/(1 - bubble) times the
    stage's L/S layers (the compiled step's gathers sit in the layer scan inside the iteration
    loop); 1 without stages."""
    s = schedule(model_config)
    return s.iterations / s.repeats if s.stages > 1 else 1.0


def gathered_bytes(model_config, params, shape: dict) -> float:
    """The parameter bytes a stage group all-gathers per pass (before the tensor split)."""
    split = stage_split(params)
    layers = split["layers_total"] / shape.get("stage", 1)
    return layers * regathers(model_config) + split["other_total"]


def _stacks(model_config, batch) -> list[int]:
    """The sequence length of each pipelined layer stack (encoder and decoder for T5/BART)."""
    t = [batch["input_ids"].shape[1]]
    if model_config.family == "encoder_decoder":
        t.append(batch["decoder_input_ids"].shape[1])
    return t


def send_bytes(model_config, batch, shape: dict) -> dict:
    """Per device and step: one microbatch's activations per iteration and stack, and all the
    stage-to-stage sends (forward activations and backward gradients); 0 without stages."""
    s = schedule(model_config)
    if s.stages == 1:
        return {"per_iteration": 0.0, "per_step": 0.0}
    dtype = dtype_bytes(model_config.dtype)
    rows = batch["input_ids"].shape[0] / (shape["data"] * shape["fsdp"])  # per step, per device
    tokens = sum(rows * t / shape.get("context", 1) for t in _stacks(model_config, batch))
    per_step_rows = tokens * model_config.d_model * dtype  # every row once, each stack
    # A accumulation microbatches x M pipeline microbatches cut `rows`; A cancels out per step
    per_iteration = per_step_rows / s.microbatches  # without accumulation; less with it
    return {"per_iteration": per_iteration, "per_step": 2 * s.iterations * per_iteration}


def report(config, model_config, batch, shape: dict, params, opt_state) -> dict:
    """The report's `pipeline` section (plan.py adds it only when mesh.stage > 1)."""
    s = schedule(model_config)
    accumulation = max(1, int(config.microbatches))
    layers = [model_config.num_layers]
    if model_config.family == "encoder_decoder":
        layers.append(model_config.decoder_layers)
    sends = send_bytes(model_config, batch, shape)
    rows = batch["input_ids"].shape[0] / (shape["data"] * shape["fsdp"] * accumulation)
    return {
        "stages": s.stages,
        "microbatches": s.microbatches,
        "repeats": s.repeats,
        "schedule": "GPipe" if s.repeats == 1 else "circular",
        "iterations": s.iterations,
        "layers_per_stage": [n // s.stages for n in layers],  # per stack, over all repeats
        "rows_per_microbatch": rows / s.microbatches,  # per batch shard
        "bubble": s.bubble,
        "params": stage_split(params),
        "optimizer": stage_split(opt_state),
        "send_bytes_per_iteration": sends["per_iteration"] / accumulation,
        "send_bytes_per_device": sends["per_step"],
        "fsdp_regathers": regathers(model_config) if shape["fsdp"] > 1 else 0.0,
        "link": LINK,
    }


def hints(r: dict) -> list[str]:
    """The report's pipeline hints: a large bubble; FSDP's gathers repeated in every iteration."""
    p = r.get("pipeline")
    if not p:
        return []
    out = []
    if p["bubble"] > 0.2:
        out.append(
            f"the pipeline bubble idles {100 * p['bubble']:.0f}% of every stage: raise "
            f"--config.pipeline.microbatches (a multiple of {p['stages']}) or "
            "--config.pipeline.repeats (the circular schedule)"
        )
    if p["fsdp_regathers"] > 2:
        out.append(
            f"fsdp inside the stages gathers each layer {p['fsdp_regathers']:.1f}x per pass "
            "(once per iteration): put the devices on data instead where the weights fit"
        )
    return out


def format_lines(r: dict) -> list[str]:
    """The text report's lines for the pipeline section (none without stages)."""
    p = r.get("pipeline")
    if not p:
        return []
    gb = 1e9
    kind = "GPipe" if p["repeats"] == 1 else f"circular, {p['repeats']} repeats"
    par, opt = p["params"], p["optimizer"]
    lines = [
        "",
        f"pipeline ({p['stages']} stages, {kind})",
        f"  microbatches         {p['microbatches']:10d}   of {p['rows_per_microbatch']:g} row(s)"
        f" per batch shard, {p['iterations']} iterations",
        f"  layers / stage       {' + '.join(str(n) for n in p['layers_per_stage']):>10}",
        f"  bubble               {100 * p['bubble']:9.1f}%   (S-1)/(R.M+S-1) = "
        f"{p['stages'] - 1}/{p['iterations']}",
        f"  layer weights        {par['layers_per_device'] / gb:8.2f} GB   per device "
        f"({par['layers_total'] / gb:.2f} GB / {p['stages']} stages, then the other splits)",
        f"  other weights        {par['other_per_device'] / gb:8.2f} GB   per device "
        "(embeddings, head, norms: on every stage)",
        f"  optimizer state      {opt['layers_per_device'] / gb:8.2f} GB   layers + "
        f"{opt['other_per_device'] / gb:.2f} GB the rest, per device",
        f"  stage sends          {p['send_bytes_per_device'] / gb:8.2f} GB / step "
        f"({p['send_bytes_per_iteration'] / 1e6:.1f} MB per iteration, forward and backward; "
        "intra-node link)",
    ]
    if p["fsdp_regathers"]:
        lines.append(
            f"  fsdp all-gathers     {p['fsdp_regathers']:10.2f} x   the stage's layers per pass "
            "(every iteration gathers its layers; 1 x without stages)"
        )
    return lines
