"""Autoregressive decoding with the KV cache: greedy, temperature, top-k and top-p sampling.

One jitted function generates every token (a `lax.scan` over steps), so nothing recompiles per
token. Decoder-only prompts may differ in length: they are left-padded, with positions counted
from each row's first real token; the cache's validity mask hides the padding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def sample_logits(logits, rng, *, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0):
    """(B, V) logits -> (B,) token ids. temperature 0 = greedy."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        drop_sorted = jnp.cumsum(probs, axis=-1) - probs > top_p  # keep the smallest nucleus
        drop = (
            jnp.zeros_like(drop_sorted)
            .at[jnp.arange(logits.shape[0])[:, None], order]
            .set(drop_sorted)
        )
        logits = jnp.where(drop, -jnp.inf, logits)
    return jax.random.categorical(rng, logits).astype(jnp.int32)


def _empty_cache(init_fn):
    """Zeros shaped like the 'cache' collection (no parameter initialisation is run)."""
    shapes = jax.eval_shape(init_fn)["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _prefill(model, params, prompt, mask, max_new_tokens):
    """Runs a left-padded prompt (B, P) through a decoder-only model into a fresh cache sized
    for P + max_new_tokens. Returns (output, {'cache': ...}, position of each row's last token).
    """
    b, p = prompt.shape
    cache = _empty_cache(
        lambda: model.init(
            jax.random.key(0), jnp.ones((b, p + max_new_tokens), jnp.int32), decode=True
        )
    )
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    out, state = model.apply(
        {"params": params, "cache": cache},
        prompt,
        attention_mask=mask,
        positions=positions,
        decode=True,
        mutable=["cache"],
    )
    return out, state, positions[:, -1]


@functools.partial(
    jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k", "top_p", "eos_id")
)
def _generate_decoder(
    model, params, prompt, mask, rng, *, max_new_tokens, temperature, top_k, top_p, eos_id
):
    b = prompt.shape[0]
    out, state, last_pos = _prefill(model, params, prompt, mask, max_new_tokens)

    def step(carry, rng_t):
        cache, logits, pos, done = carry
        token = sample_logits(logits, rng_t, temperature=temperature, top_k=top_k, top_p=top_p)
        token = jnp.where(done, eos_id if eos_id is not None else 0, token)
        pos = pos + 1
        out, state = model.apply(
            {"params": params, "cache": cache},
            token[:, None],
            positions=pos[:, None],
            decode=True,
            mutable=["cache"],
        )
        if eos_id is not None:
            done = done | (token == eos_id)
        return (state["cache"], out.logits[:, -1], pos, done), token

    carry = (state["cache"], out.logits[:, -1], last_pos, jnp.zeros((b,), bool))
    _, tokens = jax.lax.scan(step, carry, jax.random.split(rng, max_new_tokens))
    return tokens.T  # (B, max_new_tokens)


@functools.partial(
    jax.jit,
    static_argnames=(
        "model",
        "max_new_tokens",
        "temperature",
        "top_k",
        "top_p",
        "eos_id",
        "start_id",
    ),
)
def _generate_encoder_decoder(
    model, params, inputs, mask, rng, *, max_new_tokens, temperature, top_k, top_p, eos_id, start_id
):
    b = inputs.shape[0]
    encoded = model.apply({"params": params}, inputs, mask, method=model.encode)
    cache = _empty_cache(
        lambda: model.init(
            jax.random.key(0),
            jnp.ones((b, max_new_tokens), jnp.int32),
            encoded,
            mask,
            decode=True,
            method=model.decode,
        )
    )

    def step(carry, rng_t):
        cache, token, done = carry
        out, state = model.apply(
            {"params": params, "cache": cache},
            token[:, None],
            encoded,
            mask,
            decode=True,
            mutable=["cache"],
            method=model.decode,
        )
        new = sample_logits(
            out.logits[:, -1], rng_t, temperature=temperature, top_k=top_k, top_p=top_p
        )
        new = jnp.where(done, eos_id if eos_id is not None else 0, new)
        if eos_id is not None:
            done = done | (new == eos_id)
        return (state["cache"], new, done), new

    start = jnp.full((b,), start_id, jnp.int32)
    _, tokens = jax.lax.scan(
        step, (cache, start, jnp.zeros((b,), bool)), jax.random.split(rng, max_new_tokens)
    )
    return tokens.T


def left_pad(sequences: list[np.ndarray], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Variable-length prompts -> (ids, mask), both (B, max_len), padded on the left."""
    width = max(1, max(len(s) for s in sequences))
    ids = np.full((len(sequences), width), pad_id, np.int32)
    mask = np.zeros((len(sequences), width), np.int32)
    for i, s in enumerate(sequences):
        if len(s):
            ids[i, width - len(s) :] = s
            mask[i, width - len(s) :] = 1
    return ids, mask


def to_host(x) -> np.ndarray:
    """`x` as numpy on this host, all rows of it: an array spread over several hosts (the
    global batch of a multi-host evaluation) is gathered from all of them."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def generate(
    model,
    params,
    inputs,
    *,
    attention_mask=None,
    max_new_tokens: int = 32,
    rng=None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_id: int | None = None,
    decoder_start_id: int = 0,
) -> np.ndarray:
    """Generates `max_new_tokens` tokens per row (after EOS a row repeats EOS).

    Args:
      model: a decoder-only or encoder-decoder model with an LM head.
      params: its parameters.
      inputs: (B, P) prompt ids, left-padded (decoder-only) or encoder ids (encoder-decoder).
      attention_mask: (B, P) 1 for real tokens; default all ones.
      rng: sampling key (unused when greedy).
    Returns:
      (B, max_new_tokens) int32 numpy array of new tokens.
    """
    inputs = jnp.asarray(inputs, jnp.int32)
    mask = (
        jnp.ones_like(inputs) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    )
    rng = jax.random.key(0) if rng is None else rng
    kw = dict(
        max_new_tokens=max_new_tokens,
        temperature=float(temperature),
        top_k=int(top_k),
        top_p=float(top_p),
        eos_id=eos_id,
    )
    if model.config.family == "encoder_decoder":
        out = _generate_encoder_decoder(
            model, params, inputs, mask, rng, start_id=int(decoder_start_id), **kw
        )
    else:
        out = _generate_decoder(model, params, inputs, mask, rng, **kw)
    return to_host(out)


# Beam search ---------------------------------------------------------------------------------

_NEG = -1.0e9


def _length_penalty(length, alpha: float):
    """GNMT length normalisation ((5 + length) / 6) ** alpha; alpha 0 = raw log-probability."""
    return ((5.0 + length) / 6.0) ** alpha


def _reorder_cache(cache, rows):
    """Gathers cache rows (the batch axis; axis 1 under a scanned `layers` stack)."""

    def take(path, leaf):
        if leaf.ndim == 0:
            return leaf
        scanned = any(getattr(k, "key", None) == "layers" for k in path)
        return jnp.take(leaf, rows, axis=1 if scanned else 0)

    return jax.tree_util.tree_map_with_path(take, cache)


def _beam_loop(step_fn, cache, logits, *, batch, beams, steps, eos_id, alpha, early_stopping):
    """Beam search over `steps` new tokens. `logits` (B*K, V) predict the first one;
    `step_fn(cache, tokens (B*K,), t) -> (logits, cache)` feeds one token per row."""
    b, k = batch, beams
    take = lambda x, idx: jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), 1)  # noqa: E731
    alive_score = jnp.tile(jnp.array([0.0] + [_NEG] * (k - 1)), (b, 1))  # only beam 0 is live
    zeros_seq = jnp.zeros((b, k, steps), jnp.int32)
    state = (0, cache, logits, zeros_seq, alive_score, zeros_seq, jnp.full((b, k), _NEG))

    def body(state):
        t, cache, logits, alive_seq, alive_score, fin_seq, fin_score = state
        vocab = logits.shape[-1]
        logp = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(b, k, vocab)
        scores, flat = jax.lax.top_k((alive_score[:, :, None] + logp).reshape(b, k * vocab), 2 * k)
        source, token = flat // vocab, (flat % vocab).astype(jnp.int32)  # (B, 2K)
        seqs = take(alive_seq, source).at[:, :, t].set(token)
        is_eos = token == eos_id if eos_id is not None else jnp.zeros_like(token, bool)
        # A hypothesis finishes only when its EOS ranks among the top K (as in transformers),
        # so that one beam reproduces greedy decoding.
        finishes = is_eos & (jnp.arange(2 * k) < k)[None]
        done_score = jnp.where(finishes, scores / _length_penalty(t + 1.0, alpha), _NEG)
        fin_score, keep = jax.lax.top_k(jnp.concatenate([fin_score, done_score], 1), k)
        fin_seq = take(jnp.concatenate([fin_seq, seqs], 1), keep)
        alive_score, keep = jax.lax.top_k(jnp.where(is_eos, _NEG, scores), k)
        alive_seq, source, token = take(seqs, keep), take(source, keep), take(token, keep)
        rows = (jnp.arange(b)[:, None] * k + source).reshape(-1)
        logits, cache = step_fn(_reorder_cache(cache, rows), token.reshape(-1), t)
        return t + 1, cache, logits, alive_seq, alive_score, fin_seq, fin_score

    def cond(state):
        t, fin_score = state[0], state[-1]
        if not early_stopping or eos_id is None:
            return t < steps
        return (t < steps) & ~jnp.all(fin_score[:, k - 1] > _NEG / 2)  # K finished everywhere

    t, _, _, alive_seq, alive_score, fin_seq, fin_score = jax.lax.while_loop(cond, body, state)
    alive_final = alive_score[:, 0] / _length_penalty(jnp.asarray(t, jnp.float32), alpha)
    use_fin = fin_score[:, 0] >= alive_final
    if early_stopping:  # a row with K finished hypotheses stopped there
        use_fin = use_fin | (fin_score[:, k - 1] > _NEG / 2)
    best = jnp.where(use_fin[:, None], fin_seq[:, 0], alive_seq[:, 0])
    if eos_id is not None:  # after EOS a row repeats EOS, as in `generate`
        after = jnp.cumsum(best == eos_id, axis=1) > 0
        best = jnp.where(after, eos_id, best)
    return best


