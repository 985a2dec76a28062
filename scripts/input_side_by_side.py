"""Input pipelines side by side: this checkout's against another commit's, in one session.

    git worktree add /tmp/base cd8807e
    python scripts/input_side_by_side.py --baseline /tmp/base --config configs/gpt_lm.py \\
        --files ../shared/data/tiny_shakespeare/input.txt --batch 16 --seq-len 1024 \\
        --vocab 8192 --workers 0,2 --seconds 15 --rounds 2 [--json F]

Each measurement runs in a fresh process inside its checkout (`cwd` and `sys.path` there), builds
that checkout's `make_pipeline` for the config's objective and times its train batches for
`--seconds` after two warm-up batches. Both checkouts load one tokenizer, trained once here on
the files, so they tokenize identically. The measurements alternate (baseline, then this
checkout with each worker count) for `--rounds` rounds so that both see the same machine load;
the table gives the best round of each. tokens/s counts the batches' token slots (input plus
decoder side), as `python -m data.benchmark` does.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(args) -> None:
    """Times one pipeline of the checkout in the working directory; prints one JSON line."""
    sys.path.insert(0, os.getcwd())
    from data.pipeline import make_pipeline
    from data.tokenizers import load_tokenizer

    spec = importlib.util.spec_from_file_location("run_config", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = module.get_config().data
    data.files = {"train": args.files}
    data.data_dir = args.data_dir
    kwargs = dict(split="train", global_batch_size=args.batch, seq_len=args.seq_len, seed=0)
    if "workers" in inspect.signature(make_pipeline).parameters:
        kwargs["workers"] = args.child_workers
    it = make_pipeline(data, tokenizer=load_tokenizer(args.tokenizer), **kwargs)
    if args.child_share:  # rows i, i + n, ... in this process alone (`--ceiling`)
        from data.workers import RowBuilder

        index, count = map(int, args.child_share.split("/"))
        spec = dict(global_batch_size=args.batch, length=None, seed=0)
        it = _Share(RowBuilder(it.elements, it.rows, range(index, args.batch, count), **spec))
    for _ in range(2):
        next(it)
    tokens = batches = 0
    start = time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        batch = next(it)
        decoder = batch.get("decoder_input_ids")
        tokens += batch["input_ids"].size + (0 if decoder is None else decoder.size)
        batches += 1
    elapsed = time.perf_counter() - start
    getattr(it, "close", lambda: None)()
    print(json.dumps({"tokens_per_s": tokens / elapsed, "batches": batches, "seconds": elapsed}))


class _Share:
    """Steps of a `RowBuilder` as an iterator of its rows' batches."""

    def __init__(self, builder):
        self.builder, self.step = builder, 0

    def __next__(self):
        rows, _ = self.builder.build(self.step)
        self.step += 1
        return rows


