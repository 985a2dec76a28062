"""LoRA adapters in Hugging Face PEFT's format, both ways.

    python -m models convert --from WORKDIR --to-peft DIR                 # ours -> PEFT
    python -m models convert --from-peft DIR [--init-from BASE] --to-hf OUT   # PEFT -> merged

A PEFT LoRA adapter is `adapter_config.json` (r, lora_alpha, target_modules, modules_to_save,
base_model_name_or_path, ...) and `adapter_model.safetensors` with, per adapted module,
`base_model.model.MODULE.lora_A.weight` (r, in) and `.lora_B.weight` (out, r), and the
modules_to_save (a task head) under their own names. The module names come from the Hugging
Face tables of models/hf_tables.py, so every model type the converter reads works.

GPT-2 fuses q, k and v into one `c_attn` module where we keep three kernels. Exporting a q/v
adapter writes one rank-2r `c_attn` adapter: A = [A_q; A_v], and B is block-diagonal with zero
k rows, with alpha doubled so that alpha / r is kept (`rank_pattern` / `alpha_pattern`).
Importing a `c_attn` adapter gives each of q, k and v the shared A and its rows of B.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import numpy as np

from models import hf, hub, paths
from models.config import ModelConfig
from models.hf_files import read_safetensors
from models.hf_tables import from_hf_layout, to_hf_layout
from models.jsonfile import read_json
from train import lora
from train.checkpoint import CheckpointError

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_PREFIX = "base_model.model."
_KERNELS = ("linear", "linear2", "conv1d", "conv1d2")
_TASKS = {"classification": "SEQ_CLS", "token_classification": "TOKEN_CLS"}


def task_type(config: ModelConfig) -> str:
    """PEFT's task type for the model's head."""
    if config.head in _TASKS:
        return _TASKS[config.head]
    if config.head == "lm":
        return "CAUSAL_LM" if config.family == "decoder" else "SEQ_2_SEQ_LM"
    return "FEATURE_EXTRACTION"


def _rules(config: ModelConfig, model_type: str):
    """(rule, our paths, the HF tensor name in the model PEFT wraps) of every table row."""
    spec = hf._spec(model_type)
    plain = config.replace(lora_rank=0, lora_targets=(), scan_layers=False)
    expected = hf._expected_shapes(plain)
    prefix = spec.prefix if config.head != "none" else ""
    for rule, ours, names in hf._expand(spec, plain, expected):
        yield rule, ours, names[0] if ours[0].startswith("head/") else prefix + names[0]


def _modules(config: ModelConfig, model_type: str) -> dict[str, list[tuple[str, int, int]]]:
    """HF module name -> [(our layer path, its output size, its kernel's input dims)] in the
    module's output order (three for GPT-2's fused c_attn), for every dense kernel."""
    expected = hf._expected_shapes(config.replace(lora_rank=0, lora_targets=(), scan_layers=False))
    out = {}
    for rule, ours, name in _rules(config, model_type):
        if rule.kind in _KERNELS and all(p.endswith("/kernel") for p in ours):
            n_in = 2 if rule.kind.endswith("2") else 1
            out[name.removesuffix(".weight")] = [
                (p.removesuffix("/kernel"), math.prod(expected[p][n_in:]), n_in) for p in ours
            ]
    return out


def _layer_leaves(params) -> dict[str, np.ndarray]:
    return hf._unstack_layers({k: np.asarray(v, np.float32) for k, v in lora.flat(params).items()})


def export(config: ModelConfig, trained, base_name: str, out) -> dict[str, Any]:
    """Writes the adapter of a LoRA run (`trained`: its adapters and head) to `out` in PEFT's
    layout; returns the adapter config written."""
    from safetensors.numpy import save_file

    if not config.lora_rank:
        raise CheckpointError(
            "--to-peft needs a LoRA workdir (lora.rank > 0); this run trained every parameter: "
            "export it with --to-hf"
        )
    model_type = hf.infer_model_type(config)
    leaves, r = _layer_leaves(trained), config.lora_rank
    tensors, targets, ranks, alphas = {}, [], {}, {}
    for module, layers in _modules(config, model_type).items():
        parts = [(j, x[0]) for j, x in enumerate(layers) if f"{x[0]}/lora_a" in leaves]
        if not parts:
            continue
        a = [leaves[f"{layer}/lora_a"].reshape(-1, r).T for _, layer in parts]  # (r, in) each
        b = [leaves[f"{layer}/lora_b"].reshape(r, -1).T for _, layer in parts]  # (out_j, r)
        outs = [size for _, size, _ in layers]
        block = np.zeros((sum(outs), r * len(parts)), np.float32)
        for t, ((j, _), part) in enumerate(zip(parts, b)):
            block[sum(outs[:j]) : sum(outs[: j + 1]), t * r : (t + 1) * r] = part
        tensors[f"{_PREFIX}{module}.lora_A.weight"] = np.concatenate(a, axis=0)
        tensors[f"{_PREFIX}{module}.lora_B.weight"] = block
        targets.append(module)
        if len(parts) > 1:  # a fused module: rank k*r, alpha k*alpha keeps alpha / r
            ranks[module], alphas[module] = r * len(parts), config.lora_alpha * len(parts)
    head = _head_tensors(config, model_type, leaves)
    tensors.update({_PREFIX + k: v for k, v in head.items()})
    adapter = {
        "peft_type": "LORA",
        "task_type": task_type(config),
        "base_model_name_or_path": base_name,
        "r": r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "target_modules": sorted(targets),
        "modules_to_save": sorted({k.rsplit(".", 1)[0] for k in head}) or None,
        "rank_pattern": {re.escape(k): v for k, v in ranks.items()},
        "alpha_pattern": {re.escape(k): v for k, v in alphas.items()},
        "fan_in_fan_out": model_type == "gpt2",
        "bias": "none",
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
    }
    target = paths.resolve(out)
    with paths.local_dir(target) as local:
        with open(os.path.join(local, ADAPTER_CONFIG), "w") as f:
            json.dump(adapter, f, indent=2)
        save_file(
            {k: np.ascontiguousarray(v) for k, v in tensors.items()},
            os.path.join(local, ADAPTER_WEIGHTS),
            metadata={"format": "pt"},
        )
    return adapter


def _head_tensors(config, model_type, leaves) -> dict[str, np.ndarray]:
    """The trained head's tensors by their HF names (PEFT's modules_to_save)."""
    if not config.lora_train_head:
        return {}
    out = {}
    for rule, ours, name in _rules(config, model_type):
        if ours[0].startswith("head/") and all(p in leaves for p in ours):
            parts = [to_hf_layout(rule.kind, leaves[p]) for p in ours]
            out[name] = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    return out


def read_adapter(directory) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(adapter_config.json, tensors) of a PEFT LoRA adapter directory (local, gs:// or a Hub
    id)."""
    folder = paths.resolve(hub.resolve(directory, "--from-peft", model=False, files=[
        ADAPTER_CONFIG, ADAPTER_WEIGHTS]))  # fmt: skip
    if not (folder / ADAPTER_CONFIG).is_file():
        raise CheckpointError(f"{folder}: no {ADAPTER_CONFIG} (not a PEFT adapter directory)")
    adapter = read_json(folder / ADAPTER_CONFIG, error=CheckpointError)
    if adapter.get("peft_type") != "LORA" or adapter.get("use_dora") or adapter.get("use_rslora"):
        raise CheckpointError(
            f"{folder}: a {adapter.get('peft_type')} adapter"
            + (" with DoRA or rsLoRA" if adapter.get("peft_type") == "LORA" else "")
            + "; Triptych reads plain LoRA adapters"
        )
    for key in ("r", "lora_alpha"):
        value = adapter.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise CheckpointError(
                f"{folder / ADAPTER_CONFIG}: {key!r} is {value!r}, not a positive number; "
                "restore the file from its source"
            )
    with paths.local_copy(folder, files_only=True) as local:
        tensors = read_safetensors(os.path.join(local, ADAPTER_WEIGHTS))
    return adapter, {k.removeprefix(_PREFIX): v for k, v in tensors.items()}