@functools.partial(
    jax.jit,
    static_argnames=(
        "model",
        "beams",
        "max_new_tokens",
        "eos_id",
        "alpha",
        "early_stopping",
        "start_id",
    ),
)
def _beam_search(
    model, params, inputs, mask, *, beams, max_new_tokens, eos_id, alpha, early_stopping, start_id
):
    b = inputs.shape[0]
    inputs, mask = jnp.repeat(inputs, beams, 0), jnp.repeat(mask, beams, 0)  # (B*K, P)
    n = b * beams
    loop = functools.partial(
        _beam_loop,
        batch=b,
        beams=beams,
        steps=max_new_tokens,
        eos_id=eos_id,
        alpha=alpha,
        early_stopping=early_stopping,
    )
    if model.config.family == "encoder_decoder":
        encoded = model.apply({"params": params}, inputs, mask, method=model.encode)
        cache = _empty_cache(
            lambda: model.init(
                jax.random.key(0),
                jnp.ones((n, max_new_tokens + 1), jnp.int32),
                encoded,
                mask,
                decode=True,
                method=model.decode,
            )
        )

        def step(cache, tokens, t):
            out, state = model.apply(
                {"params": params, "cache": cache},
                tokens[:, None],
                encoded,
                mask,
                decode=True,
                mutable=["cache"],
                method=model.decode,
            )
            return out.logits[:, -1], state["cache"]

        logits, cache = step(cache, jnp.full((n,), start_id, jnp.int32), 0)
        return loop(step, cache, logits)

    out, state, last = _prefill(model, params, inputs, mask, max_new_tokens)

    def step(cache, tokens, t):
        out, state = model.apply(
            {"params": params, "cache": cache},
            tokens[:, None],
            positions=(last + 1 + t)[:, None],
            decode=True,
            mutable=["cache"],
        )
        return out.logits[:, -1], state["cache"]

    return loop(step, state["cache"], out.logits[:, -1])


