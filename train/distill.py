"""Knowledge distillation: the run's `distill` section, its checks, the two distillation losses
and a student started from the teacher's own layers (the DistilBERT recipe).

The run's model is the student; the teacher is a frozen model that runs beside it.

    distill.teacher        the teacher: anything `init_from` accepts (a Hugging Face directory or
                           Hub id, a converted checkpoint, a training workdir); '' = off
    distill.temperature    T of the softened distributions (2.0, DistilBERT's)
    distill.alpha_kd       weight of KL(teacher_T || student_T) x T^2 over the objective's
                           weighted positions (0.625)
    distill.alpha_task     weight of the objective's own loss (0.25)
    distill.alpha_hidden   weight of 1 - cosine(student, teacher) over the last hidden states
                           of the non-padding positions (0.125); needs equal hidden sizes
    distill.student_layers the teacher layer each student layer copies, e.g. (0, 2, 4), one
                           per layer of the student's encoder (encoder-only and
                           encoder-decoder models) or decoder (decoder-only models);
                           () = a fresh student (`--config.distill.student_layers=0,2,4`)
    distill.teacher_dtype  the dtype the teacher's parameters are held in on the devices:
                           'float32' (as read) or 'bfloat16' (half the memory; the forward
                           then computes at bf16 precision of the weights)
    distill.student_decoder_layers
                           the same for the decoder of an encoder-decoder (DistilBART's
                           "shrink and fine-tune"). Where one map of an encoder-decoder is
                           given and the other stack is as deep as the teacher's, that stack
                           copies the teacher's layers one to one; a stack of another depth
                           needs its map.

The default weights are DistilBERT's (alpha_ce 5, alpha_mlm 2, alpha_cos 1 at T=2, in the
README of HF's research_projects/distillation) scaled to sum to 1: the ratios of the published
recipe, with a total loss on the scale of the task loss alone, so that the learning rate and
`optimizer.grad_clip_norm` tuned for plain training carry over (a sum of 8 would make global-norm
clipping bite eight times earlier).

A student copies the teacher's layers through `student_params`: student layer j is teacher
layer `student_layers[j]`, bit for bit, and everything else that both models have with the same
shape (embeddings, norms, relative-position tables, pooler, head) is copied too, as DistilBERT's
extraction did; what the student alone has (a LoRA adapter, a new head) keeps its fresh value.
The student may be another registered shape of the teacher's family, e.g. a DistilBERT-typed
student (no token-type embeddings, no pooler) of a BERT teacher.

The losses are sums, like train/losses.py's, so that microbatches and hosts combine exactly;
callers divide by the summed weights. Positions of weight 0 contribute exactly nothing, whatever
their logits or hidden states hold (padding may carry inf or NaN).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.core.meta import unbox as meta_unbox

from data import objectives
from models import hf
from models.config import ModelConfig
from models.errors import UserError
from train import lora, reference

DEFAULTS = {
    "teacher": "",
    "temperature": 2.0,
    "alpha_kd": 0.625,
    "alpha_task": 0.25,
    "alpha_hidden": 0.125,
    "student_layers": (),
    "student_decoder_layers": (),
    "teacher_dtype": "float32",
}
TEACHER_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ALPHAS = ("alpha_kd", "alpha_task", "alpha_hidden")
MAPS = ("student_layers", "student_decoder_layers")
_EPS = 1e-12  # torch.nn.CosineEmbeddingLoss's, on each squared norm


class DistillError(UserError):
    pass


# The section --------------------------------------------------------------------------------------


def settings(section) -> dict[str, Any]:
    """The `distill` section with defaults filled in and layer maps as int tuples. With a
    teacher, the temperature and weights are checked too. Every problem is one DistillError."""
    items = dict(section or {})
    unknown = set(items) - set(DEFAULTS)
    if unknown:
        raise DistillError(
            f"unknown distill key(s) {sorted(unknown)}; keys are: {', '.join(DEFAULTS)}"
        )
    out = {**DEFAULTS, **{k: v for k, v in items.items() if v is not None}}
    out["teacher"] = str(out["teacher"] or "")
    if out["teacher_dtype"] not in TEACHER_DTYPES:
        raise DistillError(
            f"distill.teacher_dtype={out['teacher_dtype']!r}: choose one of "
            f"{', '.join(TEACHER_DTYPES)}"
        )
    for key in MAPS:
        out[key] = _indices(key, out[key])
    for key in ("temperature", *ALPHAS):
        try:
            out[key] = float(out[key])
        except (TypeError, ValueError):
            raise DistillError(f"distill.{key}={out[key]!r}: expected a number") from None
    if out["teacher"]:
        _check_weights(out)
    return out


def _indices(key: str, value) -> tuple[int, ...]:
    """A layer map from a config file (ints) or the command line ('0,2,4' or its parts)."""
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, int):
        value = (value,)
    out = []
    for item in value:
        if isinstance(item, str) and not item.strip():
            continue
        try:
            out.append(int(item))
        except (TypeError, ValueError):
            raise DistillError(
                f"distill.{key}: {item!r} is not a layer index; give teacher layer numbers "
                "such as 0,2,4"
            ) from None
    return tuple(out)


def _check_weights(s: dict) -> None:
    if not s["temperature"] > 0:
        raise DistillError(
            f"distill.temperature={s['temperature']} must be > 0 (2.0 is DistilBERT's)"
        )
    for key in ALPHAS:
        if s[key] < 0:
            raise DistillError(f"distill.{key}={s[key]} must be >= 0 (0 turns its term off)")
    if not any(s[key] > 0 for key in ALPHAS):
        raise DistillError(
            "distill.alpha_kd, alpha_task and alpha_hidden are all 0: nothing would train; "
            "give at least one a positive weight"
        )


def enabled(section) -> bool:
    """Whether the section names a teacher."""
    return bool(settings(section)["teacher"])


def teacher(section) -> reference.Reference | None:
    """The resolved `distill.teacher` (weights not read yet), or None when distillation is off.
    A name that names nothing is one error line (train/reference.py)."""
    s = settings(section)
    if not s["teacher"]:
        return None
    kinds = (reference.WORKDIR, reference.CONVERTED, reference.HUGGING_FACE, reference.PEFT_ADAPTER)
    return reference.resolve(s["teacher"], "distill.teacher", kinds=kinds)


def check(
    section, teacher_config: ModelConfig, student_config: ModelConfig, objective: str
) -> dict[str, tuple[int, ...]]:
    """Refuses a teacher and student that cannot distill on `objective`: another family,
    another vocabulary, a teacher without the objective's head while alpha_kd > 0 (it can
    still teach through the hidden states), another number of labels, other hidden sizes
    while alpha_hidden > 0, or a bad layer map. Returns `layer_maps`' maps ({} = fresh)."""
    s = settings(section)
    _check_family(teacher_config, student_config)
    if student_config.vocab_size != teacher_config.vocab_size:
        raise DistillError(
            f"the student's vocab_size={student_config.vocab_size} differs from the teacher "
            f"{teacher_config.name}'s {teacher_config.vocab_size}: the student must use the "
            "teacher's tokenizer and vocabulary (model.vocab_size and tokenizer.path)"
        )
    _check_objective(s, teacher_config, student_config, objective)
    if s["alpha_hidden"] > 0 and student_config.d_model != teacher_config.d_model:
        raise DistillError(
            f"distill.alpha_hidden={s['alpha_hidden']} compares hidden states, but the "
            f"student's d_model={student_config.d_model} differs from the teacher "
            f"{teacher_config.name}'s {teacher_config.d_model}; set distill.alpha_hidden=0"
        )
    return layer_maps(teacher_config, student_config, *(s[key] for key in MAPS))


