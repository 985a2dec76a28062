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


@functools.partial(
    jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k", "top_p", "eos_id")
)
def _generate_decoder(
    model, params, prompt, mask, rng, *, max_new_tokens, temperature, top_k, top_p, eos_id
):
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
    last_pos = positions[:, -1]

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
    return np.asarray(out)
