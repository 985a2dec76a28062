"""lm-eval tasks on a training run's live parameters, for an `eval_harness` config section.

    harness = LiveHarness(section, model_config, tokenizer, mesh=mesh, rules=rules, params=params)
    metrics = harness(state.params)   # {"eval_harness/triptych_choice/acc": 0.41, ...}

The section (`section()` gives its defaults) names the `tasks`, how often they run
(`every_steps`, 0 = never), `num_fewshot`, `limit` (documents per task, 0 = all), `batch_size`
and an `include_path` of task YAML. The parameters stay where training put them: the scoring
programs take them resharded by the same logical rules (train/harness/batching.py), and the
programs are compiled once for the run, not at every evaluation.

In the training loop (train/loop.py) it belongs beside `Run.task_metrics`: a `LiveHarness` made
on the first due step from the run's model config, tokenizer, mesh, rules and parameters, and
`_evaluate_and_log` adding `harness(params)` to the eval metrics when `due(config.eval_harness,
step)`, so that they reach metrics.jsonl, TensorBoard and the model card's eval results.
"""

from __future__ import annotations

import math

import ml_collections

from models.errors import UserError
from train.harness.batching import DEFAULT_BATCH_SIZE
from train.harness.tasks import task_manager

PREFIX = "eval_harness"  # eval_*: the model card reads these from metrics.jsonl (train/card.py)


def section() -> ml_collections.ConfigDict:
    """The `eval_harness` section's keys and defaults (off: no tasks)."""
    return ml_collections.ConfigDict(
        {
            "tasks": (),
            "every_steps": 0,
            "num_fewshot": 0,
            "limit": 0,
            "batch_size": DEFAULT_BATCH_SIZE,
            "include_path": "",
        }
    )


def due(cfg, step: int, is_last: bool = False) -> bool:
    """Whether the section's tasks run after `step` (every `every_steps`, and after the last
    step when they run at all)."""
    if not task_names(cfg) or cfg.get("every_steps", 0) <= 0:
        return False
    return is_last or step % cfg.every_steps == 0


def task_names(cfg) -> list[str]:
    """The section's tasks: a list, or one comma-separated string from the command line."""
    tasks = cfg.get("tasks") if cfg else None
    if isinstance(tasks, str):
        tasks = tasks.split(",")
    return [str(t).strip() for t in tasks or () if str(t).strip()]


def check(cfg, model_config) -> None:
    """Before the run's first step, one UserError line for what would fail at its first
    harness evaluation: lm-eval not installed, a model it cannot score (an encoder, a head
    other than 'lm'), a task or include_path that does not exist."""
    if not task_names(cfg):
        return
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserError(
            "eval_harness.tasks needs lm-eval: pip install -e '.[eval]' (or set "
            "eval_harness.tasks=() to run without it)"
        ) from None
    from train.harness.__main__ import resolve_tasks
    from train.harness.lm import check_model

    check_model("the run's model", model_config)
    flags = ("eval_harness.tasks", "eval_harness.include_path")
    resolve_tasks(",".join(task_names(cfg)), cfg.get("include_path") or None, flags)


def flat_metrics(results: dict) -> dict[str, float]:
    """lm-eval's results -> {"eval_harness/<task>/<metric>": value}, the filter dropped where it is
    lm-eval's default "none" (`acc,none` -> `acc`), standard errors and counts left out."""
    out = {}
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            name, metric, kept = key.partition(",")  # metrics are "name,filter"
            if not metric or "stderr" in name or not isinstance(value, int | float):
                continue
            label = name if kept == "none" else f"{name}_{kept}"
            if math.isfinite(value):
                out[f"{PREFIX}/{task}/{label}"] = float(value)
    return out


class LiveHarness:
    """The section's tasks, scored on the parameters given at each call.

    Args:
      cfg: the `eval_harness` section.
      model_config: the run's model (a decoder or an encoder-decoder with its LM head).
      tokenizer: the run's tokenizer.
      mesh, rules: the run's mesh and logical rules.
    """

    def __init__(self, cfg, model_config, tokenizer, *, mesh, rules, params):
        from train.harness.lm import TriptychLM  # lm-eval: the `eval` extra

        self.cfg = cfg
        self.lm = TriptychLM(
            model=(model_config, params, tokenizer),
            batch_size=cfg.batch_size,
            dtype=model_config.dtype,
            mesh=mesh,
            rules=rules,
        )
        self.manager = task_manager(cfg.include_path or None)

    def __call__(self, params) -> dict[str, float]:
        """The tasks' metrics on `params` (the run's live, sharded parameters)."""
        import lm_eval

        from train.harness.batching import place_params

        scorer = self.lm.scorer
        scorer.params = place_params(scorer.config, params, scorer.mesh, scorer.rules)
        results = lm_eval.simple_evaluate(
            model=self.lm,
            tasks=task_names(self.cfg),
            num_fewshot=self.cfg.num_fewshot or None,
            limit=self.cfg.limit or None,
            task_manager=self.manager,
        )
        return flat_metrics(results) if results else {}
