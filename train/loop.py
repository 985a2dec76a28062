"""The training loop: `train_and_evaluate(config, workdir)`.

Restarting with the same workdir resumes from its latest complete checkpoint (weights, optimizer,
step and the data iterator's position), so a crashed or preempted run continues exactly where it
stopped. SIGTERM saves a checkpoint at the next step boundary and exits cleanly.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

import models
from data.pipeline import iter_texts, make_pipeline
from data.sources import load_source
from data.tokenizers import load_tokenizer, train_tokenizer
from launch import distributed
from train import partitioning
from train.checkpoint import Checkpointer, CheckpointError, check_same_architecture
from train.objectives import check_objective
from train.optim import make_optimizer
from train.state import abstract_state, create_train_state
from train.step import make_eval_step, make_train_step, summarize
from train.writers import MetricWriter

log = logging.getLogger("train")

# data.objective -> the loss objective of train/objectives.py
LOSS_OBJECTIVE = {
    "clm": "causal_lm",
    "mlm": "masked_lm",
    "span": "seq2seq",
    "denoise": "seq2seq",
    "seq2seq": "seq2seq",
    "classify": "classification",
    "tag": "token_classification",
}


class TrainingError(RuntimeError):
    """A run that must stop (non-finite loss, ...); checkpoints already written are kept."""


def get_tokenizer(config, workdir: Path):
    """The run's tokenizer: the workdir's (resume), a given path, or one trained on the data."""
    saved = workdir / "tokenizer"
    if (saved / "tokenizer.json").exists():
        return load_tokenizer(str(saved))
    family = config.tokenizer.family or {"encoder": "bert", "decoder": "gpt"}.get(
        models.get_config(config.model.name).family, "t5"
    )
    if config.tokenizer.path:
        tok = load_tokenizer(config.tokenizer.path)
    else:
        log.info(
            "training a %s tokenizer (vocab %d) on the training split",
            config.tokenizer.kind,
            config.tokenizer.vocab_size,
        )
        texts = iter_texts(config.data, "train", limit=config.tokenizer.train_examples)
        tok = train_tokenizer(
            texts,
            kind=config.tokenizer.kind,
            vocab_size=config.tokenizer.vocab_size,
            family=family,
            lowercase=config.tokenizer.lowercase,
        )
    if jax.process_index() == 0:
        tok.save(str(saved))
    return tok


def resolve_model_config(section, tokenizer) -> models.ModelConfig:
    fields = {k: v for k, v in section.items() if k != "name" and v is not None}
    if "vocab_size" not in fields:
        fields["vocab_size"] = int(math.ceil(tokenizer.vocab_size / 64) * 64)
    return models.get_config(section.name, **fields)


def _device_batch(batch: dict, mesh) -> dict:
    return {
        k: jax.make_array_from_process_local_data(
            partitioning.batch_sharding(mesh, np.ndim(v)), np.asarray(v)
        )
        for k, v in batch.items()
    }


class _Preemption:
    """Turns SIGTERM into a flag checked at step boundaries."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def evaluate(eval_step, params, config, tokenizer, mesh, objective) -> dict:
    """Mean metrics over up to `config.eval_batches` batches of the validation split."""
    it = make_pipeline(
        config.data,
        split="validation",
        tokenizer=tokenizer,
        global_batch_size=config.batch_size,
        seq_len=config.seq_len,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        objective=objective,
    )
    total = None
    for _ in range(config.eval_batches):
        # hosts' packed streams end at different batches; keep them in step (multi-host)
        batch = distributed.next_in_step(it, config.batch_size // jax.process_count())
        if batch is None:
            break
        sums = eval_step(params, _device_batch(batch, mesh))
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    if total is None:
        return {}
    return {f"eval_{k}": float(v) for k, v in summarize(total).items() if k != "tokens"}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Trains per `config`, writing checkpoints, metrics and a summary under `workdir`.

    Returns:
      The summary dict (also written to workdir/summary.json).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    start_time = time.time()
    distributed.check_same_config({"config": config.to_dict(), "workdir": str(workdir)})
    mesh = partitioning.make_mesh(config.mesh.to_dict())
    rules = partitioning.rules_from_config(config.get("partitioning_rules"))
    partitioning.check_batch(config.batch_size, mesh, config.microbatches)
    data_objective = config.data.objective
    objective = LOSS_OBJECTIVE.get(data_objective)
    if objective is None:
        raise ValueError(
            f"data.objective={data_objective!r} is not supported; allowed values: "
            + ", ".join(LOSS_OBJECTIVE)
        )

    ckpt = Checkpointer(
        workdir / "checkpoints",
        keep=config.keep_checkpoints,
        best_metric=config.best_metric or None,
        async_save=config.async_checkpoints,
    )
    latest = ckpt.latest_step()
    # Process 0 trains and saves the tokenizer and prepares the dataset (TFDS preparation is not
    # safe to run concurrently); the others then load both.
    with distributed.process_zero_first("tokenizer and data"):
        tokenizer = get_tokenizer(config, workdir)
        if jax.process_count() > 1:
            load_source(config.data, "train", data_objective)
    model_config = resolve_model_config(config.model, tokenizer)
    if latest is not None:
        saved = ckpt.saved_config(latest) or {}
        check_same_architecture(saved.get("resolved_model", {}), model_config.to_dict(), workdir)
    check_objective(objective, model_config)
    model = models.build(model_config)
    tx, schedule = make_optimizer(config.optimizer, config.steps)
    abstract, shardings = abstract_state(model, model_config, tx, mesh, rules)

    train_iter = make_pipeline(
        config.data,
        split="train",
        tokenizer=tokenizer,
        global_batch_size=config.batch_size,
        seq_len=config.seq_len,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        objective=data_objective,
    )
    if latest is not None:
        try:
            state, data_state, _ = ckpt.restore(latest, abstract)
        except ValueError as e:  # Orbax: the saved tree does not fit this run's state
            raise CheckpointError(
                f"checkpoint step {latest} in {ckpt.directory} does not fit this run's state "
                f"(optimizer or model settings changed?): {str(e).splitlines()[0]}; use a new "
                "--workdir or the settings it was trained with"
            ) from e
        train_iter.set_state(
            distributed.local_data_state(data_state, jax.process_index(), jax.process_count())
        )
        log.info("resuming from step %d of %s", latest, ckpt.directory)
    else:
        state, _ = create_train_state(
            model, model_config, tx, mesh, rules, jax.random.key(config.seed)
        )
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    log.info(
        "model %s: %s parameters; mesh %s", model_config.name, f"{num_params:,}", dict(mesh.shape)
    )

    saved_config = {"run": config.to_dict(), "resolved_model": model_config.to_dict()}
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(json.dumps(saved_config, indent=2, default=str))

    with partitioning.activate(mesh, rules):
        train_step = jax.jit(
            make_train_step(
                model,
                tx,
                schedule,
                objective,
                microbatches=config.microbatches,
                label_smoothing=config.label_smoothing,
                z_loss=config.z_loss,
                dropout=config.dropout,
            ),
            in_shardings=(shardings, None, None),
            out_shardings=(shardings, None),
            donate_argnums=(0,),
        )
        eval_step = jax.jit(make_eval_step(model, objective))

    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    rng = jax.random.key(config.seed + 1)
    step = int(state.step)
    last_good = latest
    metrics, eval_metrics = {}, {}
    tokens_seen = 0
    window_start, window_tokens = time.time(), 0
    progress = tqdm(
        total=config.steps,
        initial=step,
        disable=jax.process_index() != 0,
        dynamic_ncols=True,
        desc="train",
    )

    def save(step, state, metrics_for_best):
        nonlocal last_good
        ckpt.save(
            step,
            state,
            data_state=distributed.global_data_state(train_iter.get_state()),
            config=saved_config,
            metrics=metrics_for_best or None,
        )
        last_good = step

    with _Preemption() as preemption, partitioning.activate(mesh, rules):
        try:
            while step < config.steps:
                batch = next(train_iter)
                batch_tokens = int(np.sum(batch.get("weights", batch.get("attention_mask", 0))))
                state, step_metrics = train_step(state, _device_batch(batch, mesh), rng)
                step += 1
                tokens_seen += batch_tokens * jax.process_count()
                window_tokens += batch_tokens * jax.process_count()
                progress.update(1)
                is_last = step == config.steps
                due_log = step % config.log_every_steps == 0 or is_last
                due_ckpt = (
                    step % config.checkpoint_every_steps == 0 or is_last or preemption.requested
                )
                due_eval = config.eval_every_steps and (
                    step % config.eval_every_steps == 0 or is_last
                )
                if due_log or due_ckpt:
                    metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
                    if not all(math.isfinite(metrics[k]) for k in ("loss", "grad_norm")):
                        raise TrainingError(
                            f"non-finite loss ({metrics['loss']}) or gradient norm at step {step}; "
                            f"stopped without saving. Last good checkpoint: "
                            f"{'none' if last_good is None else f'step {last_good}'} (kept)"
                        )
                if due_log:
                    elapsed = max(time.time() - window_start, 1e-9)
                    metrics["tokens_per_s"] = window_tokens / elapsed
                    window_start, window_tokens = time.time(), 0
                    writer.write(step, metrics)
                    progress.set_postfix(
                        loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}"
                    )
                if due_eval:
                    eval_metrics = evaluate(
                        eval_step, state.params, config, tokenizer, mesh, data_objective
                    )
                    if eval_metrics:
                        writer.write(step, eval_metrics)
                        if jax.process_index() == 0:  # tqdm.write prints even when disabled
                            progress.write(
                                f"step {step}: "
                                + ", ".join(f"{k}={v:.4g}" for k, v in eval_metrics.items())
                            )
                if due_ckpt:
                    best = {k: v for k, v in eval_metrics.items() if k == config.best_metric}
                    save(step, state, best)
                if preemption.requested:
                    log.warning("SIGTERM: saved step %d, exiting", step)
                    break
        finally:  # on errors too: end the progress line, let in-flight saves finish
            progress.close()
            ckpt.close()

    summary = {
        "steps": step,
        "final": metrics,
        "eval": eval_metrics,
        "tokens": tokens_seen,
        "wall_time_s": time.time() - start_time,
        "params": num_params,
        "model": model_config.name,
        "workdir": str(workdir.absolute()),
        "preempted": preemption.requested,
    }
    if config.sample_tokens and objective in ("causal_lm", "seq2seq") and not preemption.requested:
        summary["sample"] = sample_text(model, state.params, tokenizer, config)
    if jax.process_index() == 0:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    writer.close()
    return summary


def sample_text(model, params, tokenizer, config) -> str:
    """A sampled continuation of `config.sample_prompt` (text in, text out)."""
    from train.decode import generate

    prompt = tokenizer.encode(config.sample_prompt or "")
    if model.config.family == "decoder":
        bos = tokenizer.id_of("bos") or tokenizer.id_of("eos")
        if bos is not None:
            prompt = np.concatenate([[bos], prompt]).astype(np.int32)
    tokens = generate(
        model,
        params,
        prompt[None],
        max_new_tokens=config.sample_tokens,
        rng=jax.random.key(config.seed),
        temperature=0.8,
        top_k=40,
        eos_id=tokenizer.id_of("eos"),
        decoder_start_id=tokenizer.decoder_start_id,
    )
    body = tokenizer.decode(tokens[0])
    return (config.sample_prompt + body) if model.config.family == "decoder" else body
