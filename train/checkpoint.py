"""Orbax checkpoints behind one small interface (the only module that imports Orbax).

A checkpoint step holds three items: `state` (TrainState arrays, sharded, saved asynchronously),
`data` (the input iterator's state, JSON) and `config` (the resolved run config, JSON). Orbax
writes each step to a temporary directory and renames it when complete, so a crash mid-save never
leaves a half checkpoint behind; `latest_step` only sees complete ones.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies

from models import paths
from models.errors import UserError
from train import watchdog

log = logging.getLogger(__name__)

# Fields of ModelConfig that only change how a model runs, not which weights it has.
_EXECUTION_FIELDS = {
    "dtype",
    "attention_kernel",
    "remat_policy",
    "dropout_rate",
    "attention_dropout_rate",
    "init_std",
}


class CheckpointError(UserError):
    """A workdir or checkpoint that does not fit the run."""


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
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
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
        from train.state import SavedState, TrainState

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
        from train.state import SavedState, TrainState

        train_state = isinstance(abstract_state, TrainState)
        if train_state:
            abstract_state = SavedState.of(abstract_state)
        with watchdog.doing("checkpoint restore", self.directory / str(step)):
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(),
                    config=ocp.args.JsonRestore(),
                ),
            )
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
                return json.loads(path.read_text())
            restored = self._manager.restore(
                step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
            )
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
    ckptr = ocp.PyTreeCheckpointer()
    tree = ckptr.metadata(path).item_metadata.tree
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


WORKDIR, CONVERTED, HUGGING_FACE = "workdir", "converted", "hugging_face"


def directory_kind(directory: str | Path) -> str:
    """What a model directory holds, decided here for every reader: a training workdir
    (`checkpoints/`), a converted checkpoint (`model_config.json` + `params/`) or a Hugging Face
    directory (`config.json`), in that order.

    Raises:
      CheckpointError: the directory does not exist or holds none of the three.
    """
    directory = paths.resolve(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such directory")
    if (directory / "checkpoints").is_dir():
        return WORKDIR
    if (directory / "params").is_dir() and (directory / MODEL_CONFIG_FILE).exists():
        return CONVERTED
    if (directory / "config.json").exists():
        return HUGGING_FACE
    raise CheckpointError(
        f"{directory} is neither a converted checkpoint (model_config.json + params/) nor a "
        "training workdir (checkpoints/) nor a Hugging Face directory (config.json)"
    )


def workdir_params(workdir: str | Path, step: int):
    """The parameters of a workdir's checkpoint `step`, as numpy arrays on the host."""
    return _restore_numpy(paths.resolve(workdir) / "checkpoints" / str(step) / "state", "params")


def load_params(directory: str | Path) -> tuple[dict, Any]:
    """(model config dict, params as numpy) from a `save_params` directory or a training workdir
    (its latest checkpoint)."""
    directory = paths.resolve(directory)
    kind = directory_kind(directory)
    if kind == CONVERTED:
        config = json.loads((directory / MODEL_CONFIG_FILE).read_text())
        return config, _restore_numpy(directory / "params")
    if kind == WORKDIR:
        ckpt = Checkpointer(directory / "checkpoints", async_save=False)
        step = ckpt.latest_step()
        if step is None:
            raise CheckpointError(f"{directory / 'checkpoints'} holds no complete checkpoint")
        saved = ckpt.saved_config(step) or {}
        config = saved.get("resolved_model")
        ckpt.close()
        if not config:
            raise CheckpointError(f"{directory}: checkpoint {step} has no model config")
        from train import lora  # a LoRA checkpoint holds what trained; its base is init_from

        return lora.with_base(config, workdir_params(directory, step), saved.get("run"))
    raise CheckpointError(
        f"{directory} is neither a converted checkpoint (model_config.json + params/) nor a "
        "training workdir (checkpoints/); it is a Hugging Face directory (use --from-hf)"
    )


def latest_checkpoint(workdir, what: str = "") -> tuple[epath.Path, int, dict]:
    """(the workdir path, its latest complete step, the run config saved with it); one error
    line for a directory that is not a workdir or holds no complete checkpoint. `what` names
    the command that needs one."""
    workdir = paths.resolve(workdir)
    if directory_kind(workdir) != WORKDIR:
        need = f"{what} needs a training workdir; " if what else ""
        raise CheckpointError(f"{need}{workdir} is not a training workdir (no checkpoints/)")
    ckpt = Checkpointer(workdir / "checkpoints", async_save=False)
    try:
        step = ckpt.latest_step()
        saved = (ckpt.saved_config(step) or {}) if step is not None else {}
    finally:
        ckpt.close()
    if step is None:
        raise CheckpointError(f"{workdir / 'checkpoints'} holds no complete checkpoint")
    return workdir, step, saved
