"""Builds the Hugging Face parity fixtures under tests/fixtures/hf/ (needs torch + transformers).

Each case is a tiny, seeded, randomly initialised transformers model with non-default sizes and
perturbed biases and norm parameters, saved as a normal HF directory (config.json +
model.safetensors), plus `reference.npz` with a padded input batch and the model's float32
outputs. tests/test_hf.py checks models.hf.load_pretrained + our forward pass against them
without torch.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python scripts/make_hf_fixtures.py [--out tests/fixtures/hf]
"""

from __future__ import annotations

import argparse
import os
import shutil

import numpy as np
import torch
import transformers as tf

VOCAB = 96

# case -> (config class, config kwargs, model class). Sizes are deliberately unusual: odd head
# counts, head_dim * heads != d_model (T5), d_ff not 4x, several activations and epsilons.
CASES = {
    "bert_mlm": (
        tf.BertConfig,
        dict(
            hidden_size=24,
            num_attention_heads=3,
            intermediate_size=40,
            num_hidden_layers=2,
            type_vocab_size=3,
            hidden_act="gelu_new",
            layer_norm_eps=1e-6,
            max_position_embeddings=40,
            initializer_range=0.3,
        ),
        tf.BertForMaskedLM,
    ),
    "bert_model": (
        tf.BertConfig,
        dict(
            hidden_size=32,
            num_attention_heads=4,
            intermediate_size=48,
            num_hidden_layers=2,
            hidden_act="gelu",
            max_position_embeddings=32,
            initializer_range=0.3,
        ),
        tf.BertModel,
    ),
    "bert_seqcls": (
        tf.BertConfig,
        dict(
            hidden_size=20,
            num_attention_heads=5,
            intermediate_size=36,
            num_hidden_layers=3,
            hidden_act="relu",
            num_labels=3,
            max_position_embeddings=32,
            initializer_range=0.3,
        ),
        tf.BertForSequenceClassification,
    ),
    "bert_tokcls": (
        tf.BertConfig,
        dict(
            hidden_size=24,
            num_attention_heads=2,
            intermediate_size=30,
            num_hidden_layers=2,
            num_labels=5,
            type_vocab_size=1,
            max_position_embeddings=32,
            initializer_range=0.3,
        ),
        tf.BertForTokenClassification,
    ),
    "distilbert_model": (
        tf.DistilBertConfig,
        dict(
            dim=24,
            n_heads=3,
            hidden_dim=56,
            n_layers=2,
            max_position_embeddings=32,
            initializer_range=0.3,
        ),
        tf.DistilBertModel,
    ),
    "distilbert_mlm": (
        tf.DistilBertConfig,
        dict(
            dim=32,
            n_heads=4,
            hidden_dim=40,
            n_layers=3,
            activation="relu",
            max_position_embeddings=32,
            initializer_range=0.3,
        ),
        tf.DistilBertForMaskedLM,
    ),
    "distilbert_seqcls": (
        tf.DistilBertConfig,
        dict(
            dim=24,
            n_heads=6,
            hidden_dim=32,
            n_layers=2,
            num_labels=4,
            max_position_embeddings=32,
            initializer_range=0.3,
        ),
        tf.DistilBertForSequenceClassification,
    ),
    "gpt2_model": (
        tf.GPT2Config,
        dict(
            n_embd=24,
            n_head=3,
            n_inner=40,
            n_layer=2,
            n_positions=32,
            layer_norm_epsilon=1e-6,
            initializer_range=0.3,
            bos_token_id=1,
            eos_token_id=1,
        ),
        tf.GPT2Model,
    ),
    "gpt2_lm": (
        tf.GPT2Config,
        dict(
            n_embd=32,
            n_head=4,
            n_layer=3,
            n_positions=40,
            activation_function="gelu",
            initializer_range=0.3,
            bos_token_id=1,
            eos_token_id=1,
        ),
        tf.GPT2LMHeadModel,
    ),
    "t5_v1_0": (
        tf.T5Config,
        dict(
            d_model=16,
            d_kv=6,
            num_heads=3,
            d_ff=40,
            num_layers=2,
            num_decoder_layers=3,
            relative_attention_num_buckets=16,
            relative_attention_max_distance=20,
            feed_forward_proj="relu",
            tie_word_embeddings=True,
        ),
        tf.T5ForConditionalGeneration,
    ),
    "t5_v1_1": (
        tf.T5Config,
        dict(
            d_model=24,
            d_kv=8,
            num_heads=4,
            d_ff=36,
            num_layers=2,
            num_decoder_layers=2,
            relative_attention_num_buckets=10,
            relative_attention_max_distance=24,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
            layer_norm_epsilon=1e-5,
        ),
        tf.T5ForConditionalGeneration,
    ),
    "bart_model": (
        tf.BartConfig,
        dict(
            d_model=24,
            encoder_attention_heads=3,
            decoder_attention_heads=3,
            encoder_ffn_dim=40,
            decoder_ffn_dim=40,
            encoder_layers=2,
            decoder_layers=2,
            max_position_embeddings=32,
            init_std=0.3,
        ),
        tf.BartModel,
    ),
    "bart_cg": (
        tf.BartConfig,
        dict(
            d_model=32,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=48,
            decoder_ffn_dim=48,
            encoder_layers=2,
            decoder_layers=3,
            max_position_embeddings=40,
            activation_function="gelu_new",
            scale_embedding=True,
            init_std=0.3,
        ),
        tf.BartForConditionalGeneration,
    ),
}


