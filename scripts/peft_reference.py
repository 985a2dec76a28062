"""The Hugging Face reference for docs/quality.md's LoRA runs: the same fine-tuning with
transformers + PEFT on PyTorch, so that a gap to full fine-tuning can be told apart from a
Triptych defect.

    python scripts/peft_reference.py --task sst2 --data ../shared/data/sst2 --steps 2000
    python scripts/peft_reference.py --task conll --data ../shared/data/conll2003 --steps 1500

It mirrors configs/finetune_cls.py / finetune_ner.py with `--config.lora.rank=8`:
all-MiniLM-L6-v2 (`BertFor{Sequence,Token}Classification`, PEFT's SEQ_CLS / TOKEN_CLS task
types: rank-8 adapters on query and value, the classifier in modules_to_save), batch 32, AdamW
(b2 0.98, weight decay 0.01), linear warmup then linear decay (to 10% for SST-2, to 0 for
CoNLL), gradient clipping at 1.0, max 64 / 128 tokens, the tag of each word on its first
sub-token, CoNLL's entity F1 (train/metrics.py). Evaluates every --eval-every steps and
prints one JSON line each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _sst2(folder: Path, split: str):
    rows = (folder / f"{split}.tsv").read_text().splitlines()[1:]
    pairs = [r.rsplit("\t", 1) for r in rows if r.strip()]
    return [s.strip() for s, _ in pairs], [int(y) for _, y in pairs]


def _conll(folder: Path, split: str):
    sentences, words, tags = [], [], []
    for line in (folder / f"{split}.txt").read_text().splitlines() + [""]:
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if words:
                sentences.append((words, tags))
            words, tags = [], []
        else:
            words, tags = words + [parts[0]], tags + [parts[-1]]
    return [w for w, _ in sentences], [t for _, t in sentences]


def _args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("sst2", "conll"), required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr-ratio", type=float, default=1.0, help="LoRA+ ratio (B's rate / A's)")
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def _encoder(tok, ner: bool, index: dict):
    """texts (or word lists) and labels -> (the tokenized batch, its targets): a label per
    sentence, or each word's tag on its first sub-token (-100 elsewhere)."""
    import torch

    def encode(xs, ys):
        if not ner:
            enc = tok(xs, truncation=True, max_length=64, padding=True, return_tensors="pt")
            return enc, torch.tensor(ys)
        enc = tok(xs, is_split_into_words=True, truncation=True, max_length=128, padding=True,
                  return_tensors="pt")  # fmt: skip
        target = torch.full(enc["input_ids"].shape, -100)
        for i, tags in enumerate(ys):
            seen = set()
            for j, w in enumerate(enc.word_ids(i)):
                if w is not None and w not in seen:
                    seen.add(w)
                    target[i, j] = index[tags[w]]
        return enc, target

    return encode


def _evaluate(model, encode, dev, labels, ner: bool) -> dict:
    """Dev accuracy (SST-2) or CoNLL entity precision / recall / F1."""
    import torch

    from train.metrics import entity_f1

    (x_dev, y_dev), right, predicted = dev, 0, []
    model.eval()
    with torch.no_grad():
        for s in range(0, len(x_dev), 64):
            enc, target = encode(x_dev[s : s + 64], y_dev[s : s + 64])
            out = model(**enc).logits.argmax(-1)
            if not ner:
                right += int((out == target).sum())
                continue
            for i in range(len(out)):
                keep = target[i] != -100
                predicted.append([labels[k] for k in out[i][keep].tolist()])
    model.train()
    if not ner:
        return {"eval_accuracy": right / len(x_dev)}
    scores = entity_f1(predicted, [t[: len(p)] for t, p in zip(y_dev, predicted)])
    return {f"eval_entity_{k}": v for k, v in scores.items()}


def _optimizer(model, args, ner: bool):
    """AdamW over the trained parameters with the configs' warmup and linear decay; with
    --lr-ratio, PEFT's LoRA+ optimizer (which also gives 1-D parameters, the head's bias, B's
    rate)."""
    import torch

    warmup, end = (150, 0.0) if ner else (200, 0.1)
    adam = dict(lr=args.lr, betas=(0.9, 0.98), eps=1e-8)
    if args.lr_ratio != 1.0:
        from peft.optimizers import create_loraplus_optimizer

        optimizer = create_loraplus_optimizer(
            model, torch.optim.AdamW, loraplus_lr_ratio=args.lr_ratio,
            loraplus_weight_decay=0.01, **adam,
        )  # fmt: skip
    else:
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], weight_decay=0.01, **adam
        )

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 1.0 - (1.0 - end) * (step - warmup) / max(1, args.steps - warmup)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def main(argv=None) -> int:
    import numpy as np
    import peft
    import torch
    import transformers

    from configs.common import minilm_dir

    args = _args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    base, ner = minilm_dir(), args.task == "conll"
    read = _conll if ner else _sst2
    (x_train, y_train), dev = read(args.data, "train"), read(args.data, "dev")
    labels = sorted({t for ts in y_train for t in ts}) if ner else [0, 1]
    encode = _encoder(transformers.AutoTokenizer.from_pretrained(base), ner,
                      {t: i for i, t in enumerate(labels)})  # fmt: skip
    kind = "TokenClassification" if ner else "SequenceClassification"
    model = getattr(transformers, f"BertFor{kind}").from_pretrained(base, num_labels=len(labels))
    lora = peft.LoraConfig(
        r=args.rank, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"],
        task_type="TOKEN_CLS" if ner else "SEQ_CLS",
    )  # fmt: skip
    model = peft.get_peft_model(model, lora)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer, schedule = _optimizer(model, args, ner)
    rng = np.random.default_rng(args.seed)
    order, cursor, start = rng.permutation(len(x_train)), 0, time.time()
    print(json.dumps({"trained_params": trained, "train_examples": len(x_train)}), flush=True)
    model.train()
    for step in range(1, args.steps + 1):
        if cursor + 32 > len(order):
            order, cursor = rng.permutation(len(x_train)), 0
        pick = order[cursor : cursor + 32]
        cursor += 32
        enc, target = encode([x_train[i] for i in pick], [y_train[i] for i in pick])
        loss = model(**enc, labels=target).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % args.eval_every == 0 or step == args.steps:
            row = {"step": step, "loss": loss.item(), "wall_s": round(time.time() - start, 1)}
            print(json.dumps({**row, **_evaluate(model, encode, dev, labels, ner)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