def _check_family(teacher_config: ModelConfig, student_config: ModelConfig) -> None:
    if student_config.family != teacher_config.family:
        raise DistillError(
            f"the student {student_config.name} is family={student_config.family!r} but the "
            f"teacher {teacher_config.name} is {teacher_config.family!r}: choose a student "
            "model of the teacher's family"
        )


def _check_objective(s, teacher_config, student_config, objective: str) -> None:
    """The teacher must serve the objective: its family always, its head for the KD term."""
    record = objectives.get(objective)
    if s["alpha_kd"] > 0:
        if teacher_config.head != record.head:
            raise DistillError(
                f"distill.alpha_kd={s['alpha_kd']} needs the teacher's {record.head!r} head "
                f"for objective={objective!r}, but {teacher_config.name} has "
                f"head={teacher_config.head!r}; it can still teach through the hidden-state "
                "term alone: set distill.alpha_kd=0 and distill.alpha_hidden > 0"
            )
        record.check_model(teacher_config, DistillError)
        labels = (teacher_config.num_labels, student_config.num_labels)
        if record.head in ("classification", "token_classification") and labels[0] != labels[1]:
            raise DistillError(
                f"the teacher {teacher_config.name} has num_labels={labels[0]} and the "
                f"student {labels[1]}: the KD term compares their logits; give the student "
                f"model.num_labels={labels[0]}"
            )
    elif record.family and teacher_config.family != record.family:
        raise DistillError(
            f"objective={objective!r} needs a {record.family} teacher; distill.teacher "
            f"{teacher_config.name} is {teacher_config.family}"
        )


