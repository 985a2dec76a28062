"""What an objective is, one record each: the registry the pipeline, the loss, the loop, evaluation,
the tasks, the benchmark and the planner all read.

    record = objectives.get("clm")      # also by its loss name, objectives.get("causal_lm")
    record.rows(tokenizer, seq_len, cfg) # its row builder (data/rows.py)
    record.head, record.family           # what the model needs
    record.synthetic_batch(vocab, batch=8, seq=128)

`data.objective` names a record. Every objective is a token- or sequence-level cross entropy; a
record says which roles of a canonical example it reads (`data.sources`), how rows are built
(`rows`), which batch keys result, which key holds the loss targets and which the weights, the
head and family a model needs to train on it, and which tasks (train/tasks/) score it.

It sits in `data/`, the lowest layer that builds rows, so that every layer above can read it.
Adding an objective is one `register(Objective(...))` call and its test (tests/test_objectives.py
trains a toy one end to end).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data import rows as builders
from data.errors import DataError

# The batch keys a model takes, in the order the models' __call__ declare them.
ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "positions", "segment_ids")
DECODER_INPUTS = (
    "decoder_input_ids",
    "decoder_attention_mask",
    "decoder_positions",
    "decoder_segment_ids",
)
LOSS_KEYS = ("targets", "labels", "weights")


@dataclasses.dataclass(frozen=True)
class Objective:
    """One objective.

    Attributes:
      name: the `data.objective` value.
      rows: its row builder class (`data.rows.Rows`).
      roles: the roles of a canonical example it reads (`data.sources`).
      keys: the batch keys its rows carry.
      head: the model head it trains (`models.config.HEADS`).
      family: the model family it needs, or None for any family with `head`.
      targets: the batch key holding the loss targets (below 0: ignored).
      weights: the batch key of the per-target weights; where a batch lacks it, targets >= 0
        weigh 1 and the others 0.
      loss: the name of its loss; objectives with one loss (span, denoise and seq2seq are all
        teacher-forced seq2seq) share it, and `get` accepts it for the first one registered.
      local_format: the file format of `data.files` when `data.format` is "auto" and the file
        names do not say (`data.builders`).
      tasks: the tasks of train/tasks/ whose metrics score a model trained on it.
      pretrains: the family this objective pretrains by default (the benchmark's and the
        planner's synthetic runs), or None.
    """

    name: str
    rows: type
    roles: tuple[str, ...]
    keys: tuple[str, ...]
    head: str
    family: str | None
    loss: str
    targets: str = "targets"
    weights: str = "weights"
    local_format: str = "text"
    tasks: tuple[str, ...] = ()
    pretrains: str | None = None

    def check_model(self, model_config, error=DataError) -> None:
        """Refuses a model that cannot train on this objective (e.g. masked LM on a model
        without an MLM head), naming what it needs."""
        if model_config.head != self.head:
            raise error(
                f"objective={self.loss!r} needs model.head={self.head!r} "
                f"(model {model_config.name!r} has head={model_config.head!r})"
            )
        if self.family and model_config.family != self.family:
            kind = {"decoder": "a decoder-only", "encoder_decoder": "an encoder-decoder"}
            needs = kind.get(self.family, f"a {self.family}")
            raise error(f"objective={self.loss!r} needs {needs} model")

    def synthetic_batch(
        self, vocab_size: int, *, batch: int, seq: int, target: int | None = None, seed: int = 0
    ) -> dict[str, np.ndarray]:
        """Random token ids of the objective's shapes with every position weighted 1 and no
        padding (numpy): what the benchmark times. `target` is the decoder length."""
        rng = np.random.default_rng(seed)
        decoder = "decoder_input_ids" in self.keys
        target = target or seq
        out = {}
        for key in ("input_ids", "decoder_input_ids", self.targets, self.weights):
            if key not in self.keys:
                continue
            length = target if decoder and key != "input_ids" else seq
            if key == self.weights:
                out[key] = np.ones((batch, length), np.float32)
            else:
                out[key] = rng.integers(1, vocab_size, (batch, length)).astype(np.int32)
        return out


_CAUSAL = ("input_ids", "targets", "weights", "positions", "segment_ids", "attention_mask")
_SEQ2SEQ = (
    "input_ids",
    "attention_mask",
    "decoder_input_ids",
    "decoder_attention_mask",
    "targets",
    "weights",
)
REGISTRY: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    """Adds `objective` to the registry (a name may be registered once)."""
    if objective.name in REGISTRY:
        raise ValueError(f"objective {objective.name!r} is already registered")
    REGISTRY[objective.name] = objective
    return objective


def names() -> tuple[str, ...]:
    """The `data.objective` values."""
    return tuple(REGISTRY)


def get(name: str) -> Objective:
    """The record of `name`, a `data.objective` value or a loss name (`causal_lm`, ...)."""
    if name in REGISTRY:
        return REGISTRY[name]
    for record in REGISTRY.values():
        if record.loss == name:
            return record
    raise DataError(f"data.objective: unknown objective {name!r} (one of {', '.join(REGISTRY)})")


def for_family(family: str) -> Objective:
    """The objective that pretrains `family` (causal LM, masked LM, span corruption)."""
    return next(r for r in REGISTRY.values() if r.pretrains == family)


def for_task(task: str) -> Objective:
    """The objective whose rows a task's metrics are computed over."""
    found = [r for r in REGISTRY.values() if task in r.tasks]
    if not found:
        raise DataError(f"task {task!r} is scored by no objective")
    return found[0]


register(
    Objective(
        "clm",
        builders.CausalRows,
        ("text",),
        _CAUSAL,
        head="lm",
        family="decoder",
        loss="causal_lm",
        tasks=("text-generation",),
        pretrains="decoder",
    )
)
register(
    Objective(
        "mlm",
        builders.MaskedRows,
        ("text",),
        ("input_ids", "attention_mask", "targets", "weights"),
        head="mlm",
        family=None,
        loss="masked_lm",
        tasks=("fill-mask",),
        pretrains="encoder",
    )
)
register(
    Objective(
        "span",
        builders.SpanRows,
        ("text",),
        _SEQ2SEQ,
        head="lm",
        family="encoder_decoder",
        loss="seq2seq",
        pretrains="encoder_decoder",
    )
)
register(
    Objective(
        "denoise",
        builders.DenoiseRows,
        ("text",),
        _SEQ2SEQ,
        head="lm",
        family="encoder_decoder",
        loss="seq2seq",
    )
)
register(
    Objective(
        "seq2seq",
        builders.Seq2SeqRows,
        ("source", "target"),
        _SEQ2SEQ,
        head="lm",
        family="encoder_decoder",
        loss="seq2seq",
        local_format="table",
        tasks=("translation", "summarization"),
    )
)
register(
    Objective(
        "classify",
        builders.ClassifyRows,
        ("text", "label"),
        ("input_ids", "attention_mask", "token_type_ids", "labels"),
        head="classification",
        family=None,
        loss="classification",
        targets="labels",
        local_format="table",
        tasks=("classification",),
    )
)
register(
    Objective(
        "tag",
        builders.TagRows,
        ("tokens", "tags"),
        ("input_ids", "attention_mask", "labels", "weights"),
        head="token_classification",
        family=None,
        loss="token_classification",
        targets="labels",
        local_format="conll",
        tasks=("ner",),
    )
)