def import_adapter(adapter_dir, base_config: ModelConfig, base_params):
    """(config with LoRA, params with the adapters and any saved head) of a PEFT adapter on
    its base model, as our unmerged adapted model.

    Per-module ranks and alphas (`rank_pattern`, `alpha_pattern`, as in a fused GPT-2 `c_attn`
    adapter) are read exactly: our model has one rank and one alpha / r, so smaller adapters are
    zero-padded to the largest rank and each module's alpha / r ratio is folded into its B."""
    adapter, tensors = read_adapter(adapter_dir)
    model_type = hf.infer_model_type(base_config)
    base_config = _with_task_head(base_config, model_type, adapter, tensors)
    modules = {
        m: layers
        for m, layers in _modules(base_config, model_type).items()
        if f"{m}.lora_A.weight" in tensors
    }
    if not modules:
        targets = list(adapter.get("target_modules") or [])
        raise CheckpointError(
            f"{adapter_dir}: none of its target modules ({', '.join(targets[:3])}"
            f"{', ...' if len(targets) > 3 else ''}) is a dense layer of this {model_type} model"
        )
    leaves = {k: np.asarray(v) for k, v in hf._unstack_layers(lora.flat(base_params)).items()}
    for module, layers in modules.items():
        _check_module(adapter_dir, module, tensors, layers, leaves)
    r, alpha, ranks, scales = _ranks(adapter, {m: tensors[f"{m}.lora_A.weight"] for m in modules})
    adapted = []
    for module, layers in modules.items():
        a, b = tensors[f"{module}.lora_A.weight"], tensors[f"{module}.lora_B.weight"]
        if scales[module] != alpha / r:
            b = b * np.float32(scales[module] / (alpha / r))
        a = np.pad(a, ((0, r - ranks[module]), (0, 0)))  # zero rows and columns: same product
        b = np.pad(b, ((0, 0), (0, r - ranks[module])))
        start = 0
        for layer, size, n_in in layers:  # c_attn: q, k and v share A, each its rows of B
            shape = leaves[f"{layer}/kernel"].shape
            leaves[f"{layer}/lora_a"] = a.T.reshape(*shape[:n_in], r)
            leaves[f"{layer}/lora_b"] = b[start : start + size].T.reshape(r, *shape[n_in:])
            start += size
            adapted.append(layer)
    leaves.update(_head_from_hf(base_config, model_type, tensors, leaves))
    config = base_config.replace(
        lora_rank=r,
        lora_alpha=alpha,
        lora_dropout=float(adapter.get("lora_dropout") or 0.0),
        lora_targets=tuple(f"^{re.escape(layer)}$" for layer in adapted),
    )
    if base_config.scan_layers:
        leaves = hf._stack_layers(leaves)
    return config, lora._nested(leaves)


