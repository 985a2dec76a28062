"""Ahead-of-time memory and speed plan for a training config on a mesh of N devices.

    python -m launch.plan --config configs/gpt_lm.py:gpt2 --config.model.name=gpt2-xl \\
        --devices 8 --mesh data=1,fsdp=8,context=1,tensor=1 --chip h100 [--json] [--out FILE]

The train step of `train/step.py` is compiled ahead of time for N simulated CPU devices
(`jax.jit(step).lower(abstract state, ShapeDtypeStruct batch, rng).compile()`), nothing is
allocated, and the report gives per device:

- memory: parameters and optimizer state (from their shardings), the batch, XLA's
  `memory_analysis()` (arguments, outputs, temporaries = activations, gradients and workspace)
  and the peak, against the chip's HBM;
- FLOPs per step: XLA's `cost_analysis()`, the analytic matmul count of `train/flops.py` (the
  numerator of the loop's MFU; times 4/3 for full remat when timing) and, as a cross-check,
  6 * N * tokens + attention (12 * layers * d_attn * seq * tokens, PaLM appendix B);
- a roofline step time for the chip (its published dense peak FLOP/s for the compute dtype, HBM
  bandwidth, interconnect bandwidth): max(compute, memory traffic, collectives), where memory
  traffic is the state's (parameters, gradients, optimizer) and XLA:CPU's `bytes accessed`
  is shown as an upper bound, and the time at 50% model-FLOPs utilisation as a realistic guess.

With `--mesh context=N` (context parallelism, train/context.py) the step is compiled with every
sequence split N ways, so XLA's figures hold each device's T/N tokens; the report's `context`
section and the roofline add the per-layer key/value all-gathers and their gradients'
reduce-scatters (launch/plan_context.py). With `--mesh stage=S` (pipeline parallelism,
train/stages.py; `--config.pipeline.microbatches=M --config.pipeline.repeats=R`) the step is the
pipelined one the loop compiles, each device holding its stage's layers; the `pipeline` section
gives the bubble (S-1)/(R.M+S-1), the per-stage weights and the stage-to-stage sends, which the
roofline adds to the collectives, its compute time divided by 1 - bubble
(launch/plan_pipeline.py). Without these axes the report reads as before they existed.

XLA:CPU's buffer assignment stands in for the GPU/TPU compilers, which fuse more: treat the
memory figure as a close upper estimate and keep the headroom the report asks for. XLA counts a
scanned layer stack (`scan_layers=True`) once, so its FLOPs are then per-iteration; the roofline
always uses the analytic count.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict

from absl import flags

from launch import plan_context, plan_pipeline
from launch.plan_context import MESH_KEYS
from models import paths
from models.errors import UserError
from train.flops import six_n_flops, train_flops_per_step
from train.hardware import CHIPS

# The fraction of HBM a run may plan to use (the runtime, collectives' buffers and
# fragmentation take the rest). On GPUs also set XLA_PYTHON_CLIENT_MEM_FRACTION=0.95: JAX
# preallocates only 75% by default.
USABLE_FRACTION = 0.9

flags.DEFINE_string(  # parsed by configs.cli, with the --config.KEY=VALUE overrides
    "config", None, "Experiment config, e.g. configs/gpt_lm.py:gpt2 (keys: configs/common.py)"
)
_DEVICES = flags.DEFINE_integer("devices", None, "Number of devices to plan for.")
_MESH = flags.DEFINE_string(
    "mesh", None, "data=..,stage=..,fsdp=..,context=..,tensor=.. (default: config.mesh)"
)
_CHIP = flags.DEFINE_enum("chip", "h100", list(CHIPS), "Accelerator for memory and speed.")
_JSON = flags.DEFINE_bool("json", False, "Print the report as JSON.")
_OUT = flags.DEFINE_string(
    "out", None, "Also write the JSON report to this file, local or gs:// (e.g. beside the run)."
)


class PlanError(UserError):
    """A plan that cannot be made (bad mesh, too few devices, stages that do not split)."""


def parse_mesh(text: str) -> dict[str, int]:
    """`data=..,stage=..,fsdp=..,context=..,tensor=..` (axes left out are 1, one may be -1 = the
    rest)."""
    sizes = {}
    use = "use data=..,stage=..,fsdp=..,context=..,tensor=.. (-1 = the rest)"
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = (x.strip() for x in part.partition("="))
        if not sep or key not in MESH_KEYS:
            raise PlanError(f"--mesh {text!r}: unknown axis {key!r}; {use}")
        if key in sizes:
            raise PlanError(f"--mesh {text!r}: {key} is given twice; {use}")
        try:
            sizes[key] = int(value)
        except ValueError:
            raise PlanError(f"--mesh {text!r}: {key}={value!r} is not an integer; {use}") from None
        if sizes[key] == 0 or sizes[key] < -1:
            raise PlanError(f"--mesh {text!r}: {key}={value} must be positive or -1; {use}")
    return {"data": 1, "fsdp": 1, "tensor": 1, **sizes}


def use_cpu_devices(n: int) -> None:
    """Simulate `n` CPU devices; must run before JAX's backend starts."""
    import jax

    flags_env = re.sub(
        r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", "")
    )
    os.environ["XLA_FLAGS"] = flags_env.strip()
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", n)


