"""lm-eval's requests as a few fixed-shape batches, scored and generated on the device mesh.

Requests that feed the model the same input share one row (train/harness/rows.py). Each batch is
padded to a length bucket (powers of two from 16 up to the model's maximum length, which is the
last bucket) and to the fixed batch size, so one task compiles a handful of programs rather than
one per batch. The batch axis is split over the mesh's `data` and `fsdp` axes
(train/partitioning.py) and the parameters are laid out by the same logical rules as in
training; every process builds the same global batch and reads back every row, so with several
processes each gets all the results.

Scoring follows lm-eval's `hf` backend (lm_eval/models/huggingface.py, `_loglikelihood_tokens`):

  causal   context + continuation, left-truncated to max_length + 1 tokens, the last dropped:
           the input is right-padded and the continuation is scored at its last positions; the
           language-model head runs at those positions only (their count is bucketed too: 4,
           16, 64, ...), which for a short answer after a long few-shot context is most of the
           head's work saved
  seq2seq  the context (its last max_length tokens) goes to the encoder, right-padded with a
           mask; the continuation is scored on the decoder, fed after the decoder start token

Each request gets the summed log-probability of its continuation and whether every continuation
token is the argmax (lm-eval's `is_greedy`). Log-probabilities are taken in float32 and summed
in float64 on the host, so that a long document's total adds no rounding of its own.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

from models.config import ModelConfig
from models.summary import abstract_params
from train import decode, partitioning
from train.harness import rows as rows_module
from train.harness.rows import Row

DEFAULT_BATCH_SIZE = 16  # rows per scoring program

SMALLEST_BUCKET = 16


def length_buckets(max_length: int, smallest: int = SMALLEST_BUCKET) -> tuple[int, ...]:
    """The padded lengths a batch may take: powers of two from `smallest`, then max_length."""
    sizes, size = [], smallest
    while size < max_length:
        sizes.append(size)
        size *= 2
    return (*sizes, max_length)


def bucket_of(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `length` tokens (the largest when none does)."""
    return next((b for b in buckets if b >= length), buckets[-1])


def place_params(config: ModelConfig, params, mesh, rules):
    """Parameters as arrays on `mesh`, each laid out by its logical axes (`rules`): numpy ones
    built piece by piece from host memory (nothing is first put on one device), arrays already
    on the devices (a training run's live parameters) resharded where their layout differs."""
    boxed = abstract_params(config)
    shardings = partitioning.logical_shardings(boxed, mesh, rules)

    def place(abstract, sharding, value):
        if value.shape != abstract.shape:
            raise ValueError(f"parameter of shape {value.shape} where the model has {abstract}")
        if isinstance(value, jax.Array):
            return jax.device_put(value.astype(abstract.dtype), sharding)
        value = np.asarray(value, abstract.dtype)
        return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])

    # the boxes' values as they are: `meta.unbox` would add sharding constraints inside a mesh
    values = jax.tree.map(
        lambda x: x.value if isinstance(x, meta.AxisMetadata) else x,
        boxed,
        is_leaf=lambda x: isinstance(x, meta.AxisMetadata),
    )
    return jax.tree.map(place, values, shardings, params)


def _token_scores(logits, targets, weights):
    """(B, T, V) logits -> log p(target) at the weighted positions (0 elsewhere), (B, T), and
    whether every weighted target is the argmax, (B,)."""
    logits = logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # (B, T)
    hits = (jnp.argmax(logits, axis=-1) == targets) | (weights == 0)  # (B, T)
    return jnp.where(weights > 0, picked, 0.0), jnp.all(hits, axis=-1)


def _lm_head(module, hidden):
    return module.head(hidden, module.token_embed)


def _causal_scores(model, params, batch):
    """The LM head runs only at the C scored positions of each row (its last C), not at all T:
    (B, C) log p(next token) and argmax hits along them, and at the last position the
    log-probabilities of the K candidate last tokens (B, K) and the argmax (B,)."""
    hidden = model.apply({"params": params}, batch["input_ids"]).last_hidden_state  # (B, T, D)
    hidden = jnp.take_along_axis(hidden, batch["positions"][..., None], axis=1)  # (B, C, D)
    logits = model.apply({"params": params}, hidden, method=_lm_head).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)  # (B, C, V)
    targets = batch["targets"]
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # (B, C)
    hits = jnp.argmax(logits, axis=-1) == targets  # (B, C)
    lasts = jnp.take_along_axis(logp[:, -1], batch["lasts"], axis=-1)  # (B, K)
    return picked, hits, lasts, jnp.argmax(logits[:, -1], axis=-1)


