"""Trains a tiny model for one task on synthetic files and prints its final eval metrics as JSON
(process 0). tests/test_multihost.py runs it on one process and, through `launch.local`, on
two, to compare the task metrics.

    python tests/multihost_tasks.py TASK DATA_DIR WORKDIR     # TASK: translation|classification|ner
"""

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = ["red", "blue", "cat", "dog", "runs", "sleeps", "big", "small", "the", "a", "and"]
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]


def write_data(task: str, root: Path, seed: int = 0) -> dict:
    """Synthetic train and validation files for `task`; returns the `data.files` value."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, count in (("train", 96), ("validation", 20)):
        sentences = [list(rng.choice(WORDS, size=rng.integers(2, 9))) for _ in range(count)]
        if task == "translation":
            source, target = root / f"{split}.src", root / f"{split}.tgt"
            source.write_text("".join(" ".join(s) + "\n" for s in sentences))
            target.write_text("".join(" ".join(s) + "\n" for s in sentences))  # a copy task
            files[split] = {"source": str(source), "target": str(target)}
        elif task == "classification":
            path = root / f"{split}.tsv"
            rows = [f"{' '.join(s)}\t{int('cat' in s)}\n" for s in sentences]
            path.write_text("sentence\tlabel\n" + "".join(rows))
            files[split] = str(path)
        else:
            path = root / f"{split}.txt"
            blocks = [
                "".join(f"{w} NN {TAGS[WORDS.index(w) % len(TAGS)]}\n" for w in s)
                for s in sentences
            ]
            path.write_text("\n".join(blocks))
            files[split] = str(path)
    return files


def config_for(task: str, files: dict):
    from configs import finetune_cls, finetune_ner, translate
    from configs.common import model_section

    if task == "translation":
        c = translate.get_config("smoke")
        c.decode.max_new_tokens = 10
    elif task == "classification":
        c = finetune_cls.get_config("smoke")
        c.model = model_section("bert-tiny", head="classification", num_labels=2)
        c.data.trim_padding = 8  # the hosts agree on each batch's width, in the evals too
    else:
        c = finetune_ner.get_config("smoke")
        c.model = model_section("bert-tiny", head="token_classification", num_labels=len(TAGS))
        c.data.trim_padding = 8
    c.init_from = ""
    c.data.name = ""
    c.data.files = files
    c.eval_task_examples = 0  # the whole validation split, on any number of hosts
    if task == "translation":
        # 8 steps leave beam search ending every output at once (BLEU 0 on any host count);
        # sampled outputs (the same key on any host count) share words with the references
        c.decode.beams, c.decode.temperature = 1, 1.0
    c.sample_tokens = 0
    return c


def main(task: str, data_dir: str, workdir: str) -> None:
    from train import distributed

    distributed.initialize()
    import jax

    from train.loop import train_and_evaluate

    summary = train_and_evaluate(config_for(task, write_data(task, Path(data_dir))), workdir)
    if jax.process_index() == 0:
        print("EVAL " + json.dumps(summary["eval"]))


if __name__ == "__main__":
    main(*sys.argv[1:4])
