"""The tables behind models.hf: how each Hugging Face model type maps onto our parameters and
ModelConfig.

Each `Spec` row (`Rule`) names our parameter path(s), the HF tensor and a layout kind; rows whose
parameter does not exist in a configured model are skipped, so one table serves every head and
option of a model type. Config mapping is one small function per direction and model type.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from models.config import ModelConfig
from models.errors import UserError


class CheckpointError(UserError):
    """A Hugging Face checkpoint that cannot be read, converted or written; one-line message."""


# Tensor layouts ----------------------------------------------------------------------------------
# kind: how one of our arrays is laid out in the HF tensor.
#   copy     same shape                       (embedding tables, relative-bias tables)
#   flat     flattened to 1-D                 (norm scales/biases, (heads, head_dim) biases)
#   row      flattened to (1, n)              (BART final_logits_bias)
#   linear   torch Linear (out, in); ours (in, *out)      -> reshape to 2-D, transpose
#   linear2  torch Linear (out, in); ours (in1, in2, out) -> the attention output projection
#   conv1d / conv1d2   GPT-2 Conv1D (in, out), no transpose
# A row with several of our arrays concatenates them along the HF output axis (GPT-2 c_attn).
OUT_AXIS = {"copy": 0, "flat": 0, "row": 1, "linear": 0, "linear2": 0, "conv1d": 1, "conv1d2": 1}


def hf_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The HF tensor shape that holds one of our arrays of `shape`."""
    if kind == "copy":
        return tuple(shape)
    if kind in ("flat", "row"):
        return (math.prod(shape),) if kind == "flat" else (1, math.prod(shape))
    n_in = 2 if kind.endswith("2") else 1
    fan_in, fan_out = math.prod(shape[:n_in]), math.prod(shape[n_in:])
    return (fan_out, fan_in) if kind.startswith("linear") else (fan_in, fan_out)


def to_hf_layout(kind: str, x: np.ndarray) -> np.ndarray:
    """Our array -> its HF layout."""
    shape = hf_shape(kind, x.shape)
    if kind.startswith("linear"):
        return x.reshape(shape[::-1]).T
    return x.reshape(shape)