def ceiling(args, processes: int, tokenizer: str, data_dir: str) -> dict:
    """`processes` independent processes, each building its share of every batch's rows in
    process with one tokenizer thread, started together: the rate no design that splits the
    rows over that many processes can pass on this host (nothing crosses a process boundary)."""
    env = {**os.environ, "RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    running = [
        subprocess.Popen(
            [*_child_command(args, 0, tokenizer, data_dir), "--child-share", f"{i}/{processes}"],
            cwd=HERE,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    results = []
    for process in running:
        out, err = process.communicate()
        if process.returncode:
            raise SystemExit(f"ceiling: {err.strip().splitlines()[-1]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return {"tokens_per_s": sum(r["tokens_per_s"] for r in results), "shares": results}


def measure(args, checkout: str, workers: int, tokenizer: str, data_dir: str) -> dict:
    command = _child_command(args, workers, tokenizer, data_dir)
    done = subprocess.run(command, cwd=checkout, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{checkout}: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child_command(args, workers: int, tokenizer: str, data_dir: str) -> list[str]:
    return [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        "--child-workers",
        str(workers),
        "--tokenizer",
        tokenizer,
        "--data-dir",
        data_dir,
        *_shared(args),
    ]


def _shared(args) -> list[str]:
    return [
        "--config",
        os.path.relpath(os.path.abspath(args.config), HERE),  # that checkout's own config file
        "--files",
        os.path.abspath(args.files),
        "--batch",
        str(args.batch),
        "--seq-len",
        str(args.seq_len),
        "--seconds",
        str(args.seconds),
    ]


def train_tokenizer(args, directory: str) -> str:
    """The config's tokenizer, trained once on the files with this checkout's code."""
    sys.path.insert(0, HERE)
    from configs import cli
    from data.pipeline import run_tokenizer

    config = cli.load_config(args.config)
    config.data.files = {"train": os.path.abspath(args.files)}
    config.data.data_dir = os.path.join(directory, "tfds")
    config.tokenizer.vocab_size = args.vocab
    return run_tokenizer(config).save(os.path.join(directory, "tokenizer"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="the other checkout (a git worktree)")
    parser.add_argument("--config", required=True)
    parser.add_argument("--files", required=True, help="the train split's text file")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--workers", default="0,2", help="this checkout's worker counts")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--ceiling", type=int, default=0, help="also measure N independent in-process shares"
    )
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-workers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--child-share", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    report(args, *run_all(args))


def run_all(args) -> tuple[dict, list[str]]:
    """Every measurement, `rounds` times in turn: the best of each, and the log of all."""
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = train_tokenizer(args, scratch)
        runs = [(HERE, int(w)) for w in args.workers.split(",")]
        if args.baseline:
            runs.insert(0, (os.path.abspath(args.baseline), 0))
        best: dict[tuple[str, int], dict] = {}
        log: list[str] = []  # every measurement as printed, for --json
        for round_ in range(args.rounds):
            for checkout, workers in runs:
                data_dir = os.path.join(scratch, f"tfds-{abs(hash(checkout))}")
                result = measure(args, checkout, workers, tokenizer, data_dir)
                log.append(
                    f"round {round_ + 1}: {checkout} workers={workers}: "
                    f"{result['tokens_per_s']:,.0f} tokens/s"
                )
                print(log[-1], flush=True)
                key = (checkout, workers)
                if key not in best or result["tokens_per_s"] > best[key]["tokens_per_s"]:
                    best[key] = result
            if args.ceiling:
                result = ceiling(args, args.ceiling, tokenizer, os.path.join(scratch, "tfds"))
                log.append(
                    f"round {round_ + 1}: ceiling of {args.ceiling} processes: "
                    f"{result['tokens_per_s']:,.0f} tokens/s"
                )
                print(log[-1], flush=True)
                key = ("ceiling", args.ceiling)
                if key not in best or result["tokens_per_s"] > best[key]["tokens_per_s"]:
                    best[key] = result
    return best, log


def report(args, best: dict, log: list[str]) -> None:
    """Prints the best of each measurement (with its ratio to the baseline); --json."""
    base = best.get((os.path.abspath(args.baseline), 0)) if args.baseline else None
    rows = []
    for (checkout, workers), result in best.items():
        row = {"checkout": checkout, "workers": workers, **result}
        if base:
            row["vs_baseline"] = result["tokens_per_s"] / base["tokens_per_s"]
        rows.append(row)
        ratio = f" ({row['vs_baseline']:.2f}x the baseline)" if base else ""
        name = f"ceiling of {workers} processes" if checkout == "ceiling" else checkout
        print(f"{name} workers={workers}: {result['tokens_per_s']:,.0f} tokens/s{ratio}")
    if args.json:
        sys.path.insert(0, HERE)
        from train.benchmark.machine import cpu_model

        machine = {"cpu_count": os.cpu_count(), "machine": cpu_model() or ""}
        run = {
            "date": time.strftime("%Y-%m-%d"),
            "command": " ".join(["python", *sys.argv]),
            "round_log": log,
        }
        with open(args.json, "w") as f:
            json.dump({"config": args.config, **machine, "rows": rows, **run}, f, indent=2)


if __name__ == "__main__":
    main()
