"""`python -m train.benchmark`: the flags, and the two ways to run: a standard suite, or one
model's training step (and, with --decode, its cached decoding)."""

from __future__ import annotations

import argparse
import json
import os

from models.errors import ArgumentParser, one_line_errors
from train.benchmark.report import _decode_line, _jsonable, _train_line
from train.benchmark.suites import SUITES, run_suite
from train.benchmark.timing import benchmark, decode_benchmark, reference_names

DESCRIPTION = (
    "Training and decoding benchmarks: tokens/s, MFU, compile time, peak memory, energy and CO2, "
    "optionally side by side with the Hugging Face PyTorch model of the same shape."
)


def _override(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    if not key or not _:
        raise argparse.ArgumentTypeError(f"--set takes FIELD=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _reference(text: str) -> str:
    try:
        reference_names(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).replace("reference=", "")) from None
    return text


def _comparison_args(p: ArgumentParser) -> None:
    """--reference and --rounds: what ours is timed against, and how."""
    p.add_argument(
        "--reference",
        type=_reference,
        default=None,
        help="also time PyTorch: torch (eager), torch-compile (torch.compile), or "
        "torch,torch-compile (both; a suite's default)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --reference: alternate --steps of ours and of PyTorch this many times; "
        "with --data real: of real and of synthetic steps",
    )


def _parser() -> ArgumentParser:
    """The command line: a suite, or one model's shape and how to time it."""
    p = ArgumentParser(prog="python -m train.benchmark", description=DESCRIPTION)
    p.add_argument("--suite", choices=sorted(SUITES), help="run a standard suite, write docs")
    p.add_argument(
        "--out",
        default=None,
        help="suite output directory (default docs/benchmarks/ for cpu, docs/benchmarks/NAME/)",
    )
    p.add_argument(
        "--data",
        choices=("synthetic", "real"),
        default="synthetic",
        help="real: time the step of --config CONFIG fed by its own input pipeline, next to "
        "synthetic tokens (train/benchmark/real.py)",
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
    _comparison_args(p)
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
    import sys

    from configs import cli  # --config CONFIG [--config.KEY=VALUE ...], as `python -m train`

    spec, overrides, rest = cli.split_argv(list(sys.argv[1:] if argv is None else argv))
    p = _parser()
    args = p.parse_args(rest)
    if args.data == "real" or spec:
        return _run_real(p, args, spec, overrides)
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
        run_suite(args.suite, args.out, reference=args.reference or "torch,torch-compile")
        return 0
    if args.model is None or args.batch is None or args.seq is None:
        p.error("--model, --batch and --seq are required without --suite")
    _run_one(args)
    return 0


def _run_real(p: ArgumentParser, args: argparse.Namespace, spec, overrides) -> int:
    """`--data real --config CONFIG`: the config's step on its pipeline and on synthetic tokens."""
    from train import run_config
    from train.benchmark.real import real_data_benchmark, real_data_line

    if args.data != "real" or not spec:
        p.error("--config goes with --data real, and --data real needs --config CONFIG")
    if args.suite or args.model or args.reference:
        p.error("--data real times a run config; leave out --suite, --model and --reference")
    config = run_config.load(spec, overrides)
    result = real_data_benchmark(config, steps=args.steps, warmup=args.warmup, rounds=args.rounds)
    print(real_data_line(result), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=_jsonable)
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