def from_hf_layout(kind: str, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """An HF tensor (or its slice of a fused tensor) -> our array of `shape`."""
    return (x.T if kind.startswith("linear") else x).reshape(shape)


@dataclasses.dataclass(frozen=True)
class Rule:
    """Our parameter path(s) <-> one HF tensor. `{i}` is the layer index; other `{names}` come
    from the spec's `names(config)`. `hf` may list alternatives (tied copies); the first is
    written."""

    ours: tuple[str, ...]
    hf: tuple[str, ...]
    kind: str


def _rule(ours: str | tuple[str, ...], hf: str | tuple[str, ...], kind: str) -> Rule:
    return Rule(
        (ours,) if isinstance(ours, str) else ours, (hf,) if isinstance(hf, str) else hf, kind
    )


def _dense(ours: str, hf: str, kind: str = "linear") -> list[Rule]:
    return [
        _rule(f"{ours}/kernel", f"{hf}.weight", kind),
        _rule(f"{ours}/bias", f"{hf}.bias", "flat"),
    ]


def _norm(ours: str, hf: str) -> list[Rule]:
    return [
        _rule(f"{ours}/scale", f"{hf}.weight", "flat"),
        _rule(f"{ours}/bias", f"{hf}.bias", "flat"),
    ]


def _attention(ours: str, hf: str, q: str, k: str, v: str, o: str) -> list[Rule]:
    return (
        _dense(f"{ours}/query", f"{hf}.{q}")
        + _dense(f"{ours}/key", f"{hf}.{k}")
        + _dense(f"{ours}/value", f"{hf}.{v}")
        + _dense(f"{ours}/out", f"{hf}.{o}", "linear2")
    )


def _bert_rules() -> list[Rule]:
    layer, ours = "encoder.layer.{i}", "encoder/layers_{i}"
    return [
        _rule("token_embed/embedding", "embeddings.word_embeddings.weight", "copy"),
        _rule("encoder/embed/position/embedding", "embeddings.position_embeddings.weight", "copy"),
        _rule(
            "encoder/embed/token_type/embedding", "embeddings.token_type_embeddings.weight", "copy"
        ),
        *_norm("encoder/embed/norm", "embeddings.LayerNorm"),
        *_attention(
            f"{ours}/self_attention",
            f"{layer}.attention",
            "self.query",
            "self.key",
            "self.value",
            "output.dense",
        ),
        *_norm(f"{ours}/self_attention_norm", f"{layer}.attention.output.LayerNorm"),
        *_dense(f"{ours}/mlp/wi", f"{layer}.intermediate.dense"),
        *_dense(f"{ours}/mlp/wo", f"{layer}.output.dense"),
        *_norm(f"{ours}/mlp_norm", f"{layer}.output.LayerNorm"),
        *_dense("pooler/dense", "pooler.dense"),
        *_dense("head/transform", "cls.predictions.transform.dense"),
        *_norm("head/norm", "cls.predictions.transform.LayerNorm"),
        _rule("head/bias", ("cls.predictions.decoder.bias", "cls.predictions.bias"), "flat"),
        _rule("head/decoder/kernel", "cls.predictions.decoder.weight", "linear"),
        *_dense("head/out", "classifier"),
    ]


def _distilbert_rules() -> list[Rule]:
    layer, ours = "transformer.layer.{i}", "encoder/layers_{i}"
    return [
        _rule("token_embed/embedding", "embeddings.word_embeddings.weight", "copy"),
        _rule("encoder/embed/position/embedding", "embeddings.position_embeddings.weight", "copy"),
        *_norm("encoder/embed/norm", "embeddings.LayerNorm"),
        *_attention(
            f"{ours}/self_attention", f"{layer}.attention", "q_lin", "k_lin", "v_lin", "out_lin"
        ),
        *_norm(f"{ours}/self_attention_norm", f"{layer}.sa_layer_norm"),
        *_dense(f"{ours}/mlp/wi", f"{layer}.ffn.lin1"),
        *_dense(f"{ours}/mlp/wo", f"{layer}.ffn.lin2"),
        *_norm(f"{ours}/mlp_norm", f"{layer}.output_layer_norm"),
        *_dense("head/transform", "vocab_transform"),
        *_norm("head/norm", "vocab_layer_norm"),
        _rule("head/bias", "vocab_projector.bias", "flat"),
        _rule("head/decoder/kernel", "vocab_projector.weight", "linear"),
        *_dense("head/dense", "pre_classifier"),
        *_dense("head/out", "classifier"),
    ]


def _gpt2_rules() -> list[Rule]:
    layer, ours = "h.{i}", "decoder/layers_{i}"
    qkv = tuple(f"{ours}/self_attention/{p}" for p in ("query", "key", "value"))
    return [
        _rule("token_embed/embedding", "wte.weight", "copy"),
        _rule("decoder/embed/position/embedding", "wpe.weight", "copy"),
        *_norm(f"{ours}/self_attention_norm", f"{layer}.ln_1"),
        _rule(tuple(f"{p}/kernel" for p in qkv), f"{layer}.attn.c_attn.weight", "conv1d"),
        _rule(tuple(f"{p}/bias" for p in qkv), f"{layer}.attn.c_attn.bias", "flat"),
        *_dense(f"{ours}/self_attention/out", f"{layer}.attn.c_proj", "conv1d2"),
        *_norm(f"{ours}/mlp_norm", f"{layer}.ln_2"),
        *_dense(f"{ours}/mlp/wi", f"{layer}.mlp.c_fc", "conv1d"),
        *_dense(f"{ours}/mlp/wo", f"{layer}.mlp.c_proj", "conv1d"),
        *_norm("decoder/final_norm", "ln_f"),
        _rule("head/out/kernel", "lm_head.weight", "linear"),
    ]


def _t5_rules() -> list[Rule]:
    rules = [
        _rule(
            "token_embed/embedding",
            ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"),
            "copy",
        ),
        # transformers 5 ties a missing lm_head to the embeddings even for v1.1
        _rule("head/out/kernel", ("lm_head.weight", "shared.weight"), "linear"),
    ]
    for stack, sublayers in (
        ("encoder", ("self_attention", "mlp")),
        ("decoder", ("self_attention", "cross_attention", "mlp")),
    ):
        block, ours = f"{stack}.block.{{i}}.layer", f"{stack}/layers_{{i}}"
        rules.append(
            _rule(
                f"{stack}/relative_bias/embedding",
                f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                "copy",
            )
        )
        for j, sub in enumerate(sublayers):
            rules.append(
                _rule(f"{ours}/{sub}_norm/scale", f"{block}.{j}.layer_norm.weight", "flat")
            )
            if sub == "mlp":
                mlp = f"{block}.{j}.DenseReluDense"
                rules += [
                    _rule(f"{ours}/mlp/wi/kernel", f"{mlp}.{{wi}}.weight", "linear"),
                    _rule(f"{ours}/mlp/wi_linear/kernel", f"{mlp}.wi_1.weight", "linear"),
                    _rule(f"{ours}/mlp/wo/kernel", f"{mlp}.wo.weight", "linear"),
                ]
            else:
                name = "SelfAttention" if sub == "self_attention" else "EncDecAttention"
                rules += [
                    r
                    for r in _attention(f"{ours}/{sub}", f"{block}.{j}.{name}", "q", "k", "v", "o")
                    if r.kind != "flat"
                ]
        rules.append(_rule(f"{stack}/final_norm/scale", f"{stack}.final_layer_norm.weight", "flat"))
    return rules


def _bart_rules() -> list[Rule]:
    rules = [
        _rule(
            "token_embed/embedding",
            ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"),
            "copy",
        ),
        _rule("head/out/kernel", "lm_head.weight", "linear"),
        _rule("head/bias", "final_logits_bias", "row"),
    ]
    for stack in ("encoder", "decoder"):
        layer, ours = f"{stack}.layers.{{i}}", f"{stack}/layers_{{i}}"
        rules += [
            _rule(f"{stack}/embed/position/embedding", f"{stack}.embed_positions.weight", "copy"),
            *_norm(f"{stack}/embed/norm", f"{stack}.layernorm_embedding"),
            *_attention(
                f"{ours}/self_attention",
                f"{layer}.self_attn",
                "q_proj",
                "k_proj",
                "v_proj",
                "out_proj",
            ),
            *_norm(f"{ours}/self_attention_norm", f"{layer}.self_attn_layer_norm"),
            *_attention(
                f"{ours}/cross_attention",
                f"{layer}.encoder_attn",
                "q_proj",
                "k_proj",
                "v_proj",
                "out_proj",
            ),
            *_norm(f"{ours}/cross_attention_norm", f"{layer}.encoder_attn_layer_norm"),
            *_dense(f"{ours}/mlp/wi", f"{layer}.fc1"),
            *_dense(f"{ours}/mlp/wo", f"{layer}.fc2"),
            *_norm(f"{ours}/mlp_norm", f"{layer}.final_layer_norm"),
        ]
    return rules


# Configurations ----------------------------------------------------------------------------------

_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_new",
    "gelu_pytorch_tanh": "gelu_new",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
    "tanh": "tanh",
}


