"""`python -m train.evaluate --workdir DIR [--split NAME]`: scores a trained model on a split.

    python -m train.evaluate --workdir runs/sst2 --split validation
    python -m train.evaluate --workdir runs/conll --split test --file path/to/test.txt
    python -m train.evaluate --workdir runs/m30k --step best --beams 5 --json m30k.json

Reports the loss metrics of the run's objective over the whole split (loss, perplexity, token
accuracy) and the metric of the run's `task`: accuracy and F1 for classification, entity F1 for
NER, sacreBLEU for translation, ROUGE for summarization (train/tasks/). The data, tokenizer and
decoding settings are the run's own; --file points the split at another local file (for
parallel text, "SOURCE,TARGET").
"""

from __future__ import annotations

import json
import logging
import sys
import time

import ml_collections

from models import paths
from models.errors import ArgumentParser, one_line_errors


def split_data(data: ml_collections.ConfigDict, split: str, file: str | None):
    """The run's data section, with `split` read from `file` when given."""
    data = ml_collections.ConfigDict(data.to_dict())
    if file:
        files = dict(data.files or {})
        parts = file.split(",")
        files[split] = {"source": parts[0], "target": parts[1]} if len(parts) == 2 else file
        data.files, data.name = files, ""
        data.splits = {k: v for k, v in dict(data.splits or {}).items() if k != split}
    return data


def loss_metrics(m, data, split: str, *, batch_size: int, max_batches: int = 0) -> dict:
    """The objective's eval sums over the split (one pass), summarised."""
    import jax
    from tqdm import tqdm

    from data.pipeline import make_pipeline
    from train.step import make_eval_step, summarize

    cfg = ml_collections.ConfigDict(data.to_dict())
    cfg.shuffle, cfg.num_epochs = False, 1
    it = make_pipeline(
        cfg,
        split=split,
        tokenizer=m.tokenizer,
        global_batch_size=batch_size,
        seq_len=m.seq_len,
        seed=int(m.run_config.seed),
    )
    eval_step = jax.jit(make_eval_step(m.model, cfg.objective))
    total = None
    for index, batch in enumerate(tqdm(it, desc=f"loss on {split}", unit="batch")):
        if max_batches and index >= max_batches:
            break
        sums = eval_step(m.params, batch)
        total = sums if total is None else jax.tree.map(lambda a, b: a + b, total, sums)
    if total is None:
        return {}
    return {k: float(v) for k, v in summarize(total).items() if k != "tokens"}


def evaluate_dir(
    workdir: str,
    split: str = "validation",
    *,
    step=None,
    file: str | None = None,
    max_batches: int = 0,
    max_examples: int = 0,
    decode: dict | None = None,
    task: str | None = None,
) -> dict:
    """Loss and task metrics of a workdir's checkpoint on `split` (see the module docstring)."""
    from train.tasks import TaskError, load, task_metrics

    start = time.time()
    m = load(workdir, step)
    if m.run_config is None:
        raise TaskError(
            f"{workdir} is not a training workdir; evaluation needs the run's data config "
            "(fine-tune it with init_from, or use python -m train.predict)"
        )
    for key, value in (decode or {}).items():
        m.run_config.decode[key] = value
    data = split_data(m.run_config.data, split, file)
    batch_size = int(m.run_config.batch_size)
    results = {"workdir": str(workdir), "checkpoint": m.source, "split": split}
    results.update(loss_metrics(m, data, split, batch_size=batch_size, max_batches=max_batches))
    task = task or m.run_config.get("task", "")
    if task:
        results.update(
            task_metrics(
                m, task, data=data, split=split, batch_size=batch_size, max_examples=max_examples
            )
        )
    results["wall_time_s"] = round(time.time() - start, 1)
    return results


def quiet_libraries() -> None:
    """Keeps absl/orbax/TFDS chatter off the terminal (our own warnings still show)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "orbax", "jax._src", "tensorflow_datasets"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


@one_line_errors
def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a training workdir (or gs://...)")
    parser.add_argument("--split", default="validation", help="split name (default validation)")
    parser.add_argument("--step", help="checkpoint: latest (default), best or a step number")
    parser.add_argument("--file", help="read the split from this local file (SOURCE,TARGET)")
    parser.add_argument("--max_batches", type=int, default=0, help="loss batches (0 = all)")
    parser.add_argument("--max_examples", type=int, default=0, help="task examples (0 = all)")
    parser.add_argument("--task", help="the task metric (default: the run's task)")
    parser.add_argument("--beams", type=int, help="override the run's decode.beams")
    parser.add_argument("--length_penalty", type=float)
    parser.add_argument("--max_new_tokens", type=int)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    quiet_libraries()
    decode = {
        k: getattr(args, k)
        for k in ("beams", "length_penalty", "max_new_tokens")
        if getattr(args, k) is not None
    }
    results = evaluate_dir(
        args.workdir,
        args.split,
        step=args.step,
        file=args.file,
        max_batches=args.max_batches,
        max_examples=args.max_examples,
        decode=decode,
        task=args.task,
    )
    for key, value in results.items():
        print(f"{key:>20}: {value:.4f}" if isinstance(value, float) else f"{key:>20}: {value}")
    if args.json:  # a local file or an object on a bucket
        paths.resolve(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
