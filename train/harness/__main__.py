"""`python -m train.harness --model REF --tasks T1,T2`: lm-evaluation-harness on a Triptych model.

    python -m train.harness --model runs/gpt --tasks triptych_choice,triptych_perplexity
    python -m train.harness --model runs/t5 --tasks triptych_choice --num_fewshot 2 \\
        --output_path evals/ --log_samples
    python -m train.harness --model runs/gpt --tasks my_task --include_path my_tasks/

REF is any model reference (a training workdir, a converted or Hugging Face directory, a PEFT
adapter, a Hub id); the flags mean what `lm_eval run`'s do, the model runs as lm-eval's
registered "triptych" model (train/harness/lm.py), and the files under --output_path are
lm-eval's own: `<model>/results_<date>.json` and, with --log_samples,
`<model>/samples_<task>_<date>.jsonl`. The results table prints at the end. Tasks are lm-eval's
catalogue (which downloads its data), the example tasks in train/harness/tasks/ and the YAML
under --include_path. With several processes, each computes every request on the shared mesh
and only process 0 writes files and prints the table.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import sys

from models.errors import ArgumentParser, one_line_errors
from train import reference

try:
    from train.harness.lm import DEFAULT_BATCH_SIZE, HarnessError, check_model
except ModuleNotFoundError as missing:  # lm-eval is the `eval` extra
    if not (missing.name or "").startswith("lm_eval") or __name__ != "__main__":
        raise
    print("error: python -m train.harness needs lm-eval: pip install -e '.[eval]'", file=sys.stderr)
    sys.exit(2)

DEFAULT_SEEDS = "0,1234,1234,1234"  # lm_eval run's: python, numpy, torch (our sampling), fewshot


def _seeds(text: str) -> list[int | None]:
    from lm_eval._cli.utils import _int_or_none_list_arg_type

    try:
        return _int_or_none_list_arg_type(3, 4, DEFAULT_SEEDS, text)
    except ValueError as e:
        raise HarnessError(
            f"--seed {text}: {e} (one integer, or four: python,numpy,torch,fewshot)"
        ) from None


def _check_model(name: str, step) -> None:
    """The reference resolves and names a decoder or an encoder-decoder (no weights read)."""
    ref = reference.resolve(name, "--model", step=step)
    check_model(f"--model {ref.where}", ref.model_config())


def resolve_tasks(names: str, include_path: str | None, flags=("--tasks", "--include_path")):
    """(lm-eval's TaskManager, the task names and YAML configs to run), as `lm_eval run`
    matches them; HarnessError for an include path or a task that does not exist (`flags`:
    how the error names the two settings)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    from train.harness.tasks import task_manager

    if include_path and not os.path.isdir(include_path):
        raise HarnessError(f"{flags[1]} {include_path}: no such directory")
    manager = task_manager(include_path)
    found, missing = [], []
    for name in [n.strip() for n in names.split(",") if n.strip()]:
        if name.endswith(".yaml"):
            matches = [load_yaml(f, resolve_func=True) for f in glob.glob(name)]
        else:
            matches = manager.match_tasks([name])
        found += [m for m in matches if m not in found]
        missing += [] if matches else [name]
    if missing or not found:
        raise HarnessError(
            f"{flags[0]}: unknown task {', '.join(missing) or names!r}; list them with "
            f"`lm-eval ls tasks`, or give the folder of its YAML with {flags[1]}"
        )
    return manager, found


def run(args) -> dict | None:
    """Evaluates as `lm_eval run` does; returns lm-eval's results (None where it gives none)."""
    import jax
    import lm_eval
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.utils import handle_non_serializable, make_table

    _check_model(args.model, args.step)
    manager, tasks = resolve_tasks(args.tasks, args.include_path)
    seeds = _seeds(args.seed)
    model_args = {"pretrained": args.model, "seed": seeds[2] if seeds[2] is not None else 1234}
    model_args.update({k: getattr(args, k) for k in ("step", "max_length") if getattr(args, k)})
    writer = jax.process_index() == 0
    tracker = EvaluationTracker(output_path=args.output_path if writer else None)
    results = lm_eval.simple_evaluate(
        model="triptych",
        model_args=model_args,
        tasks=tasks,
        num_fewshot=args.num_fewshot,
        batch_size=args.batch_size,
        limit=args.limit,
        log_samples=args.log_samples,
        evaluation_tracker=tracker,
        task_manager=manager,
        random_seed=seeds[0],
        numpy_random_seed=seeds[1],
        torch_random_seed=seeds[2],
        fewshot_random_seed=seeds[3],
    )
    if results is None or not writer:
        return results
    samples = results.pop("samples", None)
    if args.output_path:
        tracker.save_results_aggregated(results=results, samples=samples)
        for task in results["configs"] if args.log_samples else ():
            tracker.save_results_samples(task_name=task, samples=samples[task])
    if args.show_config:
        print(json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False))
    print(
        f"triptych ({model_args}), limit: {args.limit}, num_fewshot: {args.num_fewshot}, "
        f"batch_size: {args.batch_size}"
    )
    print(make_table(results))
    if "groups" in results:
        print(make_table(results, "groups"))
    return results


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m train.harness", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="workdir, converted or HF directory, Hub id")
    p.add_argument("--tasks", required=True, help="task names or YAML files, comma-separated")
    p.add_argument("--num_fewshot", type=int, help="examples in the few-shot context")
    p.add_argument("--limit", type=float, help="examples per task (a count, or a fraction < 1)")
    p.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE, help="rows per program")
    p.add_argument("--include_path", help="a folder of task YAML files")
    p.add_argument("--output_path", help="where lm-eval's results (and samples) files go")
    p.add_argument("--log_samples", action="store_true", help="also write every request")
    p.add_argument("--seed", default=DEFAULT_SEEDS, help="N, or python,numpy,torch,fewshot")
    p.add_argument("--step", help="a workdir's checkpoint: latest (default), best or N")
    p.add_argument("--max_length", type=int, help="longest input (default: the model's)")
    p.add_argument("--show_config", action="store_true", help="print the full results JSON")
    return p


@one_line_errors
def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.log_samples and not args.output_path:
        raise HarnessError("--log_samples needs --output_path DIR (where the samples go)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from train import distributed
    from train.evaluate import quiet_libraries

    quiet_libraries()
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    distributed.initialize(distributed.detect())  # several processes: before any device use
    with distributed.peer_failures_end_the_process():
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
