"""`python -m train.benchmark`: the flags, and the two ways to run: a standard suite, or one
model's training step (and, with --decode, its cached decoding)."""

from __future__ import annotations

import argparse
import json
import os

from models.errors import ArgumentParser, one_line_errors
from train.benchmark.report import _decode_line, _jsonable, _train_line
from train.benchmark.suites import SUITES, run_suite
from train.benchmark.timing import benchmark, decode_benchmark


def _override(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    if not key or not _:
        raise argparse.ArgumentTypeError(f"--set takes FIELD=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _parser() -> ArgumentParser:
    """The command line: a suite, or one model's shape and how to time it."""
    import train.benchmark  # its docstring's first line is the description

    p = ArgumentParser(
        prog="python -m train.benchmark", description=train.benchmark.__doc__.split("\n")[0]
    )
    p.add_argument("--suite", choices=sorted(SUITES), help="run a standard suite, write docs")
    p.add_argument(
        "--out",
        default=None,
        help="suite output directory (default docs/benchmarks/ for cpu, docs/benchmarks/NAME/)",
    )
    p.add_argument("--model")
    p.add_argument("--batch", type=int)
    p.add_argument("--seq", type=int)
    p.add_argument("--target-seq", type=int, default=None, help="decoder length (enc-dec)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dtype", choices=("f32", "bf16"), default="bf16")
    p.add_argument("--kernel", default="auto", help="attention kernel (models/attention.py)")
    p.add_argument("--remat", default="none")
    p.add_argument("--scan-layers", action="store_true")
    p.add_argument(
        "--set",
        type=_override,
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="ModelConfig override, e.g. --set num_layers=2 (repeatable)",
    )
    p.add_argument("--reference", choices=("torch",), default=None, help="also time PyTorch")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --reference: alternate --steps of ours and of PyTorch this many times",
    )
    p.add_argument(
        "--decode",
        action="store_true",
        help="also time greedy cached decoding at batch 1 and 16 (--prompt-len, --new-tokens)",
    )
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--country", default=None, help="carbon.country_iso_code (default USA)")
    p.add_argument("--json", default=None, help="write the result here")
    p.add_argument(
        "--profile", default=None, metavar="DIR", help="profile one more step: trace + top ops"
    )
    return p


@one_line_errors
def main(argv=None) -> int:
    """Runs `python -m train.benchmark` with `argv` (sys.argv[1:] by default); the exit code."""
    p = _parser()
    args = p.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:
        p.error(f"--steps and --rounds must be at least 1 (got {args.steps} and {args.rounds})")
    if args.suite or args.reference:
        # PyTorch shares the GPU: JAX takes memory as it needs it rather than 75% at start
        # (no effect once JAX has started, as when main() is called from a test).
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.suite:
        # and no more than half of it: a suite runs PyTorch after ours from the second row on,
        # and JAX's allocator keeps what an earlier row took
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
        run_suite(args.suite, args.out, reference=args.reference or "torch")
        return 0
    if args.model is None or args.batch is None or args.seq is None:
        p.error("--model, --batch and --seq are required without --suite")
    _run_one(args)
    return 0


def _run_one(args: argparse.Namespace) -> None:
    """One model's training step (and decoding with --decode): printed, and written to --json."""
    carbon = {"country_iso_code": args.country} if args.country else None
    result = benchmark(
        args.model,
        args.batch,
        args.seq,
        steps=args.steps,
        warmup=args.warmup,
        dtype=args.dtype,
        kernel=args.kernel,
        remat=args.remat,
        target_seq=args.target_seq,
        scan_layers=args.scan_layers,
        overrides=dict(args.set),
        reference=args.reference,
        carbon=carbon,
        profile=args.profile,
        rounds=args.rounds,
    )
    print(_train_line(result), flush=True)
    for op in result.get("profile", {}).get("top_ops", []):
        print(f"{op['ms']:9.1f} ms {op['calls']:4d}x  {op['op']:34s} {op['source'] or ''}")
    if args.decode:
        result["decode"] = [_decode(args, batch) for batch in (1, 16)]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=_jsonable)


def _decode(args: argparse.Namespace, batch: int) -> dict:
    """Times cached greedy decoding of --model at `batch` (with --reference's) and prints it."""
    r = decode_benchmark(
        args.model,
        batch,
        prompt_len=args.prompt_len,
        new_tokens=args.new_tokens,
        overrides=dict(args.set),
        reference=args.reference,
    )
    print(_decode_line(r), flush=True)
    return r
