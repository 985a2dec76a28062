"""The benchmark CLI (train/benchmark/) on tiny models: every JSON field, the report files, and
the PyTorch reference runner."""

import functools
import json
import math
import time
from pathlib import Path

import pytest

from data import objectives
from train import benchmark
from train.benchmark import suites, timing

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["--batch", "8", "--seq", "16", "--steps", "2", "--warmup", "1", "--dtype", "f32"]


def _finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def test_cli_writes_every_field(tmp_path):
    out = tmp_path / "r.json"
    start = time.perf_counter()
    assert benchmark.main(["--model", "gpt2-tiny", *TINY, "--json", str(out)]) == 0
    wall = time.perf_counter() - start
    r = json.loads(out.read_text())
    for key in ("tokens_per_s", "mfu", "compile_s", "step_time_s", "tflops_per_s"):
        assert _finite(r[key]) and r[key] > 0, key
    assert r["tokens_per_step"] == 8 * 16
    assert r["tokens_per_s"] == pytest.approx(128 / r["step_time_s"])
    assert r["mfu"] == pytest.approx(r["flops_per_step"] / r["step_time_s"] / r["peak_flops"])
    assert len(r["step_times_s"]) == 2
    assert r["step_time_s"] == pytest.approx(
        sorted(r["step_times_s"])[0] / 2 + sorted(r["step_times_s"])[1] / 2
    )
    assert isinstance(r["peak_memory_bytes"], int) and r["peak_memory_bytes"] > 0
    assert math.isfinite(r["final_loss"])
    # where the wall time went: the phases in order, adding up to less than the whole call
    phases = r["phases_s"]
    assert list(phases) == ["init", "compile", "warmup", "carbon", "timed", "report"]
    assert phases["compile"] >= r["compile_s"] and phases["timed"] >= sum(r["step_times_s"])
    assert sum(phases.values()) <= wall
    # energy: a finite non-negative figure with its method (None only without codecarbon)
    if r["carbon"]["method"] != "unavailable":
        assert _finite(r["energy_kwh"]) and r["energy_kwh"] >= 0
        assert _finite(r["emissions_kg_co2eq"]) and r["emissions_kg_co2eq"] >= 0
    env = r["environment"]
    for key in ("jax", "flax", "platform", "device_kind", "device_count", "xla_flags"):
        assert key in env
    assert env["device_count"] >= 1


def test_encoder_decoder_counts_both_sides_and_overrides():
    from models.summary import count_params

    r = benchmark.benchmark(
        "t5-tiny", 8, 16, target_seq=8, steps=1, warmup=1, dtype="bf16", overrides={"num_layers": 1}
    )
    assert r["tokens_per_step"] == 8 * (16 + 8)
    assert r["overrides"] == {"num_layers": 1} and r["dtype"] == "bf16"
    assert r["params"] == count_params(benchmark.benchmark_config("t5-tiny", "bf16", num_layers=1))
    assert r["params"] < count_params(benchmark.benchmark_config("t5-tiny", "bf16"))


def test_cli_rejects_missing_shape(capsys):
    with pytest.raises(SystemExit):
        benchmark.main(["--model", "gpt2-tiny"])
    assert benchmark.main(["--model", "gpt2-tiny", *TINY, "--set", "num_heads=5"]) == 2
    assert "num_heads" in capsys.readouterr().err


