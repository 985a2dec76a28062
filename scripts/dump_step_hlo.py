"""Dumps the optimized HLO of the training loop's gpt2 train step, to prove a refactor kept it.

    python scripts/dump_step_hlo.py --out /tmp/hlo-before      # on the old commit
    python scripts/dump_step_hlo.py --out /tmp/hlo-after       # on the new one (baseline:
                                                              # scripts/step_hlo_baseline.txt)
    diff -r /tmp/hlo-before /tmp/hlo-after && echo same

The step is the one `python -m train` runs (`train.loop.setup(...).train_step`, which also
gives the state and a batch of the default corpus), for the `configs/gpt_lm.py:gpt2`
architecture (vocabulary padded to 50,304) at batch 8 x 128, in float32 and bfloat16 compute,
on one device and on a (data 2, fsdp 2, tensor 2) mesh of 8 simulated CPU devices. Each
variant is written as `<variant>.hlo` with its source locations stripped (every
`metadata={...}`, op names and source lines, and the file and stack-frame tables: they move with
the code), and `SHA256SUMS` lists them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {
    "f32-1dev": ("float32", {"data": 1, "fsdp": 1, "tensor": 1}),
    "bf16-1dev": ("bfloat16", {"data": 1, "fsdp": 1, "tensor": 1}),
    "f32-mesh222": ("float32", {"data": 2, "fsdp": 2, "tensor": 2}),
    "bf16-mesh222": ("bfloat16", {"data": 2, "fsdp": 2, "tensor": 2}),
}
_METADATA = re.compile(r", metadata=\{[^}]*\}")
_LOCATION_TABLES = ("FileNames", "FunctionNames", "FileLocations", "StackFrames")


def normalized(hlo: str) -> str:
    """The HLO text without source locations (the `metadata={...}` of each instruction and the
    file, function and stack-frame tables they point into), so that moved code compares equal."""
    lines, skipping = [], False
    for line in hlo.splitlines():
        if line in _LOCATION_TABLES:
            skipping = True
        if skipping:
            skipping = bool(line)
            continue
        line = _METADATA.sub("", line)
        if line.startswith("HloModule"):
            line = line.split(",")[0]
        lines.append(line)
    return "\n".join(lines) + "\n"


def step_hlo(dtype: str, mesh: dict) -> str:
    """The compiled train step of the loop for gpt2 at (8, 128) in `dtype` on `mesh`."""
    import jax

    from configs import gpt_lm
    from train import loop, partitioning

    # set directly rather than through configs.cli, so that the script also runs on old commits
    config = gpt_lm.get_config("gpt2")
    config.batch_size, config.seq_len = 8, 128
    config.model.dtype, config.model.vocab_size = dtype, 50304  # 50257 padded to 64 (tensor=2)
    config.tokenizer.vocab_size, config.tokenizer.train_examples = 512, 200
    config.async_checkpoints = False
    config.mesh.update(mesh)
    with tempfile.TemporaryDirectory() as workdir:
        run = loop.setup(config, Path(workdir))
        try:
            batch = loop._device_batch(next(run.train_iter), run.mesh)
            rng = jax.random.key(config.seed + 1)
            with partitioning.activate(run.mesh, run.rules):  # as train_and_evaluate runs it
                return run.train_step.lower(run.state, batch, rng).compile().as_text()
        finally:
            run.ckpt.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for the .hlo files")
    parser.add_argument("--only", choices=sorted(VARIANTS), help="one variant, in this process")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.only:  # the device count is fixed when JAX starts: one process per variant
        dtype, mesh = VARIANTS[args.only]
        devices = mesh["data"] * mesh["fsdp"] * mesh["tensor"]
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        text = normalized(step_hlo(dtype, mesh))
        (out / f"{args.only}.hlo").write_text(text)
        return 0
    sums = []
    for name in VARIANTS:
        subprocess.run([sys.executable, __file__, "--out", str(out), "--only", name], check=True)
        digest = hashlib.sha256((out / f"{name}.hlo").read_bytes()).hexdigest()
        sums.append(f"{digest}  {name}.hlo")
        lines = len((out / f"{name}.hlo").read_text().splitlines())
        print(f"{name}: {lines} lines, sha256 {digest[:16]}", flush=True)
    (out / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
