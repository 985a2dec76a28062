"""Hugging Face checkpoint interop: local HF directories <-> (ModelConfig, params).

    from models import build, hf
    config, params = hf.load_pretrained("path/to/bert")      # config.json + weights
    out = build(config).apply({"params": params}, input_ids, attention_mask=mask)
    hf.save_pretrained(config, params, "path/to/out")        # transformers can load it

Supported model types: bert, distilbert, gpt2, t5 (v1.0 and v1.1) and bart, at any size. Weights
are read from model.safetensors, sharded safetensors (model.safetensors.index.json) or
pytorch_model.bin (through `torch.load(weights_only=True)`, only when torch is installed).

Conversion is a table per model type: each row names our parameter(s), the HF tensor and a
layout kind (copy, flatten, transpose a Linear, keep a GPT-2 Conv1D, fuse/split along the output
axis). Rows whose parameter does not exist in the configured model are skipped, so one table
serves every head and option. `params` is always the inner dict that goes into
`{"params": params}`, unboxed, as numpy arrays in `config.param_dtype` (host memory: place them
with the shardings you need).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.core import meta

from models.config import ConfigError, ModelConfig
from models.hf_files import read_hf_config, read_state_dict
from models.hf_tables import (
    OUT_AXIS,
    SPECS,
    SUPPORTED_TYPES,
    CheckpointError,
    Spec,
    from_hf_layout,
    hf_shape,
    to_hf_layout,
    unsupported,
)

__all__ = [
    "SUPPORTED_TYPES",
    "CheckpointError",
    "config_from_hf",
    "config_to_hf",
    "convert_hf_to_params",
    "convert_params_to_hf",
    "infer_model_type",
    "load_pretrained",
    "read_hf_config",
    "read_state_dict",
    "save_pretrained",
]
log = logging.getLogger(__name__)


def _spec(model_type: str) -> Spec:
    if model_type not in SPECS:
        raise CheckpointError(
            f"model type {model_type!r} is not supported; supported types: "
            + ", ".join(SUPPORTED_TYPES)
        )
    return SPECS[model_type]


def _strip(spec: Spec, state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Checkpoint names -> table names: drop the base-model prefix, old gamma/beta norm names."""
    out = {}
    for key, value in state.items():
        if spec.prefix and key.startswith(spec.prefix):
            key = key[len(spec.prefix) :]
        if key.endswith((".gamma", ".beta")) and "LayerNorm" in key:
            key = key.rsplit(".", 1)[0] + (".weight" if key.endswith("gamma") else ".bias")
        out[key] = value
    return out


def _architecture(model_type: str, spec: Spec, hf_config: dict, keys) -> str:
    listed = hf_config.get("architectures") or []
    for name in listed:
        if name in spec.architectures:
            return name
    if listed:
        raise CheckpointError(
            f"architecture {listed[0]} of model type {model_type!r} is not supported; supported: "
            + ", ".join(spec.architectures)
        )
    for name, (_, markers) in spec.architectures.items():
        if markers and all(m in keys for m in markers):
            return name
    return spec.default_architecture


def _num_labels(c: dict) -> int:
    return len(c["id2label"]) if c.get("id2label") else int(c.get("num_labels", 2))


def _tying(spec: Spec, c: dict, head: str, state: dict | None) -> dict[str, Any]:
    """Tied or untied output projection, from the config and (when given) the weights."""
    embed = out = None
    if state is not None:
        state = _strip(spec, state)
        embed = next((state[k] for k in spec.rules[0].hf if k in state), None)
        out = state.get(spec.output_embedding)
    same = out is None or (
        embed is not None and out.shape == embed.shape and np.array_equal(out, embed)
    )
    if spec.scaled_tie:  # T5: the tie flag also switches the d_model**-0.5 logit scale
        scale = c.get("scale_decoder_outputs", c.get("tie_word_embeddings", True) is not False)
        unsupported(bool(scale and not same), "a scaled T5 head with a separate lm_head")
        return dict(tie_embeddings=bool(scale), scale_tied_logits=bool(scale))
    tie = bool(c.get("tie_word_embeddings", True)) and same
    return dict(tie_embeddings=tie)


