"""LoRA adapters against Hugging Face PEFT (the [hf] extra): ours exported with train.peft load
in `peft.PeftModel` on the transformers base and give our logits; a random adapter made by peft
(`init_lora_weights=False`) imports and gives peft's logits, unmerged and merged. GPT-2's fused
`c_attn` is covered both ways, and adapters with per-module ranks and alphas import."""

from __future__ import annotations

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
TOL = 1e-4
CASES = {  # architecture, PEFT target modules for its q and v, the task type
    "bert": ("BertForSequenceClassification", ["query", "value"], "SEQ_CLS"),
    "gpt2": ("GPT2LMHeadModel", ["c_attn"], "CAUSAL_LM"),
    "t5": ("T5ForConditionalGeneration", ["q", "v"], "SEQ_2_SEQ_LM"),
    "bart": ("BartForConditionalGeneration", ["q_proj", "v_proj"], "SEQ_2_SEQ_LM"),
}


def _base(tmp_path, arch: str, seed: int = 0):
    model = _random_hf_model(arch, seed)
    model.save_pretrained(tmp_path / "base")
    config, params = hf.load_pretrained(tmp_path / "base")
    return model, config, params


def _batch_for(config, seed=0):
    rng = np.random.default_rng(seed)
    return _batch(rng, 80, config.family == "encoder_decoder", config.type_vocab_size)


def _our_adapter(tmp_path, arch):
    """Our LoRA model on a random HF base, with a non-zero B and a changed head, exported."""
    _, base_config, base_params = _base(tmp_path, arch)
    config = lora.configure(dict(rank=3, alpha=6.0), base_config, init_from="base")
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


@pytest.mark.parametrize("model_type", list(CASES))
def test_our_adapter_loads_in_peft_with_our_logits(tmp_path, model_type):
    arch, _, task = CASES[model_type]
    config, params, written, _, _ = _our_adapter(tmp_path, arch)
    assert written["task_type"] == task
    if model_type == "gpt2":  # one rank-2r c_attn adapter per layer, alpha / r kept
        assert written["target_modules"][0].endswith("attn.c_attn")
        assert set(written["rank_pattern"].values()) == {6}
        assert set(written["alpha_pattern"].values()) == {12.0}
    base = getattr(transformers, arch).from_pretrained(tmp_path / "base")
    loaded = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    assert _compare(config, params, loaded, _batch_for(config)) < TOL


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


@pytest.mark.parametrize("model_type", list(CASES))
def test_a_random_peft_adapter_imports_with_peft_logits(tmp_path, model_type):
    arch, targets, task = CASES[model_type]
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
    batch = _batch_for(config)
    assert _compare(config, params, made, batch) < TOL  # unmerged: our adapter layers
    plain, merged = lora.merged(config, params)
    assert _compare(plain, merged, made, batch) < TOL


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
    assert _compare(config, params, made, _batch_for(config)) < TOL


def test_to_peft_on_a_run_without_lora_is_one_line(tmp_path):
    config = models.get_config("gpt2-tiny")
    with pytest.raises(ours_peft.CheckpointError, match="--to-peft needs a LoRA workdir"):
        ours_peft.export(config, {}, "base", tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