def beam_search(
    model,
    params,
    inputs,
    *,
    attention_mask=None,
    beams: int = 4,
    max_new_tokens: int = 32,
    eos_id: int | None = None,
    length_penalty: float = 1.0,
    early_stopping: bool = True,
    decoder_start_id: int = 0,
) -> np.ndarray:
    """Beam search with the KV cache; returns the best hypothesis per row, (B, max_new_tokens).

    Finished hypotheses (ending in `eos_id`) are scored by their log-probability divided by
    ((5 + length) / 6) ** length_penalty (GNMT). With early_stopping the search ends as soon
    as every row has `beams` finished hypotheses; otherwise it runs `max_new_tokens` steps.
    Inputs are as in `generate` (left-padded prompts for decoder-only models).
    """
    inputs = jnp.asarray(inputs, jnp.int32)
    mask = (
        jnp.ones_like(inputs) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    )
    out = _beam_search(
        model,
        params,
        inputs,
        mask,
        beams=int(beams),
        max_new_tokens=int(max_new_tokens),
        eos_id=eos_id,
        alpha=float(length_penalty),
        early_stopping=bool(early_stopping),
        start_id=int(decoder_start_id),
    )
    return to_host(out)


def sample_text(model, params, tokenizer, config) -> str:
    """A sampled continuation of `config.sample_prompt` (text in, text out)."""
    prompt = tokenizer.encode(config.sample_prompt or "")
    if model.config.family == "decoder":
        bos = tokenizer.id_of("bos") or tokenizer.id_of("eos")
        if bos is not None:
            prompt = np.concatenate([[bos], prompt]).astype(np.int32)
    tokens = generate(
        model,
        params,
        prompt[None],
        max_new_tokens=config.sample_tokens,
        rng=jax.random.key(config.seed),
        temperature=0.8,
        top_k=40,
        eos_id=tokenizer.id_of("eos"),
        decoder_start_id=tokenizer.decoder_start_id,
    )
    body = tokenizer.decode(tokens[0])
    return (config.sample_prompt + body) if model.config.family == "decoder" else body