def config_from_hf(
    hf_config: Mapping[str, Any], state: dict | None = None, name: str = "custom"
) -> ModelConfig:
    """The ModelConfig of an HF config.json dict.

    Args:
      hf_config: the parsed config.json (needs `model_type`).
      state: the checkpoint's tensors by raw name, if at hand: they decide the head when
        `architectures` is missing, BERT's pooler and whether the output projection is tied.
      name: the config's name.

    Raises:
      CheckpointError: unsupported model type, architecture, activation or option.
    """
    model_type = hf_config.get("model_type")
    spec = _spec(model_type)
    c = {**spec.defaults, **{k: v for k, v in hf_config.items() if v is not None}}
    keys = set(state or ())
    arch = _architecture(model_type, spec, c, keys)
    fields = dict(spec.to_ours(c), name=name, **spec.architectures[arch][0])
    if model_type == "bert":  # BertModel's pooler is optional (add_pooling_layer)
        fields["pooler"] = (
            arch in ("BertModel", "BertForSequenceClassification")
            if state is None
            else "pooler.dense.weight" in _strip(spec, state)
        )
    if fields["head"] in ("classification", "token_classification"):
        fields["num_labels"] = _num_labels(c)
    if fields["head"] in ("lm", "mlm"):
        fields.update(_tying(spec, c, fields["head"], state))
    try:
        return ModelConfig(**fields)
    except ConfigError as e:
        raise CheckpointError(f"{model_type} config has no valid ModelConfig: {e}") from e


def infer_model_type(config: ModelConfig) -> str:
    """The HF model type that a config corresponds to (by structure, not by name)."""
    if config.family == "encoder":
        return "bert" if config.type_vocab_size else "distilbert"
    if config.family == "decoder":
        return "gpt2"
    return "t5" if config.position == "relative" else "bart"


def config_to_hf(config: ModelConfig, model_type: str | None = None) -> dict[str, Any]:
    """The HF config.json dict of a config (its architecture picked from `config.head`)."""
    model_type = model_type or infer_model_type(config)
    spec = _spec(model_type)
    arch = next(
        (a for a, (fields, _) in spec.architectures.items() if fields["head"] == config.head), None
    )
    if arch is None:
        raise CheckpointError(
            f"head={config.head!r} has no {model_type} architecture; "
            f"supported: {', '.join(spec.architectures)}"
        )
    out = dict(spec.to_hf(config), model_type=model_type, architectures=[arch])
    if config.head in ("classification", "token_classification"):
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(config.num_labels)}
        out["label2id"] = {f"LABEL_{i}": i for i in range(config.num_labels)}
    out["tie_word_embeddings"] = (
        config.head != "lm"
        or config.tie_embeddings
        and (config.scale_tied_logits or not spec.scaled_tie)
    )
    return out


# Conversion --------------------------------------------------------------------------------------


