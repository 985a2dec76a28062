"""The training loop: `train_and_evaluate(config, workdir)`.

Restarting with the same workdir resumes from its latest complete checkpoint (weights, optimizer,
step and the data iterator's position), so a crashed or preempted run continues exactly where it
stopped. SIGTERM saves a checkpoint at the next step boundary and stops (`python -m train` exits
75); with several processes, a SIGTERM on any one host makes every host save the same step
(train/distributed.py's `Preemption`, through JAX's preemption sync manager).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

import models
from data import objectives
from data.pipeline import run_tokenizer
from data.sources import load_source
from data.tokenizers import load_tokenizer
from models import paths
from models.errors import UserError, one_of
from train import (
    compilation,
    context,
    distill,
    distributed,
    goodput,
    lora,
    partitioning,
    stages,
    watchdog,
)
from train.carbon import CarbonTracker
from train.checkpoint import Checkpointer, check_same_architecture, check_same_fp8
from train.decode import sample_text
from train.evals import device_batch as _device_batch
from train.evals import evaluate, harness_metrics, run_pipeline, task_metrics
from train.feed import Feed
from train.flops import train_flops_per_step
from train.goodput import Clock, Ledger, segment_record
from train.hardware import check_fp8, device_peak
from train.harness import live
from train.init_from import load_pretrained, merge_params, resolve_model_config
from train.losses import check_objective
from train.optim import make_optimizer
from train.state import abstract_state, create_train_state, full_params
from train.step import jit_steps, step_options, waits_for_each_step
from train.tasks import TASK_METRICS, LoadedModel, TaskError
from train.writers import MetricWriter, logged_records

log = logging.getLogger("train")


class TrainingError(UserError, RuntimeError):
    """A run that must stop (non-finite loss, ...); checkpoints already written are kept."""


def get_tokenizer(config, workdir: Path):
    """The run's tokenizer: the workdir's (resume), `tokenizer.path`, the one that came with
    `init_from`, or one trained on the data."""
    saved = workdir / "tokenizer"
    with watchdog.doing("tokenizer read", saved):
        if (saved / "tokenizer.json").exists():
            with paths.local_copy(saved) as local:
                return load_tokenizer(local)
    tok = run_tokenizer(config)
    if jax.process_index() == 0:
        with paths.local_dir(saved) as local, watchdog.doing("tokenizer write", saved):
            tok.save(local)
    return tok


@dataclasses.dataclass
class Run:
    """Everything a run builds before its first step."""

    config: ml_collections.ConfigDict
    workdir: Path
    mesh: object
    rules: tuple
    objective: str  # data.objective, a record of data.objectives
    tokenizer: object
    model_config: models.ModelConfig
    model: object
    ckpt: Checkpointer
    train_iter: object
    state: object
    train_step: object
    eval_step: object
    saved_config: dict
    flops_per_step: float  # at the configured shapes
    lost_until: int = 0  # the furthest step an earlier segment logged (redone steps are lost)
    clock: Clock | None = None  # this segment's time breakdown
    ledger: Ledger | None = None  # the earlier segments (train/goodput.py)
    data_state: dict | None = None  # the data iterator's state after the last consumed batch
    _inference: LoadedModel | None = None  # train/evals.py's, built on first use
    _harness: live.LiveHarness | None = None

    def step_flops(self, batch: dict) -> float:
        """Training FLOPs of a step on `batch` (shorter when data.trim_padding cut it)."""
        seq = batch["input_ids"].shape[1]
        target = batch["decoder_input_ids"].shape[1] if "decoder_input_ids" in batch else seq
        if (seq, target) == (self.config.seq_len, _target_len(self.config)):
            return self.flops_per_step
        return train_flops_per_step(self.model_config, self.config.batch_size, seq, target)


def _objective(config) -> str:
    """The run's `data.objective`, checked against the registry (`data.objectives`)."""
    one_of("data.objective", config.data.objective, objectives.names())
    return config.data.objective


def _target_len(config) -> int:
    """The configured decoder length (the input length for single-stack models)."""
    return config.data.get("target_length") or config.seq_len


def _class_names(config, model_config, source) -> dict:
    """The label / tag names of the training data (kept with the checkpoint for inference);
    refuses a head with fewer classes than the data has."""
    names = {}
    for key, values in (("label_names", source.label_names), ("tag_names", source.tag_names)):
        if not values:
            continue
        if model_config.head in ("classification", "token_classification") and (
            len(values) > model_config.num_labels
        ):
            raise TaskError(
                f"model.num_labels={model_config.num_labels} but the data has {len(values)} "
                f"classes ({', '.join(values[:10])}); set --config.model.num_labels={len(values)}"
            )
        names[key] = list(values)
    if config.get("task") and config.task not in TASK_METRICS:
        raise TaskError(
            f"task={config.task!r} has no metric; choose one of {', '.join(TASK_METRICS)} or ''"
        )
    return names