def _act(name: str) -> str:
    if name not in _ACTIVATIONS:
        raise CheckpointError(
            f"activation {name!r} is not supported; supported: " + ", ".join(_ACTIVATIONS)
        )
    return _ACTIVATIONS[name]


def unsupported(condition: bool, what: str) -> None:
    if condition:
        raise CheckpointError(f"{what} is not supported by models/ (no equivalent layer)")


def _bert_to_ours(c: dict) -> dict:
    unsupported(
        c["position_embedding_type"] != "absolute",
        f"position_embedding_type={c['position_embedding_type']!r}",
    )
    unsupported(bool(c["is_decoder"] or c["add_cross_attention"]), "a BERT decoder")
    return dict(
        family="encoder",
        vocab_size=c["vocab_size"],
        d_model=c["hidden_size"],
        num_heads=c["num_attention_heads"],
        d_ff=c["intermediate_size"],
        num_layers=c["num_hidden_layers"],
        max_positions=c["max_position_embeddings"],
        type_vocab_size=c["type_vocab_size"],
        norm_eps=c["layer_norm_eps"],
        pre_norm=False,
        final_norm=False,
        embed_norm=True,
        activation=_act(c["hidden_act"]),
        dropout_rate=c["hidden_dropout_prob"],
        attention_dropout_rate=c["attention_probs_dropout_prob"],
        init_std=c["initializer_range"],
    )