def _batch_spec(config, mesh, objective: str, rules, model_config) -> dict:
    """ShapeDtypeStructs of one global batch: the objective's all-padding row (built with a tiny
    tokenizer of the run's family), stacked `batch_size` times; with load-balanced context
    parallelism, as the training feed reorders it (position ids added, train/context.py)."""
    import jax
    import numpy as np

    from data import objectives
    from data.tokenizers import train_tokenizer
    from train import context, partitioning

    model_family = model_config.family

    family = config.tokenizer.family or {"encoder": "bert", "decoder": "gpt"}.get(
        model_family, "t5"
    )
    text = ["the quick brown fox jumps over the lazy dog"] * 8
    tok = train_tokenizer(text, kind=config.tokenizer.kind, vocab_size=300, family=family)
    row = objectives.get(objective).rows(tok, config.seq_len, config.data).empty()
    rows = {k: np.asarray(v)[None] for k, v in row.items()}
    if context.load_balanced(config, model_config, mesh.shape["context"]):
        rows = context.balance(rows, model_family, mesh.shape["context"])
    return {
        k: jax.ShapeDtypeStruct(
            (config.batch_size, *v.shape[1:]),
            v.dtype,
            sharding=partitioning.batch_sharding(mesh, v.ndim, rules),
        )
        for k, v in rows.items()
    }


def _model_config(config, teacher_config=None):
    from train import distill
    from train.init_from import resolve_model_config

    class _Vocab:  # the tokenizer the run would train (or load) has this many entries
        vocab_size = config.tokenizer.vocab_size

    from train import lora

    base = distill.student_base(config.model, teacher_config)  # a student: the teacher's shape
    if config.tokenizer.path:
        from data.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(config.tokenizer.path)
        model_config = resolve_model_config(config.model, tokenizer, base)
    else:
        model_config = resolve_model_config(config.model, _Vocab, base)
    # LoRA: the planned run starts from init_from (whose weights the plan does not read)
    return lora.configure(config.get("lora"), model_config, config.get("init_from") or "planned")


def _bytes_per_device(tree) -> int:
    import jax

    return sum(
        math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree)
    )