def _restore(ckpt, step, abstract, train_iter):
    # One CheckpointError line for damaged files or a tree that is not this run's state.
    state, data_state, _ = ckpt.restore(step, abstract)
    train_iter.set_state(
        distributed.local_data_state(data_state, jax.process_index(), jax.process_count())
    )
    log.info("resuming from step %d of %s", step, ckpt.directory)
    return state


def _fresh_state(config, model, model_config, tx, mesh, rules, pretrained):
    """A new train state, its parameters merged with `init_from`'s where the run has one (with
    LoRA the merged base is the state's `frozen` half)."""
    state, _ = create_train_state(model, model_config, tx, mesh, rules, jax.random.key(config.seed))
    if pretrained:
        params = merge_params(full_params(state), pretrained[1], config.init_from)
        state = lora.with_params(state, params, model_config, pretrained[1])
    return state


def _model_config(config, tokenizer, pretrained, teacher, ckpt, latest, workdir):
    """The run's model: the named architecture, init_from's or the teacher's, with the `model`
    and `lora` sections applied; a resumed run's must be the checkpoint's architecture."""
    teacher_config = teacher.config if teacher else None
    base = pretrained[0] if pretrained else distill.student_base(config.model, teacher_config)
    model_config = resolve_model_config(config.model, tokenizer, base)
    model_config = lora.configure(config.get("lora"), model_config, config.get("init_from"))
    if model_config.fp8:
        check_fp8(model_config.dtype)  # float16, a GPU without fp8 tensor cores, a TPU
    if latest is not None:
        saved = ckpt.saved_config(latest) or {}
        check_same_architecture(saved.get("resolved_model", {}), model_config.to_dict(), workdir)
        check_same_fp8(saved.get("resolved_model", {}), model_config.fp8, workdir)
    live.check(config.get("eval_harness"), model_config)  # lm-eval can score it, tasks exist
    return model_config


def _step_configs(config, model_config, mesh, rules):
    """The train and eval steps' model configs. Both run the layers as pipeline stages over
    mesh.stage (train/stages.py); with load-balanced context parallelism the train step's causal
    masks follow the reordered rows' positions. Tasks, decoding and the saved config keep
    `model_config`."""
    eval_config = stages.model_config(config, model_config, mesh, rules)
    return context.train_config(config, eval_config, mesh.shape["context"]), eval_config


def _build(config, workdir: Path, ckpt, mesh, rules, objective) -> dict:
    """The tokenizer, model, data, state and steps of `setup` (restored, pretrained or fresh)."""
    latest = ckpt.latest_step()
    pretrained = load_pretrained(config.init_from) if config.get("init_from") else None
    teacher = distill.run_teacher(config)  # None: no distillation
    # Process 0 trains and saves the tokenizer and prepares the dataset (TFDS preparation is not
    # safe to run concurrently); the others then load both.
    with distributed.process_zero_first("tokenizer and data"):
        tokenizer = get_tokenizer(config, workdir)
        if jax.process_count() > 1:
            load_source(config.data, "train", config.data.objective)
    model_config = _model_config(config, tokenizer, pretrained, teacher, ckpt, latest, workdir)
    check_objective(objective, model_config)
    model = models.build(model_config)
    tx, schedule = make_optimizer(config.optimizer, config.steps, lora.lr_ratio(config.get("lora")))
    abstract, shardings = abstract_state(model, model_config, tx, mesh, rules)
    train_iter = run_pipeline(config, "train", tokenizer, config.data.objective)
    lora.check_targets(full_params(abstract), model_config)
    train_config, eval_config = _step_configs(config, model_config, mesh, rules)
    # the teacher on the mesh (None without one); its layers may seed the student
    args = (config, teacher, train_config, objective, full_params(abstract), mesh, rules)
    seed, prepared = distill.prepare(*args)
    pretrained = pretrained or seed
    if latest is None or model_config.lora_rank:  # LoRA: the base is init_from's every time
        state = _fresh_state(config, model, model_config, tx, mesh, rules, pretrained)
    if latest is not None:  # a checkpoint holds what trained (the frozen base stays out)
        restored = _restore(ckpt, latest, abstract, train_iter)
        state = restored.replace(frozen=state.frozen if model_config.lora_rank else None)
    saved_config = {
        "run": config.to_dict(),
        "resolved_model": model_config.to_dict(),
        **_class_names(config, model_config, train_iter.source),
    }
    if jax.process_index() == 0:
        with watchdog.doing("config write", workdir / "config.json"):
            (workdir / "config.json").write_text(json.dumps(saved_config, indent=2, default=str))
    options = {**step_options(config), **(prepared.jit_options() if prepared else {})}
    train_model, eval_model = models.build(train_config), models.build(eval_config)
    train_step, eval_step = jit_steps(
        train_model,
        tx,
        schedule,
        objective,
        shardings,
        mesh,
        rules,
        eval_model=eval_model,
        **options,
    )
    train_step = prepared.bind(train_step) if prepared else train_step
    return dict(
        tokenizer=tokenizer,
        model_config=model_config,
        model=model,
        train_iter=train_iter,
        state=state,
        train_step=train_step,
        eval_step=eval_step,
        saved_config=saved_config,
    )


