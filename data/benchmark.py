"""Input pipeline benchmark: how fast a config's training batches are built on this host.

    python -m data.benchmark --config configs/gpt_lm.py [--config.KEY=VALUE ...] \\
        [--workers N] [--seconds S] [--profile K] [--json F]

Builds the train split's batches of the config (its objective, batch size and sequence length)
as fast as it can for S seconds, after a warm-up that starts the workers and fills their
buffers, and reports tokens/s (the batches' token slots, input plus decoder side: what the
accelerator consumes), batches/s, the cores this process kept busy (CPU seconds of all its
threads per second; with workers, the parent's alone), and with `--workers 0` the share of the
time in each stage:

  read      ArrayRecord reads and TFDS feature decoding (`read_many` less the tokenizer)
  tokenize  the row builder's batched tokenization (`Rows.elements`)
  build     packing, masking and corruption, batch assembly (the rest)

With workers the stages run in the worker processes and only the totals are measured.
`--profile K` (with `--workers 0`) runs the timed batches under cProfile and prints the K
functions that took longest themselves (the profile in docs/benchmarks/input.md). The
tokenizer is the run's: `tokenizer.path`, or one trained on the split as `python -m train` does.
"""

from __future__ import annotations

import cProfile
import json
import os
import platform
import pstats
import sys
import time

from data import workers as row_workers
from data.pipeline import make_pipeline, run_tokenizer


class _Stages:
    """Times the read and tokenize stages of an in-process pipeline (see the module docstring)."""

    def __init__(self, it):
        self.read = self.tokenize = 0.0
        builder = it._rows
        tokenize, read_many = builder.builder.elements, row_workers.read_many

        def timed_tokenize(examples):
            start = time.perf_counter()
            try:
                return tokenize(examples)
            finally:
                self.tokenize += time.perf_counter() - start

        def timed_read(*args, **kwargs):
            start, before = time.perf_counter(), self.tokenize
            try:
                return read_many(*args, **kwargs)
            finally:
                self.read += time.perf_counter() - start - (self.tokenize - before)

        builder.builder.elements = timed_tokenize
        self._restore = lambda: setattr(row_workers, "read_many", read_many)
        row_workers.read_many = timed_read

    def close(self) -> None:
        self._restore()


def measure(config, *, workers: int, seconds: float, warmup: int = 2, profile: int = 0) -> dict:
    """Builds `config`'s train batches for `seconds` and returns the rates (module docstring)."""
    tokenizer = run_tokenizer(config)
    it = make_pipeline(
        config.data,
        split="train",
        tokenizer=tokenizer,
        global_batch_size=config.batch_size,
        seq_len=config.seq_len,
        seed=config.seed,
        workers=workers,
    )
    try:
        for _ in range(warmup):
            next(it)
        stages = _Stages(it) if workers == 0 else None
        profiler = cProfile.Profile() if profile and workers == 0 else None
        batches = tokens = 0
        if profiler:
            profiler.enable()
        start, cpu_start = time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds:
            batch = next(it)
            batches += 1
            decoder = batch.get("decoder_input_ids")
            tokens += batch["input_ids"].size + (0 if decoder is None else decoder.size)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start  # this process's threads, not the workers
        if profiler:
            profiler.disable()
    finally:
        it.close()
    result = {
        "objective": config.data.objective,
        "batch": config.batch_size,
        "seq_len": config.seq_len,
        "workers": workers,
        "seconds": elapsed,
        "batches": batches,
        "tokens_per_s": tokens / elapsed,
        "batches_per_s": batches / elapsed,
        "process_cores": cpu / elapsed,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
    }
    if stages is not None:
        stages.close()
        build = max(0.0, elapsed - stages.read - stages.tokenize)
        result["stage_share"] = {
            "read": stages.read / elapsed,
            "tokenize": stages.tokenize / elapsed,
            "build": build / elapsed,
        }
    if profiler:
        result["profile"] = _top(profiler, profile, elapsed)
    return result


def _top(profiler, count: int, elapsed: float) -> list[dict]:
    """The `count` functions with the most time of their own, and their share of `elapsed`."""
    stats = pstats.Stats(profiler).stats
    rows = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:count]
    return [
        {
            "function": f"{os.path.basename(file)}:{line}({name})" if line else name,
            "calls": calls,
            "own_s": own,
            "share": own / elapsed,
        }
        for (file, line, name), (_, calls, own, _, _) in rows
    ]


def main(argv: list[str] | None = None) -> int:
    from configs import cli  # the CLI reads run configs, which name the layers above
    from models.errors import ArgumentParser, UserError, one_line_errors

    @one_line_errors
    def run(argv):
        spec, overrides, rest = cli.split_argv(argv)
        parser = ArgumentParser(
            prog="python -m data.benchmark", description=__doc__.splitlines()[0]
        )
        parser.add_argument("--workers", type=int, default=0, help="processes (0: in this one)")
        parser.add_argument("--seconds", type=float, default=10.0, help="how long to build batches")
        parser.add_argument(
            "--profile", type=int, default=0, metavar="K", help="print cProfile's top K"
        )
        parser.add_argument("--json", help="also write the result to this file")
        args = parser.parse_args(rest)
        if not spec:
            raise UserError("give --config CONFIG[:VARIANT], e.g. --config configs/gpt_lm.py")
        if args.workers < 0 or args.seconds <= 0:
            raise UserError("--workers must be >= 0 and --seconds > 0")
        config = cli.load_config(spec)
        cli.apply_overrides(config, overrides)
        result = measure(config, workers=args.workers, seconds=args.seconds, profile=args.profile)
        shares = result.get("stage_share")
        line = (
            f"{result['objective']} {result['batch']} x {result['seq_len']}, "
            f"{args.workers} workers: {result['tokens_per_s']:,.0f} tokens/s, "
            f"{result['batches_per_s']:.2f} batches/s, this process {result['process_cores']:.2f} "
            "cores"
        )
        if shares:
            line += " (" + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()) + ")"
        print(line)
        for row in result.get("profile", []):
            own = f"{row['own_s']:7.2f} s {row['calls']:8d}"
            print(f"  {row['share']:6.1%} {own}  {row['function']}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return 0

    return run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