# Layer maps and the student's initial parameters ------------------------------------------------


def _stacks(config: ModelConfig) -> list[tuple[str, int]]:
    """(parameter prefix, number of layers) of each layer stack, in `MAPS` order."""
    if config.family == "encoder_decoder":
        return [("encoder", config.num_layers), ("decoder", config.decoder_layers)]
    return [("encoder" if config.family == "encoder" else "decoder", config.num_layers)]


def layer_maps(
    teacher_config: ModelConfig,
    student_config: ModelConfig,
    layers=(),
    decoder_layers=(),
) -> dict[str, tuple[int, ...]]:
    """{stack prefix: the teacher layer of each student layer} ('encoder', 'decoder'), checked
    against both models; {} when no map is given (a fresh student)."""
    _check_family(teacher_config, student_config)
    layers, decoder_layers = tuple(layers or ()), tuple(decoder_layers or ())
    if not layers and not decoder_layers:
        return {}
    stacks = zip(_stacks(student_config), _stacks(teacher_config), (layers, decoder_layers), MAPS)
    if decoder_layers and student_config.family != "encoder_decoder":
        raise DistillError(
            f"distill.student_decoder_layers is for encoder-decoders; {student_config.name} "
            f"is {student_config.family}: give its map as distill.student_layers"
        )
    maps = {}
    for (stack, depth), (_, teacher_depth), given, key in stacks:
        if not given and depth == teacher_depth:
            given = tuple(range(depth))  # the other stack is mapped; this one copies 1:1
        if len(given) != depth:
            raise DistillError(
                f"distill.{key}={given} names {len(given)} teacher layers but the student's "
                f"{stack} has {depth}: give one teacher layer index per student layer"
            )
        bad = [i for i in given if not 0 <= i < teacher_depth]
        if bad:
            raise DistillError(
                f"distill.{key}: layer {bad[0]} is out of range; the teacher "
                f"{teacher_config.name}'s {stack} has layers 0..{teacher_depth - 1}"
            )
        maps[stack] = given
    return maps


def _source(name: str, maps: dict[str, tuple[int, ...]]) -> tuple[str, str | None]:
    """(the teacher parameter a student parameter comes from, the stack of its mapped layer or
    None); names are unscanned ('encoder/layers_3/mlp/wi/kernel')."""
    stack, sep, rest = name.partition("/layers_")
    if not sep or stack not in maps:
        return name, None
    index, _, leaf = rest.partition("/")
    return f"{stack}/layers_{maps[stack][int(index)]}/{leaf}", stack


