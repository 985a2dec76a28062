"""`python -m train.predict --workdir DIR [--task TASK] TEXT [TEXT ...]`: a trained model as a tool.

    python -m train.predict --workdir runs/bert --task fill-mask "Paris is the [MASK] of France."
    python -m train.predict --workdir runs/gpt --task text-generation "The sum" --max_new_tokens 9
    python -m train.predict --workdir runs/sst2 --task classification "A gripping, funny film."
    python -m train.predict --workdir runs/conll --task ner "John lives in New York ."
    python -m train.predict --workdir runs/m30k --task translation "A man rides a bike."
    python -m train.predict --workdir runs/cnndm --task summarization "$(cat article.txt)"
    echo "one text a line" | python -m train.predict --workdir runs/sst2 --json

DIR is a training workdir (its latest checkpoint, or --step N|best), a `python -m models convert`
directory or a Hugging Face directory with its tokenizer. --task defaults to what the model's
head does (the run's `task` for encoder-decoders). Decoding options default to the run's `decode`
section. The model computes in float32 (--dtype), whatever the run trained at: a mixed-precision
run's bfloat16 is a training speed-up, and in float32 the predictions are those of the exported
model (`--to-hf`, or `--to-peft` on the transformers base) to float precision. From Python:

    from train.predict import pipeline
    ner = pipeline("ner", "runs/conll")
    ner(["John lives in New York ."])   # [[{"entity": "PER", "text": "John", ...}, ...]]
"""

from __future__ import annotations

import json
import sys

from models.config import DTYPES
from models.errors import ArgumentParser, one_line_errors
from train.checkpoint import CheckpointError
from train.tasks import TASKS, LoadedModel, load


def default_task(m: LoadedModel) -> str:
    """The task the model's head does (a workdir's `task` for encoder-decoders)."""
    cfg = m.model_config
    if cfg.head == "classification":
        return "classification"
    if cfg.head == "token_classification":
        return "ner"
    if cfg.head == "mlm":
        return "fill-mask"
    if cfg.family == "decoder":
        return "text-generation"
    if cfg.family == "encoder":  # a bare encoder (head 'none') predicts nothing by itself
        raise CheckpointError(
            f"{m.source} is an encoder without a task head (head='none'): fine-tune it "
            "(init_from, with a classification or NER config) and predict with that workdir"
        )
    task = m.run_config.get("task", "") if m.run_config is not None else ""
    return task if task in ("translation", "summarization") else "translation"


def pipeline(task: str | None, directory: str, *, step=None, dtype="float32", **options):
    """Loads `directory` once and returns `predict(texts) -> results` for `task` (None: the
    model's own task), computing in `dtype` (None: the run's own). `options`: top_k for
    fill-mask; beams, max_new_tokens, temperature, top_k, top_p, length_penalty for
    generation."""
    m = load(directory, step, dtype)
    task = task or default_task(m)
    m.require(task)

    def predict(texts):
        single = isinstance(texts, str)
        out = m(task, [texts] if single else list(texts), **options)
        return out[0] if single else out

    predict.task, predict.model = task, m
    return predict


def _format(task: str, text: str, result) -> str:
    if task == "classification":
        return f"{result['label']}\t{result['score']:.4f}\t{text}"
    if task == "ner":
        spans = " ".join(f"[{e['entity']}: {e['text']}]" for e in result)
        return f"{spans or '(no entities)'}\t{text}"
    if task == "fill-mask":
        lines = []
        for i, fills in enumerate(result):
            best = ", ".join(f"{f['token_str']} ({f['score']:.3f})" for f in fills)
            lines.append(f"mask {i + 1}: {best}\n  {fills[0]['sequence']}")
        return "\n".join(lines)
    return result


@one_line_errors
def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m train.predict", description=__doc__.split("\n")[0])
    parser.add_argument("texts", nargs="*", help="inputs (default: one per line on stdin)")
    parser.add_argument("--workdir", required=True, help="workdir, converted or HF directory")
    parser.add_argument("--task", choices=TASKS, help="default: what the model's head does")
    parser.add_argument("--step", help="a workdir's checkpoint: latest (default), best or N")
    parser.add_argument(
        "--dtype", choices=DTYPES, default="float32",
        help="compute dtype (default float32, as the exported model; bfloat16 is faster)",
    )  # fmt: skip
    parser.add_argument("--top_k", type=int, help="fill-mask: fillers shown; sampling: top-k")
    parser.add_argument("--beams", type=int, help="beam search width (1 = greedy/sampling)")
    parser.add_argument("--max_new_tokens", type=int)
    parser.add_argument("--temperature", type=float, help="> 0 samples")
    parser.add_argument("--top_p", type=float)
    parser.add_argument("--length_penalty", type=float)
    parser.add_argument("--json", action="store_true", help="one JSON result per line")
    args = parser.parse_args(argv)
    from train.evaluate import quiet_libraries

    quiet_libraries()
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        parser.error("no input text (give it as arguments or on stdin)")
    m = load(args.workdir, args.step, args.dtype)
    task = args.task or default_task(m)
    m.require(task)
    options = {}  # classification and NER take none
    if task == "fill-mask":
        options = {"top_k": args.top_k or 5}
    elif task in ("text-generation", "translation", "summarization"):
        names = ("beams", "max_new_tokens", "temperature", "top_k", "top_p", "length_penalty")
        options = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    results = m(task, texts, **options)
    for text, result in zip(texts, results):
        if args.json:
            print(json.dumps({"input": text, "task": task, "output": result}))
        else:
            print(_format(task, text, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