def _bert_to_hf(cfg: ModelConfig) -> dict:
    return dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.num_layers,
        max_position_embeddings=cfg.max_positions,
        type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.norm_eps,
        hidden_act=cfg.activation,
        hidden_dropout_prob=cfg.dropout_rate,
        attention_probs_dropout_prob=cfg.attention_dropout_rate,
        initializer_range=cfg.init_std,
        position_embedding_type="absolute",
        pad_token_id=0,
    )


def _distilbert_to_ours(c: dict) -> dict:
    return dict(
        family="encoder",
        vocab_size=c["vocab_size"],
        d_model=c["dim"],
        num_heads=c["n_heads"],
        d_ff=c["hidden_dim"],
        num_layers=c["n_layers"],
        max_positions=c["max_position_embeddings"],
        norm_eps=1e-12,
        pre_norm=False,
        final_norm=False,
        embed_norm=True,
        activation=_act(c["activation"]),
        classifier_activation="relu",
        dropout_rate=c["dropout"],
        attention_dropout_rate=c["attention_dropout"],
        init_std=c["initializer_range"],
    )


def _distilbert_to_hf(cfg: ModelConfig) -> dict:
    return dict(
        vocab_size=cfg.vocab_size,
        dim=cfg.d_model,
        n_heads=cfg.num_heads,
        hidden_dim=cfg.d_ff,
        n_layers=cfg.num_layers,
        max_position_embeddings=cfg.max_positions,
        activation=cfg.activation,
        dropout=cfg.dropout_rate,
        attention_dropout=cfg.attention_dropout_rate,
        initializer_range=cfg.init_std,
        pad_token_id=0,
    )


def _gpt2_to_ours(c: dict) -> dict:
    unsupported(bool(c["scale_attn_by_inverse_layer_idx"]), "scale_attn_by_inverse_layer_idx")
    unsupported(bool(c["add_cross_attention"]), "GPT-2 cross-attention")
    return dict(
        family="decoder",
        vocab_size=c["vocab_size"],
        d_model=c["n_embd"],
        num_heads=c["n_head"],
        d_ff=c["n_inner"] or 4 * c["n_embd"],
        num_layers=c["n_layer"],
        max_positions=c["n_positions"],
        norm_eps=c["layer_norm_epsilon"],
        activation=_act(c["activation_function"]),
        scale_attention=bool(c["scale_attn_weights"]),
        dropout_rate=c["resid_pdrop"],
        attention_dropout_rate=c["attn_pdrop"],
        init_std=c["initializer_range"],
    )


def _gpt2_to_hf(cfg: ModelConfig) -> dict:
    return dict(
        vocab_size=cfg.vocab_size,
        n_embd=cfg.d_model,
        n_head=cfg.num_heads,
        n_inner=cfg.d_ff,
        n_layer=cfg.num_layers,
        n_positions=cfg.max_positions,
        layer_norm_epsilon=cfg.norm_eps,
        activation_function=cfg.activation,
        scale_attn_weights=cfg.scale_attention,
        resid_pdrop=cfg.dropout_rate,
        embd_pdrop=cfg.dropout_rate,
        attn_pdrop=cfg.attention_dropout_rate,
        initializer_range=cfg.init_std,
    )


def _t5_to_ours(c: dict) -> dict:
    proj = c["feed_forward_proj"].split("-")
    activation = "gelu_new" if c["feed_forward_proj"] == "gated-gelu" else _act(proj[-1])
    return dict(
        family="encoder_decoder",
        vocab_size=c["vocab_size"],
        d_model=c["d_model"],
        num_heads=c["num_heads"],
        head_dim=c["d_kv"],
        d_ff=c["d_ff"],
        num_layers=c["num_layers"],
        num_decoder_layers=c["num_decoder_layers"] or c["num_layers"],
        max_positions=c.get("n_positions", 512),
        position="relative",
        relative_buckets=c["relative_attention_num_buckets"],
        relative_max_distance=c["relative_attention_max_distance"],
        norm="rmsnorm",
        norm_eps=c["layer_norm_epsilon"],
        activation=activation,
        gated_mlp=proj[0] == "gated",
        use_bias=False,
        scale_attention=False,
        dropout_rate=c["dropout_rate"],
        attention_dropout_rate=c["dropout_rate"],
    )