def _seq2seq_scores(model, params, batch):
    logits = model.apply(
        {"params": params},
        batch["input_ids"],
        batch["decoder_input_ids"],
        attention_mask=batch["attention_mask"],
    ).logits
    return _token_scores(logits, batch["targets"], batch["weights"])


class Scorer:
    """A model's parameters on a mesh, with fixed-shape programs for scoring and generation.

    Attributes:
      config: the model's config.
      batch_size: rows per program (a multiple of the mesh's batch shards).
      max_length: the longest input (the last length bucket).
      buckets: the padded lengths.
    """

    def __init__(self, config: ModelConfig, params, *, mesh, rules, batch_size: int,
                 max_length: int, pad_id: int, decoder_start_id: int):  # fmt: skip
        import models

        self.config = config
        self.model = models.build(config)
        self.mesh, self.rules = mesh, rules
        shards = int(np.prod([mesh.shape[a] for a in partitioning.batch_axes(rules)]))
        self.batch_size = -(-max(1, int(batch_size)) // shards) * shards
        self.max_length = int(max_length)
        self.buckets = length_buckets(self.max_length)
        fine = length_buckets(self.max_length, smallest=4)
        self.scored_buckets = (*fine[:-1:2], fine[-1])  # 4, 16, 64, ... and max_length
        self.pad_id, self.decoder_start_id = int(pad_id), int(decoder_start_id)
        self.seq2seq = config.family == "encoder_decoder"
        self.params = place_params(config, params, mesh, rules)
        scores = _seq2seq_scores if self.seq2seq else _causal_scores
        self.score_program = jax.jit(functools.partial(scores, self.model))

    # Batches -------------------------------------------------------------------------------------

    def _rows(self, length: int, fill: int = 0) -> np.ndarray:
        return np.full((self.batch_size, length), fill, np.int32)

    def _on_mesh(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """The same host batch on every process -> global arrays split over the batch axes."""

        def put(value):
            sharding = partitioning.batch_sharding(self.mesh, value.ndim, self.rules)
            return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])

        return {k: put(v) for k, v in batch.items()}

    def causal_batch(self, rows: Sequence[Row]) -> dict[str, np.ndarray]:
        """Rows -> the right-padded input (B, T), the last C positions of each row with the
        row's own next token there (B, C), and the candidate last tokens (B, K)."""
        length = bucket_of(max(len(r.tokens) for r in rows), self.buckets)
        scored = max(length for r in rows for _, length, _ in r.asks)
        scored = min(bucket_of(scored, self.scored_buckets), length)
        ids, lasts = self._rows(length, self.pad_id), self._rows(rows_module.CANDIDATES)
        positions, targets = self._rows(scored), self._rows(scored)
        for row, r in enumerate(rows):
            n = len(r.tokens)
            ids[row, :n], lasts[row, : len(r.lasts)] = r.tokens, r.lasts
            where = np.arange(n - scored, n)
            positions[row] = np.maximum(where, 0)
            inside = (where >= 0) & (where < n - 1)  # the next token is the row's own
            targets[row, inside] = np.asarray(r.tokens)[where[inside] + 1]
        return {"input_ids": ids, "positions": positions, "targets": targets, "lasts": lasts}

    @staticmethod
    def causal_answers(rows: Sequence[Row], outputs) -> Iterator[tuple[int, tuple[float, bool]]]:
        """(request index, (log-probability, is_greedy)) of every request of `rows`, the
        log-probabilities summed in float64 on the host."""
        picked, hits, lasts, top = outputs
        scored = picked.shape[1]
        for row, r in enumerate(rows):
            for index, length, slot in r.asks:
                along = slice(scored - length, scored - 1)  # the continuation before its last
                total = np.sum(picked[row, along], dtype=np.float64) + lasts[row, slot]
                greedy = bool(np.all(hits[row, along])) and int(top[row]) == r.lasts[slot]
                yield index, (float(total), greedy)

    def seq2seq_batch(self, rows: Sequence[Row]) -> dict[str, np.ndarray]:
        """Rows -> encoder input and mask; decoder input, targets and weights."""
        source_len = bucket_of(max(len(r.tokens) for r in rows), self.buckets)
        target_len = bucket_of(max(len(r.target) for r in rows), self.buckets)
        ids, mask = self._rows(source_len, self.pad_id), self._rows(source_len)
        decoder_ids = self._rows(target_len, self.pad_id)
        targets = self._rows(target_len)
        weights = np.zeros((self.batch_size, target_len), np.float32)
        for row, r in enumerate(rows):
            ids[row, : len(r.tokens)], mask[row, : len(r.tokens)] = r.tokens, 1
            decoder_ids[row, : len(r.target)] = [self.decoder_start_id, *r.target[:-1]]
            targets[row, : len(r.target)], weights[row, : len(r.target)] = r.target, 1.0
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "decoder_input_ids": decoder_ids,
            "targets": targets,
            "weights": weights,
        }

    @staticmethod
    def seq2seq_answers(rows: Sequence[Row], outputs) -> Iterator[tuple[int, tuple[float, bool]]]:
        logp, greedy = outputs
        for row, r in enumerate(rows):
            total = float(np.sum(logp[row], dtype=np.float64))
            for index, _, _ in r.asks:
                yield index, (total, bool(greedy[row]))

    # Programs ------------------------------------------------------------------------------------

    def score(self, pairs: Sequence[tuple[list[int], list[int]]], progress=None):
        """[(log p(continuation | context), is_greedy)] of token pairs, in their order.

        Requests that share a model input share its row (train/harness/rows.py); rows go
        longest first, `batch_size` at a time; `progress(n)` hears of each batch's requests.
        """
        if self.seq2seq:
            rows = rows_module.seq2seq_rows(pairs, self.max_length)
            build, answers = self.seq2seq_batch, self.seq2seq_answers
        else:
            rows = rows_module.causal_rows(pairs, self.max_length)
            build, answers = self.causal_batch, self.causal_answers
        results: list = [None] * len(pairs)
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            batch = self._on_mesh(build(chunk))
            with partitioning.activate(self.mesh, self.rules):
                outputs = self.score_program(self.params, batch)
            for index, answer in answers(chunk, [decode.to_host(x) for x in outputs]):
                results[index] = answer
            if progress is not None:
                progress(sum(len(r.asks) for r in chunk))
        return results

    def generate(self, prompts: Sequence[list[int]], *, max_new_tokens: int, eos_id, rng,
                 temperature=0.0, top_k=0, top_p=1.0) -> np.ndarray:  # fmt: skip
        """(rows, max_new_tokens) new tokens for up to `batch_size` prompts with the KV-cache
        decoder (train/decode.py): decoder prompts left-padded, encoder inputs right-padded."""
        if not 0 < len(prompts) <= self.batch_size:
            raise ValueError(f"generate takes 1 to {self.batch_size} prompts, not {len(prompts)}")
        length = bucket_of(max(1, max(len(p) for p in prompts)), self.buckets)
        if not self.seq2seq:  # the prompt and the new tokens share the position table
            length = min(length, self.max_length - int(max_new_tokens))
        ids, mask = self._rows(length, self.pad_id), self._rows(length)
        for row, prompt in enumerate(prompts):
            place = slice(0, len(prompt)) if self.seq2seq else slice(length - len(prompt), length)
            ids[row, place], mask[row, place] = prompt, 1
        mask[len(prompts) :, -1] = 1  # a padding row attends to one token, not none
        batch = self._on_mesh({"input_ids": ids, "attention_mask": mask})
        with partitioning.activate(self.mesh, self.rules):
            tokens = decode.generate(
                self.model,
                self.params,
                batch["input_ids"],
                attention_mask=batch["attention_mask"],
                max_new_tokens=int(max_new_tokens),
                rng=rng,
                temperature=float(temperature),
                top_k=int(top_k),
                top_p=float(top_p),
                eos_id=eos_id,
                decoder_start_id=self.decoder_start_id,
            )
        return tokens[: len(prompts)]

    def compiled_programs(self) -> int:
        """How many scoring programs have been compiled so far (one per shape used)."""
        return self.score_program._cache_size()
