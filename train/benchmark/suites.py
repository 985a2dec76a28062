"""The standard suites (`python -m train.benchmark --suite cpu|gpu`): their rows, and the run
that times them and rewrites their report in docs/benchmarks/ after every row."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import jax

from models.errors import UserError
from train.benchmark.machine import cpu_has_bf16_instructions, environment
from train.benchmark.report import _decode_line, _train_line, write_report
from train.benchmark.specs import SUITES
from train.benchmark.timing import benchmark, decode_benchmark

DOCS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks"


class SuiteError(UserError):
    """A standard suite asked for on a machine it is not sized for."""


def suite_dir(name: str) -> Path:
    """Where a suite's report lives: docs/benchmarks/ for cpu, docs/benchmarks/NAME/ otherwise."""
    return DOCS if name == "cpu" else DOCS / name


def run_suite(
    name: str, out_dir: Path | None = None, *, reference: str | None = "torch,torch-compile"
) -> dict:
    """Runs a standard suite and writes results.json, README.md and PNG plots to `out_dir`
    (`suite_dir(name)` by default), rewriting them after every row so that an interrupted run
    keeps what it measured."""
    suite = SUITES[name]
    needs, backend = suite.get("platform"), jax.default_backend()
    if needs and needs != backend:
        raise SuiteError(
            f"suite {name!r} is sized for one {needs.upper()} but JAX runs on {backend}; "
            f"run it on a {needs.upper()} machine, or use --suite cpu here"
        )
    out_dir = suite_dir(name) if out_dir is None else Path(out_dir)
    results = {
        "suite": name,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": f"python -m train.benchmark --suite {name}",
        "environment": environment(),
        "train": [],
        "decode": [],
    }
    for model, batch, seq, target in suite["train"]:
        for dtype in suite["dtypes"]:
            skip = _reference_skipped(reference, dtype, backend)
            r = benchmark(
                model,
                batch,
                seq,
                target_seq=target,
                steps=suite["steps"],
                warmup=suite["warmup"],
                rounds=suite.get("rounds", 1),
                dtype=dtype,
                reference=None if skip else reference,
            )
            r.pop("environment")
            if skip:
                r["reference_skipped"] = skip
                if skip not in results.setdefault("notes", []):
                    results["notes"].append(skip)
            results["train"].append(r)
            print(_train_line(r), flush=True)
            write_report(results, out_dir)
    d = suite["decode"]
    for batch in d["batches"]:
        r = decode_benchmark(
            d["model"],
            batch,
            prompt_len=d["prompt_len"],
            new_tokens=d["new_tokens"],
            dtype=d.get("dtype", "f32"),
            reference=reference,
        )
        results["decode"].append(r)
        print(_decode_line(r), flush=True)
        write_report(results, out_dir)
    results["environment"]["load_average_end"] = os.getloadavg()
    write_report(results, out_dir)
    return results


def _reference_skipped(reference: str | None, dtype: str, backend: str) -> str | None:
    """Why a suite row leaves out the PyTorch reference, or None when it times it."""
    if reference and dtype == "bf16" and backend == "cpu":
        if not cpu_has_bf16_instructions():
            return (
                "PyTorch bf16 not timed: this CPU has no bf16 instructions (avx512_bf16, "
                "amx_bf16), and PyTorch's autocast backward then runs on one core; on a 2-core "
                "EPYC one gpt2 bf16 row did not finish in 34 minutes (cpu-profile.md)."
            )
    return None