def _expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Our unscanned parameter paths ('a/b/c') -> shapes, from an abstract init."""
    from models import build

    cfg = config.replace(scan_layers=False, remat_policy="none")
    model = build(cfg)
    ids = jnp.zeros((1, 1), jnp.int32)
    args = (ids, ids) if cfg.family == "encoder_decoder" else (ids,)
    tree = meta.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), *args))["params"])
    return {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(tree).items()}


def _expand(spec: Spec, config: ModelConfig, expected: Mapping[str, Any]):
    """Yields (rule, our paths, HF names) for every row that applies to the configured model."""
    names = spec.names(config)
    for rule in spec.rules:
        for i in range(10**6) if "{i}" in rule.ours[0] else (0,):
            ours = tuple(p.format(i=i) for p in rule.ours)
            if not all(p in expected for p in ours):
                break
            yield rule, ours, tuple(h.format(i=i, **names) for h in rule.hf)


def _fused_hf_shape(kind: str, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    parts = [hf_shape(kind, s) for s in shapes]
    axis = OUT_AXIS[kind]
    return tuple(sum(p[axis] for p in parts) if a == axis else d for a, d in enumerate(parts[0]))


def _split(kind: str, tensor: np.ndarray, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    axis = OUT_AXIS[kind]
    cuts = np.cumsum([hf_shape(kind, s)[axis] for s in shapes])[:-1]
    return [
        from_hf_layout(kind, part, s) for part, s in zip(np.split(tensor, cuts, axis=axis), shapes)
    ]


def _stack_layers(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """'stack/layers_{i}/rest' -> 'stack/layers/rest' with a leading layer axis (nn.scan)."""
    groups: dict[str, dict[int, np.ndarray]] = {}
    out = {}
    for path, value in flat.items():
        stack, _, rest = path.partition("/layers_")
        if not rest:
            out[path] = value
            continue
        index, _, leaf = rest.partition("/")
        groups.setdefault(f"{stack}/layers/{leaf}", {})[int(index)] = value
    for path, by_index in groups.items():
        layers = [by_index[i] for i in range(len(by_index))]
        if any(isinstance(v, jax.ShapeDtypeStruct) for v in layers):  # not all there: abstract
            out[path] = jax.ShapeDtypeStruct((len(layers), *layers[0].shape), layers[0].dtype)
        else:
            out[path] = np.stack(layers)
    return out


def _unstack_layers(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of `_stack_layers` (abstract stacked leaves give abstract layers)."""
    out = {}
    for path, value in flat.items():
        stack, sep, leaf = path.partition("/layers/")
        if not sep:
            out[path] = value
            continue
        for i in range(value.shape[0]):
            if isinstance(value, jax.ShapeDtypeStruct):
                out[f"{stack}/layers_{i}/{leaf}"] = jax.ShapeDtypeStruct(
                    value.shape[1:], value.dtype
                )
            else:
                out[f"{stack}/layers_{i}/{leaf}"] = value[i]
    return out


def convert_hf_to_params(
    config: ModelConfig, state: Mapping[str, np.ndarray], model_type: str | None = None
) -> dict[str, Any]:
    """HF tensors (raw checkpoint names) -> our params for `config`.

    Args:
      config: the target config (e.g. from `config_from_hf`); `scan_layers` and `param_dtype`
        are honoured.
      state: tensors by checkpoint name, with or without the base-model prefix.
      model_type: the HF model type; inferred from the config when None.

    Returns:
      The unboxed param tree (the inner dict of `{"params": params}`) as numpy arrays.

    Raises:
      CheckpointError: a needed weight is missing or has a shape the config does not fit.
    """
    model_type = model_type or infer_model_type(config)
    spec = _spec(model_type)
    state = _strip(spec, state)
    expected = _expected_shapes(config)
    dtype = np.dtype(jnp.dtype(config.param_dtype))
    flat, used = {}, set()
    for rule, ours, hf_names in _expand(spec, config, expected):
        name = next((h for h in hf_names if h in state), None)
        if name is None:
            raise CheckpointError(
                f"missing weight {hf_names[0]} (needed for {ours[0]} of this {model_type} config)"
            )
        shapes = [expected[p] for p in ours]
        want, got = _fused_hf_shape(rule.kind, shapes), tuple(state[name].shape)
        if got != want:
            raise CheckpointError(
                f"weight {name} has shape {got} but the config needs {want} (for {ours[0]})"
            )
        used.add(name)
        for path, part in zip(ours, _split(rule.kind, np.asarray(state[name]), shapes)):
            flat[path] = np.ascontiguousarray(part, dtype=dtype)
    missing = sorted(set(expected) - set(flat))
    if missing:
        raise CheckpointError(f"no {model_type} weight maps to our parameter {missing[0]}")
    unused = sorted(set(state) - used)
    _check_no_extra_layers(spec, config, unused, model_type)
    if unused:
        log.info("ignored %d checkpoint tensors (e.g. %s)", len(unused), unused[0])
    if config.scan_layers:
        flat = _stack_layers(flat)
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def _check_no_extra_layers(spec: Spec, config: ModelConfig, unused, model_type: str) -> None:
    """A layer's weights left over (config.json says fewer layers than the checkpoint has) are
    a config that disagrees with its weights: one line, not a silently shallower model. Other
    leftovers (a pretraining head that a task model drops) are only logged."""
    names = spec.names(config)
    layered = [h for rule in spec.rules for h in rule.hf if "{i}" in h]
    for template in layered:
        parts = template.format(i="\0", **names).split("\0")
        pattern = re.compile(r"(?:.*\.)?" + r"\d+".join(map(re.escape, parts)))
        extra = next((name for name in unused if pattern.fullmatch(name)), None)
        if extra:
            raise CheckpointError(
                f"weight {extra} belongs to a layer that this {model_type} config does not "
                "have: config.json's layer counts disagree with the weights"
            )