def _t5_to_hf(cfg: ModelConfig) -> dict:
    act = "gelu" if cfg.gated_mlp and cfg.activation == "gelu_new" else cfg.activation
    return dict(
        vocab_size=cfg.vocab_size,
        d_model=cfg.d_model,
        num_heads=cfg.num_heads,
        d_kv=cfg.dim_per_head,
        d_ff=cfg.d_ff,
        num_layers=cfg.num_layers,
        num_decoder_layers=cfg.decoder_layers,
        relative_attention_num_buckets=cfg.relative_buckets,
        relative_attention_max_distance=cfg.relative_max_distance,
        layer_norm_epsilon=cfg.norm_eps,
        feed_forward_proj=("gated-" if cfg.gated_mlp else "") + act,
        dropout_rate=cfg.dropout_rate,
        decoder_start_token_id=0,
    )


def _if_differs(value, default):
    return None if value == default else value


def _bart_to_ours(c: dict) -> dict:
    return dict(
        family="encoder_decoder",
        vocab_size=c["vocab_size"],
        d_model=c["d_model"],
        num_heads=c["encoder_attention_heads"],
        d_ff=c["encoder_ffn_dim"],
        num_layers=c["encoder_layers"],
        num_decoder_layers=c["decoder_layers"],
        decoder_num_heads=_if_differs(c["decoder_attention_heads"], c["encoder_attention_heads"]),
        decoder_d_ff=_if_differs(c["decoder_ffn_dim"], c["encoder_ffn_dim"]),
        max_positions=c["max_position_embeddings"],
        position_offset=2,
        norm_eps=1e-5,
        pre_norm=False,
        final_norm=False,
        embed_norm=True,
        activation=_act(c["activation_function"]),
        scale_embeddings=bool(c["scale_embedding"]),
        dropout_rate=c["dropout"],
        attention_dropout_rate=c["attention_dropout"],
        init_std=c["init_std"],
    )


def _bart_to_hf(cfg: ModelConfig) -> dict:
    return dict(
        vocab_size=cfg.vocab_size,
        d_model=cfg.d_model,
        encoder_attention_heads=cfg.num_heads,
        decoder_attention_heads=cfg.decoder_num_heads or cfg.num_heads,
        encoder_ffn_dim=cfg.d_ff,
        decoder_ffn_dim=cfg.decoder_d_ff or cfg.d_ff,
        encoder_layers=cfg.num_layers,
        decoder_layers=cfg.decoder_layers,
        max_position_embeddings=cfg.max_positions,
        activation_function=cfg.activation,
        scale_embedding=cfg.scale_embeddings,
        dropout=cfg.dropout_rate,
        attention_dropout=cfg.attention_dropout_rate,
        init_std=cfg.init_std,
    )


_BERT_DEFAULTS = dict(
    vocab_size=30522,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    max_position_embeddings=512,
    type_vocab_size=2,
    initializer_range=0.02,
    layer_norm_eps=1e-12,
    position_embedding_type="absolute",
    is_decoder=False,
    add_cross_attention=False,
)
_DISTILBERT_DEFAULTS = dict(
    vocab_size=30522,
    max_position_embeddings=512,
    n_layers=6,
    n_heads=12,
    dim=768,
    hidden_dim=3072,
    dropout=0.1,
    attention_dropout=0.1,
    activation="gelu",
    initializer_range=0.02,
)
_GPT2_DEFAULTS = dict(
    vocab_size=50257,
    n_positions=1024,
    n_embd=768,
    n_layer=12,
    n_head=12,
    n_inner=None,
    activation_function="gelu_new",
    resid_pdrop=0.1,
    attn_pdrop=0.1,
    layer_norm_epsilon=1e-5,
    initializer_range=0.02,
    scale_attn_weights=True,
    scale_attn_by_inverse_layer_idx=False,
    add_cross_attention=False,
)
_T5_DEFAULTS = dict(
    vocab_size=32128,
    d_model=512,
    d_kv=64,
    d_ff=2048,
    num_layers=6,
    num_decoder_layers=None,
    num_heads=8,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    dropout_rate=0.1,
    layer_norm_epsilon=1e-6,
    feed_forward_proj="relu",
)
_BART_DEFAULTS = dict(
    vocab_size=50265,
    max_position_embeddings=1024,
    encoder_layers=12,
    encoder_ffn_dim=4096,
    encoder_attention_heads=16,
    decoder_layers=12,
    decoder_ffn_dim=4096,
    decoder_attention_heads=16,
    activation_function="gelu",
    d_model=1024,
    dropout=0.1,
    attention_dropout=0.0,
    init_std=0.02,
    scale_embedding=False,
)

