"""Model cards: every Hugging Face export says what the model is, what it was trained on, how
well it does and what its training cost, in the metadata fields the Hub reads.

    card = model_card(config, params, "runs/sst2")   # a huggingface_hub.ModelCard
    card.save("out/README.md")

The card is built with huggingface_hub's `ModelCard` / `ModelCardData`:

- architecture and parameter count;
- `base_model`, a Hub id only: the run's `init_from` when it was one, else the id named by the
  `init_from` directory's own card (`python -m models convert --from-hf ID` writes one). A
  local source without one leaves the field unset and is named in the text;
- `datasets`, Hub dataset ids only, so TFDS names and local files are named in the text;
- the task and its eval metrics at the exported step (`model-index`), from metrics.jsonl;
- the training config, tokens seen and wall time;
- `co2_eq_emissions` (grams, `source`, `training_type`, `geographical_location`,
  `hardware_used`), summed over every segment of a resumed run from the run ledger
  (train/goodput.py), and the base model's own footprint where its card states one.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from models import hub, paths
from models.config import ModelConfig
from train import reference

log = logging.getLogger(__name__)

_PIPELINES = {
    "classification": "text-classification",
    "token_classification": "token-classification",
}
_FAMILY_PIPELINES = {
    "decoder": "text-generation",
    "encoder_decoder": "text2text-generation",
    "encoder": "fill-mask",
}


def pipeline_tag(config: ModelConfig) -> str:
    """The Hub's task name for the model's head."""
    return _PIPELINES.get(config.head) or _FAMILY_PIPELINES[config.family]


def read_card(directory) -> Any:
    """The `ModelCard` in `directory`'s README.md (a local path, a `gs://` URL or a Hub id),
    or None where there is none or it does not parse."""
    from huggingface_hub import ModelCard

    try:
        folder = reference.locate(directory) if directory else None
        readme = folder / "README.md" if folder else None
        if readme is None or not readme.is_file():
            return None
        return ModelCard(readme.read_text(), ignore_metadata_errors=True)
    except Exception as error:  # a card that does not parse is no card
        log.info("no readable model card in %s (%s)", directory, error)
        return None


def base_model_id(init_from: str | None) -> str | None:
    """The Hub id of the model a run started from, or None (see the module docstring)."""
    hid = hub.hub_id(init_from)
    if hid:
        return hid.repo
    card = read_card(init_from)
    named = card.data.get("base_model") if card else None
    if isinstance(named, list) and len(named) == 1:
        named = named[0]
    return named if isinstance(named, str) and hub.hub_id(named) and "@" not in named else None


def _metrics_at(workdir, step: int) -> tuple[dict[str, float], int | None]:
    """The eval metrics logged at `step` (or the last eval before it) and their step."""
    file = paths.resolve(workdir) / "metrics.jsonl"
    if not file.exists():
        return {}, None
    evals = [
        r
        for r in map(json.loads, file.read_text().splitlines())
        if r.get("step", 0) <= step and any(k.startswith("eval_") for k in r)
    ]
    if not evals:
        return {}, None
    last = max(evals, key=lambda r: r["step"])  # a resumed run logs a redone step twice
    return {k: v for k, v in last.items() if k.startswith("eval_")}, last["step"]


def workdir_facts(workdir) -> dict[str, Any]:
    """What a training workdir says of its latest checkpoint: the run config, the step, eval
    metrics, and the whole run's totals (summary.json where it describes this checkpoint,
    else the checkpoint's own ledger)."""
    ref = reference.resolve(workdir, "--workdir", kinds=(reference.WORKDIR,))
    workdir, step, saved = ref.path, ref.step, ref.saved
    summary_file = workdir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    if summary.get("steps") == step and "run" in summary:
        totals, carbon = summary["run"], summary.get("carbon") or {}
    else:  # the run was stopped after this checkpoint, before it could write its summary
        from train.goodput import Ledger

        segments = (saved.get("ledger") or {}).get("segments") or []
        totals = Ledger(segments[:-1]).totals(segments[-1]) if segments else None
        carbon = summary.get("carbon") or {}
    metrics, eval_step = _metrics_at(workdir, step)
    model = saved.get("resolved_model") or {}
    return {
        "lora": {k: model[k] for k in model if k.startswith("lora_")}
        if model.get("lora_rank")
        else None,
        "run": saved.get("run") or {},
        "step": step,
        "metrics": metrics,
        "eval_step": eval_step,
        "totals": totals,
        "carbon": carbon,
    }


