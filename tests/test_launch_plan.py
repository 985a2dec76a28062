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


@pytest.mark.parametrize(
    "mesh",
    [
        dict(data=2, fsdp=2, tensor=2),
        dict(data=2, fsdp=2, context=2, tensor=1),
        dict(data=2, stage=2, fsdp=2, tensor=1),
    ],
)
def test_the_planner_compiles_the_step_the_loop_runs(tmp_path, mesh):
    """Both build their step with train.step.jit_steps: the planner's, compiled on abstract
    inputs, is the loop's, compiled on its first real batch, instruction for instruction (a
    different label smoothing alone fails this). With context parallelism both reorder the rows
    (position ids in the batch, causal masks from them); with stages both run the pipelined
    model (train/stages.py)."""
    import functools
    import re

    import jax

    from configs import gpt_lm
    from launch.plan import compile_step
    from train import context, loop, partitioning

    config = gpt_lm.get_config("smoke")
    config.mesh.update(**mesh)
    config.model.vocab_size = 512
    if mesh.get("stage", 1) > 1:  # the stages split the stacked layers
        config.model.scan_layers = True
    config.async_checkpoints = False
    planned = compile_step(config, 8)[0].as_text()
    run = loop.setup(config, tmp_path)
    try:
        place = functools.partial(loop._device_batch, mesh=run.mesh, rules=run.rules)
        place = context.reordering(place, config, run.model_config, run.mesh.shape["context"])
        batch = place(next(run.train_iter))
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


# Context parallelism (`--mesh context=N`) ---------------------------------------------------------


def _long_rows(**model):
    """A narrow two-layer GPT-2 on 1024-token rows: activations, not weights, fill the memory."""
    from configs.gpt_lm import get_config

    c = get_config("gpt2")
    c.model.update(num_layers=2, d_model=128, num_heads=4, d_ff=512, max_positions=1024)
    c.model.update(vocab_size=512, attention_kernel="xla", **model)
    c.tokenizer.vocab_size = 512
    c.batch_size, c.seq_len = 8, 1024
    return c


def test_context_2_halves_the_sequence_activations_per_device():
    """The same rows per device (fsdp=4), their 1024 tokens whole on 4 devices and split in two
    on 8: XLA's temporaries (activations, gradients, workspace) halve, up to the gathered keys
    and values, which stay full length; weights and optimizer state do not change."""
    from launch.plan import plan

    whole = plan(_long_rows(), 4, {"data": 1, "fsdp": 4, "tensor": 1})
    split = plan(_long_rows(), 8, {"data": 1, "fsdp": 4, "context": 2, "tensor": 1})
    assert "context" not in whole and "context" not in whole["mesh"]
    assert split["mesh"] == {"data": 1, "fsdp": 4, "context": 2, "tensor": 1}
    one, two = whole["memory_per_device"], split["memory_per_device"]
    assert (one["params"], one["optimizer"]) == (two["params"], two["optimizer"])
    ctx = split["context"]
    assert ctx["size"] == 2 and ctx["load_balance"] is True
    assert ctx["tokens_per_device"] == 8 / 4 * 1024 / 2  # rows per device x T / context
    # the gathered K+V of both layers: 2 rows x 1024 tokens x 4 heads x 32 x 4 bytes x (K, V)
    assert ctx["kv_gathered_per_layer"] == 2 * 1024 * 4 * 32 * 4 * 2
    assert ctx["attention_scores_per_layer_xla"] == 2 * 4 * 512 * 1024 * 4
    half = one["xla_temporaries"] / 2
    assert half <= two["xla_temporaries"] <= half + 2 * ctx["kv_gathered_per_layer"] + 0.05 * half
    assert two["peak"] < 0.55 * one["peak"]


def _kv_formula(c, rows, t, kv_heads, head_dim, dtype_bytes, layers):
    """Per device and step: (c-1)/c of each layer's full-length K and V, once per pass."""
    return layers * (c - 1) / c * rows * t * kv_heads * head_dim * dtype_bytes * 2