def _total_bytes(tree) -> int:
    import jax

    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def compile_step(config, devices: int, mesh_sizes: dict | None = None):
    """The training loop's train step for `config`, compiled ahead of time on abstract inputs.

    Returns:
      (compiled step, abstract state, abstract batch, model config, mesh, a distillation
      teacher's abstract parameters or None).
    """
    import jax

    import models
    from train import lora, partitioning
    from train.optim import make_optimizer
    from train.state import abstract_state
    from train.step import jit_steps, step_options

    if devices > len(jax.devices()):
        raise PlanError(f"{devices} devices wanted, {len(jax.devices())} simulated")
    sizes = dict(mesh_sizes or config.mesh.to_dict())
    mesh = partitioning.make_mesh(sizes, jax.devices()[:devices])
    rules = partitioning.rules_from_config(config.get("partitioning_rules"))
    partitioning.check_batch(config.batch_size, mesh, config.microbatches, rules)
    objective = config.data.objective
    teacher_config = _teacher_config(config)
    model_config = _step_config(config, _model_config(config, teacher_config), mesh, rules)
    # (config, abstract params, step options) or None
    teacher = _teacher(config, teacher_config, mesh, rules, model_config.causal_from_positions)
    model = models.build(model_config)
    tx, schedule = make_optimizer(config.optimizer, config.steps, lora.lr_ratio(config.get("lora")))
    abstract, shardings = abstract_state(model, model_config, tx, mesh, rules)
    batch = _batch_spec(config, mesh, objective, rules, model_config)
    options = {**step_options(config), **(teacher[2] if teacher else {})}
    jitted, _ = jit_steps(model, tx, schedule, objective, shardings, mesh, rules, **options)
    args = (abstract, batch, jax.random.key(0), *([teacher[1]] if teacher else []))
    with partitioning.activate(mesh, rules):
        compiled = jitted.lower(*args).compile()
    return compiled, abstract, batch, model_config, mesh, teacher[1] if teacher else None


def _step_config(config, model_config, mesh, rules):
    """The model config the loop trains with on `mesh`, as train/loop.py's `_step_configs` builds
    it: the layers as pipeline stages (train/stages.py), then causal masks from position ids when
    rows are reordered (train/context.py); one PlanError line when either cannot split the run.
    The weights keep the (L, ...) layout, so the state is the unpipelined model's."""
    from train import context, stages

    s, c = mesh.shape["stage"], mesh.shape["context"]
    try:
        model_config = stages.model_config(config, model_config, mesh, rules)
    except stages.PipelineError as e:
        raise PlanError(f"mesh stage={s}: {e}") from None
    try:
        return context.train_config(config, model_config, c)
    except context.ContextError as e:
        raise PlanError(f"mesh context={c}: {e}") from None


def _teacher_config(config):
    """A distillation run's teacher's ModelConfig (from its config alone), or None."""
    from train import distill

    ref = distill.teacher(config.get("distill"))
    return None if ref is None else ref.model_config()


def _teacher(config, teacher_config, mesh, rules, causal_from_positions: bool):
    """A distillation run's teacher, planned from its config alone (no weights are read):
    (its ModelConfig, its abstract parameters on the mesh, the jit_steps options). It reads the
    student's batches, reordered for context parallelism as theirs are (train/distill.py)."""
    import dataclasses

    from train import distill

    if teacher_config is None:
        return None
    teacher_config = dataclasses.replace(
        teacher_config, causal_from_positions=causal_from_positions
    )
    s = distill.settings(config.get("distill"))
    model, abstract, shardings = distill.abstract_teacher(
        teacher_config, mesh, rules, s["teacher_dtype"]
    )
    distiller = distill.Distiller(model, s, teacher_config.family)
    return teacher_config, abstract, {"distiller": distiller, "teacher_shardings": shardings}