def setup(config: ml_collections.ConfigDict, workdir: Path) -> Run:
    """Mesh, tokenizer, model, optimizer, data and state (restored, pretrained or fresh)."""
    distributed.check_same_config({"config": config.to_dict(), "workdir": str(workdir)})
    mesh = partitioning.make_mesh(config.mesh.to_dict())
    rules = partitioning.rules_from_config(config.get("partitioning_rules"))
    partitioning.check_batch(config.batch_size, mesh, config.microbatches, rules)
    context.check_hosts(mesh)
    stages.check_hosts(mesh)
    objective = _objective(config)
    ckpt = Checkpointer(
        workdir / "checkpoints",
        keep=config.keep_checkpoints,
        best_metric=config.best_metric or None,
        async_save=config.async_checkpoints,
        timeout_s=config.get("stall_timeout_s", 0),
    )
    try:
        built = _build(config, workdir, ckpt, mesh, rules, objective)
    except BaseException:
        ckpt.close()  # no half-started background work left at exit
        raise
    flops = train_flops_per_step(
        built["model_config"], config.batch_size, config.seq_len, _target_len(config)
    )
    return Run(
        config=config,
        workdir=workdir,
        mesh=mesh,
        rules=rules,
        objective=objective,
        ckpt=ckpt,
        flops_per_step=flops,
        **built,
    )


class _Progress:
    """Logging state of the step loop: metrics, tokens/s and MFU over each logging window."""

    def __init__(self, run: Run, step: int):
        self.run, self.step, self.first_step = run, step, step
        self.metrics, self.eval_metrics = {}, {}
        self.tokens_seen = 0
        self._window = (time.time(), 0, 0.0)  # start time, tokens, FLOPs
        self.bar = tqdm(
            total=run.config.steps,
            initial=step,
            disable=jax.process_index() != 0,
            dynamic_ncols=True,
            desc="train",
        )
        # measured before the first step (on a CPU a matmul is timed): part of `restore`
        self.peak_flops = device_peak(run.model_config.dtype)[0]

    def count(self, tokens: int, flops: float) -> None:
        self.step += 1
        self.tokens_seen += tokens
        start, window_tokens, window_flops = self._window
        self._window = (start, window_tokens + tokens, window_flops + flops)
        self.bar.update(1)

    def rates(self) -> dict:
        start, tokens, flops = self._window
        elapsed = max(time.time() - start, 1e-9)
        self._window = (time.time(), 0, 0.0)
        rates = {"tokens_per_s": tokens / elapsed}
        rates["mfu"] = flops / elapsed / self.peak_flops
        return rates


def _check_finite(metrics: dict, step: int, last_good: int | None) -> None:
    if not all(math.isfinite(metrics[k]) for k in ("loss", "grad_norm")):
        raise TrainingError(
            f"non-finite loss ({metrics['loss']}) or gradient norm at step {step}; stopped "
            f"without saving. Last good checkpoint: "
            f"{'none' if last_good is None else f'step {last_good}'} (kept)"
        )


def _evaluate_and_log(run: Run, progress, writer: MetricWriter, params, step, harness) -> None:
    """The periodic eval: loss metrics over the validation batches, the task's metrics, then
    (`harness`) the eval_harness section's lm-eval tasks (train/evals.py)."""
    progress.eval_metrics = evaluate(
        run.eval_step,
        params,
        run.config,
        run.tokenizer,
        run.mesh,
        run.config.data.objective,
        run.rules,
    )
    progress.eval_metrics.update(task_metrics(run, params))
    if harness:
        progress.eval_metrics.update(harness_metrics(run, params))
    if progress.eval_metrics:
        writer.write(step, progress.eval_metrics)
        if jax.process_index() == 0:  # tqdm.write prints even when disabled
            progress.bar.write(
                f"step {step}: "
                + ", ".join(f"{k}={v:.4g}" for k, v in progress.eval_metrics.items())
            )