def test_kv_all_gather_and_reduce_scatter_bytes_match_the_formula():
    from configs.gpt_lm import get_config
    from launch.plan import format_report, plan
    from train.hardware import CHIPS

    c = get_config("smoke")  # llama-tiny: 2 layers, 4 heads of 8, 2 kv heads (GQA)
    c.model.update(name="llama-tiny", dtype="bfloat16", attention_kernel="xla")
    c.tokenizer.vocab_size, c.batch_size, c.seq_len = 128, 8, 64
    report = plan(c, 8, {"data": 2, "fsdp": 1, "context": 4, "tensor": 1})
    roof = report["roofline"]
    # 8 rows over data=2: 4 rows per device, 64 tokens, bf16
    expected = _kv_formula(4, rows=4, t=64, kv_heads=2, head_dim=8, dtype_bytes=2, layers=2)
    assert expected == 3 / 4 * 4 * 64 * 2 * 8 * 2 * 2 * 2
    assert roof["kv_all_gather_bytes_per_device"] == expected
    assert roof["kv_reduce_scatter_bytes_per_device"] == expected
    assert report["context"]["kv_all_gather_bytes_per_device"] == expected
    # the collectives' total: the gradient all-reduce over data x context = 8 replicas (the
    # weights are replicated over both), then both K/V collectives
    params = report["memory_total"]["params"]
    assert roof["collective_bytes_per_device"] == pytest.approx(2 * params * 7 / 8 + 2 * expected)
    assert roof["collectives_s"] == pytest.approx(
        roof["collective_bytes_per_device"] / CHIPS["h100"].link_bandwidth
    )
    text = format_report(report)
    assert "mesh data=2 x fsdp=1 x context=4 x tensor=1 on 8" in text
    assert "context parallelism (4 ways, load balance on)" in text and "K/V all-gather" in text
    # remat recomputes the layer in the backward pass, the all-gather with it
    c.model.update(scan_layers=True, remat_policy="full")
    remat = plan(c, 8, {"data": 2, "fsdp": 1, "context": 4, "tensor": 1})["roofline"]
    assert remat["kv_all_gather_bytes_per_device"] == 2 * expected
    assert remat["kv_reduce_scatter_bytes_per_device"] == expected