def test_report_files(tmp_path):
    r = benchmark.benchmark("gpt2-tiny", 8, 16, steps=2, warmup=1, dtype="f32")
    r.pop("environment")
    results = {
        "suite": "test",
        "date": "today",
        "command": "pytest",
        "environment": benchmark.environment(),
        "train": [r],
        "decode": [benchmark.decode_benchmark("gpt2-tiny", 2, prompt_len=4, new_tokens=4)],
    }
    benchmark.write_report(results, tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "| gpt2-tiny | 8 x 16 | f32 |" in text
    assert f"{r['tokens_per_s']:,.0f}" in text
    assert json.loads((tmp_path / "results.json").read_text())["train"][0]["model"] == "gpt2-tiny"
    for png in ("train.png", "decode.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.hf
def test_torch_reference_runner():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    r = benchmark.benchmark("gpt2-tiny", 8, 16, steps=2, warmup=1, dtype="bf16", reference="torch")
    ref = r["reference"]
    assert ref["class"] == "GPT2LMHeadModel" and ref["dtype"] == "bf16"
    assert ref["tokens_per_step"] == 128 and _finite(ref["tokens_per_s"])
    assert math.isfinite(ref["final_loss"])
    assert r["speedup_vs_reference"] == pytest.approx(r["tokens_per_s"] / ref["tokens_per_s"])


@pytest.mark.hf
def test_torch_decode_reference_agrees():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    r = benchmark.decode_benchmark(
        "gpt2-tiny", 3, prompt_len=5, new_tokens=6, repeats=1, reference="torch"
    )
    assert r["batch"] == 3 and r["new_tokens"] == 6 and r["tokens_per_s"] > 0
    # same weights, both greedy, f32: the same tokens
    assert r["reference"]["token_agreement"] == 1.0
    assert r["reference"]["class"] == "GPT2LMHeadModel"


@pytest.mark.hf
def test_torch_reference_other_families():
    pytest.importorskip("transformers")
    from train.benchmark_torch import train_benchmark

    for name, cls in (("bert-tiny", "BertForMaskedLM"), ("t5-tiny", "T5ForConditionalGeneration")):
        cfg = benchmark.benchmark_config(name, "f32")
        host = objectives.for_family(cfg.family).synthetic_batch(
            cfg.vocab_size, batch=2, seq=8, target=4
        )
        r = train_benchmark(cfg, host, steps=1, warmup=0)
        assert r["class"] == cls and math.isfinite(r["final_loss"])
        assert r["tokens_per_step"] == (2 * 8 + 2 * 4 if name == "t5-tiny" else 2 * 8)


def test_profile_lists_the_slowest_ops(tmp_path, capsys, monkeypatch):
    # every op, not the top 20: on 8 simulated devices sharing 2 busy cores the all-reduces and
    # any preempted fusion can push gpt2-tiny's microsecond matmuls out of the top 20
    every_op = functools.partial(benchmark.profile_ops, top=10_000)
    monkeypatch.setattr(timing, "profile_ops", every_op)
    out = tmp_path / "r.json"
    argv = ["--model", "gpt2-tiny", *TINY, "--json", str(out), "--profile", str(tmp_path / "p")]
    assert benchmark.main(argv) == 0
    ops = json.loads(out.read_text())["profile"]["top_ops"]
    assert ops and all(op["ms"] >= 0 and op["calls"] >= 1 for op in ops)
    assert [op["ms"] for op in ops] == sorted((op["ms"] for op in ops), reverse=True)
    # every op is traced back to the JAX operation of the train step it came from
    assert any("train_step" in (op["source"] or "") for op in ops)
    assert any("dot" in op["op"] or "ynn" in op["op"] for op in ops)  # the matmuls are there
    assert ops[0]["op"] in capsys.readouterr().out
    assert list((tmp_path / "p").rglob("perfetto_trace.json.gz"))


def test_profile_counts_only_device_kernels_on_a_gpu_trace(tmp_path):
    """In a GPU trace the host threads' launch events carry the same HLO names as the kernels;
    only the events of the device's trace processes count, named by their args["hlo_op"] or,
    inside a CUDA graph, by the kernel's own name (the shape of an H200 trace of 2026-11-26)."""
    import gzip

    CUDA_GRAPH = {"hlo_op": "command_buffer_1", "cuda_graph_id": "389"}

    class Compiled:  # the two HLO lines profile_ops reads
        def as_text(self):
            return (
                '  %fusion.1 = bf16[16,1024]{1,0} fusion(), metadata={op_name="jit(s)/dot"}\n'
                '  ROOT %fusion.2 = f32[8]{0} fusion(), metadata={op_name="jit(s)/add"}\n'
                '  %loop_add_fusion.4 = f32[8]{0} fusion(), metadata={op_name="jit(s)/add"}\n'
                "  %command_buffer.1 = f32[8]{0} call()\n"
            )

    events = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
        {"ph": "M", "name": "process_name", "pid": 7, "args": {"name": "/device:GPU:0"}},
        {"ph": "X", "pid": 1, "name": "fusion.1", "dur": 900.0},  # a launch, not the kernel
        {
            "ph": "X",
            "pid": 7,
            "name": "sm90_gemm_bf16",
            "dur": 300.0,
            "args": {"hlo_op": "fusion.1"},
        },
        {
            "ph": "X",
            "pid": 7,
            "name": "sm90_gemm_bf16",
            "dur": 200.0,
            "args": {"hlo_op": "fusion.1"},
        },
        {"ph": "X", "pid": 7, "name": "fusion.2", "dur": 100.0},
        # inside a CUDA graph: hlo_op is the command buffer, the kernel is named after its fusion
        {"ph": "X", "pid": 7, "name": "loop_add_fusion_4", "dur": 80.0, "args": CUDA_GRAPH},
        {"ph": "X", "pid": 7, "name": "loop_add_fusion_4", "dur": 40.0, "args": CUDA_GRAPH},
        # ...and a library kernel there has no instruction of its own: listed by kernel name
        {"ph": "X", "pid": 7, "name": "cudnn_sdpa_fwd", "dur": 70.0, "args": CUDA_GRAPH},
        {"ph": "X", "pid": 7, "name": "Memcpy DtoD", "dur": 50.0},  # a copy: left out
    ]
    (tmp_path / "t").mkdir()
    with gzip.open(tmp_path / "t" / "perfetto_trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)
    ops = benchmark.profile_ops(str(tmp_path), Compiled())
    assert [(op["op"], op["ms"], op["calls"]) for op in ops] == [
        ("fusion.1", 0.5, 2),
        ("loop_add_fusion.4", 0.12, 2),
        ("fusion.2", 0.1, 1),
        ("cudnn_sdpa_fwd", 0.07, 1),
    ]
    assert ops[1]["source"] == "jit(s)/add" and ops[3]["shape"] is None
    assert ops[0]["shape"] == "bf16[16,1024]{1,0}" and ops[0]["source"] == "jit(s)/dot"


def test_gpu_suite_refuses_to_run_on_a_cpu(capsys, tmp_path):
    assert benchmark.main(["--suite", "gpu", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "suite 'gpu' is sized for one GPU but JAX runs on cpu" in err
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.hf
def test_suite_leaves_out_pytorch_bf16_on_a_cpu_without_bf16_instructions(monkeypatch, tmp_path):
    tiny = {
        "train": [("gpt2-tiny", 8, 16, None)],
        "dtypes": ("f32", "bf16"),
        "steps": 2,
        "warmup": 1,
        "decode": {"model": "gpt2-tiny", "batches": (), "prompt_len": 4, "new_tokens": 4},
    }
    monkeypatch.setitem(benchmark.SUITES, "tiny", tiny)
    monkeypatch.setattr(suites, "cpu_has_bf16_instructions", lambda: False)
    results = benchmark.run_suite("tiny", tmp_path, reference="torch")
    f32, bf16 = results["train"]
    assert f32["reference"]["tokens_per_s"] > 0 and "reference_skipped" not in f32
    assert "reference" not in bf16 and "no bf16 instructions" in bf16["reference_skipped"]
    text = (tmp_path / "README.md").read_text()
    assert "| not timed |" in text and bf16["reference_skipped"] in text


@pytest.mark.hf
def test_reference_rounds_alternate_with_ours(monkeypatch):
    from train import benchmark_torch

    order = []
    timed, run = timing._timed_steps, benchmark_torch.TrainRunner.run

    def ours(*args):
        order.append("ours")
        return timed(*args)

    def theirs(self, steps):
        order.append("torch")
        return run(self, steps)

    monkeypatch.setattr(timing, "_timed_steps", ours)
    monkeypatch.setattr(benchmark_torch.TrainRunner, "run", theirs)
    r = benchmark.benchmark(
        "gpt2-tiny", 8, 16, steps=2, warmup=1, dtype="f32", reference="torch", rounds=3
    )
    assert order == ["ours"] * len(r["warmup_page_faults"]) + ["ours", "torch"] * 3
    ref = r["reference"]
    assert len(r["step_times_s"]) == 6 and len(ref["step_times_s"]) == 6
    per_round = r["speedup_per_round"]
    assert len(per_round) == 3 and all(x > 0 for x in per_round)
    assert r["speedup_vs_reference"] == sorted(per_round)[1]  # their median
    # each round's ratio is PyTorch's median step time over ours in that round
    ours_rounds = [sorted(r["step_times_s"][i : i + 2]) for i in (0, 2, 4)]
    theirs_rounds = [sorted(ref["step_times_s"][i : i + 2]) for i in (0, 2, 4)]
    for x, o, t in zip(per_round, ours_rounds, theirs_rounds):
        assert x == pytest.approx(sum(t) / sum(o))
    text = benchmark.render_markdown(
        {"suite": "t", "date": "d", "command": "c", "environment": {}, "train": [r]}
    )
    assert f"| {sorted(per_round)[1]:.2f} [{min(per_round):.2f}-{max(per_round):.2f}] |" in text


def test_warm_up_repeats_while_our_step_faults_in_fresh_memory(monkeypatch):
    """Warm-up runs again, in alternation with PyTorch's, while our warm-up steps still touch
    fresh memory (page faults), so that the first timed round doesn't pay for it."""
    from train import benchmark_torch

    counts = iter([0, 900_000, 900_000, 1_800_000, 1_800_000, 1_800_010])  # cumulative
    last = [0]

    def faults():
        last[0] = next(counts, last[0])
        return last[0]

    order = []
    timed, warm, run = (
        timing._timed_steps,
        benchmark_torch.TrainRunner.warm_up,
        benchmark_torch.TrainRunner.run,
    )
    monkeypatch.setattr(timing, "_page_faults", faults)
    monkeypatch.setattr(timing, "_timed_steps", lambda *a: order.append("ours") or timed(*a))
    monkeypatch.setattr(
        benchmark_torch.TrainRunner,
        "warm_up",
        lambda self, n: order.append("torch warm-up") or warm(self, n),
    )
    monkeypatch.setattr(
        benchmark_torch.TrainRunner, "run", lambda self, n: order.append("torch") or run(self, n)
    )
    r = benchmark.benchmark(
        "gpt2-tiny", 8, 16, steps=1, warmup=1, dtype="f32", reference="torch", rounds=2
    )
    assert r["warmup_page_faults"] == [900_000, 900_000, 10]
    assert order == ["ours", "torch warm-up"] * 3 + ["ours", "torch"] * 2
    assert r["page_faults_per_round"] == [0, 0]


def test_one_round_times_pytorch_first_and_frees_it_before_ours(monkeypatch):
    """JAX's GPU allocator keeps what it takes, PyTorch's hands it back: with one round PyTorch
    runs and is closed before our train state exists (gpt2-medium ran out of an H100's memory
    the other way round)."""
    from train import benchmark_torch

    order = []
    timed, close = timing._timed_steps, benchmark_torch.TrainRunner.close
    create = timing.create_train_state

    def ours(*args):
        order.append("ours")
        return timed(*args)

    def closed(self):
        order.append("torch closed")
        return close(self)

    def state(*args, **kwargs):
        order.append("our state")
        return create(*args, **kwargs)

    monkeypatch.setattr(timing, "_timed_steps", ours)
    monkeypatch.setattr(benchmark_torch.TrainRunner, "close", closed)
    monkeypatch.setattr(timing, "create_train_state", state)
    r = benchmark.benchmark("gpt2-tiny", 8, 16, steps=2, warmup=1, dtype="f32", reference="torch")
    warmups = len(r["warmup_page_faults"])
    assert order == ["torch closed", "our state"] + ["ours"] * (warmups + 1)
    ref = r["reference"]
    assert len(ref["step_times_s"]) == 2 and ref["rounds"] == 1
    assert r["speedup_vs_reference"] == pytest.approx(r["tokens_per_s"] / ref["tokens_per_s"])


def test_cli_rejects_zero_rounds(capsys):
    with pytest.raises(SystemExit) as e:
        benchmark.main(["--model", "gpt2-tiny", *TINY, "--rounds", "0"])
    assert e.value.code == 2
    assert "--rounds must be at least 1" in capsys.readouterr().err


@pytest.mark.hf
@pytest.mark.slow
def test_torch_compile_reference_computes_what_eager_does():
    """`torch,torch-compile`: both PyTorch runners time the same batch from the same weights,
    and the compiled model's losses equal eager's; the report gives both columns."""
    pytest.importorskip("torch")
    r = benchmark.benchmark(
        "gpt2-tiny", 8, 16, steps=2, warmup=1, dtype="f32", reference="torch,torch-compile"
    )
    eager, compiled = r["reference"], r["reference_compiled"]
    assert not eager["torch_compile"] and compiled["torch_compile"]
    assert compiled["final_loss"] == pytest.approx(eager["final_loss"], rel=1e-4)
    assert r["speedup_vs_compiled"] == pytest.approx(r["tokens_per_s"] / compiled["tokens_per_s"])
    text = benchmark.render_markdown(
        {"suite": "t", "date": "d", "command": "c", "environment": {}, "train": [r]}
    )
    assert f"| {compiled['tokens_per_s']:,.0f} | {r['speedup_vs_compiled']:.2f} |" in text


def test_cli_rejects_an_unknown_reference(capsys):
    with pytest.raises(SystemExit) as e:
        benchmark.main(["--model", "gpt2-tiny", *TINY, "--reference", "jax"])
    assert e.value.code == 2
    assert "the reference runners are torch, torch-compile" in capsys.readouterr().err


def test_real_data_times_the_pipeline_next_to_synthetic_tokens(tmp_path, monkeypatch, capsys):
    """`--data real`: the config's own pipeline feeds the step. A pipeline slowed on purpose
    (0.6 s a batch, the step a few ms) shows as a data stall near 1 and a large slowdown; the
    same run unslowed does not. The bounds leave room for a loaded machine (CI), where a step
    can take ten times as long."""
    from data import pipeline

    def run(delay: float) -> dict:
        out = tmp_path / f"real-{delay}.json"
        argv = [
            "--data", "real", "--config", f"{CONFIGS / 'gpt_lm.py'}:smoke", "--steps", "3",
            "--warmup", "1", "--rounds", "1", "--json", str(out),
            f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.data.prefetch=1",
        ]  # fmt: skip
        assert benchmark.main(argv) == 0
        return json.loads(out.read_text())

    fast = run(0.0)
    built = pipeline.BatchIterator.__next__

    def slow(self):
        time.sleep(0.6)
        return built(self)

    monkeypatch.setattr(pipeline.BatchIterator, "__next__", slow)
    slowed = run(0.6)
    assert "real data" in capsys.readouterr().out
    for r in (fast, slowed):
        assert r["objective"] == "clm" and r["tokens_per_step"] == r["batch"] * r["seq_len"]
        assert r["real_tokens_per_s"] > 0 and r["synthetic_tokens_per_s"] > 0
    assert slowed["data_stall_share"] > 0.6 and slowed["input_slowdown"] > 2.5
    assert fast["data_stall_share"] < slowed["data_stall_share"] / 2
    assert slowed["synthetic_tokens_per_s"] > 2.5 * slowed["real_tokens_per_s"]
