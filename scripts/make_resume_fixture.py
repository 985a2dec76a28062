"""Captures tests/fixtures/resume_v1: a workdir written by this code, to resume after changes.

    python scripts/make_resume_fixture.py [--out tests/fixtures/resume_v1]

Trains `configs/gpt_lm.py:smoke` for 8 steps (checkpoints at 4 and 8), then keeps the workdir as
it was after step 4 (checkpoint 4, the tokenizer, config.json and the first 4 metrics lines) and
writes the losses of steps 5-8 to `expected_losses.json`. tests/test_train_cli.py resumes the
fixture with today's code and asserts those four losses bit for bit: the checkpoint format, the
data iterator's state and the step itself all have to be unchanged for that to hold.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAGS = [
    "--config",
    "configs/gpt_lm.py:smoke",
    "--config.steps=8",
    "--config.log_every_steps=1",
    "--config.eval_every_steps=0",
    "--config.checkpoint_every_steps=4",
    "--config.sample_tokens=0",
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "resume_v1"))
    args = parser.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TRIPTYCH_TCMALLOC="0")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "train", *FLAGS, "--workdir", str(workdir)]
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
        records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
        losses = {r["step"]: r["loss"] for r in records if "loss" in r}
        out = Path(args.out)
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(workdir, out, ignore=shutil.ignore_patterns("tensorboard", "8"))
        (out / "summary.json").unlink()
        kept = [json.dumps(r) for r in records if r["step"] <= 4]
        (out / "metrics.jsonl").write_text("\n".join(kept) + "\n")
        expected = {"flags": FLAGS, "losses": {str(s): losses[s] for s in range(5, 9)}}
        (out / "expected_losses.json").write_text(json.dumps(expected, indent=2) + "\n")
    print(f"wrote {out}: {sorted(p.name for p in (out / 'checkpoints').iterdir())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
