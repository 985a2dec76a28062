"""GPT-2 XL and Llama 2 7B on 2 x 8 H100s with and without pipeline stages (docs/scaling.md,
"Pipeline parallelism"), from the planner's Python API (launch/plan.py).

    python scripts/pipeline_table.py [--devices 16] [--chip h100] [--models gpt2-xl,llama2-7b]

Every row plans the same global batch of its model (gpt2-xl 64 x 1024, llama2-7b 64 x 4096) in
bfloat16 compute with float32 weights and Adam state, scanned layers with full remat, on one mesh
of 16 devices: data parallelism, FSDP, and data or FSDP combined with pipeline stages (GPipe and
the circular schedule). Two nodes of 8: a pipeline's stages must share a process
(train/stages.py), so every row with stages keeps stage x fsdp within 8 devices and spans the
nodes with data. Each plan compiles the step abstractly on CPU devices: nothing is allocated, and
the figures are the planner's estimates (XLA:CPU buffer assignment, roofline), not measurements.
Each row's compile time goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIG = "configs/gpt_lm.py:gpt2"
COMMON = (
    ("model.dtype", "bfloat16"),
    ("model.scan_layers", "True"),
    ("model.remat_policy", "full"),
    ("batch_size", "64"),
)
MODELS = {
    "gpt2-xl": (("model.name", "gpt2-xl"), ("seq_len", "1024")),
    "llama2-7b": (
        ("model.name", "llama2-7b"),
        ("tokenizer.vocab_size", "32000"),
        ("seq_len", "4096"),
    ),
}
# (mesh, pipeline microbatches, repeats) per model; microbatches 0 = no stages
ROWS = {
    "gpt2-xl": (
        ("data=16", 0, 1),
        ("fsdp=16", 0, 1),
        ("data=8,stage=2", 8, 1),
        ("data=8,stage=2", 8, 2),
        ("data=4,stage=4", 8, 1),
        ("data=4,stage=4", 8, 2),
    ),
    "llama2-7b": (
        ("fsdp=16", 0, 1),
        ("data=2,fsdp=8", 0, 1),
        ("data=2,stage=2,fsdp=4", 8, 1),
        ("data=2,stage=4,fsdp=2", 8, 1),
        ("data=2,stage=4,fsdp=2", 8, 2),
        ("data=2,stage=8", 8, 1),
        ("data=2,stage=8", 16, 2),
    ),
}


def plan_row(model: str, mesh: str, micro: int, repeats: int, devices: int, chip: str) -> dict:
    """The planner's report for one row."""
    from launch.plan import parse_mesh, plan
    from train import run_config

    overrides = [*COMMON, *MODELS[model]]
    if micro:
        overrides += [("pipeline.microbatches", str(micro)), ("pipeline.repeats", str(repeats))]
    config = run_config.load(CONFIG, overrides)
    return plan(config, devices, parse_mesh(mesh), chip, name=CONFIG)


def row(model: str, mesh: str, r: dict) -> str:
    """One markdown row: the mesh, the schedule, memory and the roofline's times."""
    p, roof, mem = r.get("pipeline"), r["roofline"], r["memory_per_device"]
    hbm = r["chip"]["hbm_bytes"] / 1e9
    schedule = "- | - | -"
    if p:
        schedule = f"{p['microbatches']} | {p['repeats']} | {100 * p['bubble']:.1f}%"
    weights = (mem["params"] + mem["optimizer"]) / 1e9
    sends = roof["stage_send_bytes_per_device"] / r["chip"]["link_bandwidth"] * 1e3
    return (
        f"| {model} | {mesh.replace(',', ' x ')} | {schedule} | {weights:.1f} | "
        f"{mem['peak'] / 1e9:.1f} of {hbm:.0f}{'' if r['fits'] else ' (no)'} | "
        f"{roof['compute_s'] * 1e3:.0f} | {roof['collectives_s'] * 1e3:.0f} ({sends:.0f}) | "
        f"{roof['step_s'] * 1e3:.0f} | {roof['step_s_at_50pct_mfu'] * 1e3:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=16)
    parser.add_argument("--chip", default="h100")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    from launch.plan import use_cpu_devices

    use_cpu_devices(args.devices)
    print(
        "| model | mesh | microbatches | repeats | bubble | weights + Adam / device (GB) | "
        "peak / device (GB) | compute (ms) | collectives (ms) (stage sends) | "
        "step, lower bound (ms) | step at 50% MFU (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for mesh, micro, repeats in ROWS[model]:
            start = time.perf_counter()
            report = plan_row(model, mesh, micro, repeats, args.devices, args.chip)
            print(row(model, mesh, report), flush=True)
            print(
                f"  {model} {mesh} M={micro} R={repeats}: {time.perf_counter() - start:.0f} s",
                file=sys.stderr,
                flush=True,
            )


if __name__ == "__main__":
    main()
