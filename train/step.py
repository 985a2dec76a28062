"""Pure train and eval steps. `make_*` close over the model and optimizer; the returned function
is jitted by the loop with explicit in/out shardings and the state donated."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from train import partitioning
from train.lora import join
from train.losses import loss_sums


def waits_for_each_step() -> bool:
    """Whether the host should wait for each train step before launching the next.

    On a GPU or TPU the next step is launched while this one runs, which hides the host's
    share of each step (argument handling and the launch). On a CPU the host and the "device"
    share the cores, so launching ahead hides nothing, and XLA then holds two steps' temporary
    buffers, which also fault in fresh memory (measured in docs/benchmarks/cpu-profile.md). The
    training loop (train/loop.py) and the benchmark (train/benchmark/timing.py) both follow
    this."""
    return jax.default_backend() == "cpu"


def _split_microbatches(batch: dict, n: int) -> dict:
    """(B, ...) -> (n, B/n, ...) taking every n-th row, so that each microbatch is spread over
    all the batch shards instead of living on a few devices."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), batch)


def _accumulate(grads_and_sums, params, fp8, batch, rng, microbatches: int):
    """Sums (grads, loss sums) over `microbatches` slices of `batch` in a `lax.scan`. The fp8
    scales (None without fp8) are carried, not summed: each microbatch runs with the values
    the one before it produced, as consecutive steps do, and the last one's are returned."""

    def body(carry, xs):
        acc, fp8 = carry
        micro, i = xs
        g, fp8, s = grads_and_sums(params, fp8, micro, jax.random.fold_in(rng, i))
        return (jax.tree.map(jnp.add, acc, (g, s)), fp8), None

    zero_sums = jax.eval_shape(
        lambda: grads_and_sums(
            params,
            fp8,
            jax.tree.map(lambda x: x[0], _split_microbatches(batch, microbatches)),
            rng,
        )[2]
    )
    init = (
        jax.tree.map(jnp.zeros_like, params),
        jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero_sums),
    )
    ((grads, sums), fp8), _ = jax.lax.scan(
        body, (init, fp8), (_split_microbatches(batch, microbatches), jnp.arange(microbatches))
    )
    return grads, fp8, sums


def _gradient_fn(model, objective: str, distiller, options: dict):
    """grads_and_sums(params, fp8, batch, rng, frozen=None, **teacher) -> (gradients, the fp8
    scales' next values or None, loss sums), with `options` for the loss."""

    def grads_and_sums(params, fp8, batch, rng, frozen=None, **teacher):
        def loss_fn(p, f):  # with LoRA: gradients of the trained leaves, `frozen` closed over
            whole = p if frozen is None else join(p, frozen)
            kw = dict(rng=rng, **options) if f is None else dict(rng=rng, fp8=f, **options)
            if distiller is None:
                sums = loss_sums(model, whole, batch, objective, **kw)
            else:
                sums = distiller.loss_sums(model, whole, batch, objective, **teacher, **kw)
            return sums["loss"], sums

        if fp8 is None:
            grads, sums = jax.grad(loss_fn, has_aux=True)(params, None)
            return grads, None, sums
        # flax's fp8 ops return the scales' and amax histories' next values as their gradient
        (grads, fp8), sums = jax.grad(loss_fn, argnums=(0, 1), has_aux=True)(params, fp8)
        return grads, fp8, sums

    return grads_and_sums


