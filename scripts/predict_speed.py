"""Times `train.predict` on the same texts for several models, side by side in one process.

    python scripts/predict_speed.py teacher=runs/sst2 student=runs/sst2-student \\
        --texts ../shared/data/sst2/dev.tsv [--task classification] [--dtype float32] [--rounds 5]

Each argument is `LABEL=MODEL` (a workdir, a converted or Hugging Face directory). `--texts` is
a text file with one input per line, or a TSV whose first column is the input (a header row
named `sentence` is skipped). Every model is loaded and run once over all texts (compilation
and warm-up), then the models take turns, `--rounds` times, so that the machine's drift falls
on all of them alike. It prints the environment (CPU, cores, JAX, dtype), then one Markdown row
per model: texts/s (median of the rounds) and the speed-up over the first model.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

from models.errors import ArgumentParser, UserError


def read_texts(path: Path) -> list[str]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".tsv":
        lines = [line.split("\t")[0] for line in lines]
        if lines and lines[0] == "sentence":
            lines = lines[1:]
    if not lines:
        raise UserError(f"{path}: no texts; give a file with one input per line")
    return lines


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="scripts/predict_speed.py", description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", metavar="LABEL=MODEL")
    parser.add_argument("--texts", required=True, type=Path)
    parser.add_argument("--task", default=None, help="default: what the model's head does")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    import jax

    from train.predict import pipeline

    texts = read_texts(args.texts)
    runs = {}
    for item in args.models:
        label, sep, where = item.partition("=")
        if not sep:
            raise UserError(f"{item!r}: give LABEL=MODEL, e.g. teacher=runs/sst2")
        runs[label] = pipeline(args.task, where, dtype=args.dtype)
        runs[label](texts)  # compiles every padded length the texts need
    seconds = {label: [] for label in runs}
    for _ in range(args.rounds):
        for label, predict in runs.items():
            began = time.perf_counter()
            predict(texts)
            seconds[label].append(time.perf_counter() - began)
    env = (
        f"{cpu_name()}, {os.cpu_count()} cores, jax {jax.__version__}, {args.dtype}, "
        f"{len(texts)} texts, median of {args.rounds} rounds"
    )
    print(env)
    print("| model | layers | texts/s | speed-up |")
    print("|---|---|---|---|")
    first = None
    for label, predict in runs.items():
        rate = len(texts) / statistics.median(seconds[label])
        first = first or rate
        layers = predict.model.model_config.num_layers
        print(f"| {label} | {layers} | {rate:.1f} | {rate / first:.2f}x |")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