def co2_eq_emissions(facts: dict[str, Any]) -> dict[str, Any] | None:
    """The card's `co2_eq_emissions` for a workdir's facts, or None where nothing was measured."""
    totals, carbon = facts.get("totals") or {}, facts.get("carbon") or {}
    kg = totals.get("emissions_kg_co2eq")
    if kg is None:
        return None
    method = carbon.get("method", "")
    return {
        "emissions": float(kg) * 1000.0,
        "source": "TDP estimate" if method.startswith("estimate") else "codecarbon",
        "training_type": "fine-tuning" if _started_from(facts["run"]) else "pre-training",
        "geographical_location": carbon.get("country")
        or facts["run"]["carbon"]["country_iso_code"],
        "hardware_used": hardware_used(carbon),
    }


def _started_from(run: dict[str, Any]) -> str | None:
    """The model a run started from: its init_from, or a distilled student's teacher."""
    return run.get("init_from") or (run.get("distill") or {}).get("teacher") or None


def hardware_used(carbon: dict[str, Any]) -> str:
    """'8 x NVIDIA H100 80GB HBM3', 'CPU (AMD EPYC)': the devices a segment ran on."""
    count, kind = carbon.get("devices") or 1, carbon.get("device_kind") or "unknown"
    if carbon.get("platform") == "cpu":
        model = carbon.get("cpu_model")
        return f"CPU ({model})" if model else "CPU"
    return f"{count} x {kind}"


def _base_footprint(init_from: str | None) -> dict[str, Any] | None:
    card = read_card(init_from) if init_from else None
    value = card.data.get("co2_eq_emissions") if card else None
    if isinstance(value, int | float):
        value = {"emissions": float(value)}
    return value if isinstance(value, dict) and "emissions" in value else None


def _data_text(run: dict[str, Any]) -> str:
    data = run.get("data") or {}
    if data.get("name"):
        return f"the TFDS dataset `{data['name']}`"
    files = data.get("files") or {}
    if files:
        listed = ", ".join(f"{split}: `{path}`" for split, path in sorted(files.items()))
        return f"local files ({listed})"
    return "(not recorded)"


def _metrics_text(facts: dict[str, Any]) -> list[str]:
    if not facts.get("metrics"):
        return ["No evaluation was logged."]
    lines = [f"At step {facts['eval_step']}:", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in sorted(facts["metrics"].items())]
    return lines


def _footprint_text(facts: dict[str, Any], co2: dict | None, base: dict | None) -> list[str]:
    totals, carbon = facts.get("totals") or {}, facts.get("carbon") or {}
    lines = []
    if co2 is None:
        lines.append(
            "The training footprint was not measured (carbon tracking was off or unavailable)."
        )
    else:
        energy = totals.get("energy_kwh")
        lines.append(
            f"Training emitted {co2['emissions']:.4g} g CO2eq"
            + (f" using {energy:.4g} kWh" if energy is not None else "")
            + f" on {co2['hardware_used']} in {co2['geographical_location']}, over "
            f"{totals.get('segments', 1)} segment(s) (`{carbon.get('method', '?')}`)."
        )
        if carbon.get("notes"):
            lines.append(f"Method: {carbon['notes']}.")
        if totals.get("segments_without_energy"):
            lines.append(
                f"{totals['segments_without_energy']} segment(s) were killed before they could "
                "measure their energy, so the figure is a lower bound."
            )
    if base is not None:
        lines.append(
            f"The base model's own card states {float(base['emissions']):.4g} g CO2eq for its "
            "training, which this fine-tuning reused instead of repeating."
        )
    return lines


def _card_data(config, facts, base, co2, source_kind):
    from huggingface_hub import EvalResult, ModelCardData

    task = pipeline_tag(config)
    run = facts.get("run") or {}
    data = (run.get("data") or {}).get("name")
    results = []
    for name, value in sorted(facts.get("metrics", {}).items()):
        if name in ("eval_nll", "eval_perplexity") and task != "text-generation":
            continue
        dataset, metric = (data or "local-files", data or "local files"), name[len("eval_") :]
        if name.startswith("eval_harness/"):  # an lm-eval task's: eval_harness/<task>/<metric>
            _, harness_task, metric = name.split("/", 2)
            dataset = (harness_task, f"{harness_task} (lm-evaluation-harness)")
        results.append(
            EvalResult(
                task_type=task,
                dataset_type=dataset[0],
                dataset_name=dataset[1],
                metric_type=metric,
                metric_value=float(value),
            )
        )
    return ModelCardData(
        library_name="transformers",
        pipeline_tag=task,
        tags=["triptych", config.family, source_kind],
        base_model=base,
        model_name=config.name,
        eval_results=results or None,
        co2_eq_emissions=co2,
    )