_NONE, _LM, _MLM = dict(head="none"), dict(head="lm"), dict(head="mlm")
_CLS, _TOK = dict(head="classification"), dict(head="token_classification")


@dataclasses.dataclass(frozen=True)
class Spec:
    """How one HF model type maps onto ModelConfig and our parameter tree."""

    prefix: str  # base-model prefix of the weights in head models ("bert.")
    rules: tuple[Rule, ...]
    defaults: dict[str, Any]  # HF config defaults, for config.json files that omit them
    to_ours: Any  # hf config dict -> ModelConfig fields
    to_hf: Any  # ModelConfig -> hf config fields
    # HF class -> (our head fields, raw weight names that identify it when config.json lists
    # no architectures). The first class whose fields fit a config is the one written.
    architectures: dict[str, tuple[dict[str, Any], tuple[str, ...]]]
    default_architecture: str
    output_embedding: str  # the HF name of the (possibly tied) output projection
    scaled_tie: bool = False  # T5: a tied head scales by d_model**-0.5, an untied one does not
    names: Any = lambda cfg: {}  # extra `{name}` substitutions in HF names


SPECS: dict[str, Spec] = {
    "bert": Spec(
        "bert.",
        tuple(_bert_rules()),
        _BERT_DEFAULTS,
        _bert_to_ours,
        _bert_to_hf,
        {
            "BertModel": (_NONE, ()),
            "BertForMaskedLM": (_MLM, ("cls.predictions.transform.dense.weight",)),
            "BertForPreTraining": (_MLM, ()),
            "BertForSequenceClassification": (
                _CLS,
                ("classifier.weight", "bert.pooler.dense.weight"),
            ),
            "BertForTokenClassification": (_TOK, ("classifier.weight",)),
        },
        "BertModel",
        "cls.predictions.decoder.weight",
    ),
    "distilbert": Spec(
        "distilbert.",
        tuple(_distilbert_rules()),
        _DISTILBERT_DEFAULTS,
        _distilbert_to_ours,
        _distilbert_to_hf,
        {
            "DistilBertModel": (_NONE, ()),
            "DistilBertForMaskedLM": (_MLM, ("vocab_transform.weight",)),
            "DistilBertForSequenceClassification": (_CLS, ("pre_classifier.weight",)),
            "DistilBertForTokenClassification": (_TOK, ("classifier.weight",)),
        },
        "DistilBertModel",
        "vocab_projector.weight",
    ),
    "gpt2": Spec(
        "transformer.",
        tuple(_gpt2_rules()),
        _GPT2_DEFAULTS,
        _gpt2_to_ours,
        _gpt2_to_hf,
        {"GPT2Model": (_NONE, ()), "GPT2LMHeadModel": (_LM, ("transformer.wte.weight",))},
        "GPT2Model",
        "lm_head.weight",
    ),
    "t5": Spec(
        "",
        tuple(_t5_rules()),
        _T5_DEFAULTS,
        _t5_to_ours,
        _t5_to_hf,
        {"T5Model": (_NONE, ()), "T5ForConditionalGeneration": (_LM, ())},
        "T5ForConditionalGeneration",
        "lm_head.weight",
        scaled_tie=True,
        names=lambda cfg: {"wi": "wi_0" if cfg.gated_mlp else "wi"},
    ),
    "bart": Spec(
        "model.",
        tuple(_bart_rules()),
        _BART_DEFAULTS,
        _bart_to_ours,
        _bart_to_hf,
        {
            "BartModel": (_NONE, ()),
            "BartForConditionalGeneration": (dict(head="lm", lm_bias=True), ("final_logits_bias",)),
        },
        "BartModel",
        "lm_head.weight",
    ),
}
SUPPORTED_TYPES = tuple(SPECS)