def plan(
    config, devices: int, mesh_sizes: dict | None = None, chip: str = "h100", name=None
) -> dict:
    """Compiles the train step for `devices` devices (the first of `jax.devices()`) and returns
    the report (see the module docstring); `name` is the config's `path[:variant]`."""
    import jax

    from train.state import full_params

    compiled, abstract, batch, model_config, mesh, teacher = compile_step(
        config, devices, mesh_sizes
    )
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, list | tuple) else cost) or {}
    trained = sum(x.size for x in jax.tree.leaves(abstract.params))
    abstract = abstract.replace(params=full_params(abstract), frozen=None)  # every weight
    num_params = sum(x.size for x in jax.tree.leaves(abstract.params))
    flops = _analytic_flops(model_config, num_params, batch)
    spec = CHIPS[chip]
    memory = _memory_per_device(compiled.memory_analysis(), abstract, batch)
    if teacher is not None:  # distillation: the frozen teacher's weights, also in the peak
        memory["teacher"] = _bytes_per_device(teacher)
    flops_report, roofline = _roofline(
        model_config, spec, flops, cost, devices, abstract, batch, dict(mesh.shape), memory
    )
    usable = USABLE_FRACTION * spec.hbm_bytes
    report = {
        "config": name,
        "model": model_config.name,
        "params": int(num_params),
        "trained_params": int(trained),  # fewer with LoRA: adapters (and the head) only
        "lora_rank": int(model_config.lora_rank),
        "compute_dtype": model_config.dtype,
        "param_dtype": model_config.param_dtype,
        "optimizer": config.optimizer.name,
        "batch_size": int(config.batch_size),
        "seq_len": int(config.seq_len),
        "microbatches": int(config.microbatches),
        "scan_layers": bool(model_config.scan_layers),
        "remat_policy": model_config.remat_policy,
        "devices": devices,
        "mesh": _mesh_report(mesh),
        "memory_per_device": memory,
        "memory_total": {
            "params": _total_bytes(abstract.params),
            "optimizer": _total_bytes(abstract.opt_state),
            **({"teacher": _total_bytes(teacher)} if teacher is not None else {}),
        },
        "flops_per_step": flops_report,
        "tokens_per_step": flops["tokens"],
        "chip": {"id": chip, **asdict(spec)},
        "fits": memory["peak"] <= usable,
        "usable_hbm_per_device": usable,
        "roofline": roofline,
    }
    report.update(_axis_sections(config, model_config, batch, mesh, abstract))
    report["hints"] = _hints(report, model_config, config) + plan_pipeline.hints(report)
    return report


def _axis_sections(config, model_config, batch, mesh, abstract) -> dict:
    """The report's `context` and `pipeline` sections, each only where its axis splits."""
    shape, out = dict(mesh.shape), {}
    if shape["context"] > 1:
        balanced = _balanced(config, model_config, mesh)
        out["context"] = plan_context.report(config, model_config, batch, shape, balanced)
    if shape["stage"] > 1:
        out["pipeline"] = plan_pipeline.report(
            config, model_config, batch, shape, abstract.params, abstract.opt_state
        )
    return out


def _analytic_flops(model_config, num_params: int, batch) -> dict:
    """train/flops.py's counts for one global batch: 6*N*tokens, attention, and their total."""
    shape = batch["input_ids"].shape
    target = batch["decoder_input_ids"].shape[1] if "decoder_input_ids" in batch else None
    flops = six_n_flops(model_config, num_params, shape[0], shape[1], target)
    flops["total"] = train_flops_per_step(model_config, shape[0], shape[1], target)
    return flops


def _mesh_report(mesh) -> dict:
    """The mesh's axis sizes; `context` and `stage` only where they split something (so a plan
    without them reads as before the axes existed)."""
    return {k: int(v) for k, v in mesh.shape.items() if k not in ("context", "stage") or v > 1}


def _balanced(config, model_config, mesh) -> bool:
    from train import context

    return context.load_balanced(config, model_config, mesh.shape["context"])


def _memory_per_device(mem, abstract, batch) -> dict:
    """The state's and the batch's bytes per device, and XLA's buffer sizes and peak."""
    peak = (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
        + mem.temp_size_in_bytes
    )
    return {
        "params": _bytes_per_device(abstract.params),
        "optimizer": _bytes_per_device(abstract.opt_state),
        "batch": _bytes_per_device(batch),
        "xla_arguments": int(mem.argument_size_in_bytes),
        "xla_outputs": int(mem.output_size_in_bytes),
        "xla_aliased": int(mem.alias_size_in_bytes),
        "xla_temporaries": int(mem.temp_size_in_bytes),
        "peak": int(peak),
    }


