"""Low-rank adaptation (LoRA): the run's `lora` section, the split of the parameters into what
trains and what stays frozen, and folding trained adapters back into the kernels.

    lora.rank          0 = off; the adapters' rank r
    lora.alpha         the update is scaled by alpha / r (16.0)
    lora.dropout       dropout on the adapters' input while training (0.0)
    lora.targets       regexes over module paths ('decoder/layers_0/self_attention/query';
                       a head's dense layers too: 'pooler/dense', 'head/transform');
                       () = the family default: attention q and v (BERT, GPT-2, T5, BART), or
                       q, k, v, o and the MLP for Llama-style decoders (gated MLP)
    lora.lr_ratio      B's learning rate over A's (and the head's): LoRA+ (Hayou et al., 2024;
                       PEFT's `loraplus_lr_ratio`); 1.0 = plain LoRA, 16 is the paper's choice
    lora.train_head    a task head (classification, token classification) trains too (True);
                       everything else is frozen, a language-model head included (as PEFT
                       does for CAUSAL_LM and SEQ_2_SEQ_LM adapters)

With `rank > 0` the train state's `params` hold only the adapters (and the head), its optimizer
state covers only those, and its `frozen` field holds the base, which the loss closes over:
gradients are taken for the trained leaves alone. Checkpoints store `params` and `opt_state`
only; the base is `init_from`'s, loaded again at every start, so it stays bit-identical.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np

from models.config import ModelConfig
from models.errors import UserError

DEFAULTS = {
    "rank": 0,
    "alpha": 16.0,
    "dropout": 0.0,
    "targets": (),
    "lr_ratio": 1.0,
    "train_head": True,
}
ADAPTERS = ("lora_a", "lora_b")
_QV = (r"attention/(query|value)$",)
_LLAMA = (r"attention/(query|key|value|out)$", r"mlp/(wi|wi_linear|wo)$")
TASK_HEADS = ("classification", "token_classification")


def settings(section) -> dict[str, Any]:
    """The `lora` section with defaults filled in; unknown keys are one error line."""
    items = dict(section or {})
    unknown = set(items) - set(DEFAULTS)
    if unknown:
        raise UserError(f"unknown lora key(s) {sorted(unknown)}; keys are: {', '.join(DEFAULTS)}")
    out = {**DEFAULTS, **{k: v for k, v in items.items() if v is not None}}
    if isinstance(out["targets"], str):
        out["targets"] = (out["targets"],)
    return out


def lr_ratio(section) -> float:
    """LoRA+'s learning-rate ratio of B over A; UserError unless it is > 0."""
    s = settings(section)
    ratio = float(s["lr_ratio"])
    if not ratio > 0:
        raise UserError(f"lora.lr_ratio={ratio} must be > 0 (B's learning rate over A's; 1 = LoRA)")
    return ratio if int(s["rank"]) > 0 else 1.0


def default_targets(config: ModelConfig) -> tuple[str, ...]:
    """Attention q and v, as PEFT's defaults for BERT, GPT-2, T5 and BART; q, k, v, o and the
    MLP for Llama-style decoders (QLoRA's all-linear choice)."""
    return _LLAMA if config.family == "decoder" and config.gated_mlp else _QV


def configure(section, config: ModelConfig, init_from: str | None) -> ModelConfig:
    """`config` with the `lora` section's rank, alpha, dropout and targets (unchanged when
    rank is 0). Raises UserError on bad values, a target that is not a regex, or no init_from.
    (`lr_ratio` is the optimizer's: `lr_ratio` below; it is checked here, before any work.)"""
    s = settings(section)
    rank = int(s["rank"])
    if rank < 0:
        raise UserError(f"lora.rank={rank} must be >= 0 (0 turns LoRA off)")
    lr_ratio(s)
    if rank == 0:
        return config
    if not init_from:
        raise UserError(
            f"lora.rank={rank} needs init_from: the adapters train on a pretrained base "
            "(a Hub id, a Hugging Face or converted directory, or a workdir)"
        )
    targets = tuple(s["targets"]) or default_targets(config)
    for target in targets:
        try:
            re.compile(target)
        except re.error as error:
            raise UserError(f"lora.targets: {target!r} is not a regex ({error})") from None
    return config.replace(
        lora_rank=rank,
        lora_alpha=float(s["alpha"]),
        lora_dropout=float(s["dropout"]),
        lora_targets=targets,
        lora_train_head=bool(s["train_head"]) and config.head in TASK_HEADS,
    )