def _save(run: Run, progress: _Progress, state, step: int) -> None:
    """Checkpoints `state` with the data iterator's state, the run config, the run ledger
    (train/goodput.py) and the best metric."""
    config = run.config
    best = {k: v for k, v in progress.eval_metrics.items() if k == config.best_metric}
    current = segment_record(run.clock, progress.first_step, step, progress.tokens_seen)
    run.ckpt.save(
        step,
        state,  # with LoRA, the adapters and head only (Checkpointer leaves `frozen` out)
        data_state=distributed.global_data_state(run.data_state),
        config={**run.saved_config, "ledger": run.ledger.saved(current)},
        metrics=best or None,
    )


def _train_steps(run: Run, progress: _Progress, writer, preemption, clock: Clock) -> None:
    """The step loop: train, log, evaluate, checkpoint, until `steps` or SIGTERM."""
    config, state = run.config, run.state
    last_good = run.ckpt.latest_step()
    rng = jax.random.key(config.seed + 1)
    place = functools.partial(_device_batch, mesh=run.mesh, rules=run.rules)
    # load-balanced context parallelism: the step sees reordered causal rows
    place = context.reordering(place, config, run.model_config, run.mesh.shape["context"])
    feed = Feed(run.train_iter, place, config.data.get("prefetch", 2))
    clock.mark("restore", clock.start)
    try:
        while progress.step < config.steps:
            state, step_metrics, key = _step(run, feed, clock, progress, state, rng)
            step, is_last = progress.step, progress.step == config.steps
            due_log = step % config.log_every_steps == 0 or is_last
            stop = preemption.due(step)  # read once: SIGTERM may land anywhere in this body
            due_ckpt = step % config.checkpoint_every_steps == 0 or is_last or stop
            due_eval = config.eval_every_steps and (step % config.eval_every_steps == 0 or is_last)
            due_harness = live.due(config.get("eval_harness"), step, is_last)
            if due_log or due_ckpt:
                with clock.timing(key):  # blocked on the step's results
                    metrics = jax.device_get(step_metrics)
                progress.metrics = {k: float(v) for k, v in metrics.items()}
                _check_finite(progress.metrics, step, last_good)
            if due_log:
                _log(progress, writer, clock, step)
            if due_eval or due_harness:
                with clock.timing("eval"), watchdog.doing("eval", f"step {step}"):
                    params = full_params(state)
                    _evaluate_and_log(run, progress, writer, params, step, due_harness)
            if due_ckpt:
                with clock.timing("checkpoint"):
                    writer.flush()  # first: a bucket's metrics.jsonl reaches every checkpoint
                    _save(run, progress, state, step)
                last_good = step
            if stop:
                log.warning("preempted (SIGTERM): saved step %d, exiting", step)
                break
    finally:
        feed.close()
    run.state = state


def _step(run: Run, feed: Feed, clock: Clock, progress: _Progress, state, rng):
    """One train step: wait for the next batch, launch the step. Returns (state, metrics, the
    time key the step counts under: compile for the segment's first, lost for a redone one)."""
    with clock.timing("data_wait"), watchdog.doing("data read", "the train split"):
        batch, device_batch, run.data_state = next(feed)
    key = "step"
    if progress.step == progress.first_step:
        key = "compile"
    elif progress.step < run.lost_until:
        key = "lost"
    with clock.timing(key), watchdog.doing(f"train step {progress.step + 1}"):
        state, metrics = run.train_step(state, device_batch, rng)
        # Metrics are read only at log steps, so on a GPU or TPU the next step is launched
        # while this one runs; on a CPU each step is waited for (see waits_for_each_step).
        if key == "compile" or waits_for_each_step():
            jax.block_until_ready(metrics)
    tokens = int(np.sum(batch.get("weights", batch.get("attention_mask", 0))))
    progress.count(tokens * jax.process_count(), run.step_flops(batch))
    return state, metrics, key


