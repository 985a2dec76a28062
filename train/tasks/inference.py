"""A loaded model as a task tool: classify, tag, fill masks, generate, translate and summarize
(`LoadedModel`), and the `decode` section's defaults."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import models
from data.pipeline import bucket_length
from data.rows import special_frame
from data.tokenizers import Tokenizer
from models.errors import UserError
from train import metrics as task_scores
from train.decode import beam_search, generate, left_pad, to_host
from train.losses import model_inputs

log = logging.getLogger(__name__)

TASKS = (
    "fill-mask",
    "text-generation",
    "classification",
    "ner",
    "translation",
    "summarization",
)
# task -> (family or None, head) the model must have
_NEEDS = {
    "fill-mask": ("encoder", "mlm"),
    "text-generation": ("decoder", "lm"),
    "classification": (None, "classification"),
    "ner": (None, "token_classification"),
    "translation": ("encoder_decoder", "lm"),
    "summarization": ("encoder_decoder", "lm"),
}
DECODE_DEFAULTS = dict(
    beams=1,
    length_penalty=0.6,
    max_new_tokens=64,
    temperature=0.0,
    top_k=0,
    top_p=1.0,
    batch_size=64,
)


class TaskError(UserError):
    """A task the model cannot do, or input it cannot take."""


def decode_config(**overrides) -> ml_collections.ConfigDict:
    """The `decode` config section with its defaults (see the module docstring)."""
    return ml_collections.ConfigDict({**DECODE_DEFAULTS, **overrides})


@dataclasses.dataclass
class LoadedModel:
    """A model with its parameters, tokenizer and (for workdirs) the run config it trained with.

    Attributes:
      model_config, model, params: the architecture, the built module and its parameters.
      tokenizer: the tokenizer it was trained with.
      run_config: the training run's ConfigDict (None for converted and HF directories).
      label_names: class names of a classification head; tag_names: of a token-classification
        head (IOB2 tags); None when unknown (then class indices are printed).
      source: where it was loaded from (directory and step).
      place: with several hosts, turns this host's rows (numpy) into the global batch on the
        devices of all hosts (the training loop's batch placement). Then `logits` and
        `seq2seq` run one program over every host's rows, in step, and return all rows on
        every host. None: one host.
    """

    model_config: models.ModelConfig
    model: object
    params: dict
    tokenizer: Tokenizer
    run_config: ml_collections.ConfigDict | None = None
    label_names: list[str] | None = None
    tag_names: list[str] | None = None
    source: str = ""
    place: Callable[[dict], dict] | None = None

    def __post_init__(self):
        model = self.model

        def forward(params, batch):
            out = model.apply({"params": params}, **batch, deterministic=True)
            return out.logits.astype(jnp.float32)

        self._forward = jax.jit(forward)

    # ---------------------------------------------------------------- plumbing

    @property
    def decode(self) -> ml_collections.ConfigDict:
        section = self.run_config.get("decode") if self.run_config is not None else None
        return decode_config(**(dict(section) if section else {}))

    @property
    def seq_len(self) -> int:
        if self.run_config is not None:
            return int(self.run_config.seq_len)
        return min(512, int(self.model_config.max_positions or 512))

    def require(self, task: str) -> None:
        """Raises TaskError unless the model can do `task`."""
        if task not in _NEEDS:
            raise TaskError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        family, head = _NEEDS[task]
        cfg = self.model_config
        if (family and cfg.family != family) or cfg.head != head:
            want = f"{family.replace('_', '-') + ' ' if family else ''}model with head={head!r}"
            raise TaskError(
                f"task {task!r} needs {_a(want)}; {self.source} holds {_a(cfg.family)} model "
                f"with head={cfg.head!r}"
            )

    def logits(self, batch: dict) -> np.ndarray:
        """The model's float32 logits on a numpy batch (fields as the data pipeline makes)."""
        inputs = model_inputs(self.model, batch)
        if self.place is not None:  # this host's rows of the global batch
            inputs = self.place(inputs)
        return to_host(self._forward(self.params, inputs))

    def _framed(self, texts: list[str], multiple: int = 16) -> dict[str, np.ndarray]:
        """[CLS] text [SEP] (or text EOS) rows, right-padded to a multiple of `multiple`."""
        begin, _, end = special_frame(self.tokenizer)
        room = self.seq_len - len(begin) - len(end)
        rows = [np.r_[begin, ids[:room], end] for ids in self.tokenizer.encode_batch(texts)]
        return _pad_rows(rows, self.tokenizer.pad_id or 0, multiple, self.seq_len)

    def label(self, index: int) -> str:
        names = self.label_names
        return names[index] if names and index < len(names) else str(index)

    # ---------------------------------------------------------------- tasks

    def classify(self, texts: list[str]) -> list[dict]:
        """[{"label": name, "score": probability}] per text."""
        self.require("classification")
        results = []
        for chunk in _chunks(texts, self.decode.batch_size):
            probs = _softmax(self.logits(self._framed(chunk)))
            for p in probs:
                results.append({"label": self.label(int(p.argmax())), "score": float(p.max())})
        return results

    def tag_words(self, sentences: list[list[str]]) -> list[list[str]]:
        """IOB2 tag names (or indices) for every word; words past the length limit get 'O'."""
        self.require("ner")
        begin, _, end = special_frame(self.tokenizer)
        room = self.seq_len - len(begin) - len(end)
        names = self.tag_names or [str(i) for i in range(self.model_config.num_labels)]
        out = []
        for chunk in _chunks(sentences, self.decode.batch_size):
            encoded = [self.tokenizer.encode_words(words) for words in chunk]
            rows = [np.r_[begin, ids[:room], end] for ids, _ in encoded]
            batch = _pad_rows(rows, self.tokenizer.pad_id or 0, 16, self.seq_len)
            best = self.logits(batch).argmax(-1)
            for words, (_, word_index), row in zip(chunk, encoded, best):
                tags = ["O"] * len(words)
                firsts = np.flatnonzero(np.r_[True, word_index[1:] != word_index[:-1]])
                for position in firsts[firsts < room]:
                    tags[int(word_index[position])] = names[int(row[len(begin) + position])]
                out.append(tags)
        return out

    def ner(self, texts: list[str]) -> list[list[dict]]:
        """Entities per text: [{"entity": type, "text": words, "start": i, "end": j}] over the
        text's whitespace-separated words (end exclusive)."""
        sentences = [t.split() for t in texts]
        results = []
        for words, tags in zip(sentences, self.tag_words(sentences)):
            spans = sorted(task_scores.iob2_spans(tags), key=lambda s: s[1])
            results.append(
                [
                    {"entity": kind, "text": " ".join(words[s:e]), "start": s, "end": e}
                    for kind, s, e in spans
                ]
            )
        return results

    def fill_mask(self, texts: list[str], top_k: int = 5) -> list[list[dict]]:
        """For each mask token of each text (in order): the top-k fillers,
        [{"token": id, "token_str": str, "score": p, "sequence": filled text}]."""
        self.require("fill-mask")
        mask_id = self.tokenizer.id_of("mask")
        if mask_id is None:
            raise TaskError(f"the tokenizer of {self.source} has no mask token")
        mask_str = self.tokenizer.backend.id_to_token(mask_id)
        batch = self._framed(list(texts))
        probs = _softmax(self.logits(batch))
        results = []
        lengths = batch["attention_mask"].sum(-1)
        for text, ids, length, p in zip(texts, batch["input_ids"], lengths, probs):
            ids = ids[: int(length)]
            positions = np.flatnonzero(ids == mask_id)
            if positions.size == 0:
                raise TaskError(f"no {mask_str} token in {text!r}")
            per_mask = []
            for pos in positions:
                best = np.argsort(-p[pos])[:top_k]
                fills = []
                for token in best:
                    filled = np.where(np.arange(ids.size) == pos, token, ids)
                    fills.append(
                        {
                            "token": int(token),
                            "token_str": self.tokenizer.decode([int(token)]).strip(),
                            "score": float(p[pos, token]),
                            "sequence": self.tokenizer.decode([int(t) for t in filled]),
                        }
                    )
                per_mask.append(fills)
            results.append(per_mask)
        return results

    def generate_text(self, prompts: list[str], **decode) -> list[str]:
        """Continuations of decoder prompts (prompt + generated text)."""
        self.require("text-generation")
        cfg = decode_config(**{**dict(self.decode), **decode})
        tok = self.tokenizer
        bos = tok.id_of("bos") if tok.id_of("bos") is not None else tok.id_of("eos")
        eos = tok.id_of("eos")
        out = []
        for chunk in _chunks(prompts, cfg.batch_size):
            encoded = [np.r_[[bos] if bos is not None else [], tok.encode(p)] for p in chunk]
            ids, mask = left_pad([e.astype(np.int32) for e in encoded], tok.pad_id or 0)
            tokens = self._decode(ids, mask, cfg, eos)
            out += [p + tok.decode(_until(row, eos)) for p, row in zip(chunk, tokens)]
        return out

    def seq2seq(self, texts: list[str], task: str = "translation", **decode) -> list[str]:
        """Translations or summaries: the run's task prefix, then beam search or sampling over
        length-sorted batches."""
        self.require(task)
        cfg = decode_config(**{**dict(self.decode), **decode})
        tok = self.tokenizer
        eos = tok.id_of("eos")
        prefix = (self.run_config.data.get("task_prefix") or "") if self.run_config else ""
        encoded = [
            np.r_[ids[: self.seq_len - 1], [eos] if eos is not None else []].astype(np.int32)
            for ids in tok.encode_batch([prefix + t for t in texts])
        ]
        order = np.argsort([len(e) for e in encoded], kind="stable")
        out = [""] * len(texts)
        for chunk in _chunks(list(order), cfg.batch_size):
            batch = _pad_rows([encoded[i] for i in chunk], tok.pad_id or 0, 16, self.seq_len)
            if self.place is not None:
                batch = self.place(_my_rows(batch))
            tokens = self._decode(batch["input_ids"], batch["attention_mask"], cfg, eos)
            for i, row in zip(chunk, tokens):
                out[i] = tok.decode(_until(row, eos)).strip()
        return out

    def _decode(self, ids, mask, cfg, eos) -> np.ndarray:
        common = dict(
            attention_mask=mask,
            max_new_tokens=int(cfg.max_new_tokens),
            eos_id=eos,
            decoder_start_id=self.tokenizer.decoder_start_id,
        )
        if int(cfg.beams) > 1:
            return beam_search(
                self.model,
                self.params,
                ids,
                beams=int(cfg.beams),
                length_penalty=float(cfg.length_penalty),
                **common,
            )
        return generate(
            self.model,
            self.params,
            ids,
            rng=jax.random.key(0),
            temperature=float(cfg.temperature),
            top_k=int(cfg.top_k),
            top_p=float(cfg.top_p),
            **common,
        )

    def __call__(self, task: str, inputs: list[str], **options):
        """Runs `task` on a list of texts (see the module docstring)."""
        if task == "classification":
            return self.classify(inputs)
        if task == "ner":
            return self.ner(inputs)
        if task == "fill-mask":
            return self.fill_mask(inputs, **options)
        if task == "text-generation":
            return self.generate_text(inputs, **options)
        if task in ("translation", "summarization"):
            return self.seq2seq(inputs, task, **options)
        raise TaskError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def _a(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def _my_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This host's share of a batch every host holds whole: the rows are first repeated (the
    last one) up to a multiple of the device count, so that each host gets as many rows as
    its devices can split; the repeats are decoded and dropped (`zip` with the chunk)."""
    rows = len(batch["input_ids"])
    total = -(-rows // jax.device_count()) * jax.device_count()
    per_host = total // jax.process_count()
    first = jax.process_index() * per_host
    take = np.minimum(np.arange(first, first + per_host), rows - 1)
    return {key: value[take] for key, value in batch.items()}


def _chunks(items: list, size: int):
    for start in range(0, len(items), max(1, int(size))):
        yield items[start : start + int(size)]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def _until(row: np.ndarray, eos: int | None) -> list[int]:
    row = [int(t) for t in row]
    return row[: row.index(eos)] if eos is not None and eos in row else row


def _pad_rows(rows: list[np.ndarray], pad: int, multiple: int, limit: int) -> dict:
    width = bucket_length(max(len(r) for r in rows), multiple, max(limit, 1))
    ids = np.full((len(rows), width), pad, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r[:width], 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