def _roofline(model_config, spec, flops, cost, devices, abstract, batch, shape, memory):
    """(the report's flops_per_step, its roofline): the step time for the chip as the largest
    of compute, memory traffic and collectives."""
    xla_flops = float(cost.get("flops", 0.0))
    xla_bytes = float(cost.get("bytes accessed", 0.0))
    scanned = bool(model_config.scan_layers)
    flops_dev = flops["total"] / devices
    if scanned and xla_flops > 0:  # XLA counted the scanned body once: scale its traffic too
        xla_bytes *= max(flops_dev / xla_flops, 1.0)
    peak_flops = spec.peak_bf16 if model_config.dtype in ("bfloat16", "float16") else spec.peak_f32
    # Full remat runs the forward pass twice: 8 instead of 6 FLOPs per parameter and token.
    recompute = 4 / 3 if model_config.remat_policy == "full" else 1.0
    busy = 1 - plan_pipeline.schedule(model_config).bubble  # the bubble idles every stage
    compute_s = recompute * flops_dev / peak_flops / busy
    # HBM traffic, lower bound: parameters read twice (forward, backward) and written once,
    # gradients written and read, optimizer state read and written. Activations come on top;
    # XLA:CPU's `bytes accessed` (it fuses far less than the GPU/TPU compilers) is an upper bound.
    traffic = 5 * memory["params"] + 2 * memory["optimizer"] + memory.get("teacher", 0)
    memory_s = traffic / spec.hbm_bandwidth  # a distillation teacher is read once
    kv = plan_context.kv_traffic(model_config, batch, shape)  # 0 without context parallelism
    comm_bytes = _collective_bytes(model_config, abstract.params, batch, shape)
    sends = plan_pipeline.send_bytes(model_config, batch, shape)["per_step"]  # 0 without stages
    comm_bytes += kv["kv_all_gather"] + kv["kv_reduce_scatter"] + sends
    comm_s = comm_bytes / spec.link_bandwidth
    step_s = max(compute_s, memory_s, comm_s)
    bound = {compute_s: "compute", memory_s: "memory bandwidth", comm_s: "collectives"}[step_s]
    flops_report = {
        "analytic_total": flops["total"],
        "analytic_model_6nt": flops["model"],
        "analytic_attention": flops["attention"],
        "analytic_per_device": flops_dev,
        "hardware_per_device": recompute * flops_dev,
        "xla_per_device": xla_flops,
        "xla_counts_scan_body_once": scanned,
    }
    roofline = {
        "peak_flops": peak_flops,
        "compute_s": compute_s,
        "memory_s": memory_s,
        "memory_upper_s": xla_bytes / spec.hbm_bandwidth,
        "collectives_s": comm_s,
        "collective_bytes_per_device": comm_bytes,  # all of them, the K/V ones included
        "kv_all_gather_bytes_per_device": kv["kv_all_gather"],
        "kv_reduce_scatter_bytes_per_device": kv["kv_reduce_scatter"],
        "stage_send_bytes_per_device": sends,
        "xla_bytes_accessed_per_device": xla_bytes,
        "step_s": step_s,
        "bound": bound,
        "tokens_per_s": flops["tokens"] / step_s,
        "step_s_at_50pct_mfu": max(step_s, flops_dev / (0.5 * peak_flops) / busy),
    }
    return flops_report, roofline


