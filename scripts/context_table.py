"""The longest sequence that fits on 8 x H100 with context parallelism 1, 2, 4 and 8
(docs/scaling.md, "Context parallelism"), from the planner's Python API (launch/plan.py).

    python scripts/context_table.py [--devices 8] [--chip h100] [--contexts 1,2,4,8]

For each model and context c the mesh is data = devices / c (the other axes 1), the batch one row
per data shard, bfloat16 compute, scanned layers with full remat (the planner's recommendation
for activations that do not fit) and the xla attention kernel (the one every context size
compiles to on the planner's CPU devices; a fused kernel keeps no T/c x T scores). The length
doubles while the plan fits in 90% of HBM, then bisects in steps of 1024 tokens up to the first
length that does not. Each plan compiles the step abstractly: nothing is allocated.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIG = "configs/gpt_lm.py:gpt2"
COMMON = (
    ("model.dtype", "bfloat16"),
    ("model.scan_layers", "True"),
    ("model.remat_policy", "full"),
    ("model.attention_kernel", "xla"),
)
# The named architectures; "llama-1b" is llama3-8b cut to Llama 3.2 1B's widths (1.24e9 weights).
MODELS = {
    "gpt2-medium": (("model.name", "gpt2-medium"),),
    "llama-1b": (
        ("model.name", "llama3-8b"),
        ("model.d_model", "2048"),
        ("model.num_layers", "16"),
        ("model.num_heads", "32"),
        ("model.num_kv_heads", "8"),
        ("model.head_dim", "64"),
        ("model.d_ff", "8192"),
        ("model.tie_embeddings", "True"),
        ("tokenizer.vocab_size", "128256"),
    ),
}


def plan_for(model: str, length: int, context: int, devices: int, chip: str) -> dict:
    """The planner's report for `model` at sequence `length` on data=devices/c x context=c."""
    from launch.plan import plan
    from train import run_config

    data = devices // context
    overrides = [
        *COMMON,
        *MODELS[model],
        ("model.max_positions", str(length)),  # GPT-2's learned table grows with the length
        ("seq_len", str(length)),
        ("batch_size", str(data)),
    ]
    config = run_config.load(CONFIG, overrides)
    mesh = {"data": data, "fsdp": 1, "context": context, "tensor": 1}
    return plan(config, devices, mesh, chip, name=CONFIG)


def longest(model: str, context: int, devices: int, chip: str, start: int) -> tuple[int, dict]:
    """(the longest length that fits, its report), searching up from `start` (down if needed)."""
    fits: dict[int, dict] = {}

    def fit(length):
        report = plan_for(model, length, context, devices, chip)
        print(
            f"  {model} context={context} T={length}: peak "
            f"{report['memory_per_device']['peak'] / 1e9:.1f} GB, fits {report['fits']}",
            file=sys.stderr,
            flush=True,
        )
        if report["fits"]:
            fits[length] = report
        return report["fits"]

    length, failed = start, None
    while not fit(length):
        if length <= 1024:
            raise SystemExit(f"{model} with context={context} does not fit at 1024 tokens")
        length, failed = length // 2, length
    while failed is None:
        if fit(2 * length):
            length *= 2
        else:
            failed = 2 * length
    while failed - max(fits) > 1024:  # bisect between the longest fit and the shortest miss
        middle = (max(fits) + failed) // 2 // 1024 * 1024
        if not fit(middle):
            failed = middle
    best = max(fits)
    return best, fits[best]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--chip", default="h100")
    parser.add_argument("--contexts", default="1,2,4,8")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    from launch.plan import use_cpu_devices

    use_cpu_devices(args.devices)
    print("| model | context | mesh | batch | longest T | peak / device | K/V traffic / step |")
    print("|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        start = 1024
        for context in (int(c) for c in args.contexts.split(",")):
            length, r = longest(model, context, args.devices, args.chip, start)
            roof = r["roofline"]
            kv = roof["kv_all_gather_bytes_per_device"] + roof["kv_reduce_scatter_bytes_per_device"]
            mesh = f"data={r['mesh']['data']} x context={context}"
            print(
                f"| {model} | {context} | {mesh} | {r['batch_size']} | {length:,} | "
                f"{r['memory_per_device']['peak'] / 1e9:.1f} GB | {kv / 1e9:.2f} GB |",
                flush=True,
            )
            start = length  # a longer context splits the sequence further: start from here


if __name__ == "__main__":
    main()
