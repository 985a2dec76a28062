"""Orbax checkpoints behind one small interface (the only module that imports Orbax).

A checkpoint step holds three items: `state` (TrainState arrays, sharded, saved asynchronously),
`data` (the input iterator's state, JSON) and `config` (the resolved run config, JSON). Orbax
writes each step to a temporary directory and renames it when complete, so a crash mid-save never
leaves a half checkpoint behind; `latest_step` only sees complete ones.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax.core import meta
from orbax.checkpoint import checkpoint_managers as policies

from models import paths
from models.errors import UserError, quiet_closed_event_loop
from models.jsonfile import read_json
from train import watchdog
from train.state import SavedState, TrainState

log = logging.getLogger(__name__)

# Fields of ModelConfig that only change how a model runs, not which weights it has.
_EXECUTION_FIELDS = {
    "dtype",
    "attention_kernel",
    "remat_policy",
    "causal_from_positions",
    "pipeline_stages",
    "pipeline_microbatches",
    "pipeline_repeats",
    "fp8",
    "dropout_rate",
    "attention_dropout_rate",
    "init_std",
}


class CheckpointError(UserError):
    """A workdir or checkpoint that does not fit the run."""


_DAMAGED = "restore it from a copy, or move a damaged workdir step away to use the step before it"


@contextlib.contextmanager
def reading(directory, what: str = "checkpoint"):
    """Turns any failure of Orbax (or tensorstore under it) while reading `directory` into one
    CheckpointError line that names the directory and the library's first line; our own
    UserErrors pass through. Wrap only calls into Orbax with it, so that our bugs keep their
    tracebacks."""
    quiet_closed_event_loop()  # a failed read's leftover callbacks print nothing at exit
    try:
        yield
    except (UserError, TimeoutError):  # a stalled bucket is the watchdog's (train/watchdog.py)
        raise
    except Exception as e:  # noqa: BLE001 - Orbax reports damaged files in many types
        lines = str(e).strip().splitlines()
        why = f"{type(e).__name__}: {lines[0][:300]}" if lines else type(e).__name__
        raise CheckpointError(f"{what} {directory} cannot be read ({why}); {_DAMAGED}") from e


def metric_mode(name: str) -> str:
    """'min' for losses and perplexities, 'max' for scores (accuracy, F1, BLEU, ROUGE)."""
    return "min" if any(k in name for k in ("loss", "nll", "perplexity")) else "max"


class Checkpointer:
    """Save / restore / latest_step over a workdir's `checkpoints/` directory.

    Args:
      directory: where checkpoints live.
      keep: how many of the latest steps to keep.
      best_metric: eval metric name whose best checkpoint is kept as well (None = off).
      best_mode: 'min' or 'max' for best_metric (default: 'min' for losses and perplexities,
        'max' for anything else, e.g. accuracy, F1, BLEU, ROUGE).
      async_save: save in a background thread (the train loop goes on).
      timeout_s: Orbax's deadline for a background save to commit (0: Orbax's default). Saves,
        restores and reads are marked for the run's stall watchdog (train/watchdog.py).
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        keep: int = 3,
        best_metric: str | None = None,
        best_mode: str | None = None,
        async_save: bool = True,
        timeout_s: float = 0,
    ):
        self.directory = paths.resolve(directory)  # a local path or gs:// (models/paths.py)
        self.best_metric = best_metric
        self.best_mode = best_mode or metric_mode(best_metric or "loss")
        keep_policies = [policies.LatestN(n=keep)]
        if best_metric:
            keep_policies.append(
                policies.BestN(
                    get_metric_fn=lambda m: m[best_metric],
                    reverse=self.best_mode == "min",
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        deadline = math.ceil(timeout_s) if timeout_s > 0 else 0
        options = ocp.CheckpointManagerOptions(
            # best_fn makes Orbax write each step's metrics to disk, so that the best step is
            # still known (and kept) after a restart; what is kept is the policy below.
            best_fn=(lambda m: m[best_metric]) if best_metric else None,
            best_mode=self.best_mode,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=True,
            preservation_policy=policies.AnyPreservationPolicy(keep_policies),
            async_options=ocp.AsyncOptions(timeout_secs=deadline) if deadline else None,
        )
        with watchdog.doing("checkpoint listing", self.directory):
            self._manager = ocp.CheckpointManager(
                self.directory, options=options, item_names=("state", "data", "config")
            )

    def latest_step(self) -> int | None:
        with reading(self.directory, "checkpoint directory"):
            return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        with reading(self.directory, "checkpoint directory"):
            return list(self._manager.all_steps())

    def best_step(self) -> int | None:
        """The kept step with the best `best_metric` (None without metrics)."""
        if not self.best_metric:
            return None
        scored = []
        for step in self.all_steps():
            metrics = self._manager.metrics(step) or {}
            if self.best_metric in metrics:
                scored.append((float(metrics[self.best_metric]), step))
        if not scored:
            return None
        return (min if self.best_mode == "min" else max)(scored)[1]

    def save(
        self,
        step: int,
        state,
        *,
        data_state: Any = None,
        config: dict | None = None,
        metrics: dict | None = None,
    ) -> None:
        """Starts saving `step` (asynchronously when enabled); `wait` blocks until done."""
        if isinstance(state, TrainState):  # its frozen base stays out (train/lora.py)
            state = SavedState.of(state)
        with watchdog.doing("checkpoint save", self.directory / str(step)):
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    data=ocp.args.JsonSave(data_state if data_state is not None else {}),
                    config=ocp.args.JsonSave(config or {}),
                ),
                metrics=metrics,
                force=True,
            )

    def restore(self, step: int, abstract_state) -> tuple[Any, Any, dict]:
        """(state, data_state, config) of `step`. `abstract_state` holds ShapeDtypeStructs with
        the target shardings, so a checkpoint restores onto any mesh or device count; a
        `TrainState` comes back with the abstract's `frozen` field (None: the caller fills it)."""
        train_state = isinstance(abstract_state, TrainState)
        if train_state:
            abstract_state = SavedState.of(abstract_state)
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore(),
        )
        quiet_closed_event_loop()  # a failed read's leftover callbacks print nothing at exit
        with watchdog.doing("checkpoint restore", self.directory / str(step)):
            try:
                restored = self._manager.restore(step, args=args)
            except TimeoutError:
                raise  # a stalled bucket, not a damaged file (train/watchdog.py)
            except Exception as e:  # noqa: BLE001 - damaged files, or a tree not this run's
                lines = str(e).strip().splitlines()
                raise CheckpointError(
                    f"checkpoint {self.directory / str(step)} cannot be restored into this run's "
                    f"state ({type(e).__name__}: {lines[0][:300] if lines else ''}); if its files "
                    f"are damaged, {_DAMAGED}; if the run's optimizer or model settings changed, "
                    "use a new --workdir or the settings it was trained with"
                ) from e
        state = restored["state"].train_state() if train_state else restored["state"]
        return state, restored["data"], restored["config"]

    def saved_config(self, step: int | None = None) -> dict | None:
        """The run config stored with `step` (default: the latest), read without the arrays."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        path = self.directory / str(step) / "config" / "metadata"
        with watchdog.doing("checkpoint read", path):
            if path.exists():
                return read_json(path, error=CheckpointError, fix=_DAMAGED)
            with reading(self.directory / str(step)):
                restored = self._manager.restore(
                    step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
                )
        if not isinstance(restored["config"], dict):
            raise CheckpointError(f"{self.directory / str(step)} holds no run config; {_DAMAGED}")
        return restored["config"]

    def wait(self) -> None:
        with watchdog.doing("checkpoint save", self.directory):
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for every background operation, then closes the manager."""
        # Orbax removes the temporary directories of unfinished saves in a thread started with
        # the manager, and its close() does not wait for that thread (orbax-checkpoint 0.12.8):
        # a run that failed right after start (an unknown architecture) exited under it, and
        # the thread printed a traceback as the interpreter shut down.
        cleanup = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
        with watchdog.doing("checkpoint save", self.directory):  # the last async save
            if cleanup is not None:
                cleanup()
            self._manager.wait_until_finished()
            self._manager.close()


