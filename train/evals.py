"""A run's periodic evaluations, beside its training loss (train/loop.py calls them):

    evaluate(eval_step, params, ...)   the objective's metrics over the validation batches
    task_metrics(run, params)          `config.task`'s metric (accuracy, F1, BLEU, ROUGE)
    harness_metrics(run, params)       the `eval_harness` section's lm-eval tasks

Each gives `{"eval_...": value}`; the loop writes them to metrics.jsonl and TensorBoard, and the
model card reads them from there. The task model and the harness are built on first use and
kept for the run, so their programs compile once.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from data.pipeline import make_pipeline
from train import distributed, partitioning, watchdog
from train.harness import live
from train.step import summarize
from train.tasks import TASK_METRICS, LoadedModel
from train.tasks import task_metrics as score_task


def device_batch(batch: dict, mesh, rules=partitioning.DEFAULT_RULES) -> dict:
    """Each process's rows of a batch, placed as the global batch on the mesh."""
    return {
        k: jax.make_array_from_process_local_data(
            partitioning.batch_sharding(mesh, np.ndim(v), rules), np.asarray(v)
        )
        for k, v in batch.items()
    }


def run_pipeline(config, split: str, tokenizer, objective: str):
    """The run's input pipeline over `split`: this process's rows of each global batch."""
    return make_pipeline(
        config.data,
        split=split,
        tokenizer=tokenizer,
        global_batch_size=config.batch_size,
        seq_len=config.seq_len,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        objective=objective,
        agree=distributed.width_agreement(config.data),
    )


def evaluate(
    eval_step, params, config, tokenizer, mesh, objective, rules=partitioning.DEFAULT_RULES
) -> dict:
    """Mean metrics over up to `config.eval_batches` batches of the validation split."""
    it = run_pipeline(config, "validation", tokenizer, objective)
    total = None
    for i in range(config.eval_batches):
        with watchdog.doing(f"eval batch {i + 1}"):
            # hosts' packed streams end at different batches; keep them in step (multi-host)
            batch = distributed.next_in_step(it, config.batch_size // jax.process_count())
            if batch is None:
                break
            sums = eval_step(params, device_batch(batch, mesh, rules))
            total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    if total is None:
        return {}
    return {f"eval_{k}": float(v) for k, v in summarize(total).items() if k != "tokens"}


def task_metrics(run, params) -> dict:
    """`config.task`'s metric on the validation split ({} without a task); with several
    hosts each runs its share and all score the gathered predictions (train/tasks)."""
    config = run.config
    if config.get("task", "") not in TASK_METRICS:
        return {}
    if run._inference is None:
        several = jax.process_count() > 1
        run._inference = LoadedModel(
            run.model_config,
            run.model,
            params,
            run.tokenizer,
            run_config=config,
            label_names=run.saved_config.get("label_names"),
            tag_names=run.saved_config.get("tag_names"),
            source=str(run.workdir),
            place=functools.partial(device_batch, mesh=run.mesh, rules=run.rules)
            if several
            else None,
        )
    run._inference.params = params
    scores = score_task(
        run._inference,
        config.task,
        data=config.data,
        split="validation",
        batch_size=config.batch_size,
        max_examples=config.get("eval_task_examples", 0),
    )
    return {f"eval_{k}": v for k, v in scores.items()}


def harness_metrics(run, params) -> dict:
    """The `eval_harness` tasks on the live parameters: `{"eval_harness/<task>/<metric>": v}`
    (train/harness/live.py). Every process scores the same requests."""
    if run._harness is None:
        run._harness = live.LiveHarness(
            run.config.eval_harness,
            run.model_config,
            run.tokenizer,
            mesh=run.mesh,
            rules=run.rules,
            params=params,
        )
    return run._harness(params)