def _collective_bytes(model_config, params, batch, shape: dict) -> float:
    """Bytes each device sends per step (ring collectives): FSDP all-gathers the parameters for
    the forward and backward passes (a pipeline's layers in each of its iterations) and
    reduce-scatters the gradients; data parallelism
    all-reduces its gradient shard, over the context axis too (the weights are replicated there
    and each device's gradient covers its T/context tokens only); tensor parallelism all-reduces
    activations 4x per layer (each device's T/context tokens of its rows). With pipeline stages
    a stage group holds, gathers and reduces only its layers (and the unsplit rest), and runs
    the per-layer all-reduces for its layers, bubble included. Context parallelism's K/V
    collectives are launch/plan_context.py's, the stages' sends launch/plan_pipeline.py's."""
    data, fsdp, tensor = shape["data"], shape["fsdp"], shape["tensor"]
    replicas = data * shape.get("context", 1)  # the gradient all-reduce's group
    full = plan_pipeline.held_bytes(params, shape) / tensor
    out = 0.0
    if fsdp > 1:  # gathered forward and backward (in every iteration of a pipeline), reduced once
        out += (
            (2 * plan_pipeline.gathered_bytes(model_config, params, shape) / tensor + full)
            * (fsdp - 1)
            / fsdp
        )
    if replicas > 1:
        out += 2 * (full / fsdp) * (replicas - 1) / replicas
    if tensor > 1:
        rows = batch["input_ids"].shape[0] / (data * fsdp)
        act = rows * batch["input_ids"].shape[1] / shape.get("context", 1) * model_config.d_model
        act *= 2 if model_config.dtype in ("bfloat16", "float16") else 4
        layers = model_config.num_layers + (model_config.decoder_layers or 0) * (
            model_config.family == "encoder_decoder"
        )
        share = plan_pipeline.layer_share(model_config)
        out += 4 * layers * share * 2 * act * (tensor - 1) / tensor
    return out


def _hints(report: dict, model_config, config) -> list[str]:
    hints = []
    mem = report["memory_per_device"]
    if not report["fits"]:
        if model_config.remat_policy == "none":
            hints.append(
                "activations dominate: --config.model.remat_policy=full (or dots) with "
                "--config.model.scan_layers=True recomputes them in the backward pass"
            )
        hints.append(
            f"or --config.microbatches={2 * config.microbatches} (gradient accumulation; "
            "activations shrink with the microbatch)"
        )
        if mem["params"] + mem["optimizer"] > 0.5 * report["usable_hbm_per_device"]:
            hints.append("parameters + optimizer need more sharding: raise mesh.fsdp")
    if model_config.remat_policy != "none" and not model_config.scan_layers:
        hints.append(
            "remat without scan_layers: XLA:CPU schedules the recomputation early, so the "
            "temporaries above are as without remat; plan (and train) with "
            "--config.model.scan_layers=True for the remat saving"
        )
    if model_config.dtype == "float32" and report["chip"]["peak_bf16"] > report["chip"]["peak_f32"]:
        hints.append(
            "compute is float32: --config.model.dtype=bfloat16 uses the bf16 peak "
            "(parameters stay float32)"
        )
    return hints


def _gb(x: float) -> str:
    return f"{x / 1e9:8.2f} GB"


def _kv_note(roof: dict, chip: dict) -> str:
    kv = roof["kv_all_gather_bytes_per_device"] + roof["kv_reduce_scatter_bytes_per_device"]
    sends = roof.get("stage_send_bytes_per_device", 0)
    parts = [f"context K/V {kv / chip['link_bandwidth'] * 1e3:.1f} ms"] if kv else []
    if sends:
        parts.append(f"stage sends {sends / chip['link_bandwidth'] * 1e3:.1f} ms")
    return f"   (of which {', '.join(parts)})" if parts else ""


def _bubble_note(r: dict) -> str:
    p = r.get("pipeline")
    return f"   (over 1 - bubble = {1 - p['bubble']:.2f}: stages idle)" if p else ""