def check_same_architecture(saved_model: dict, model: dict, workdir: str | Path) -> None:
    """Refuses to resume (and so to overwrite) a workdir trained with another architecture."""
    diffs = [
        f"{k}: saved {saved_model.get(k)!r} vs now {v!r}"
        for k, v in model.items()
        if k not in _EXECUTION_FIELDS
        and k in saved_model
        and saved_model[k] != json.loads(json.dumps(v))  # tuples are JSON lists there
    ]
    if diffs:
        raise CheckpointError(
            f"workdir {workdir} holds checkpoints of another architecture "
            f"({saved_model.get('name')!r}; {diffs[0]}); use a new --workdir or the same model"
        )


def check_same_fp8(saved_model: dict, fp8: bool, workdir: str | Path) -> None:
    """Refuses to resume with `model.fp8` switched: the checkpoints hold the fp8 scales exactly
    when the run that wrote them had fp8 on (train/state.py SavedFp8State)."""
    saved = bool(saved_model.get("fp8", False))
    if saved != fp8:
        raise CheckpointError(
            f"workdir {workdir} was trained with model.fp8={saved}; resume it with "
            f"--config.model.fp8={saved}, or start a new --workdir (init_from={workdir} "
            f"takes its weights) with model.fp8={fp8}"
        )


# Parameter-only checkpoints: what `python -m models convert` writes and reads. A directory with
# `model_config.json` (a ModelConfig) and `params/` (an Orbax PyTree of the parameters).

MODEL_CONFIG_FILE = "model_config.json"


def save_params(directory: str | Path, config_dict: dict, params) -> epath.Path:
    """Writes `directory/model_config.json` and `directory/params/` (refuses to overwrite)."""
    directory = paths.resolve(directory)
    if (directory / "params").exists():
        raise CheckpointError(f"{directory / 'params'} already exists; choose a new directory")
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / "params", params)
        ckptr.wait_until_finished()
    (directory / MODEL_CONFIG_FILE).write_text(json.dumps(config_dict, indent=2))
    return directory


