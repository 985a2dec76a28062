"""Peak memory of one train step: full fine-tuning, LoRA that computes every gradient and drops
the base's (an optimizer mask), and LoRA as train/lora.py runs it (gradients of the adapters
only, the base closed over).

    python scripts/lora_memory.py [--model gpt2] [--batch 8] [--seq 256] [--rank 8] [--json F]

Each step is compiled ahead of time on one device (nothing is allocated); the figures are XLA's
`memory_analysis()`: arguments (state and batch), temporaries (activations, gradients,
workspace) and the peak (arguments + outputs - aliased + temporaries).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _step_memory(model_config, tx_config, batch_shape, init_config=None) -> dict:
    import jax
    import numpy as np

    import models
    from train import partitioning
    from train.optim import make_optimizer
    from train.state import abstract_state
    from train.step import jit_steps

    model = models.build(model_config)
    mesh = partitioning.make_mesh({"data": 1}, jax.devices()[:1])
    rules = partitioning.DEFAULT_RULES
    tx, schedule = make_optimizer(tx_config, 1000)
    abstract, shardings = abstract_state(model, init_config or model_config, tx, mesh, rules)
    b, t = batch_shape
    batch = {
        k: jax.ShapeDtypeStruct((b, t), dtype)
        for k, dtype in (("input_ids", np.int32), ("targets", np.int32), ("weights", np.float32))
    }
    train_step, _ = jit_steps(model, tx, schedule, "causal_lm", shardings, mesh, rules)
    with partitioning.activate(mesh, rules):
        mem = train_step.lower(abstract, batch, jax.random.key(0)).compile().memory_analysis()
    peak = (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
        + mem.temp_size_in_bytes
    )
    trained = sum(x.size for x in jax.tree.leaves(abstract.params))
    return {
        "differentiated_params": int(trained),  # the leaves the gradient is taken for
        "arguments_mb": mem.argument_size_in_bytes / 2**20,
        "temporaries_mb": mem.temp_size_in_bytes / 2**20,
        "peak_mb": peak / 2**20,
    }


def main() -> int:
    import ml_collections

    import models
    from train import lora, optim

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--json")
    args = parser.parse_args()
    base = models.get_config(args.model)
    adapted = lora.configure(dict(rank=args.rank), base, init_from="planned")
    adam = ml_collections.ConfigDict(dict(optim.DEFAULTS))
    masked = ml_collections.ConfigDict(dict(optim.DEFAULTS))
    masked.freeze = ("(?!.*lora_)",)  # everything but the adapters: gradients taken, then dropped
    shape = (args.batch, args.seq)
    rows = {
        "full fine-tuning": _step_memory(base, adam, shape),
        "LoRA, base gradients dropped": _step_memory(
            adapted, masked, shape, init_config=adapted.replace(lora_rank=0)
        ),
        "LoRA, adapter gradients only": _step_memory(adapted, adam, shape),
    }
    print(f"{args.model}, batch {args.batch} x {args.seq}, rank {args.rank} (f32, one device)")
    print(f"{'':32}{'grads taken':>14}{'arguments MB':>14}{'temporaries MB':>16}{'peak MB':>10}")
    for name, r in rows.items():
        print(
            f"{name:32}{r['differentiated_params']:>14,}{r['arguments_mb']:>14.0f}"
            f"{r['temporaries_mb']:>16.0f}{r['peak_mb']:>10.0f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
