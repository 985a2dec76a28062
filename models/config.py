"""Model configuration: one frozen dataclass for every family, and the named-architecture table.

A `ModelConfig` describes a network completely; `models.build(config)` turns it into a linen Module.
The three families differ only in which features are switched on (position scheme, norm placement,
token types, pooler, head), never by a branch on the family name inside shared code.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from models.errors import UserError, one_of

FAMILIES = ("encoder", "decoder", "encoder_decoder")
POSITIONS = ("learned", "sinusoidal", "relative", "rope", "none")
NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("relu", "gelu", "gelu_new", "silu", "tanh")
HEADS = ("none", "lm", "mlm", "classification", "token_classification")
KERNELS = ("auto", "xla", "jax", "cudnn", "splash", "blocked")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "save_attention_out")
DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(UserError):
    """A model configuration that cannot be built; the message names the field and the fix."""


def _choice(field: str, value: Any, allowed: tuple[str, ...]) -> None:
    one_of(field, value, allowed, ConfigError)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of one transformer.

    Sizes follow Hugging Face names where one exists (d_model = hidden_size, d_ff =
    intermediate_size, num_heads = num_attention_heads). `num_layers` is the encoder depth for
    encoders and encoder-decoders and the decoder depth for decoder-only models.
    """

    name: str = "custom"
    family: str = "decoder"
    vocab_size: int = 50257
    d_model: int = 768
    num_heads: int = 12
    num_kv_heads: int | None = None  # grouped-query attention; None = num_heads
    head_dim: int | None = None  # None = d_model // num_heads
    d_ff: int = 3072
    num_layers: int = 12
    num_decoder_layers: int | None = None  # encoder-decoders; None = num_layers
    decoder_num_heads: int | None = None  # encoder-decoders (BART allows its own); None = same
    decoder_d_ff: int | None = None  # encoder-decoders; None = d_ff
    max_positions: int = 1024

    # Positions: learned table (BERT, GPT-2, BART), sinusoidal (2017 Transformer), T5 relative
    # bias, rotary (modern decoders) or none.
    position: str = "learned"
    position_offset: int = 0  # BART's learned table starts at index 2
    relative_buckets: int = 32
    relative_max_distance: int = 128
    rope_theta: float = 10000.0
    type_vocab_size: int = 0  # BERT token types; 0 = none

    # Block structure.
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    pre_norm: bool = True  # GPT-2/T5 pre-LN; BERT/BART/2017 Transformer post-LN
    final_norm: bool = True  # norm after the last block (pre-LN stacks)
    embed_norm: bool = False  # norm on the embeddings (BERT, BART's layernorm_embedding)
    scale_embeddings: bool = False  # multiply token vectors by sqrt(d_model) (2017 Transformer)
    activation: str = "gelu_new"
    gated_mlp: bool = False  # GEGLU / SwiGLU
    use_bias: bool = True
    scale_attention: bool = True  # 1/sqrt(head_dim); T5 folds it into the initialisation

    # Heads.
    head: str = "none"
    tie_embeddings: bool = True
    scale_tied_logits: bool = False  # T5 v1.0: hidden * d_model**-0.5 before the tied projection
    lm_bias: bool = False
    pooler: bool = False  # BERT pooler (dense + tanh on the first token)
    classifier_activation: str = "relu"  # pre-classifier dense when there is no pooler
    num_labels: int = 2

    # Regularisation and initialisation.
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    init_std: float = 0.02

    # Execution: runtime choices that change speed or memory, not the function.
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    attention_kernel: str = "auto"
    scan_layers: bool = False
    remat_policy: str = "none"
    # Causal masks compare position ids instead of row slots, so that a row whose tokens were
    # reordered (load-balanced context parallelism, train/context.py) stays causal. Position ids
    # must rise within each packed segment, as the input pipeline's do. The fused kernels that
    # take causality as a flag then get the mask instead.
    causal_from_positions: bool = False
    # Pipeline parallelism (models/pipeline.py): each scanned layer stack runs as
    # `pipeline_stages` stages over the `stage` mesh axis, its batch cut into
    # `pipeline_microbatches` microbatches, the stages passed `pipeline_repeats` times (1 = GPipe,
    # more = the circular schedule). A run sets them from config.mesh.stage and config.pipeline.
    pipeline_stages: int = 1
    pipeline_microbatches: int = 1
    pipeline_repeats: int = 1
    # The attention projections and the MLP multiply in fp8 (flax's fp8 ops: e4m3 inputs and
    # kernels, e5m2 gradients, delayed scaling from an amax history). Their scales live in the
    # `_overwrite_with_gradient` collection, which the train step carries outside the
    # optimizer; embeddings and heads keep `dtype`. Emulated on a CPU; fast on fp8 GPUs.
    fp8: bool = False

    # Low-rank adapters (LoRA, Hu et al. 2021); rank 0 = off. Every dense kernel whose module
    # path ('encoder/layers_0/self_attention/query') one of `lora_targets` (regexes) finds gets
    # y += (lora_alpha / lora_rank) * dropout(x) A B, with B = 0 at initialisation (train/lora.py
    # fills these from the run's `lora` section and freezes everything else).
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ()
    lora_train_head: bool = True  # a task head trains with the adapters (not an LM head)

    def __post_init__(self):
        _choice("family", self.family, FAMILIES)
        _choice("position", self.position, POSITIONS)
        _choice("norm", self.norm, NORMS)
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("classifier_activation", self.classifier_activation, ACTIVATIONS)
        _choice("head", self.head, HEADS)
        _choice("attention_kernel", self.attention_kernel, KERNELS)
        _choice("remat_policy", self.remat_policy, REMAT_POLICIES)
        _choice("dtype", self.dtype, DTYPES)
        _choice("param_dtype", self.param_dtype, DTYPES)
        for field in ("vocab_size", "d_model", "num_heads", "d_ff", "num_layers", "max_positions"):
            if getattr(self, field) <= 0:
                raise ConfigError(f"{field}={getattr(self, field)} must be a positive integer")
        if self.head_dim is None and self.d_model % self.num_heads:
            raise ConfigError(
                f"num_heads={self.num_heads} does not divide d_model={self.d_model}; choose "
                f"num_heads among the divisors of d_model or set head_dim explicitly"
            )
        if (
            self.decoder_num_heads
            and self.head_dim is None
            and self.d_model % (self.decoder_num_heads)
        ):
            raise ConfigError(
                f"decoder_num_heads={self.decoder_num_heads} does not divide "
                f"d_model={self.d_model}; choose a divisor or set head_dim explicitly"
            )
        if self.num_heads % self.kv_heads:
            raise ConfigError(
                f"num_kv_heads={self.num_kv_heads} does not divide num_heads={self.num_heads}; "
                "grouped-query attention needs num_heads to be a multiple of num_kv_heads"
            )
        if self.position == "rope" and self.dim_per_head % 2:
            raise ConfigError(f"head_dim={self.dim_per_head} must be even for rotary positions")
        if self.head == "lm" and self.family == "encoder":
            raise ConfigError("head='lm' needs a decoder; use head='mlm' for encoder-only models")
        if self.head == "mlm" and self.family != "encoder":
            raise ConfigError("head='mlm' is for encoder-only models; use head='lm' for decoders")
        if self.type_vocab_size < 0 or self.num_labels <= 0:
            raise ConfigError("type_vocab_size must be >= 0 and num_labels > 0")
        for field in ("dropout_rate", "attention_dropout_rate", "lora_dropout"):
            if not 0.0 <= getattr(self, field) < 1.0:
                raise ConfigError(f"{field}={getattr(self, field)} must be in [0, 1)")
        if self.lora_rank < 0:
            raise ConfigError(f"lora.rank={self.lora_rank} must be >= 0 (0 turns LoRA off)")
        self._check_pipeline()

    def _check_pipeline(self) -> None:
        stages, micro, repeats = (
            self.pipeline_stages,
            self.pipeline_microbatches,
            self.pipeline_repeats,
        )
        if min(stages, micro, repeats) < 1:
            raise ConfigError(
                f"pipeline stages={stages}, microbatches={micro}, repeats={repeats} must all "
                "be >= 1"
            )
        if stages == 1:
            return
        if not self.scan_layers:
            raise ConfigError(
                f"{stages} pipeline stages need the stacked layers of scan_layers=True; "
                "set model.scan_layers=True"
            )
        if self.fp8:
            raise ConfigError(
                "fp8 with pipeline stages is not supported (each microbatch would update the "
                "fp8 scales); turn fp8 off or use one stage"
            )
        if micro % stages:
            raise ConfigError(
                f"pipeline microbatches={micro} is not a multiple of the {stages} stages; "
                f"use {stages * max(1, -(-micro // stages))} microbatches"
            )
        per_round = stages * repeats
        stacks = [("num_layers", self.num_layers)]
        if self.family == "encoder_decoder":
            stacks.append(("num_decoder_layers", self.decoder_layers))
        for name, layers in stacks:
            if layers % per_round:
                raise ConfigError(
                    f"{name}={layers} is not divisible by {stages} stages x {repeats} repeats; "
                    "choose stages and repeats whose product divides the layers"
                )

    # Derived sizes -------------------------------------------------------------------------------

    @property
    def lora(self) -> tuple[int, float, float, tuple[str, ...]] | None:
        """(rank, alpha, dropout, targets) for the dense layers, or None without LoRA."""
        if not self.lora_rank:
            return None
        return (self.lora_rank, self.lora_alpha, self.lora_dropout, tuple(self.lora_targets))

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.d_model // self.num_heads

    @property
    def decoder_layers(self) -> int:
        return self.num_decoder_layers or self.num_layers

    def decoder_config(self) -> ModelConfig:
        """The config the decoder stack of an encoder-decoder runs with (its own head count and
        MLP width where they differ from the encoder's)."""
        return self.replace(
            num_heads=self.decoder_num_heads or self.num_heads,
            d_ff=self.decoder_d_ff or self.d_ff,
            num_kv_heads=None if self.decoder_num_heads else self.num_kv_heads,
            decoder_num_heads=None,
            decoder_d_ff=None,
        )

    # Conversions ---------------------------------------------------------------------------------

    def replace(self, **changes) -> ModelConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(
                f"unknown model config field(s) {sorted(unknown)}; fields are: "
                + ", ".join(f.name for f in dataclasses.fields(self))
            )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        if "lora_targets" in d:  # a JSON list
            d["lora_targets"] = tuple(d["lora_targets"])
        return cls().replace(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# Named architectures -----------------------------------------------------------------------------
# Published sizes. Counts in the comments are the Hugging Face base-model parameter counts that the
# tests check against.

_BERT = dict(
    family="encoder",
    vocab_size=30522,
    max_positions=512,
    type_vocab_size=2,
    norm_eps=1e-12,
    pre_norm=False,
    final_norm=False,
    embed_norm=True,
    activation="gelu",
    pooler=True,
)
_DISTILBERT = dict(_BERT, type_vocab_size=0, pooler=False)
_GPT2 = dict(
    family="decoder",
    vocab_size=50257,
    max_positions=1024,
    activation="gelu_new",
    head="lm",
)
_GPT3 = dict(_GPT2, max_positions=2048, dropout_rate=0.0, attention_dropout_rate=0.0)
_LLAMA = dict(
    family="decoder",
    position="rope",
    norm="rmsnorm",
    norm_eps=1e-5,
    activation="silu",
    gated_mlp=True,
    use_bias=False,
    tie_embeddings=False,
    head="lm",
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
)
_T5 = dict(
    family="encoder_decoder",
    vocab_size=32128,
    max_positions=512,
    position="relative",
    norm="rmsnorm",
    norm_eps=1e-6,
    activation="relu",
    use_bias=False,
    scale_attention=False,
    head="lm",
    scale_tied_logits=True,
    head_dim=64,
    attention_dropout_rate=0.1,
)
_T5_V1_1 = dict(
    _T5, activation="gelu_new", gated_mlp=True, tie_embeddings=False, scale_tied_logits=False
)
_BART = dict(
    family="encoder_decoder",
    vocab_size=50265,
    max_positions=1024,
    position_offset=2,
    pre_norm=False,
    final_norm=False,
    embed_norm=True,
    activation="gelu",
    head="lm",
    attention_dropout_rate=0.0,
)
_TRANSFORMER = dict(
    family="encoder_decoder",
    vocab_size=37000,
    max_positions=1024,
    position="sinusoidal",
    pre_norm=False,
    final_norm=False,
    activation="relu",
    scale_embeddings=True,
    head="lm",
    norm_eps=1e-6,
    attention_dropout_rate=0.0,
)

_ARCHITECTURES: dict[str, dict[str, Any]] = {
    # Encoder-only.
    "bert-base-uncased": dict(_BERT),  # 109,482,240
    "bert-base-cased": dict(_BERT, vocab_size=28996),  # 108,310,272
    "bert-large-uncased": dict(_BERT, d_model=1024, num_heads=16, d_ff=4096, num_layers=24),
    "bert-large-cased": dict(
        _BERT, vocab_size=28996, d_model=1024, num_heads=16, d_ff=4096, num_layers=24
    ),
    "distilbert-base-uncased": dict(_DISTILBERT, num_layers=6),  # 66,362,880
    "distilbert-base-cased": dict(_DISTILBERT, vocab_size=28996, num_layers=6),
    "minilm-l12-h384-uncased": dict(_BERT, d_model=384, num_heads=12, d_ff=1536, num_layers=12),
    "all-minilm-l6-v2": dict(_BERT, d_model=384, num_heads=12, d_ff=1536, num_layers=6),
    # Decoder-only.
    "gpt2": dict(_GPT2),  # 124,439,808
    "gpt2-medium": dict(_GPT2, d_model=1024, num_heads=16, d_ff=4096, num_layers=24),
    "gpt2-large": dict(_GPT2, d_model=1280, num_heads=20, d_ff=5120, num_layers=36),
    "gpt2-xl": dict(_GPT2, d_model=1600, num_heads=25, d_ff=6400, num_layers=48),
    # GPT-3 sizes from Brown et al. 2020, Table 2.1 (dense attention in every layer).
    "gpt3-small": dict(_GPT3),
    "gpt3-medium": dict(_GPT3, d_model=1024, num_heads=16, d_ff=4096, num_layers=24),
    "gpt3-large": dict(_GPT3, d_model=1536, num_heads=16, d_ff=6144, num_layers=24),
    "gpt3-xl": dict(_GPT3, d_model=2048, num_heads=24, head_dim=128, d_ff=8192, num_layers=24),
    "gpt3-2.7b": dict(_GPT3, d_model=2560, num_heads=32, head_dim=80, d_ff=10240, num_layers=32),
    "gpt3-6.7b": dict(_GPT3, d_model=4096, num_heads=32, d_ff=16384, num_layers=32),
    "gpt3-13b": dict(_GPT3, d_model=5140, num_heads=40, head_dim=128, d_ff=20560, num_layers=40),
    "gpt3-175b": dict(_GPT3, d_model=12288, num_heads=96, d_ff=49152, num_layers=96),
    # Modern decoders: RoPE, RMSNorm, SwiGLU, grouped-query attention, untied head.
    "llama2-7b": dict(
        _LLAMA,
        vocab_size=32000,
        d_model=4096,
        num_heads=32,
        d_ff=11008,
        num_layers=32,
        max_positions=4096,
    ),  # 6,738,415,616
    "llama3-8b": dict(
        _LLAMA,
        vocab_size=128256,
        d_model=4096,
        num_heads=32,
        num_kv_heads=8,
        d_ff=14336,
        num_layers=32,
        max_positions=8192,
        rope_theta=500000.0,
    ),
    # Encoder-decoder.
    "t5-small": dict(_T5, d_model=512, num_heads=8, d_ff=2048, num_layers=6),  # 60,506,624
    "t5-base": dict(_T5, d_model=768, num_heads=12, d_ff=3072, num_layers=12),  # 222,903,552
    "t5-large": dict(_T5, d_model=1024, num_heads=16, d_ff=4096, num_layers=24),
    "t5-v1_1-small": dict(_T5_V1_1, d_model=512, num_heads=6, d_ff=1024, num_layers=8),
    "t5-v1_1-base": dict(_T5_V1_1, d_model=768, num_heads=12, d_ff=2048, num_layers=12),
    "t5-v1_1-large": dict(_T5_V1_1, d_model=1024, num_heads=16, d_ff=2816, num_layers=24),
    "bart-base": dict(_BART, d_model=768, num_heads=12, d_ff=3072, num_layers=6),  # 139,420,416
    "bart-large": dict(_BART, d_model=1024, num_heads=16, d_ff=4096, num_layers=12),
    # Vaswani et al. 2017, Table 3 (shared 37k BPE vocabulary).
    "transformer-base": dict(_TRANSFORMER, d_model=512, num_heads=8, d_ff=2048, num_layers=6),
    "transformer-big": dict(
        _TRANSFORMER, d_model=1024, num_heads=16, d_ff=4096, num_layers=6, dropout_rate=0.3
    ),
}

# Tiny variants for tests and smoke runs: same structure, toy sizes.
_TINY = dict(vocab_size=128, d_model=32, num_heads=4, d_ff=64, num_layers=2, max_positions=64)
for _base in (
    "bert-base-uncased",
    "distilbert-base-uncased",
    "gpt2",
    "llama3-8b",
    "t5-small",
    "t5-v1_1-small",
    "bart-base",
    "transformer-base",
):
    _tiny = dict(_ARCHITECTURES[_base], **_TINY)
    _tiny.pop("head_dim", None)
    if _base == "llama3-8b":
        _tiny["num_kv_heads"] = 2
    _stem = {
        "bert-base-uncased": "bert",
        "distilbert-base-uncased": "distilbert",
        "llama3-8b": "llama",
        "t5-v1_1-small": "t5-v1_1",
        "transformer-base": "transformer",
        "bart-base": "bart",
        "t5-small": "t5",
        "gpt2": "gpt2",
    }[_base]
    _ARCHITECTURES[f"{_stem}-tiny"] = _tiny


def list_architectures() -> list[str]:
    """Names accepted by `get_config`, sorted."""
    return sorted(_ARCHITECTURES)


def get_config(name: str, **overrides) -> ModelConfig:
    """The named architecture's config, with optional field overrides.

    Raises:
      ConfigError: unknown name (the message lists the known ones) or an invalid override.
    """
    if name not in _ARCHITECTURES:
        raise ConfigError(
            f"unknown architecture {name!r}; choose one of: {', '.join(list_architectures())}"
        )
    return ModelConfig(name=name, **_ARCHITECTURES[name]).replace(**overrides)