def _name(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def is_trained(name: str, train_head: bool) -> bool:
    """Whether the parameter at `name` ('a/b/lora_a') trains under LoRA."""
    return name.rsplit("/", 1)[-1] in ADAPTERS or (train_head and name.startswith("head/"))


def check_targets(params, config: ModelConfig) -> None:
    """Every target regex adapts at least one layer; else one line naming it and the paths."""
    if not config.lora_rank:
        return
    names = list(map(_name, _paths(params)))
    adapted = {n.rsplit("/", 1)[0] for n in names if n.endswith("/lora_a")}
    layers = sorted({n.rsplit("/", 1)[0] for n in names if n.endswith("/kernel")})
    for target in config.lora_targets:
        if not any(re.search(target, layer) for layer in adapted):
            raise UserError(
                f"lora.targets: {target!r} matches no attention or MLP layer of {config.name}; "
                f"their paths look like {', '.join(layers[:3])}"
            )


def with_params(state, params, config: ModelConfig, pretrained):
    """`state` holding `params` (the whole tree): split into trained and frozen under LoRA,
    where every frozen leaf must come from init_from (`pretrained`), or it would stay at its
    random initialisation for good."""
    if not config.lora_rank:
        return state.replace(params=params)
    trained, frozen = split(params, config.lora_train_head)
    loaded = flat(pretrained)
    fresh = [name for name in flat(frozen) if name not in loaded]
    if fresh:
        head = any(n.startswith("head/") for n in fresh)
        hint = "; set lora.train_head=True" if head and config.head in TASK_HEADS else ""
        raise UserError(
            f"LoRA freezes {', '.join(fresh[:3])}, which init_from does not have: they would "
            f"stay random{hint}"
        )
    return state.replace(params=trained, frozen=frozen)


def _paths(tree) -> list:
    return [path for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _nested(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for name, value in flat.items():
        node = out
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def flat(tree, is_leaf=None) -> dict[str, Any]:
    """{'a/b/kernel': leaf} of a nested parameter dict (boxed leaves kept whole)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
    return {_name(path): leaf for path, leaf in leaves}


def split(params, train_head: bool, is_leaf=None) -> tuple[dict, dict]:
    """(trained, frozen): two nested dicts that partition `params`' leaves."""
    leaves = flat(params, is_leaf)
    trained = {k: v for k, v in leaves.items() if is_trained(k, train_head)}
    frozen = {k: v for k, v in leaves.items() if k not in trained}
    return _nested(trained), _nested(frozen)


def join(trained, frozen) -> dict:
    """The whole parameter tree from `split`'s two halves."""
    if frozen is None:
        return trained
    if not isinstance(trained, dict) or not isinstance(frozen, dict):
        return trained if frozen is None else frozen
    out = dict(frozen)
    for key, value in trained.items():
        out[key] = join(value, frozen[key]) if key in frozen else value
    return out


def merged(config: ModelConfig, params) -> tuple[ModelConfig, dict]:
    """(config without LoRA, params with every adapter folded into its kernel):
    W + (alpha / r) A B, in float32 then cast to the kernel's dtype."""
    if not config.lora_rank:
        return config, params
    leaves = {k: np.asarray(v) for k, v in flat(params).items()}
    scale = config.lora_alpha / config.lora_rank
    out = {k: v for k, v in leaves.items() if k.rsplit("/", 1)[-1] not in ADAPTERS}
    for name in [k for k in leaves if k.endswith("/lora_a")]:
        layer = name.rsplit("/", 1)[0]
        a, b, kernel = leaves[name], leaves[f"{layer}/lora_b"], leaves[f"{layer}/kernel"]
        out[f"{layer}/kernel"] = (kernel + scale * _product(a, b, kernel.ndim)).astype(kernel.dtype)
    plain = config.replace(
        lora_rank=0, lora_alpha=16.0, lora_dropout=0.0, lora_targets=(), lora_train_head=True
    )
    return plain, _nested(out)


def _product(a: np.ndarray, b: np.ndarray, kernel_ndim: int) -> np.ndarray:
    """A B with the kernel's shape: A (lead..., in..., r), B (lead..., r, out...), where `lead`
    is the scanned layer axis, if any."""
    lead = a.ndim + b.ndim - 2 - kernel_ndim
    shape_in, shape_out = a.shape[lead:-1], b.shape[lead + 1 :]
    layers = int(np.prod(a.shape[:lead], dtype=int))
    a2 = a.astype(np.float32).reshape(layers, -1, a.shape[-1])
    b2 = b.astype(np.float32).reshape(layers, b.shape[lead], -1)
    return np.matmul(a2, b2).reshape(*a.shape[:lead], *shape_in, *shape_out)