def perturb(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Biases ~ N(0, 0.1), norm scales ~ N(1, 0.2), BART's final_logits_bias ~ N(0, 0.5): the
    zeros/ones of a fresh init would hide a missing bias or a misplaced norm."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif p.ndim == 1:  # norm scales
                p.copy_(1.0 + 0.2 * noise)
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.copy_(
                0.5 * torch.randn(model.final_logits_bias.shape, generator=generator)
            )


def untie_lm_head(model: torch.nn.Module, generator: torch.Generator) -> None:
    """T5 v1.1 has its own lm_head; transformers 5 initialises it tied, so give it new values."""
    weight = torch.randn(model.lm_head.weight.shape, generator=generator)
    model.lm_head.weight = torch.nn.Parameter(weight)


def padded_batch(rng: np.random.Generator, lengths: list[int], vocab: int, token_types: int = 0):
    """Right-padded ids (pad id 0 never used for real tokens) and the 0/1 mask."""
    t = max(lengths)
    ids = rng.integers(3, vocab, (len(lengths), t))
    mask = (np.arange(t)[None] < np.asarray(lengths)[:, None]).astype(np.int64)
    batch = {"input_ids": ids * mask, "attention_mask": mask}
    if token_types:
        batch["token_type_ids"] = rng.integers(0, token_types, ids.shape) * mask
    return batch


def make_inputs(config, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if config.is_encoder_decoder:
        batch = padded_batch(rng, [24, 13, 5], config.vocab_size)
        dec = padded_batch(rng, [9, 22, 4], config.vocab_size)
        batch.update(
            decoder_input_ids=dec["input_ids"], decoder_attention_mask=dec["attention_mask"]
        )
        return batch
    return padded_batch(rng, [17, 9, 3], config.vocab_size, getattr(config, "type_vocab_size", 0))


def run(model: torch.nn.Module, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(**{k: torch.as_tensor(v) for k, v in inputs.items()})
    return {
        k: out[k].numpy()
        for k in ("logits", "last_hidden_state", "pooler_output", "encoder_last_hidden_state")
        if out.get(k) is not None
    }


def build_case(name: str, seed: int):
    config_cls, kwargs, model_cls = CASES[name]
    torch.manual_seed(seed)
    config = config_cls(vocab_size=VOCAB, **kwargs)
    model = model_cls(config).eval()
    generator = torch.Generator().manual_seed(seed)
    perturb(model, generator)
    if name == "t5_v1_1":
        untie_lm_head(model, generator)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("tests", "fixtures", "hf"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    for seed, name in enumerate(CASES):
        model = build_case(name, seed)
        inputs = make_inputs(model.config, seed)
        outputs = run(model, inputs)
        directory = os.path.join(args.out, name)
        model.save_pretrained(directory)
        reloaded = type(model).from_pretrained(directory).eval()
        for key, value in run(reloaded, inputs).items():  # the saved directory is faithful
            np.testing.assert_allclose(value, outputs[key], atol=1e-6, err_msg=f"{name}/{key}")
        np.savez_compressed(
            os.path.join(directory, "reference.npz"),
            **inputs,
            **{k: v.astype(np.float32) for k, v in outputs.items()},
        )
        print(f"{name}: {type(model).__name__}, outputs {sorted(outputs)}")


if __name__ == "__main__":
    main()