def format_report(r: dict) -> str:
    m, f, roof, chip = r["memory_per_device"], r["flops_per_step"], r["roofline"], r["chip"]
    mesh = " x ".join(f"{k}={v}" for k, v in r["mesh"].items())
    lines = [
        f"{r['model']}: {r['params']:,} parameters ({r['param_dtype']}), compute "
        f"{r['compute_dtype']}, {r['optimizer']}, batch {r['batch_size']} x {r['seq_len']}"
        + (f" in {r['microbatches']} microbatches" if r["microbatches"] > 1 else "")
        + f", remat {r['remat_policy']}, scan_layers {r['scan_layers']}",
        f"mesh {mesh} on {r['devices']} x {chip['name']}",
        "",
        "memory per device",
        f"  parameters           {_gb(m['params'])}   (total {_gb(r['memory_total']['params'])})",
        f"  optimizer state      {_gb(m['optimizer'])}   "
        f"(total {_gb(r['memory_total']['optimizer'])})",
        *(
            [f"  teacher (frozen)     {_gb(m['teacher'])}   (distillation)"]
            if "teacher" in m
            else []
        ),
        f"  batch                {_gb(m['batch'])}",
        f"  XLA arguments        {_gb(m['xla_arguments'])}",
        f"  XLA temporaries      {_gb(m['xla_temporaries'])}   (activations, gradients, workspace)",
        f"  peak                 {_gb(m['peak'])}   of {_gb(chip['hbm_bytes'])} HBM "
        f"({100 * m['peak'] / chip['hbm_bytes']:.0f}%)",
        f"  fits                 {'yes' if r['fits'] else 'NO'} "
        f"(plan for at most {100 * USABLE_FRACTION:.0f}% of HBM)",
        "",
        "FLOPs per step",
        f"  analytic             {f['analytic_total']:.3e}  (matmuls; 6*N*tokens "
        f"{f['analytic_model_6nt']:.3e} + attention {f['analytic_attention']:.3e})",
        f"  analytic / device    {f['analytic_per_device']:.3e}"
        + (
            f"  ({f['hardware_per_device']:.3e} executed with remat)"
            if f["hardware_per_device"] != f["analytic_per_device"]
            else ""
        ),
        f"  XLA / device         {f['xla_per_device']:.3e}"
        + ("  (scanned layers counted once)" if f["xla_counts_scan_body_once"] else ""),
        "",
        f"roofline on {chip['name']} ({roof['peak_flops'] / 1e12:.0f} TFLOP/s "
        f"{'bf16' if roof['peak_flops'] == chip['peak_bf16'] else 'float32/TF32'}, "
        f"{chip['hbm_bandwidth'] / 1e12:.2f} TB/s HBM)",
        f"  compute              {roof['compute_s'] * 1e3:10.1f} ms" + _bubble_note(r),
        f"  memory traffic       {roof['memory_s'] * 1e3:10.1f} ms   (weights, gradients, "
        f"optimizer; XLA:CPU upper bound {roof['memory_upper_s'] * 1e3:.1f} ms)",
        f"  collectives          {roof['collectives_s'] * 1e3:10.1f} ms" + _kv_note(roof, chip),
        f"  step (lower bound)   {roof['step_s'] * 1e3:10.1f} ms, {roof['bound']}-bound, "
        f"{roof['tokens_per_s']:,.0f} tokens/s",
        f"  at 50% MFU           {roof['step_s_at_50pct_mfu'] * 1e3:10.1f} ms, "  # or the bound
        f"{r['tokens_per_step'] / roof['step_s_at_50pct_mfu']:,.0f} tokens/s",
    ]
    lines += plan_context.format_lines(r) + plan_pipeline.format_lines(r)
    if r["hints"]:
        lines += ["", "hints"] + [f"  - {h}" for h in r["hints"]]
    return "\n".join(lines)


def main(argv, spec: str, overrides) -> int:
    """Plans `spec` with `overrides` on --devices (configs.cli.run_absl reports errors)."""
    from train import run_config

    if _DEVICES.value is None or _DEVICES.value < 1:
        raise PlanError("--devices N is required (N >= 1)")
    config = run_config.load(spec, overrides)
    use_cpu_devices(_DEVICES.value)
    sizes = parse_mesh(_MESH.value) if _MESH.value else None
    report = plan(config, _DEVICES.value, sizes, _CHIP.value, name=spec)
    print(json.dumps(report, indent=2) if _JSON.value else format_report(report))
    if _OUT.value:
        out = paths.resolve(_OUT.value)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
    return 0


def run() -> None:
    from configs import cli

    cli.run_absl(main)


if __name__ == "__main__":
    run()