def student_params(
    teacher_config: ModelConfig,
    teacher_params,
    student_config: ModelConfig,
    fresh_params,
    layers=(),
    decoder_layers=(),
    copy_rest: bool = True,
):
    """The student's initial parameters, taken from the teacher's layers.

    Args:
      teacher_config, teacher_params: the teacher (scanned or not; numpy or jax arrays).
      student_config: the student; its `scan_layers` decides the returned layout.
      fresh_params: the student's freshly initialised parameters (unboxed arrays).
      layers, decoder_layers: `distill.student_layers` and `student_decoder_layers`.
      copy_rest: also copy every other parameter both have with the same shape (embeddings,
        norms, pooler, head), as DistilBERT does.
    Returns:
      A tree of `fresh_params`' structure: student layer j of each stack holds teacher layer
      map[j] (numpy, bit for bit, in the fresh leaf's dtype); what is not copied is the fresh
      leaf itself (under scan, inside the stacked numpy array). No map: `fresh_params`.
    Raises:
      DistillError: a bad map, or a mapped layer whose parameter has another shape than the
        teacher's (another width).
    """
    maps = layer_maps(teacher_config, student_config, layers, decoder_layers)
    if not maps:
        return fresh_params
    teacher = hf._unstack_layers({k: np.asarray(v) for k, v in lora.flat(teacher_params).items()})
    fresh = lora.flat(fresh_params)
    student = hf._unstack_layers(fresh) if student_config.scan_layers else fresh
    out = {}
    for name, leaf in student.items():
        source, stack = _source(name, maps)
        value = teacher.get(source) if (stack or copy_rest) else None
        if value is not None and value.shape != tuple(leaf.shape):
            if stack:
                key = MAPS[[s for s, _ in _stacks(student_config)].index(stack)]
                raise DistillError(
                    f"distill.{key}: the teacher's {source} has shape {value.shape} but the "
                    f"student's {name} {tuple(leaf.shape)}; copying layers needs the "
                    "teacher's layer sizes (or () for a fresh student)"
                )
            value = None
        out[name] = leaf if value is None else value.astype(leaf.dtype)
    if student_config.scan_layers:
        out = hf._stack_layers(out)
    return lora._nested(out)


# The losses ---------------------------------------------------------------------------------------


def _masked(x, keep):
    """`x` with 0 wherever `keep` (its shape without the last axis) is False: garbage at
    weight-0 positions (inf, NaN) reaches neither the sum nor the gradient."""
    return jnp.where(keep[..., None], x.astype(jnp.float32), 0.0)


def kd_loss_sums(student_logits, teacher_logits, weights, temperature: float) -> jax.Array:
    """Sum over positions of weights * KL(softmax(teacher / T) || softmax(student / T)) * T^2,
    in float32 whatever the logits' dtype (Hinton et al.'s soft targets, DistilBERT's L_ce).

    Args:
      student_logits, teacher_logits: (..., V).
      weights: (...) the objective's loss weights; 0 = the position does not count.
      temperature: T > 0.
    Returns:
      A float32 scalar: the weighted sum (divide by the summed weights for the mean).
    """
    weights = weights.astype(jnp.float32)
    keep = weights != 0
    log_q = jax.nn.log_softmax(_masked(student_logits, keep) / temperature, axis=-1)
    log_p = jax.nn.log_softmax(_masked(teacher_logits, keep) / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)  # (...)
    return jnp.sum(jnp.where(keep, weights * kl, 0.0)) * temperature**2


def hidden_loss_sums(student_hidden, teacher_hidden, weights) -> jax.Array:
    """Sum over positions of weights * (1 - cosine(student, teacher)), in float32 (DistilBERT's
    L_cos on the last hidden states; torch's CosineEmbeddingLoss with target 1).

    Args:
      student_hidden, teacher_hidden: (..., D).
      weights: (...) 0 = the position does not count (padding).
    Returns:
      A float32 scalar: the weighted sum. It is exactly 0 where the two are equal.
    """
    weights = weights.astype(jnp.float32)
    keep = weights != 0
    s, t = _masked(student_hidden, keep), _masked(teacher_hidden, keep)
    dot = jnp.sum(s * t, axis=-1)  # (...)
    norms = jnp.sum(s * s, axis=-1) * jnp.sum(t * t, axis=-1)  # sqrt(n*n) is n, exactly
    cosine = dot / jnp.sqrt(jnp.maximum(norms, _EPS * _EPS))
    return jnp.sum(jnp.where(keep, weights * (1.0 - cosine), 0.0))


# In the train step --------------------------------------------------------------------------


def hidden_weights(batch: dict, family: str):
    """The positions the hidden-state term covers: the non-padding positions of the sequence
    whose last hidden state the model returns (the decoder's for encoder-decoders)."""
    key = "decoder_attention_mask" if family == "encoder_decoder" else "attention_mask"
    if batch.get(key) is not None:
        return batch[key].astype(jnp.float32)
    segments = batch.get("decoder_segment_ids" if family == "encoder_decoder" else "segment_ids")
    if segments is not None:  # packed rows: segment 0 is padding
        return (segments > 0).astype(jnp.float32)
    ids = batch["decoder_input_ids" if family == "encoder_decoder" else "input_ids"]
    return jnp.ones(ids.shape, jnp.float32)


