"""Optimizers and learning-rate schedules (optax).

config.optimizer keys (`DEFAULTS` holds their defaults, the only place they are written down;
configs/common.py's `optimizer` section is a copy of it):
  name            adamw | adafactor | sgd
  learning_rate   peak rate
  warmup_steps    linear warmup from 0
  schedule        cosine | linear | rsqrt | constant (decay after warmup, to end_factor * peak)
  end_factor      final rate as a fraction of the peak (cosine/linear)
  decay_steps     length of the decay; 0 = the run's `steps`
  b1, b2, eps     Adam moments
  weight_decay    decoupled; masked off norms, biases and other vectors (ndim < 2)
  grad_clip_norm  global-norm clipping; 0 = off
  freeze          parameter paths to keep fixed: regexes matched at the start of the
                  '/'-joined path (e.g. "token_embed", "encoder/layers_[0-5]/"), or "body" for
                  everything outside the task head; frozen parameters stay bit-identical
  body_lr_factor  learning-rate multiplier for everything outside `head/` (fine-tuning a
                  pretrained body more gently than a fresh head); 1 = same rate
"""

from __future__ import annotations

import re

import jax
import optax

from models.errors import UserError, one_of

OPTIMIZERS = ("adamw", "adafactor", "sgd")
SCHEDULES = ("cosine", "linear", "rsqrt", "constant")
DEFAULTS = {
    "name": "adamw",
    "learning_rate": 1e-3,
    "warmup_steps": 100,
    "schedule": "cosine",
    "end_factor": 0.1,
    "decay_steps": 0,
    "b1": 0.9,
    "b2": 0.98,
    "eps": 1e-8,
    "weight_decay": 0.01,
    "grad_clip_norm": 1.0,
    "momentum": 0.9,  # sgd
    "freeze": (),
    "body_lr_factor": 1.0,
}


class OptimizerError(UserError):
    """A bad `optimizer` section: the message names the key and the allowed values."""


def settings(opt) -> dict:
    """`opt` (a ConfigDict or dict, possibly partial) over `DEFAULTS`; unknown keys refused."""
    given = opt.to_dict() if hasattr(opt, "to_dict") else dict(opt or {})
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise OptimizerError(
            f"optimizer: unknown keys {unknown}; the keys are {', '.join(DEFAULTS)}"
        )
    return {**DEFAULTS, **given}


def learning_rate_schedule(opt, total_steps: int) -> optax.Schedule:
    opt = settings(opt)
    peak = float(opt["learning_rate"])
    warmup = int(opt["warmup_steps"])
    decay = int(opt["decay_steps"] or max(total_steps - warmup, 1))
    end = peak * float(opt["end_factor"])
    kind = opt["schedule"]
    one_of("optimizer.schedule", kind, SCHEDULES, OptimizerError)
    if kind == "cosine":
        after = optax.cosine_decay_schedule(peak, decay, alpha=end / peak if peak else 0.0)
    elif kind == "linear":
        after = optax.linear_schedule(peak, end, decay)
    elif kind == "rsqrt":  # T5: lr = peak * sqrt(warmup / step) after warmup
        base = max(warmup, 1)
        after = lambda step: peak * (base / (step + base)) ** 0.5  # noqa: E731
    else:  # constant
        after = optax.constant_schedule(peak)
    if not warmup:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def decay_mask(params):
    """Weight decay applies to matrices (kernels, embeddings), not to norms or biases."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def _core(opt: dict, schedule) -> optax.GradientTransformation:
    name = opt["name"]
    one_of("optimizer.name", name, OPTIMIZERS, OptimizerError)
    wd = float(opt["weight_decay"])
    if name == "adamw":
        return optax.adamw(
            schedule,
            b1=opt["b1"],
            b2=opt["b2"],
            eps=opt["eps"],
            weight_decay=wd,
            mask=decay_mask,
        )
    if name == "adafactor":
        return optax.adafactor(
            schedule, weight_decay_rate=wd or None, weight_decay_mask=decay_mask if wd else None
        )
    return optax.chain(  # sgd
        optax.add_decayed_weights(wd, decay_mask) if wd else optax.identity(),
        optax.sgd(schedule, momentum=opt["momentum"] or None),
    )


def _path(path) -> str:
    return "/".join(str(k.key) for k in path if hasattr(k, "key"))


def param_labels(freeze, body_lr_factor: float, b_lr_ratio: float = 1.0):
    """A function params -> tree of 'frozen' | 'lora_b' | 'body' | 'train' labels."""
    patterns = [re.compile("(?!head/)" if p == "body" else p) for p in (freeze or ())]

    def label(path, _):
        name = _path(path)
        if any(p.match(name) for p in patterns):
            return "frozen"
        if b_lr_ratio != 1.0 and name.endswith("/lora_b"):
            return "lora_b"
        return "body" if body_lr_factor != 1.0 and not name.startswith("head/") else "train"

    return lambda params: jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(
    opt, total_steps: int, b_lr_ratio: float = 1.0
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, learning-rate schedule) from config.optimizer. `b_lr_ratio` scales the rate
    of LoRA's B matrices (LoRA+, train/lora.py's `lr_ratio`); the schedule returned is the
    base rate's."""
    opt = settings(opt)
    schedule = learning_rate_schedule(opt, total_steps)
    freeze = list(opt["freeze"] or ())
    body_factor = float(opt["body_lr_factor"])
    clip = float(opt["grad_clip_norm"])
    if not freeze and body_factor == 1.0 and b_lr_ratio == 1.0:
        core = _core(opt, schedule)
        return (optax.chain(optax.clip_by_global_norm(clip), core) if clip else core), schedule
    labels = param_labels(freeze, body_factor, b_lr_ratio)
    frozen = optax.set_to_zero()
    rates = {"train": schedule, "body": lambda step: body_factor * schedule(step)}
    if b_lr_ratio != 1.0:  # only then, so that other runs' optimizer state keeps its structure
        # B sits outside head/, so its A gets the body's rate: B's is that times the ratio
        rates["lora_b"] = lambda step: b_lr_ratio * body_factor * schedule(step)
    zero_frozen = optax.multi_transform(
        {"frozen": frozen, **{group: optax.identity() for group in rates}}, labels
    )
    groups = optax.multi_transform(
        {"frozen": frozen, **{group: _core(opt, rate) for group, rate in rates.items()}}, labels
    )
    # Frozen gradients are zeroed before clipping, so freezing does not change the clip scale.
    parts = [zero_frozen] + ([optax.clip_by_global_norm(clip)] if clip else []) + [groups]
    return optax.chain(*parts), schedule
