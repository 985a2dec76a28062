"""The ahead-of-time planner: FSDP shards parameters and optimizer state 8 ways, XLA's numbers
agree with the analytic ones, the roofline follows the chip table, and the CLI prints both
formats."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _config(**changes):
    from configs.gpt_lm import get_config

    c = get_config("gpt2")
    c.model.num_layers = 2  # real GPT-2 widths, two blocks: compiles in seconds
    c.batch_size, c.seq_len = 8, 64
    for key, value in changes.items():
        c[key] = value
    return c


@pytest.fixture(scope="module")
def fsdp_report():
    from launch.plan import plan

    return plan(_config(), 8, {"data": 1, "fsdp": 8, "tensor": 1}, chip="h100")


def test_fsdp_over_8_devices_shards_params_and_optimizer(fsdp_report):
    mem, total = fsdp_report["memory_per_device"], fsdp_report["memory_total"]
    assert fsdp_report["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    for key in ("params", "optimizer"):
        assert mem[key] <= total[key] / 8 * 1.05, (key, mem[key], total[key])
        assert mem[key] >= total[key] / 8  # no bytes lost either
    # XLA's arguments are the state and the batch (plus the step counter and rng)
    state = mem["params"] + mem["optimizer"] + mem["batch"]
    assert state <= mem["xla_arguments"] <= state + 1024
    assert mem["peak"] >= mem["xla_arguments"] + mem["xla_temporaries"] - mem["xla_aliased"]


def test_data_parallel_replicates_everything():
    from launch.plan import plan

    report = plan(_config(), 8, {"data": 8, "fsdp": 1, "tensor": 1})
    mem, total = report["memory_per_device"], report["memory_total"]
    assert mem["params"] == total["params"] and mem["optimizer"] >= total["optimizer"]


def test_flops_and_roofline(fsdp_report):
    flops, roof, chip = fsdp_report["flops_per_step"], fsdp_report["roofline"], fsdp_report["chip"]
    n = fsdp_report["params"] - 1024 * 768  # without the learned position table
    tokens = 8 * 64
    assert flops["analytic_model_6nt"] == 6 * n * tokens
    assert flops["analytic_attention"] == 12 * 2 * 768 * 64 * tokens
    # XLA counts every op of the unscanned step: close to the matmul count, a bit above it
    ratio = flops["xla_per_device"] / flops["analytic_per_device"]
    assert 0.95 < ratio < 1.3, ratio
    # float32 compute: the TF32 dense peak of train/hardware.py's H100 row (the datasheet's 494.7)
    assert chip["id"] == "h100" and chip["peak_f32"] == 494.7e12
    assert roof["compute_s"] == pytest.approx(flops["analytic_per_device"] / 494.7e12)
    assert roof["step_s"] == max(roof["compute_s"], roof["memory_s"], roof["collectives_s"])
    # FSDP=8: all-gather twice and reduce-scatter once, 7/8 of the parameter bytes each
    total_params = fsdp_report["memory_total"]["params"]
    assert roof["collective_bytes_per_device"] == pytest.approx(3 * total_params * 7 / 8)
    assert fsdp_report["fits"] is True


def test_text_report(fsdp_report):
    from launch.plan import format_report

    text = format_report(fsdp_report)
    assert "mesh data=1 x fsdp=8 x tensor=1 on 8 x NVIDIA H100 SXM 80GB" in text
    assert (
        "fits                 yes" in text and f"{fsdp_report['roofline']['bound']}-bound" in text
    )
    params_line = next(line for line in text.splitlines() if "parameters  " in line)
    assert f"{fsdp_report['memory_per_device']['params'] / 1e9:.2f} GB" in params_line


def test_cli_json_and_errors():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = str(ROOT)
    base = [
        sys.executable,
        "-m",
        "launch.plan",
        "--config",
        "configs/gpt_lm.py:smoke",
        "--devices",
        "4",
        "--mesh",
        "data=2,fsdp=2,tensor=1",
        "--chip",
        "v5e",
    ]
    result = subprocess.run(
        [*base, "--json"], env=env, capture_output=True, text=True, cwd=ROOT, timeout=240
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["devices"] == 4 and report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
    assert report["chip"]["hbm_bytes"] == 16e9 and report["model"] == "gpt2-tiny"
    assert report["fits"] is True and report["roofline"]["step_s"] > 0
    bad = subprocess.run(
        [*base[:-4], "--mesh", "data=3", "--chip", "h100"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
    )
    assert bad.returncode == 2 and "error:" in bad.stderr and "4" in bad.stderr


def test_the_planner_compiles_the_step_the_loop_runs(tmp_path):
    """Both build their step with train.step.jit_steps: the planner's, compiled on abstract
    inputs, is the loop's, compiled on its first real batch, instruction for instruction (a
    different label smoothing alone fails this)."""
    import re

    import jax

    from configs import gpt_lm
    from launch.plan import compile_step
    from train import loop, partitioning

    config = gpt_lm.get_config("smoke")
    config.mesh.update(data=2, fsdp=2, tensor=2)
    config.model.vocab_size = 512
    config.async_checkpoints = False
    planned = compile_step(config, 8)[0].as_text()
    run = loop.setup(config, tmp_path)
    try:
        batch = loop._device_batch(next(run.train_iter), run.mesh, run.rules)
        with partitioning.activate(run.mesh, run.rules):
            ran = run.train_step.lower(run.state, batch, jax.random.key(1)).compile().as_text()
    finally:
        run.ckpt.close()

    def code(hlo):  # without source locations, which differ between the two callers
        hlo = re.sub(r", metadata=\{[^}]*\}", "", hlo)
        # and with parameters numbered in order of appearance: their numbers depend on what
        # else this process compiled before (jax reuses lowerings), not on the step
        names: dict[str, str] = {}
        hlo = re.sub(r"\bparam\.\d+\b", lambda m: names.setdefault(m[0], f"p{len(names)}"), hlo)
        return [x for x in hlo.split("\n\n") if x.startswith(("ENTRY", "%", "fused"))]

    assert code(planned) == code(ran) and len(code(ran)) > 10
