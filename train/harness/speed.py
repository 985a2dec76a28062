"""`python -m train.harness.speed --model DIR --hf HF_DIR`: requests per second, ours and hf's.

    python -m models convert --from runs/gpt --to-hf runs/gpt-hf
    python -m train.harness.speed --model runs/gpt --hf runs/gpt-hf --tasks triptych_choice \\
        --copies 8 --json speed.json

Builds one task's requests once (lm-eval's own `build_all_requests`, each request repeated
`--copies` times so that the timing is not a handful of batches), then answers them with the
"triptych" model and with lm-eval's `hf` backend on the same exported weights, in this process
and on this machine's CPU, one after the other. Each is timed twice: ours' first pass includes
compiling its programs (one per length bucket), torch's warms its kernels up; the second passes
are the steady state that `speedup` compares. The report says
where our time goes: tokenizing (lm-eval's TemplateLM encoding), building the padded host
batches, the compiled programs with their transfers back, and the rest (sorting, bookkeeping).
"""

from __future__ import annotations

import collections
import json
import sys
import time

from models.errors import ArgumentParser, one_line_errors
from train.harness.lm import DEFAULT_BATCH_SIZE


def task_requests(tasks: list[str], include_path=None, limit=None, copies: int = 1,
                  num_fewshot: int | None = None) -> dict:  # fmt: skip
    """{request type: [lm-eval Instance]} of `tasks`, as lm-eval's evaluator builds them."""
    from train.harness.tasks import task_manager

    by_type = collections.defaultdict(list)
    for task in task_manager(include_path).load(list(tasks))["tasks"].values():
        if num_fewshot is not None:
            task.set_config(key="num_fewshot", value=num_fewshot)
            task.set_fewshot_seed(seed=1234)  # lm-eval's default fewshot seed
        task.build_all_requests(limit=limit, rank=0, world_size=1)
        for instance in task.instances:
            by_type[instance.request_type].extend([instance] * copies)
    return dict(by_type)


def _timed(obj, name: str, clock: collections.Counter) -> None:
    """Wraps `obj.name` so that its wall time adds up in `clock[name]`."""
    inner = getattr(obj, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            clock[name] += time.perf_counter() - start

    setattr(obj, name, wrapper)


def answer(lm, requests: dict) -> float:
    """Seconds `lm` takes to answer every request (each type in one call, as lm-eval does)."""
    start = time.perf_counter()
    for kind, instances in requests.items():
        getattr(lm, kind)(instances, disable_tqdm=True)
    return time.perf_counter() - start


def ours_breakdown(lm, requests: dict) -> dict:
    """A steady pass of ours with its time split by stage (seconds)."""
    clock = collections.Counter()
    scorer = lm.scorer
    for obj, name in ((lm, "_loglikelihood_tokens"), (lm, "_generate"), (scorer, "score")):
        _timed(obj, name, clock)
    _timed(scorer, "seq2seq_batch" if scorer.seq2seq else "causal_batch", clock)
    total = answer(lm, requests)
    batches = clock["seq2seq_batch"] + clock["causal_batch"]
    scoring = clock["_loglikelihood_tokens"]
    return {
        "total_s": total,
        "tokenize_s": total - scoring - clock["_generate"],
        "host_batches_s": batches,
        "programs_and_transfer_s": clock["score"] - batches,
        "generate_s": clock["_generate"],
        "other_s": scoring - clock["score"],
    }


def run(args) -> dict:
    from lm_eval.models.huggingface import HFLM

    from train.harness.lm import TriptychLM

    requests = task_requests(
        args.tasks.split(","), args.include_path, args.limit, args.copies, args.num_fewshot
    )
    count = sum(len(v) for v in requests.values())
    ours = TriptychLM(args.model, batch_size=args.batch_size)
    first = answer(ours, requests)
    breakdown = ours_breakdown(ours, requests)
    theirs = HFLM(pretrained=args.hf, device="cpu", batch_size=args.batch_size, dtype="float32")
    hf_first = answer(theirs, requests)  # torch's first calls warm its kernels up
    hf_s = answer(theirs, requests)
    report = {
        "tasks": args.tasks,
        "num_fewshot": args.num_fewshot,
        "requests": count,
        "batch_size": args.batch_size,
        "ours_requests_per_s": count / breakdown["total_s"],
        "ours_first_pass_requests_per_s": count / first,
        "hf_requests_per_s": count / hf_s,
        "hf_first_pass_requests_per_s": count / hf_first,
        "speedup": hf_s / breakdown["total_s"],
        "compiled_programs": ours.scorer.compiled_programs(),
        "ours_breakdown_s": breakdown,
    }
    return report


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m train.harness.speed", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="our model reference")
    p.add_argument("--hf", required=True, help="the same model exported with --to-hf")
    p.add_argument("--tasks", default="triptych_choice", help="comma-separated task names")
    p.add_argument("--include_path", help="a folder of task YAML files")
    p.add_argument("--limit", type=float, help="documents per task")
    p.add_argument("--num_fewshot", type=int, help="examples in each few-shot context")
    p.add_argument("--copies", type=int, default=1, help="times each request is asked")
    p.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--json", help="also write the report here")
    return p


def argparse_namespace(**values):
    """The command's arguments with their defaults, `values` set (for use from Python)."""
    args = parser().parse_args(["--model", values["model"], "--hf", values["hf"]])
    for key, value in values.items():
        setattr(args, key, value)
    return args


@one_line_errors
def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from train.evaluate import quiet_libraries

    quiet_libraries()
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