def loss_sums(model, teacher_model, params, teacher_params, batch, objective, s, family, **options):
    """The objective's sums for the student with the distillation terms added: `loss` is
    alpha_task * task + alpha_kd * KD + alpha_hidden * hidden * `hidden_scale` (the whole
    batch's objective weight over its hidden-term weight, so that dividing by the objective's
    weight, as the step does, normalises each term by its own positions); `task_loss`,
    `kd_loss`, `hidden_loss` and `hidden_weight` are the parts. `family` is the student's.
    The teacher runs deterministically and gets no gradient."""
    from train.losses import cross_entropy_sums, model_inputs, targets_and_weights, variables

    rng, deterministic = options.pop("rng", None), options.pop("deterministic", True)
    hidden_scale, fp8 = options.pop("hidden_scale", 1.0), options.pop("fp8", None)
    rngs = None if deterministic else {"dropout": rng}
    out = model.apply(
        variables(params, fp8), **model_inputs(model, batch), deterministic=deterministic,
        rngs=rngs,
    )  # fmt: skip
    frozen = jax.lax.stop_gradient(teacher_params)
    taught = teacher_model.apply(
        {"params": frozen}, **model_inputs(teacher_model, batch), deterministic=True
    )
    targets, weights = targets_and_weights(objective, batch)
    sums = cross_entropy_sums(out.logits, targets, weights, **options)
    zero = jnp.zeros((), jnp.float32)
    kd = zero
    if s["alpha_kd"]:
        kd = kd_loss_sums(out.logits, taught.logits, weights, s["temperature"])
    hidden_w = hidden_weights(batch, family)
    hidden = (
        hidden_loss_sums(out.last_hidden_state, taught.last_hidden_state, hidden_w)
        if s["alpha_hidden"]
        else zero
    )
    task = sums["loss"]
    sums.update(task_loss=task, kd_loss=kd, hidden_loss=hidden, hidden_weight=jnp.sum(hidden_w))
    sums["loss"] = (
        s["alpha_task"] * task + s["alpha_kd"] * kd + s["alpha_hidden"] * hidden * hidden_scale
    )
    return sums


@dataclasses.dataclass(frozen=True, eq=False)
class Distiller:
    """What the train step needs of the teacher: its module, the section's settings and the
    student's family (train/step.py calls these three methods)."""

    teacher_model: Any
    settings: dict
    family: str

    def loss_sums(self, model, params, batch, objective, *, teacher_params, **options):
        return loss_sums(
            model,
            self.teacher_model,
            params,
            teacher_params,
            batch,
            objective,
            self.settings,
            self.family,
            **options,
        )

    def hidden_scale(self, batch: dict, objective: str):
        """The whole batch's objective weight over its hidden-term weight."""
        from train.losses import targets_and_weights

        weight = jnp.sum(targets_and_weights(objective, batch)[1])
        return weight / jnp.maximum(jnp.sum(hidden_weights(batch, self.family)), 1.0)

    def metrics(self, sums: dict) -> dict:
        weight = jnp.maximum(sums["weight"], 1.0)
        return {
            "task_loss": sums["task_loss"] / weight,
            "kd_loss": sums["kd_loss"] / weight,
            "hidden_loss": sums["hidden_loss"] / jnp.maximum(sums["hidden_weight"], 1.0),
        }


def place_teacher(teacher_config: ModelConfig, params, mesh, rules, dtype: str = "float32"):
    """(the teacher's module, its parameters on `mesh`, their shardings): laid out by the same
    logical rules as the student's, from an abstract init (nothing is built on one device),
    floating-point parameters held in `dtype` (`distill.teacher_dtype`)."""
    model, abstract, shardings = abstract_teacher(teacher_config, mesh, rules, dtype)
    values = lora.flat(params)

    def place(path, spec):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        value = np.asarray(values[name]).astype(spec.dtype)
        return jax.make_array_from_callback(value.shape, spec.sharding, lambda idx: value[idx])

    placed = jax.tree_util.tree_map_with_path(place, abstract)
    return model, placed, shardings