def make_train_step(
    model,
    tx: optax.GradientTransformation,
    schedule,
    objective: str,
    *,
    microbatches: int = 1,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    dropout: bool = True,
    distiller=None,
):
    """train_step(state, batch, rng) -> (state, metrics); with a `distill.Distiller`,
    train_step(state, batch, rng, teacher_params), the teacher's frozen parameters passed in
    (never part of the state, the optimizer or a checkpoint).

    The loss is the weighted token sum divided by the total weight of the whole batch, so
    accumulating gradients over microbatches gives the full-batch gradient.
    """

    options = dict(deterministic=not dropout, label_smoothing=label_smoothing, z_loss=z_loss)
    grads_and_sums = _gradient_fn(model, objective, distiller, options)

    def train_step(state, batch, rng, teacher_params=None):
        rng = jax.random.fold_in(rng, state.step)
        teacher = {}
        if distiller is not None:  # each term normalised over its own positions, whole batch
            scale = distiller.hidden_scale(batch, objective)
            teacher = dict(teacher_params=teacher_params, hidden_scale=scale)
        step_grads = functools.partial(grads_and_sums, frozen=state.frozen, **teacher)
        if microbatches == 1:
            grads, fp8, sums = step_grads(state.params, state.fp8, batch, rng)
        else:
            grads, fp8, sums = _accumulate(
                step_grads, state.params, state.fp8, batch, rng, microbatches
            )
        # the fp8 scales are stored as they come: no averaging, clipping, decay or optimizer
        weight = jnp.maximum(sums["weight"], 1.0)
        grads = jax.tree.map(lambda g: g / weight, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = summarize(sums)
        if distiller is not None:
            metrics.update(distiller.metrics(sums))
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["learning_rate"] = schedule(state.step)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, fp8=fp8)
        return new_state, metrics

    return train_step


def jit_steps(
    model,
    tx: optax.GradientTransformation,
    schedule,
    objective: str,
    shardings,
    mesh,
    rules,
    *,
    microbatches: int = 1,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    dropout: bool = True,
    distiller=None,
    teacher_shardings=None,
    eval_model=None,
):
    """The one place steps are compiled: (train_step, eval_step), jitted for `mesh`.

    The train step takes and returns the state in `shardings` (the state's, from
    `train.state.abstract_state`) and donates the old state; the eval step follows its inputs.
    The training loop, the benchmark and the planner all build their steps here, so the planner
    and the benchmark measure the step that training runs. Lower or call them inside
    `partitioning.activate(mesh, rules)`, so that the models' logical constraints apply. With a
    `distiller` (train/distill.py) the train step also takes the teacher's parameters, laid out
    as `teacher_shardings`. `eval_model` (default `model`) is the eval step's model when it
    differs from the train step's (load-balanced context parallelism reorders training rows).
    """
    with partitioning.activate(mesh, rules):
        train_step = jax.jit(
            make_train_step(
                model,
                tx,
                schedule,
                objective,
                microbatches=microbatches,
                label_smoothing=label_smoothing,
                z_loss=z_loss,
                dropout=dropout,
                distiller=distiller,
            ),
            in_shardings=(shardings, None, None, *([teacher_shardings] if distiller else [])),
            out_shardings=(shardings, None),
            donate_argnums=(0,),
        )
        eval_step = jax.jit(make_eval_step(eval_model or model, objective))
    return train_step, eval_step


def step_options(config) -> dict:
    """The run config's keys that shape the train step, as `jit_steps` keywords."""
    return {
        "microbatches": config.microbatches,
        "label_smoothing": config.label_smoothing,
        "z_loss": config.z_loss,
        "dropout": config.dropout,
    }


def make_eval_step(model, objective: str):
    """eval_step(params, batch) -> dict of sums (combine over batches, then `summarize`)."""

    def eval_step(params, batch):  # the whole tree (train.state.full_params)
        return loss_sums(model, params, batch, objective, deterministic=True)

    return eval_step


def summarize(sums: dict) -> dict:
    """Sums -> means: loss, accuracy, perplexity (of the plain cross entropy), tokens."""
    weight = jnp.maximum(sums["weight"], 1.0)
    nll = sums["nll"] / weight
    return {
        "loss": sums["loss"] / weight,
        "nll": nll,
        "accuracy": sums["correct"] / weight,
        "perplexity": jnp.exp(jnp.minimum(nll, 50.0)),
        "tokens": sums["weight"],
    }
