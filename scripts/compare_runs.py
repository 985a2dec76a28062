"""Plots the loss curves of several training workdirs on one chart and prints them as a table.

    python scripts/compare_runs.py adapted=runs/acl-adapt scratch=runs/acl-scratch \\
        --out docs/quality/acl-adapt.png [--metric eval_loss]

Each argument is `LABEL=WORKDIR`; the curves are read from the workdirs' metrics.jsonl (the last
value logged for each step, so a resumed run counts once). The chart has the training loss
(thin) and `--metric` (thick, markers) of every run; the table, in Markdown, has `--metric` at
each evaluated step, one column per run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from models.errors import ArgumentParser


def curves(workdir: Path, metric: str) -> tuple[dict[int, float], dict[int, float]]:
    """({step: training loss}, {step: metric}) from a workdir's metrics.jsonl."""
    train, evals = {}, {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            train[record["step"]] = record["loss"]
        if metric in record:
            evals[record["step"]] = record[metric]
    return train, evals


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="scripts/compare_runs.py", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=WORKDIR")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--metric", default="eval_loss")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    runs = {}
    for item in args.runs:
        label, sep, workdir = item.partition("=")
        if not sep or not (Path(workdir) / "metrics.jsonl").is_file():
            parser.error(f"{item!r}: give LABEL=WORKDIR of a workdir with metrics.jsonl")
        runs[label] = curves(Path(workdir), args.metric)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (label, (train, evals)) in enumerate(runs.items()):
        color = f"C{i}"
        ax.plot(list(train), list(train.values()), color=color, alpha=0.35, lw=1)
        ax.plot(list(evals), list(evals.values()), color=color, marker="o", lw=2, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{args.metric} (thick) / training loss (thin)")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)

    steps = sorted(set().union(*(evals for _, evals in runs.values())))
    print(f"| step | {' | '.join(runs)} |")
    print(f"| --- | {' | '.join('---' for _ in runs)} |")
    for step in steps:
        cells = [f"{evals[step]:.3f}" if step in evals else "" for _, evals in runs.values()]
        print(f"| {step} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