# In the training loop ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Prepared:
    """A run's teacher, ready for the step: the `Distiller`, its parameters on the mesh and
    their shardings (train/loop.py passes them to `jit_steps`, then binds the parameters)."""

    distiller: Distiller
    params: Any
    shardings: Any

    def jit_options(self) -> dict:
        return {"distiller": self.distiller, "teacher_shardings": self.shardings}

    def bind(self, train_step):
        """train_step(state, batch, rng), the teacher's parameters passed to every call."""
        params = self.params
        return lambda state, batch, rng: train_step(state, batch, rng, params)


def run_teacher(config) -> reference.Reference | None:
    """The run's teacher (None without one). The student reads with the teacher's tokenizer,
    so `config.tokenizer.path` is set to it, unless the run names one or starts from
    init_from, whose tokenizer comes along."""
    ref = teacher(config.get("distill"))
    use_tokenizer(config, ref)
    return ref


def use_tokenizer(config, teacher: reference.Reference | None) -> None:
    """The student reads with the teacher's tokenizer (unless the run names one or starts
    from init_from, whose tokenizer comes along)."""
    if teacher is None or config.tokenizer.path or config.get("init_from"):
        return
    if not teacher.tokenizer:
        raise DistillError(
            f"the teacher {teacher.where} has no tokenizer files (tokenizer.json, vocab.txt or "
            "spiece.model); set tokenizer.path to the teacher's tokenizer"
        )
    config.tokenizer.path = teacher.tokenizer


def student_base(model_section, teacher_config: ModelConfig | None) -> ModelConfig | None:
    """The architecture the run's `model` fields apply to: the teacher's when `model.name` is
    empty, else the named one with the teacher's vocabulary (None without a teacher)."""
    if teacher_config is None:
        if not model_section.get("name"):
            raise DistillError(
                "model.name is '' (the teacher's architecture) but distill.teacher names no "
                "teacher: set --config.distill.teacher=RUN_OR_MODEL, or name the model"
            )
        return None
    if not model_section.get("name"):
        return teacher_config
    import models

    return models.get_config(model_section.name, vocab_size=teacher_config.vocab_size)


def abstract_teacher(teacher_config: ModelConfig, mesh, rules, dtype: str = "float32"):
    """(the teacher's module, its parameters as ShapeDtypeStructs on `mesh`, their shardings),
    by the student's logical rules, from an abstract init; floating-point leaves in `dtype`."""
    import models
    from models.summary import dummy_inputs
    from train import partitioning

    model = models.build(teacher_config)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), **dummy_inputs(teacher_config)))
    shardings = partitioning.logical_shardings(boxed["params"], mesh, rules)
    held = TEACHER_DTYPES[dtype]

    def spec(x, sharding):
        floating = jnp.issubdtype(x.dtype, jnp.floating)
        return jax.ShapeDtypeStruct(x.shape, held if floating else x.dtype, sharding=sharding)

    abstract = jax.tree.map(
        spec,
        meta_unbox(boxed["params"]),
        shardings,
    )
    return model, abstract, shardings


def prepare(config, teacher: reference.Reference, model_config: ModelConfig, objective: str,
            abstract_params, mesh, rules):  # fmt: skip
    """(the student's seed, `Prepared`): the checks, the student's layers taken from the
    teacher's (`(config, params)` as init_from would give, or None for a fresh student) and
    the teacher laid out on the mesh; (None, None) without a teacher."""
    if teacher is None:
        return None, None
    section = config.get("distill")
    maps = check(section, teacher.config, model_config, objective)
    s = settings(section)
    seed = None
    if any(maps.values()):
        if config.get("init_from"):
            raise DistillError(
                "init_from and distill.student_layers both start the student; give one of them"
            )
        seeded = student_params(
            teacher.config, teacher.params, model_config, abstract_params, *(s[k] for k in MAPS)
        )
        leaves = lora.flat(seeded).items()
        seed = (model_config, {k: v for k, v in leaves if not isinstance(v, jax.ShapeDtypeStruct)})
    # the teacher reads the student's batches: reordered rows (train/context.py) for both
    teacher_config = dataclasses.replace(
        teacher.config, causal_from_positions=model_config.causal_from_positions
    )
    teacher_model, params, shardings = place_teacher(
        teacher_config, teacher.params, mesh, rules, s["teacher_dtype"]
    )
    return seed, Prepared(Distiller(teacher_model, s, model_config.family), params, shardings)
