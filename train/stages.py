"""Pipeline parallelism in a run: `config.mesh.stage` and `config.pipeline` -> the model's schedule.

`config.mesh.stage = S` splits every scanned layer stack into S stages over the `stage` mesh axis
(models/pipeline.py runs the schedule; the `layers` logical axis of the stacked weights maps to
`stage`, so each stage group holds only its layers and their optimizer state). Each batch shard's
rows are cut into `config.pipeline.microbatches` microbatches (0 = S) that flow through the
stages; `config.pipeline.repeats` > 1 passes them through the stages that many times (the
circular schedule: stage s holds layers s, s+S, s+2S, ... in blocks), which shrinks the bubble
(S-1)/(R.M+S-1). The stages compose with the data, fsdp, context and tensor axes.

The train and eval steps run the pipelined model. Decoding, tasks, predict and the saved config
keep the plain one, and checkpoints keep the unpipelined (L, ...) layout, so a pipelined run
resumes on any mesh and the reverse.
"""

from __future__ import annotations

import dataclasses
import math

from models.config import ModelConfig
from models.errors import UserError
from train import partitioning


class PipelineError(UserError):
    """A run that cannot be split into pipeline stages as configured."""


def microbatches(config, stages: int) -> int:
    """`config.pipeline.microbatches`, 0 meaning one per stage."""
    return int(config.pipeline.get("microbatches", 0)) or stages


def check(config, model_config: ModelConfig, mesh, rules=partitioning.DEFAULT_RULES) -> None:
    """One PipelineError line for a run that the stages cannot split as configured.

    Raises:
      PipelineError: pipeline settings without stages; a model without stacked layers;
        microbatches not a multiple of the stages; layers not divisible by stages x repeats; a
        batch shard not divisible by the microbatches; rules that do not put the stacked layers
        on the `stage` axis; fp8 (its scales would be updated once per microbatch).
    """
    stages = mesh.shape["stage"]
    pipe = config.get("pipeline", {})
    repeats, micro = int(pipe.get("repeats", 1)), int(pipe.get("microbatches", 0))
    if stages == 1:
        if repeats != 1 or micro:
            raise PipelineError(
                f"config.pipeline (microbatches={micro}, repeats={repeats}) needs pipeline "
                "stages; set --config.mesh.stage to 2 or more, or leave config.pipeline unset"
            )
        return
    micro = micro or stages
    if repeats < 1 or micro < 1:
        raise PipelineError(
            f"config.pipeline.repeats={repeats} and microbatches={micro} must be positive"
        )
    if not model_config.scan_layers:
        raise PipelineError(
            f"mesh.stage={stages} splits the stacked layers of model.scan_layers=True; add "
            "--config.model.scan_layers=True"
        )
    if micro % stages:
        raise PipelineError(
            f"config.pipeline.microbatches={micro} is not a multiple of mesh.stage={stages}; "
            f"use {stages * -(-micro // stages)} (every stage needs a microbatch in flight)"
        )
    _check_layers(model_config, stages, repeats)
    _check_batch(config, mesh, micro, rules)
    if dict(rules).get("layers") != "stage":
        raise PipelineError(
            "partitioning_rules map 'layers' to "
            f"{dict(rules).get('layers')!r}; with mesh.stage the stacked layers go on the "
            "stage axis: use ['layers', 'stage']"
        )
    if model_config.fp8:
        raise PipelineError(
            "model.fp8 with mesh.stage > 1 is not supported: each microbatch would update the "
            "fp8 scales; train fp8 models on data/fsdp/context/tensor, or turn model.fp8 off"
        )


def _check_layers(model_config: ModelConfig, stages: int, repeats: int) -> None:
    stacks = [("model.num_layers", model_config.num_layers)]
    if model_config.family == "encoder_decoder":
        stacks.append(("the decoder's layers", model_config.decoder_layers))
    for name, layers in stacks:
        if layers % (stages * repeats):
            fits = [s for s in range(2, layers + 1) if layers % (s * repeats) == 0]
            raise PipelineError(
                f"{name}={layers} is not divisible by mesh.stage={stages} x "
                f"config.pipeline.repeats={repeats} = {stages * repeats}; with {repeats} "
                f"repeat(s) use mesh.stage in {fits or 'none: lower the repeats'}"
            )


def _check_batch(config, mesh, micro: int, rules) -> None:
    shards = math.prod(mesh.shape[a] for a in partitioning.batch_axes(rules))
    rows = config.batch_size // max(1, config.microbatches)
    if rows % (shards * micro):
        need = shards * micro * max(1, config.microbatches)
        raise PipelineError(
            f"batch_size={config.batch_size} gives {rows} rows per step"
            f"{' per accumulation microbatch' if config.microbatches > 1 else ''}, not divisible "
            f"by {shards} batch shards x {micro} pipeline microbatches; use a batch_size that is "
            f"a multiple of {need}, or fewer config.pipeline.microbatches"
        )


def check_hosts(mesh) -> None:
    """One PipelineError line when the `stage` axis spans processes: each process reads its own
    rows of the global batch, while the stages of one pipeline must see the same rows."""
    if partitioning.spans_processes(mesh, "stage"):
        raise PipelineError(
            f"mesh.stage={mesh.shape['stage']} spans processes (hosts); each process reads its own "
            "rows, so the stages of one pipeline must share a process: make mesh.stage at most "
            "the devices per process, and put the other hosts on mesh.data / mesh.fsdp"
        )


def model_config(config, model_config: ModelConfig, mesh, rules=partitioning.DEFAULT_RULES):
    """The train and eval steps' model config: the schedule of `config.mesh.stage` stages (the
    plain config when there is one stage). Checks the run first (`check`)."""
    check(config, model_config, mesh, rules)
    stages = mesh.shape["stage"]
    if stages == 1:
        return model_config
    return dataclasses.replace(
        model_config,
        pipeline_stages=stages,
        pipeline_microbatches=microbatches(config, stages),
        pipeline_repeats=int(config.pipeline.get("repeats", 1)),
    )