def _restore_numpy(path: epath.Path, subtree: str | None = None):
    """Restores an Orbax PyTree at `path` as numpy arrays (only `subtree` when given)."""
    with reading(path), ocp.PyTreeCheckpointer() as ckptr:
        metadata = ckptr.metadata(path).item_metadata
        tree = None if metadata is None else metadata.tree
        if not isinstance(tree, dict) or (subtree is not None and subtree not in tree):
            raise CheckpointError(
                f"checkpoint {path} has no readable tree metadata (_METADATA"
                f"{' with ' + subtree if subtree else ''}); {_DAMAGED}"
            )
        if subtree is not None:
            tree = {subtree: tree[subtree]}
        args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        restored = ckptr.restore(
            path,
            args=ocp.args.PyTreeRestore(
                item=tree, restore_args=args, partial_restore=subtree is not None
            ),
        )
    return restored if subtree is None else restored[subtree]


def model_config_of(config_dict, source):
    """The ModelConfig that a checkpoint's saved config describes; one CheckpointError line
    naming `source` when it is not one (unknown fields, values of the wrong type)."""
    import models

    try:
        if not isinstance(config_dict, dict):
            raise TypeError(f"a JSON {type(config_dict).__name__}, not an object")
        return models.ModelConfig.from_dict(config_dict)
    except (UserError, TypeError, ValueError) as e:
        lines = str(e).strip().splitlines()
        raise CheckpointError(
            f"{source}: the saved model config is not valid "
            f"({lines[0][:300] if lines else type(e).__name__}); {_DAMAGED}"
        ) from None


@functools.lru_cache(maxsize=8)
def _model_shapes(config) -> dict[str, tuple]:
    """The parameter shapes of a config's model, from an abstract init (nothing allocated)."""
    import models

    model = models.build(config)
    ids = np.zeros((1, 1), np.int32)
    inputs = (ids, ids) if config.family == "encoder_decoder" else (ids,)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs))
    return _shapes(meta.unbox({"params": variables["params"]}))  # not fp8's scales


def check_params(config_dict: dict, params, source) -> Any:
    """`params` if their tree and shapes are those of the model that `config_dict` describes;
    else one CheckpointError line naming `source` (a damaged or hand-edited checkpoint)."""
    config = model_config_of(config_dict, source)
    try:
        want = _model_shapes(config)
    except (TypeError, ValueError) as e:  # a value that passed the config's own checks
        lines = str(e).strip().splitlines()
        raise CheckpointError(
            f"{source}: the saved model config does not build a model "
            f"({lines[0][:300] if lines else type(e).__name__}); {_DAMAGED}"
        ) from None
    got = _shapes({"params": params})
    if got != want:
        name = sorted(set(want) ^ set(got)) or [k for k in want if want[k] != got[k]]
        raise CheckpointError(
            f"{source}: the parameters do not fit the saved model config (e.g. {name[0]}: "
            f"config {want.get(name[0])}, checkpoint {got.get(name[0])}); {_DAMAGED}"
        )
    return params


def _shapes(tree) -> dict[str, tuple]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(p, "key", p)) for p in k): tuple(np.shape(v)) for k, v in flat}


def workdir_params(workdir: str | Path, step: int):
    """The parameters of a workdir's checkpoint `step`, as numpy arrays on the host."""
    return _restore_numpy(paths.resolve(workdir) / "checkpoints" / str(step) / "state", "params")


def load_params(directory: str | Path) -> tuple[dict, Any]:
    """(model config dict, params as numpy) as stored in a `save_params` directory or in a
    training workdir's latest checkpoint. A LoRA workdir stores only its adapters and head:
    `train.reference` reads it whole (the adapters folded into their base)."""
    directory = paths.resolve(directory)
    if (directory / MODEL_CONFIG_FILE).exists() and (directory / "params").is_dir():
        file = directory / MODEL_CONFIG_FILE
        config = read_json(file, error=CheckpointError, fix=_DAMAGED)
        return config, check_params(config, _restore_numpy(directory / "params"), file)
    if not (directory / "checkpoints").is_dir():
        raise CheckpointError(
            f"{directory} is neither a converted checkpoint (model_config.json + params/) nor a "
            "training workdir (checkpoints/)"
        )
    ckpt = Checkpointer(directory / "checkpoints", async_save=False)
    try:
        step = ckpt.latest_step()
        saved = (ckpt.saved_config(step) or {}) if step is not None else {}
    finally:
        ckpt.close()
    if step is None:
        raise CheckpointError(f"{directory / 'checkpoints'} holds no complete checkpoint")
    config = saved.get("resolved_model")
    if not config:
        raise CheckpointError(f"{directory}: checkpoint {step} has no model config")
    step_dir = directory / "checkpoints" / str(step)
    if model_config_of(config, step_dir).lora_rank:
        raise CheckpointError(
            f"{directory} holds LoRA adapters without their base; read it with "
            "train.reference.resolve(...).load()"
        )
    return config, check_params(config, workdir_params(directory, step), step_dir)