def test_context_1_plans_as_before(fsdp_report):
    """An explicit context=1 and stage=1 is the plan without the axes: the same report, which
    the tests above pin (mesh without `context` or `stage`, FSDP-only collectives, no context
    or pipeline section)."""
    from launch.plan import format_report, plan

    sizes = {"data": 1, "stage": 1, "fsdp": 8, "context": 1, "tensor": 1}
    again = plan(_config(), 8, sizes, chip="h100")
    assert again == fsdp_report
    assert "context" not in fsdp_report and "pipeline" not in fsdp_report
    assert fsdp_report["roofline"]["stage_send_bytes_per_device"] == 0
    assert fsdp_report["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert fsdp_report["roofline"]["kv_all_gather_bytes_per_device"] == 0
    assert fsdp_report["roofline"]["kv_reduce_scatter_bytes_per_device"] == 0
    assert "context" not in format_report(fsdp_report)
    assert "pipeline" not in format_report(fsdp_report)


@pytest.mark.parametrize(
    "text, wanted",
    [
        ("data=2,seq=2", "unknown axis 'seq'"),
        ("data=2,context", "unknown axis 'context'"),
        ("data=2,context=two", "context='two' is not an integer"),
        ("context=0", "context=0 must be positive or -1"),
        ("context=2,context=4", "context is given twice"),
    ],
)
def test_bad_mesh_values_are_one_line(text, wanted):
    from launch.plan import PlanError, parse_mesh

    with pytest.raises(PlanError) as e:
        parse_mesh(text)
    message = str(e.value)
    assert wanted in message and "\n" not in message
    assert "use data=..,stage=..,fsdp=..,context=..,tensor=.." in message


def test_context_must_split_the_sequence():
    from launch.plan import PlanError, plan

    c = _long_rows()
    c.seq_len = 1020  # not a multiple of 2 x context = 8 (load balancing)
    with pytest.raises(PlanError, match=r"mesh context=4: seq_len=1020 is not divisible") as e:
        plan(c, 8, {"data": 2, "context": 4})
    assert "\n" not in str(e.value)
    with pytest.raises(PlanError, match="mesh context=3: mesh.context=3 is odd") as e:
        plan(c, 6, {"data": 2, "context": 3})


def _cli_error(*args: str) -> str:
    """The one `error:` line of a planner run of the smoke config that exits 2."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = str(ROOT)
    bad = subprocess.run(
        [sys.executable, "-m", "launch.plan", "--config", "configs/gpt_lm.py:smoke", *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
    )
    errors = [line for line in bad.stderr.splitlines() if "error:" in line]
    assert bad.returncode == 2 and len(errors) == 1, bad.stderr[-2000:]
    return errors[0]


def test_cli_bad_mesh_is_one_line():
    error = _cli_error("--devices", "8", "--mesh", "data=2,context=4,pipeline=1")
    assert "unknown axis 'pipeline'" in error and "context=.." in error


# Pipeline parallelism (`--mesh stage=S`) ----------------------------------------------------------


def _staged(**changes):
    """GPT-2 widths, four scanned layers (two per stage), 8 rows of 64 tokens."""
    c = _config(**changes)
    c.model.update(num_layers=4, scan_layers=True)
    return c


def _param_bytes(model_config) -> tuple[int, int]:
    """(the stacked layers' bytes, the rest's) from the model's own parameter shapes."""
    import jax

    import models
    from models.summary import dummy_inputs

    shapes = jax.eval_shape(
        lambda: models.build(model_config).init(jax.random.key(0), **dummy_inputs(model_config))
    )["params"]
    layers = other = 0
    for path, x in jax.tree_util.tree_leaves_with_path(shapes):
        nbytes = x.size * x.dtype.itemsize
        if any(getattr(k, "key", None) == "layers" for k in path):
            layers += nbytes
        else:
            other += nbytes
    return layers, other


@pytest.fixture(scope="module")
def stage_report():
    """data=2 x stage=2 on 4 devices, 4 microbatches, the circular schedule with 2 repeats."""
    from launch.plan import plan

    c = _staged()
    c.pipeline.update(microbatches=4, repeats=2)
    return plan(c, 4, {"data": 2, "stage": 2})


def test_stage_bubble_follows_the_formula(stage_report):
    from launch.plan import format_report

    s, m, r = 2, 4, 2
    p = stage_report["pipeline"]
    assert (p["stages"], p["microbatches"], p["repeats"]) == (s, m, r)
    assert p["iterations"] == r * m + s - 1 == 9
    assert p["bubble"] == pytest.approx((s - 1) / (r * m + s - 1))  # 1/9
    assert p["layers_per_stage"] == [2] and p["schedule"] == "circular"
    assert stage_report["mesh"] == {"data": 2, "stage": 2, "fsdp": 1, "tensor": 1}
    # the bubble idles every stage: compute over 1 - bubble
    roof, flops = stage_report["roofline"], stage_report["flops_per_step"]
    peak = stage_report["chip"]["peak_f32"]  # _config computes in float32
    assert roof["compute_s"] == pytest.approx(flops["analytic_per_device"] / peak * 9 / 8)
    # each iteration sends one microbatch's activations on, forward and backward: 8 rows over
    # data=2 in 4 microbatches = 1 row x 64 tokens x 768 x 4 bytes, 9 iterations, 2 passes
    sends = 2 * 9 * 1 * 64 * 768 * 4
    assert p["send_bytes_per_device"] == roof["stage_send_bytes_per_device"] == sends
    # with the data-parallel all-reduce of the stage's weights (the layers / 2 and the rest)
    held = p["params"]["layers_total"] / 2 + p["params"]["other_total"]
    assert roof["collective_bytes_per_device"] == pytest.approx(2 * held / 2 + sends)
    text = format_report(stage_report)
    assert "mesh data=2 x stage=2 x fsdp=1 x tensor=1 on 4" in text
    assert "pipeline (2 stages, circular, 2 repeats)" in text and "(S-1)/(R.M+S-1) = 1/9" in text
    assert "stage sends" in text and "over 1 - bubble = 0.89" in text


def test_stage_2_holds_half_the_layer_weights(stage_report):
    """Per device: half the stacked layers' bytes plus the embeddings, head and final norm,
    counted from the model's parameter shapes, not from the planner's shardings."""
    from launch.plan import _model_config

    layers, other = _param_bytes(_model_config(_staged()))
    mem = stage_report["memory_per_device"]
    assert stage_report["memory_total"]["params"] == layers + other
    assert mem["params"] == pytest.approx(layers / 2 + other, rel=1e-6)
    split = stage_report["pipeline"]["params"]
    assert (split["layers_total"], split["other_total"]) == (layers, other)
    assert split["layers_per_device"] == layers / 2 and split["other_per_device"] == other
    # Adam's two moments follow the weights (the step counters are a few bytes)
    assert 2 * (layers / 2 + other) <= mem["optimizer"] <= 2 * (layers / 2 + other) + 1024
    assert mem["peak"] >= mem["params"] + mem["optimizer"]


def test_fsdp_in_stages_gathers_the_layers_every_iteration():
    """stage=2 x fsdp=2, GPipe with 2 microbatches: 3 iterations, each gathering its stage's
    layers forward and backward (the compiled step's gathers sit in the layer scan inside the
    iteration loop), the rest gathered once per pass; the gradients reduce-scatter once."""
    from launch.plan import format_report, plan

    c = _staged()
    c.pipeline.microbatches = 2
    report = plan(c, 4, {"stage": 2, "fsdp": 2})
    p, roof = report["pipeline"], report["roofline"]
    assert p["fsdp_regathers"] == 3 and p["bubble"] == pytest.approx(1 / 3)
    layers, other = p["params"]["layers_total"] / 2, p["params"]["other_total"]
    gathers = 2 * (3 * layers + other) * 1 / 2
    sends = 2 * 3 * (8 / 2 / 2) * 64 * 768 * 4  # 8 rows / fsdp 2 / 2 microbatches
    expected = gathers + (layers + other) * 1 / 2 + sends
    assert roof["collective_bytes_per_device"] == pytest.approx(expected)
    text = format_report(report)
    assert "fsdp all-gathers           3.00 x" in text and "pipeline bubble idles 33%" in text


def test_stages_must_divide_the_layers():
    from launch.plan import PlanError, plan

    c = _config()  # 2 layers: not divisible by 2 stages x 2 repeats
    c.model.scan_layers = True
    c.pipeline.repeats = 2
    with pytest.raises(PlanError, match=r"mesh stage=2: model.num_layers=2 is not divisible") as e:
        plan(c, 4, {"data": 2, "stage": 2})
    assert "\n" not in str(e.value) and "repeats" in str(e.value)


def test_cli_bad_stage_is_one_line():
    error = _cli_error(
        *("--devices", "4", "--mesh", "data=2,stage=2", "--config.pipeline.microbatches=3"),
        "--config.model.scan_layers=True",
    )
    assert "mesh stage=2: config.pipeline.microbatches=3 is not a multiple" in error