def model_card(config: ModelConfig, params, source, model_type: str | None = None):
    """The `huggingface_hub.ModelCard` of a model exported from `source` (a training workdir
    or a converted directory)."""
    from huggingface_hub import ModelCard

    from models import hf

    model_type = model_type or hf.infer_model_type(config)
    kinds = (reference.WORKDIR, reference.CONVERTED)
    trained = reference.resolve(source, "--from", kinds=kinds).kind == reference.WORKDIR
    facts = workdir_facts(source) if trained else {"run": {}}
    if trained:
        init_from = _started_from(facts["run"])
        base = base_model_id(init_from)
    else:  # a conversion: its own card names where it came from
        init_from, base = source, base_model_id(source)
    co2 = co2_eq_emissions(facts) if trained else None
    count = sum(int(np.prod(np.shape(x))) for x in _leaves(params))
    text = [*_intro(config, model_type, count), "", "## Base model", ""]
    if base:
        text.append(f"`{base}`" + (f" (from `{init_from}`)" if init_from != base else ""))
    else:
        text.append(f"`{init_from}` (local)" if init_from else "None: trained from scratch.")
    if trained:
        text += _training_text(facts, co2, _base_footprint(init_from))
    else:
        text += ["", f"Converted from `{source}`; not trained by Triptych."]
    data = _card_data(config, facts, base, co2, "fine-tuned" if init_from else "from-scratch")
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(text) + "\n")


def _intro(config: ModelConfig, model_type: str, count: int) -> list[str]:
    family = config.family.replace("_", "-")
    return [
        f"# {config.name}",
        "",
        f"{_article(family)} {family} transformer ({model_type} layout, {config.num_layers} "
        f"layers, d_model {config.d_model}, {config.num_heads} heads, vocabulary "
        f"{config.vocab_size}) with {count:,} parameters and head `{config.head}`, trained and "
        "exported with Triptych (JAX/Flax). It loads with `transformers`:",
        "",
        "```python",
        "from transformers import AutoModel  # or the Auto class of its task",
        'model = AutoModel.from_pretrained("THIS_DIRECTORY_OR_REPO")',
        "```",
    ]


def _training_text(facts: dict[str, Any], co2: dict | None, base: dict | None) -> list[str]:
    run, totals = facts["run"], facts.get("totals") or {}
    task = run.get("task") or (run.get("data") or {}).get("objective")
    return [
        "",
        "## Training",
        "",
        f"Task `{task}` on {_data_text(run)}: {facts['step']} steps, "
        f"{int(totals.get('tokens', 0)):,} tokens seen, "
        f"{float(totals.get('wall_time_s', 0.0)) / 3600:.3g} h of wall time.",
        *_lora_text(facts.get("lora"), run.get("init_from")),
        "",
        "## Evaluation",
        "",
        *_metrics_text(facts),
        "",
        "## Training footprint",
        "",
        *_footprint_text(facts, co2, base),
        "",
        "## Training config",
        "",
        "```json",
        json.dumps(run, indent=1, sort_keys=True),
        "```",
    ]


def _lora_text(lora: dict | None, init_from: str | None) -> list[str]:
    if not lora:
        return []
    head = " and the task head" if lora.get("lora_train_head") else ""
    return [
        "",
        f"Fine-tuned with LoRA: rank {lora['lora_rank']}, alpha {lora['lora_alpha']:g}, "
        f"adapters on the layers matching {', '.join(f'`{t}`' for t in lora['lora_targets'])}"
        f"{head} trained, every other weight frozen. The training checkpoint stores only "
        f"the adapters{head} and names its base, `{init_from}`; these weights have the "
        "adapters merged in (`python -m models convert --to-peft` writes the adapter alone).",
    ]


def _article(word: str) -> str:
    return "An" if word[0] in "aeiou" else "A"


def _leaves(params):
    import jax

    return jax.tree.leaves(params)


def write_conversion_card(directory, name: str, resolved: str) -> None:
    """README.md for `python -m models convert --from-hf NAME --to DIRECTORY`: the Hub id it
    came from as `base_model` (what `base_model_id` reads back when a run starts from it), and
    the source card's footprint, so that a fine-tuned card can state it."""
    from huggingface_hub import ModelCard, ModelCardData

    hid = hub.hub_id(name)
    source = read_card(resolved)
    co2 = source.data.get("co2_eq_emissions") if source else None
    base = hid.repo if hid else base_model_id(resolved)
    data = ModelCardData(library_name="triptych", base_model=base, co2_eq_emissions=co2)
    body = f"# {hid.name if hid else name}\n\nConverted to the Triptych format from `{name}`.\n"
    (paths.resolve(directory) / "README.md").write_text(
        str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))
    )