def _check_module(adapter_dir, module: str, tensors, layers, leaves) -> None:
    """One adapted module's lora_A (r, in) and lora_B (out, r) exist and fit its base layers."""
    a, b = (tensors.get(f"{module}.lora_{x}.weight") for x in "AB")
    problem = None
    if b is None:  # the adapted modules are those with a lora_A
        problem = "has lora_A but no lora_B"
    elif a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
        problem = f"has lora_A {a.shape} and lora_B {b.shape}, not (r, in) and (out, r)"
    else:
        layer, _, n_in = layers[0]
        fan_in = math.prod(leaves[f"{layer}/kernel"].shape[:n_in])
        fan_out = sum(size for _, size, _ in layers)
        if (a.shape[1], b.shape[0]) != (fan_in, fan_out):
            problem = (
                f"has lora_A {a.shape} and lora_B {b.shape}, but its base layer takes "
                f"{fan_in} inputs to {fan_out} outputs"
            )
    if problem:
        raise CheckpointError(
            f"{adapter_dir}: {module} {problem}; the adapter is damaged or was trained on "
            "another base model (give its base with --init-from)"
        )


def _pattern(patterns: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: the first key matching the module name's
    end (peft.utils.other.get_pattern_key)."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _ranks(adapter, a_of: dict[str, np.ndarray]):
    """(rank, alpha) of our one-rank model, and each module's rank and alpha / r."""
    r, alpha = int(adapter["r"]), float(adapter["lora_alpha"])
    ranks = {m: int(a.shape[0]) for m, a in a_of.items()}
    alphas = {m: float(_pattern(adapter.get("alpha_pattern"), m, alpha)) for m in a_of}
    scales = {m: alphas[m] / ranks[m] for m in a_of}
    if len(set(ranks.values())) == 1 and len(set(alphas.values())) == 1:
        return ranks[next(iter(a_of))], alphas[next(iter(a_of))], ranks, scales
    plain = [m for m in a_of if (ranks[m], alphas[m]) == (r, alpha)]  # the adapter's default
    ref = scales[plain[0] if plain else next(iter(a_of))]
    top = max(ranks.values())
    return top, ref * top, ranks, scales


def _head_from_hf(config, model_type, tensors, leaves) -> dict[str, np.ndarray]:
    """Our head parameters from the adapter's modules_to_save tensors."""
    expected = hf._expected_shapes(config.replace(lora_rank=0, lora_targets=(), scan_layers=False))
    out = {}
    for rule, ours, name in _rules(config, model_type):
        if name in tensors and ours[0].startswith("head/") and len(ours) == 1:
            out[ours[0]] = from_hf_layout(rule.kind, tensors[name], expected[ours[0]])
    return out


def _with_task_head(config, model_type, adapter, tensors) -> ModelConfig:
    """A headless base (a BertModel) under a classification adapter gets the adapter's head:
    the task type names it and the saved head's output rows give num_labels."""
    head = {"SEQ_CLS": "classification", "TOKEN_CLS": "token_classification"}.get(
        adapter.get("task_type") or ""
    )
    if not head or config.head != "none":
        return config
    headed = config.replace(head=head)
    for _, ours, name in _rules(headed, model_type):
        if ours == ("head/out/kernel",) and name in tensors:
            return headed.replace(num_labels=int(tensors[name].shape[0]))
    raise CheckpointError(
        f"a {adapter.get('task_type')} adapter without its head (modules_to_save) on a base "
        "without one: give --init-from a model with the task head"
    )