def _log(progress: _Progress, writer, clock: Clock, step: int) -> None:
    """A log window: the step's metrics, rates and time shares to the writers and the bar."""
    progress.metrics.update(progress.rates())
    progress.metrics.update(clock.window())
    progress.metrics["segment"] = progress.run.ledger.index
    progress.metrics["segment_wall_s"] = clock.breakdown()[1]
    writer.write(step, progress.metrics)
    progress.bar.set_postfix(
        loss=f"{progress.metrics['loss']:.3f}",
        tok_s=f"{progress.metrics['tokens_per_s']:.0f}",
        data=f"{progress.metrics['time/data_wait']:.0%}",
    )


def _summary(run: Run, progress: _Progress, clock: Clock, footprint: dict, preempted: bool):
    """summary.json: the segment's steps, metrics, footprint, time breakdown and sample, and
    the whole run's totals from the ledger."""
    config = run.config
    summary = {
        "steps": progress.step,
        "final": progress.metrics,
        "eval": progress.eval_metrics,
        "tokens": progress.tokens_seen,
        "model": run.model_config.name,
        "workdir": str(run.workdir),  # absolute already (models.paths.resolve)
        "preempted": preempted,
        "energy_kwh": footprint.get("energy_kwh"),
        "emissions_kg_co2eq": footprint.get("emissions_kg_co2eq"),
        "carbon": footprint,
    }
    if config.sample_tokens and objectives.get(run.objective).head == "lm" and not preempted:
        with clock.timing("eval"):
            params = full_params(run.state)
            summary["sample"] = sample_text(run.model, params, run.tokenizer, config)
    summary.update(goodput.summary(clock))
    current = segment_record(
        clock, progress.first_step, progress.step, progress.tokens_seen, footprint
    )
    summary["run"] = run.ledger.totals(current)
    return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Trains per `config`, writing checkpoints, metrics and a summary under `workdir`.

    Returns:
      The summary dict (also written to workdir/summary.json).
    """
    workdir = paths.resolve(workdir)
    # bad input (a damaged init_from, say) leaves no new workdir behind, unless it checkpointed
    keep = lambda path: (path / "checkpoints").exists() and any((path / "checkpoints").iterdir())
    new = workdir if jax.process_index() == 0 else None
    with (
        watchdog.Watchdog(config.get("stall_timeout_s", watchdog.DEFAULT_TIMEOUT_S)),
        paths.removed_on_failure(new, keep=keep, errors=(UserError,)),
    ):
        if jax.process_index() == 0:
            with watchdog.doing("workdir check", workdir):  # one line for a missing bucket
                paths.check_writable(workdir)
        clock = Clock()
        cache = compilation.enable(config.get("compilation_cache"), workdir)
        try:
            return _train_and_evaluate(config, workdir, clock, cache)
        finally:
            compilation.disable(cache)


def _train_and_evaluate(config, workdir, clock: Clock, cache) -> dict:
    run = setup(config, workdir)
    logged = logged_records(workdir)
    run.lost_until = max((r.get("step", 0) for r in logged), default=0)
    run.data_state, run.clock = run.train_iter.get_state(), clock
    saved = run.ckpt.saved_config() if run.ckpt.latest_step() is not None else None
    run.ledger = Ledger.resume((saved or {}).get("ledger"), logged)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(full_params(run.state)))
    log.info(
        "model %s: %s parameters; mesh %s",
        run.model_config.name,
        f"{num_params:,}",
        dict(run.mesh.shape),
    )
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    carbon = CarbonTracker(config.get("carbon"))
    carbon.start()
    with (
        distributed.Preemption() as preemption,
        distributed.PeerWatch(),
        partitioning.activate(run.mesh, run.rules),
    ):
        progress = _Progress(run, int(run.state.step))
        try:
            _train_steps(run, progress, writer, preemption, clock)
        finally:  # on errors too: end the progress line, let in-flight saves finish
            progress.bar.close()
            with clock.timing("checkpoint"):  # async saves still being written
                run.ckpt.close()
            run.train_iter.close()  # the data workers, if any
    footprint = carbon.stop()
    if footprint.get("energy_kwh") is not None:
        writer.write(
            progress.step,
            {
                "carbon/energy_kwh": footprint["energy_kwh"],
                "carbon/emissions_kg_co2eq": footprint["emissions_kg_co2eq"],
                "segment": run.ledger.index,  # Ledger.resume reads it back after a restart
            },
        )
    summary = _summary(run, progress, clock, footprint, preemption.requested)
    summary["params"] = num_params
    if cache is not None:
        summary["compilation_cache"] = cache.summary()
        log.info(
            "compilation cache %(dir)s: %(loaded)d of %(programs)d programs loaded", cache.summary()
        )
    if jax.process_index() == 0:
        with watchdog.doing("summary write", workdir / "summary.json"):
            (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    writer.close()
    return summary