def _plain(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Boxed or unboxed params, with or without the {'params': ...} wrapper -> flat numpy."""
    params = meta.unbox(params)
    if set(params) == {"params"}:
        params = params["params"]
    flat = traverse_util.flatten_dict(dict(params))
    return {"/".join(k): np.asarray(jax.device_get(v)) for k, v in flat.items()}


def convert_params_to_hf(
    config: ModelConfig, params: Mapping[str, Any], model_type: str | None = None
) -> dict[str, np.ndarray]:
    """Our params -> HF tensors (float32) named as in the HF class that `config_to_hf` picks.

    Raises:
      CheckpointError: a parameter is missing or has a shape the config does not fit.
    """
    flat = _plain(params)
    return _flat_to_hf(
        config,
        _unstack_layers(flat) if config.scan_layers else flat,
        model_type or infer_model_type(config),
    )


def _flat_to_hf(
    config: ModelConfig, flat: dict[str, np.ndarray], model_type: str
) -> dict[str, np.ndarray]:
    spec = _spec(model_type)
    expected = _expected_shapes(config)
    for path, shape in expected.items():
        if path not in flat:
            raise CheckpointError(f"params lack {path} (shape {shape}) of this config")
        if flat[path].shape != shape:
            raise CheckpointError(
                f"param {path} has shape {flat[path].shape} but the config needs {shape}"
            )
    prefix = spec.prefix if config.head != "none" else ""
    out = {}
    for rule, ours, hf_names in _expand(spec, config, expected):
        parts = [to_hf_layout(rule.kind, flat[p].astype(np.float32)) for p in ours]
        name = hf_names[0] if ours[0].startswith("head/") else prefix + hf_names[0]
        out[name] = np.ascontiguousarray(np.concatenate(parts, axis=OUT_AXIS[rule.kind]))
    if model_type == "bart" and config.head == "lm" and "final_logits_bias" not in out:
        out["final_logits_bias"] = np.zeros((1, config.vocab_size), np.float32)  # a buffer
    return out


# Directories -------------------------------------------------------------------------------------


def load_pretrained(path: str | os.PathLike, **overrides) -> tuple[ModelConfig, dict[str, Any]]:
    """Reads a local Hugging Face model directory.

    Args:
      path: a directory with config.json and model.safetensors (or a sharded index, or
        pytorch_model.bin when torch is installed).
      **overrides: ModelConfig fields to change, e.g. `scan_layers=True` (the layers are then
        stacked) or `param_dtype="bfloat16"`, `dtype`, `dropout_rate`.

    Returns:
      (config, params): params is the unboxed tree that goes into `{"params": params}`, as numpy
      arrays in `config.param_dtype`.

    Raises:
      CheckpointError: a missing directory or file, an unsupported model type or option, weights
        that are missing or do not fit the config.
    """
    path = os.fspath(path)
    hf_config = read_hf_config(path)
    _spec(hf_config.get("model_type"))  # fail on the type before reading the weights
    state = read_state_dict(path)
    name = os.path.basename(os.path.normpath(path)) or "custom"
    config = config_from_hf(hf_config, state, name=name)
    if overrides:
        config = config.replace(**overrides)
    return config, convert_hf_to_params(config, state, hf_config["model_type"])


_NOT_FUNCTIONAL = (
    "name",
    "dropout_rate",
    "attention_dropout_rate",
    "init_std",
    "dtype",
    "param_dtype",
    "attention_kernel",
    "scan_layers",
    "remat_policy",
    "lora_rank",  # adapters are merged into the kernels before an export
    "lora_alpha",
    "lora_dropout",
    "lora_targets",
    "lora_train_head",
)


def _functional(config: ModelConfig, model_type: str) -> dict[str, Any]:
    """The config fields that change the network's function (for the expressibility check)."""
    d = config.to_dict()
    d.update(
        head_dim=config.dim_per_head,
        num_kv_heads=config.kv_heads,
        num_decoder_layers=config.decoder_layers,
    )
    drop = set(_NOT_FUNCTIONAL)
    if config.head not in ("classification", "token_classification"):
        drop.add("num_labels")
    if config.head != "classification" or config.pooler:
        drop.add("classifier_activation")
    if config.head != "lm":
        drop |= {"tie_embeddings", "scale_tied_logits", "lm_bias"}
    elif not config.tie_embeddings:
        drop.add("scale_tied_logits")
    if model_type == "bart":
        drop.add("lm_bias")  # written as a zero final_logits_bias when we have none
    if config.position == "relative":
        drop.add("max_positions")
    else:
        drop |= {"relative_buckets", "relative_max_distance"}
    if config.position != "learned":
        drop.add("position_offset")
    if config.position != "rope":
        drop.add("rope_theta")
    if config.head == "mlm" and model_type in ("bert", "distilbert"):
        drop.add("tie_embeddings")  # the MLM decoder is always tied
    return {k: v for k, v in d.items() if k not in drop}


def _untie(config: ModelConfig, flat: dict[str, np.ndarray]):
    """A tied head without the T5 logit scale has no T5 equivalent: write it untied."""
    flat = dict(flat, **{"head/out/kernel": flat["token_embed/embedding"].T})
    return config.replace(tie_embeddings=False), flat


def save_pretrained(
    config: ModelConfig,
    params: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    model_type: str | None = None,
) -> None:
    """Writes config.json + model.safetensors (float32) that `transformers` loads.

    Args:
      config: our config; it must be expressible as the HF model type (checked field by field).
      params: boxed or unboxed params, with or without the {'params': ...} wrapper, scanned or
        not (as `config.scan_layers` says).
      path: the output directory (created).
      model_type: bert, distilbert, gpt2, t5 or bart; inferred from the config's structure when
        None (an encoder with token types is bert, one without distilbert).

    Raises:
      CheckpointError: the config has no equivalent in the model type (the message names the
        field), or the params do not fit the config.
    """
    from safetensors.numpy import save_file

    model_type = model_type or infer_model_type(config)
    spec = _spec(model_type)
    flat = _plain(params)
    if config.scan_layers:
        flat, config = _unstack_layers(flat), config.replace(scan_layers=False)
    if (
        spec.scaled_tie
        and config.head == "lm"
        and config.tie_embeddings
        and not config.scale_tied_logits
    ):
        config, flat = _untie(config, flat)
    hf_config = config_to_hf(config, model_type)
    tensors = _flat_to_hf(config, flat, model_type)
    back = config_from_hf(hf_config, dict(tensors), name=config.name)
    ours, theirs = _functional(config, model_type), _functional(back, model_type)
    for field in ours:
        if ours[field] != theirs.get(field):
            raise CheckpointError(
                f"{field}={ours[field]!r} cannot be expressed as a Hugging Face {model_type} "
                f"checkpoint (it would load as {field}={theirs.get(field)!r})"
            )
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
