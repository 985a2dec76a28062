"""What a model name points to, and what you get from it: the one place every reader asks.

    ref = reference.resolve("sentence-transformers/all-MiniLM-L6-v2", "init_from")
    ref.kind        # 'workdir', 'converted', 'peft_adapter' or 'hugging_face'
    ref.path        # the directory: a local path, a gs:// URL or a Hub snapshot in the cache
    ref.tokenizer   # the folder that holds its tokenizer files, or None
    ref.lora_base   # the model a LoRA workdir's or a PEFT adapter's adapters apply to, or None
    config, params = ref.load()   # a ModelConfig and numpy params, any LoRA folded in

A name is read in one order everywhere: a URL (`gs://`, models/paths.py) first, then an existing
local path, then a Hugging Face Hub id (`org/name[@revision]`, models/hub.py). The directory's
kind is decided from its files, in this order:

    workdir        a training run's directory (`checkpoints/`): its latest step, or the one
                   asked for (a number, 'latest' or 'best'), with the run config saved with it
    converted      `python -m models convert --to`'s output (`model_config.json` + `params/`)
    peft_adapter   a PEFT LoRA adapter (`adapter_config.json`), applied to its base model
    hugging_face   a Hugging Face model directory (`config.json` + weights)

`init_from`, `train.predict` and `train.evaluate`, `models convert`, the model card and
`--to-peft` all go through `resolve`; each failure is one `CheckpointError` line.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np
from etils import epath

from data.tokenizers import find_tokenizer
from models import hf, hub, paths
from models.config import ModelConfig
from models.jsonfile import read_json
from train import lora, peft
from train.checkpoint import (
    MODEL_CONFIG_FILE,
    Checkpointer,
    CheckpointError,
    check_params,
    load_params,
    model_config_of,
)
from train.checkpoint import workdir_params as stored_params

WORKDIR, CONVERTED, PEFT_ADAPTER, HUGGING_FACE = (
    "workdir",
    "converted",
    "peft_adapter",
    "hugging_face",
)
_DESCRIBED = {
    WORKDIR: "a training workdir (checkpoints/)",
    CONVERTED: "a converted checkpoint (model_config.json + params/)",
    PEFT_ADAPTER: f"a PEFT adapter ({peft.ADAPTER_CONFIG})",
    HUGGING_FACE: "a Hugging Face directory (config.json)",
}


@dataclasses.dataclass(frozen=True)
class Reference:
    """A resolved model name. The weights are read on first use of `load`, `config` or
    `params`, and then kept.

    Attributes:
      name: the name as given (a Hub id stays the model's name).
      kind: WORKDIR, CONVERTED, PEFT_ADAPTER or HUGGING_FACE.
      path: the directory.
      hub_id: the Hub id the name spelled, or None.
      step: a workdir's chosen checkpoint step, else None.
      saved: the run config saved with that step (`run`, `resolved_model`, label names), else {}.
      lora_base: the name of the model that the adapters apply to (a LoRA run's `init_from`, an
        adapter's `base_model_name_or_path` or the base given), else None.
      tokenizer: the folder of the tokenizer files (the directory or its `tokenizer/`), or None.
    """

    name: str
    kind: str
    path: epath.Path
    hub_id: hub.HubId | None = None
    step: int | None = None
    saved: dict = dataclasses.field(default_factory=dict)
    lora_base: str | None = None
    tokenizer: str | None = None

    @functools.cached_property
    def _weights(self) -> tuple[ModelConfig, dict]:
        return _LOADERS[self.kind](self)

    def load(self) -> tuple[ModelConfig, dict]:
        """(config, params): the whole model, unscanned LoRA folded into its kernels."""
        return self._weights

    @property
    def config(self) -> ModelConfig:
        return self._weights[0]

    def model_config(self) -> ModelConfig:
        """The architecture without reading the weights (for planning): a workdir's saved
        config, a converted checkpoint's, a Hugging Face config.json (its pooler and tying
        decided without the tensors), or an adapter's base's. `config` is the exact one."""
        if "_weights" in self.__dict__:
            return self.config
        if self.kind == PEFT_ADAPTER:
            return resolve(self.lora_base, "--init-from").model_config()
        if self.kind == WORKDIR:
            return model_config_of(self.saved["resolved_model"], self.path)
        if self.kind == CONVERTED:
            file = self.path / MODEL_CONFIG_FILE
            return model_config_of(read_json(file, error=CheckpointError), file)
        hf_config = read_json(self.path / "config.json", error=CheckpointError)
        return hf.config_from_hf(
            hf_config, name=self.hub_id.name if self.hub_id else self.path.name
        )

    @property
    def params(self) -> dict:
        return self._weights[1]

    @property
    def where(self) -> str:
        """How messages name it: the Hub id, or the path (with a workdir's step)."""
        if self.hub_id:
            return str(self.name)
        return f"{self.path} (step {self.step})" if self.kind == WORKDIR else str(self.path)


def locate(name: str | Path, what: str = "model", adapter: bool = False) -> epath.Path:
    """The directory `name` names: a URL or local path as is, a Hub id's cached snapshot
    (`adapter`: the adapter's files, else a model's). Raises UserError for a Hub id that
    cannot be had (models/hub.py)."""
    files = [peft.ADAPTER_CONFIG, peft.ADAPTER_WEIGHTS] if adapter else None
    return paths.resolve(hub.resolve(name, what, model=not adapter, files=files))


def kind_of(directory: epath.Path) -> str:
    """The kind of model directory (module docstring); CheckpointError where it is none."""
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such directory")
    if (directory / "checkpoints").is_dir():
        return WORKDIR
    if (directory / "params").is_dir() and (directory / MODEL_CONFIG_FILE).exists():
        return CONVERTED
    if (directory / peft.ADAPTER_CONFIG).exists():
        return PEFT_ADAPTER
    if (directory / "config.json").exists():
        return HUGGING_FACE
    raise CheckpointError(
        f"{directory} is neither a converted checkpoint (model_config.json + params/) nor a "
        "training workdir (checkpoints/) nor a Hugging Face directory (config.json) nor a PEFT "
        f"adapter ({peft.ADAPTER_CONFIG})"
    )


def resolve(
    name: str | Path,
    what: str = "model",
    *,
    kinds: tuple[str, ...] | None = None,
    step: int | str | None = None,
    base: str | None = None,
) -> Reference:
    """The `Reference` of a model name (no weights are read yet).

    Args:
      name: a path, a `gs://` URL or a Hub id.
      what: the option that named it, to start error lines (`init_from`, `--workdir`, ...).
      kinds: the kinds this use accepts (None: any); another kind is one error line.
      step: a workdir's step: a number, 'latest' (None) or 'best'.
      base: the base model of a PEFT adapter, instead of the one its config names.

    Raises:
      UserError: the name names nothing, another kind, a step that does not exist, or a Hub id
        that cannot be had.
    """
    hid = hub.hub_id(name)
    path = locate(name, what, adapter=kinds == (PEFT_ADAPTER,))
    if not path.is_dir():
        raise CheckpointError(f"{what}={str(path)!r}: no such directory")
    kind = kind_of(path)
    if kinds and kind not in kinds:
        wanted = " or ".join(_DESCRIBED[k] for k in kinds)
        raise CheckpointError(f"{what} needs {wanted}; {path} is {_DESCRIBED[kind]}")
    fields: dict[str, Any] = {}
    if kind == WORKDIR:
        fields = _workdir_fields(path, step)
    elif step is not None:
        raise CheckpointError(f"{path} is not a training workdir; it has no steps")
    elif kind == PEFT_ADAPTER:
        fields["lora_base"] = base or _adapter_base(path)
    tokenizer = find_tokenizer(str(path))
    if tokenizer is None and kind == PEFT_ADAPTER:  # an adapter uses its base's
        tokenizer = resolve(fields["lora_base"], "--init-from").tokenizer
    text = str(name) if hid else str(path)
    return Reference(text, kind, path, hid, tokenizer=tokenizer, **fields)


def _workdir_fields(path: epath.Path, step) -> dict[str, Any]:
    """The chosen step of a workdir, the run config saved with it and its LoRA base."""
    run_file = path / "config.json"
    run = read_json(run_file, error=CheckpointError).get("run", {}) if run_file.exists() else {}
    ckpt = Checkpointer(
        path / "checkpoints", best_metric=run.get("best_metric") or None, async_save=False
    )
    try:
        chosen = _pick_step(ckpt, step, path)
        saved = ckpt.saved_config(chosen) or {}
    finally:
        ckpt.close()
    if not saved.get("resolved_model"):
        raise CheckpointError(f"{path}: checkpoint {chosen} has no model config")
    model_config_of(saved["resolved_model"], path / "checkpoints" / str(chosen))
    base = None
    if saved["resolved_model"].get("lora_rank"):
        base = (saved.get("run") or {}).get("init_from")
        if not base:
            raise CheckpointError(f"{path}: a LoRA checkpoint without the init_from of its base")
    return dict(step=chosen, saved=saved, lora_base=base)


def _pick_step(ckpt: Checkpointer, step, directory: epath.Path) -> int:
    steps = ckpt.all_steps()
    if not steps:
        raise CheckpointError(f"{directory / 'checkpoints'} holds no complete checkpoint")
    if step is None or step == "latest":
        return max(steps)
    if step == "best":
        best = ckpt.best_step()
        if best is None:
            raise CheckpointError(
                f"{directory}: no checkpoint has the best_metric {ckpt.best_metric!r}; "
                "use --step latest or a step number"
            )
        return best
    if int(step) not in steps:
        raise CheckpointError(
            f"{directory}: no checkpoint at step {step}; have {', '.join(map(str, steps))}"
        )
    return int(step)


def _adapter_base(path: epath.Path) -> str:
    adapter = read_json(path / peft.ADAPTER_CONFIG, error=CheckpointError)
    base = adapter.get("base_model_name_or_path")
    if not base:
        raise CheckpointError(f"{path}: the adapter names no base model; give --init-from BASE")
    return base


# Loading, by kind --------------------------------------------------------------------------------


def _hugging_face(ref: Reference) -> tuple[ModelConfig, dict]:
    named = {"name": ref.hub_id.name} if ref.hub_id else {}  # not the snapshot's commit hash
    with paths.local_copy(ref.path, files_only=True) as local:  # safetensors reads local files
        return hf.load_pretrained(local, **named)


def _converted(ref: Reference) -> tuple[ModelConfig, dict]:
    config, params = load_params(ref.path)
    return ModelConfig.from_dict(config), params


def _workdir(ref: Reference) -> tuple[ModelConfig, dict]:
    """A workdir step's parameters; a LoRA checkpoint holds only what trained, so its base is
    read again from the run's `init_from` and the adapters are folded into it, unscanned."""
    step_dir = ref.path / "checkpoints" / str(ref.step)
    config = model_config_of(ref.saved["resolved_model"], step_dir)
    trained = stored_params(ref.path, ref.step)
    if not config.lora_rank:
        return config, check_params(ref.saved["resolved_model"], trained, step_dir)

    def leaves(tree):
        return hf._unstack_layers({k: np.asarray(v) for k, v in lora.flat(tree).items()})

    base = resolve(ref.lora_base, "init_from").params
    whole = {**leaves(base), **leaves(trained)}
    plain, params = lora.merged(config.replace(scan_layers=False), lora._nested(whole))
    expected = hf._expected_shapes(plain)
    missing = sorted(set(expected) - set(lora.flat(params)))
    if missing:
        raise CheckpointError(
            f"the base {ref.lora_base} lacks {', '.join(missing[:3])} of the LoRA checkpoint "
            f"{ref.path}"
        )
    kept = {k: v for k, v in lora.flat(params).items() if k in expected}
    return plain, lora._nested(kept)


def _peft_adapter(ref: Reference) -> tuple[ModelConfig, dict]:
    """The adapter applied to its base, merged (a plain model of the base's architecture)."""
    base = resolve(ref.lora_base, "--init-from", kinds=(HUGGING_FACE, CONVERTED, WORKDIR))
    config, params = peft.import_adapter(str(ref.path), base.config, base.params)
    return lora.merged(config, params)


_LOADERS = {
    WORKDIR: _workdir,
    CONVERTED: _converted,
    PEFT_ADAPTER: _peft_adapter,
    HUGGING_FACE: _hugging_face,
}
