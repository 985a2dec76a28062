"""Timing one training step and cached decoding: the phases of a run, in order, and the result
dict that `python -m train.benchmark` prints and a suite's report tabulates.

benchmark() builds the model and batch, times PyTorch first when it is the reference in one
round, sets up our train state, compiles the step ahead of time, warms it up (again while it
still touches fresh memory), times its rounds (alternating with PyTorch's when asked), profiles
one more step if asked, and reports; `phases_s` says where the wall time went.
"""

from __future__ import annotations

import dataclasses
import re
import resource
import statistics
import time

import jax
import numpy as np
import optax

import models
from data import objectives
from train import partitioning
from train.benchmark.machine import environment
from train.benchmark.trace import profile_ops
from train.carbon import CarbonTracker
from train.flops import train_flops_per_step
from train.hardware import device_peak
from train.state import create_train_state
from train.step import jit_steps, waits_for_each_step


def _peak_memory(compiled) -> tuple[int | None, str]:
    """The step's own memory: XLA's analysis of the compiled program where the backend gives one
    (the device allocator's peak covers the whole process, earlier benchmarks included)."""
    try:
        m = compiled.memory_analysis()
        total = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
        return int(total - m.alias_size_in_bytes), "XLA memory analysis (args + temps + outputs)"
    except Exception:  # not every backend reports it
        pass
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device allocator peak (whole process)"
    return None, "unavailable"


def benchmark_config(model: str, dtype: str, **overrides) -> models.ModelConfig:
    """The named architecture with its pretraining head, no dropout, and `dtype` compute."""
    base = models.get_config(model)
    fields = dict(
        head=objectives.for_family(base.family).head,
        dtype="bfloat16" if dtype == "bf16" else "float32",
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
    )
    fields.update(overrides)
    return base.replace(**fields)


# Warm-up repeats while one warm-up run of our steps takes SETTLED_FAULTS or more page faults.
WARMUP_TRIES, SETTLED_FAULTS = 4, 25_000  # 25k faults: 100 MB of 4 KiB pages


def _page_faults() -> int:
    """Minor page faults of this process so far (memory touched for the first time)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed_steps(compiled, state, data, rng, steps: int):
    """Runs `steps` steps the way the training loop does (on a GPU or TPU dispatching each
    before waiting for the one before it) and returns (state, metrics, seconds per step).

    A step's time is the interval between the moments its loss and the previous step's were
    ready. The host launches step i while the device still runs step i-1, as in train/loop.py,
    which reads metrics only every few steps. Waiting for each step before launching the next
    would add the launch latency (argument handling and the CUDA-graph launch) to every step
    (docs/benchmarks/gpu-notes.md). On a CPU each step is waited for, here and in the loop
    (train.step.waits_for_each_step says why)."""
    if waits_for_each_step():
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            state, metrics = compiled(state, data, rng)
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - start)
        return state, metrics, times
    start = time.perf_counter()
    state, metrics = compiled(state, data, rng)
    ready = []
    for _ in range(steps - 1):
        pending = metrics["loss"]
        state, metrics = compiled(state, data, rng)
        pending.block_until_ready()
        ready.append(time.perf_counter())
    jax.block_until_ready((state, metrics))
    ready.append(time.perf_counter())
    return state, metrics, [float(t) for t in np.diff([start, *ready])]


def benchmark(
    model: str,
    batch: int,
    seq: int,
    *,
    steps: int = 10,
    warmup: int = 2,
    dtype: str = "bf16",
    kernel: str = "auto",
    remat: str = "none",
    target_seq: int | None = None,
    scan_layers: bool = False,
    overrides: dict | None = None,
    reference: str | None = None,
    carbon: dict | None = None,
    profile: str | None = None,
    rounds: int = 1,
) -> dict:
    """Times `steps` training steps after `warmup` (`rounds` times); returns the result dict.

    Args:
      model: a named architecture (models.list_architectures()).
      overrides: further ModelConfig fields (e.g. num_layers=2 for a quick run).
      reference: "torch" also times the Hugging Face PyTorch model on the same batch, eager;
        "torch-compile" under `torch.compile`, as nanoGPT-style users run it; "torch,torch-compile"
        both. The first named is `reference` and `speedup_vs_reference` in the result; with both,
        the compiled one is `reference_compiled` and `speedup_vs_compiled`.
      rounds: with a reference, 1 times PyTorch first, frees it, then times ours; >1
        alternates the two: `steps` of ours, `steps` of PyTorch, and again, so that a machine
        whose speed drifts (shared CPUs) slows both sides alike. Both models are then in memory
        at once. `speedup_per_round` holds each round's ratio (PyTorch's median step time there
        over ours) and `speedup_vs_reference` is their median, so drift between rounds cancels;
        the tokens/s medians are over all rounds. Energy is measured over our first round.
      carbon: the carbon config section (train/carbon.py); None = defaults.
      profile: a directory: one more step runs under `jax.profiler.trace` (a Perfetto trace
        there) and the result's "profile" lists the ops that took longest (see profile_ops).
    """
    reference_names(reference)  # raises for an unknown runner
    if rounds < 1 or steps < 1:
        raise ValueError(f"steps={steps} and rounds={rounds} must be at least 1")
    spec = _Spec(
        model=model,
        batch=batch,
        seq=seq,
        steps=steps,
        warmup=warmup,
        dtype=dtype,
        kernel=kernel,
        remat=remat,
        target_seq=target_seq,
        scan_layers=scan_layers,
        overrides=overrides or {},
        reference=reference,
        carbon=carbon,
        profile=profile,
        rounds=rounds,
    )
    return _train(spec)


@dataclasses.dataclass(frozen=True)
class _Spec:
    """benchmark()'s arguments, checked (its docstring says what each means)."""

    model: str
    batch: int
    seq: int
    steps: int
    warmup: int
    dtype: str
    kernel: str
    remat: str
    target_seq: int | None
    scan_layers: bool
    overrides: dict
    reference: str | None
    carbon: dict | None
    profile: str | None
    rounds: int

    @property
    def target(self) -> int:
        """The decoder's length (an encoder-decoder's; the batch has one for every family)."""
        return self.target_seq or self.seq

    def config(self) -> models.ModelConfig:
        """The model: benchmark_config with the kernel, remat, scan and overrides asked for."""
        return benchmark_config(
            self.model,
            self.dtype,
            attention_kernel=self.kernel,
            remat_policy=self.remat,
            scan_layers=self.scan_layers,
            **self.overrides,
        )


class _Phases:
    """Wall seconds of each phase of a run, in the order they first ran (the result's phases_s)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._clock = time.perf_counter()

    def __call__(self, name: str) -> None:
        """Adds the time since the previous call (or since the start) to phase `name`."""
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._clock
        self._clock = now


def _train(spec: _Spec) -> dict:
    """benchmark() past its checks: the phases in order, then the result."""
    cfg = spec.config()
    pretraining = objectives.for_family(cfg.family)
    phase = _Phases()
    net = models.build(cfg)
    host = pretraining.synthetic_batch(
        cfg.vocab_size, batch=spec.batch, seq=spec.seq, target=spec.target
    )
    runners = [_reference_runner(spec, cfg, host, name) for name in reference_names(spec.reference)]
    alternating = _Together(runners) if runners and spec.rounds > 1 else None
    if alternating is None:
        for runner in runners:
            _reference_first(runner, spec, phase)
    ours = _Ours(net, cfg, pretraining.loss, host, phase)
    with partitioning.activate(ours.mesh, ours.rules):
        ours.compile()
        phase("compile")
        _warm_up(ours, spec.warmup, alternating)
        phase("warmup")
        tracker = CarbonTracker(spec.carbon)
        _timed_rounds(ours, spec, tracker, phase, alternating)
        phase("timed")
        if spec.profile:
            ours.profile(spec.profile)
            phase("profile")
    result = _result(spec, cfg, ours, tracker, phase.seconds)
    if spec.profile:
        top_ops = profile_ops(spec.profile, ours.compiled)
        result["profile"] = {"dir": str(spec.profile), "top_ops": top_ops}
    phase("report")
    ours.free()
    if alternating is not None:
        alternating.close()
    for i, runner in enumerate(runners):
        suffix = "_compiled" if i and runner.compiled else ""
        _compare_with_reference(
            result, runner, ours.per_round, alternated=alternating is not None, suffix=suffix
        )
    return result


REFERENCES = ("torch", "torch-compile")


def reference_names(reference: str | None) -> list[str]:
    """The PyTorch runners a `reference` names ("torch", "torch-compile", or both, by commas)."""
    names = [n.strip() for n in (reference or "").split(",") if n.strip()]
    for name in names:
        if name not in REFERENCES:
            raise ValueError(
                f"reference={reference!r}; the reference runners are {', '.join(REFERENCES)}"
            )
    return names


def _reference_runner(spec: _Spec, cfg: models.ModelConfig, host: dict, name: str):
    """PyTorch's TrainRunner on the same batch: eager ("torch") or `torch.compile`d."""
    from train.benchmark_torch import TrainRunner

    compiled = name == "torch-compile"
    return TrainRunner(cfg, host, dtype=spec.dtype, device=_torch_device(), compile=compiled)


class _Together:
    """Several reference runners alternating with ours as one: each runs in turn."""

    def __init__(self, runners):
        self.runners = runners

    def warm_up(self, steps: int) -> None:
        for runner in self.runners:
            runner.warm_up(steps)

    def run(self, steps: int) -> None:
        for runner in self.runners:
            runner.run(steps)

    def close(self) -> None:
        for runner in self.runners:
            runner.close()


def _reference_first(runner, spec: _Spec, phase: _Phases) -> None:
    """Times PyTorch's steps before ours exist, then frees them (one round)."""
    # PyTorch first, then freed: its allocator hands its cached GPU memory back, JAX's
    # keeps what it has taken (up to twice the step's need), and an 80 GiB GPU does not
    # hold both for gpt2-medium 16 x 1024 (PyTorch alone peaks at 47 GiB).
    runner.warm_up(spec.warmup)
    runner.run(spec.steps)
    runner.close()
    phase("reference")


class _Ours:
    """Our train step, sharded over every device along `data`: its state, batch and rng, stepped
    in place, and what timing it measured (compile seconds, step times, page faults)."""

    def __init__(self, net, cfg: models.ModelConfig, objective: str, host: dict, phase: _Phases):
        """Our train state and the batch on the devices (phase "init"), then the jitted step."""
        self.mesh = partitioning.make_mesh({"data": -1})
        self.rules = partitioning.DEFAULT_RULES
        tx = optax.adamw(1e-4, weight_decay=0.01)
        self.state, shardings = create_train_state(
            net, cfg, tx, self.mesh, self.rules, jax.random.key(0)
        )
        self.data = {
            k: jax.device_put(v, partitioning.batch_sharding(self.mesh, v.ndim))
            for k, v in host.items()
        }
        phase("init")
        self.step, _ = jit_steps(
            net, tx, lambda s: 1e-4, objective, shardings, self.mesh, self.rules, dropout=False
        )
        self.compiled = self.rng = self.metrics = None
        self.compile_s = 0.0
        self.warmup_faults: list[int] = []  # per warm-up run of ours (see WARMUP_TRIES)
        self.round_faults: list[int] = []  # of our timed steps: memory touched anew
        self.times: list[float] = []  # every timed step's seconds
        self.per_round: list[float] = []  # each round's median step time

    def compile(self) -> None:
        """Compiles the step ahead of time (under the mesh's rules) and times that."""
        self.rng = jax.random.key(1)
        start = time.perf_counter()
        self.compiled = self.step.lower(self.state, self.data, self.rng).compile()
        self.compile_s = time.perf_counter() - start

    def run(self, steps: int) -> list[float]:
        """Runs `steps` steps as the training loop does (_timed_steps); returns their seconds."""
        self.state, self.metrics, times = _timed_steps(
            self.compiled, self.state, self.data, self.rng, steps
        )
        return times

    def profile(self, trace_dir: str) -> None:
        """Runs one more step under `jax.profiler.trace`, a Perfetto trace in `trace_dir`."""
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            self.state, self.metrics = self.compiled(self.state, self.data, self.rng)
            jax.block_until_ready(self.state)

    def free(self) -> None:
        """Drops our train state, batch and compiled step (before PyTorch's runner closes)."""
        self.state = self.compiled = self.data = None


def _warm_up(ours: _Ours, warmup: int, alternating) -> None:
    """Warms our step up, again while it still faults in fresh memory (ours.warmup_faults)."""
    # Warm-up, again (up to WARMUP_TRIES times) while our steps still fault in fresh memory,
    # and with rounds in alternation with PyTorch's, as the rounds will run. On a CPU
    # our step's 3.4 GB (gpt2 8 x 256) landed in untouched memory after each of PyTorch's
    # first runs (850k page faults, 1-3 s of a 12 s step), and settled after the third.
    for _ in range(WARMUP_TRIES if warmup else 0):
        faults = _page_faults()
        ours.run(warmup)
        ours.warmup_faults.append(_page_faults() - faults)
        if alternating is not None:
            alternating.warm_up(warmup)
        if ours.warmup_faults[-1] < SETTLED_FAULTS:
            break


def _timed_rounds(ours: _Ours, spec: _Spec, tracker, phase: _Phases, alternating) -> None:
    """`spec.rounds` rounds of `spec.steps` timed steps of ours, each followed by PyTorch's when
    alternating; energy over our first round."""
    for i in range(spec.rounds):
        if i == 0:  # energy over our first round; codecarbon's start and stop timed apart
            tracker.start()
            phase("carbon")
        faults = _page_faults()
        try:
            round_times = ours.run(spec.steps)
            ours.round_faults.append(_page_faults() - faults)
        finally:
            if i == 0:  # stopped even when a step fails (codecarbon's thread with it)
                phase("timed")
                tracker.stop()
                phase("carbon")
        ours.times += round_times
        ours.per_round.append(statistics.median(round_times))
        if alternating is not None:
            alternating.run(spec.steps)


def _result(spec: _Spec, cfg: models.ModelConfig, ours: _Ours, tracker, phases: dict) -> dict:
    """The result dict of benchmark(), PyTorch's figures left to _compare_with_reference."""
    enc_dec = cfg.family == "encoder_decoder"
    times = ours.times
    step_s = statistics.median(times)
    flops = train_flops_per_step(cfg, spec.batch, spec.seq, spec.target if enc_dec else None)
    peak, peak_source = device_peak(spec.dtype)
    tokens = spec.batch * (spec.seq + (spec.target if enc_dec else 0))
    memory, memory_source = _peak_memory(ours.compiled)
    fused = _fused_attention_calls(ours.compiled)
    footprint = tracker.result()
    return {
        "model": spec.model,
        "overrides": spec.overrides,
        "family": cfg.family,
        "objective": objectives.for_family(cfg.family).loss,
        "batch": spec.batch,
        "seq": spec.seq,
        "target_seq": spec.target if enc_dec else None,
        "dtype": spec.dtype,
        "attention_kernel": spec.kernel,
        "cudnn_attention_calls": fused,
        "remat": spec.remat,
        "scan_layers": spec.scan_layers,
        "steps": spec.steps,
        "warmup": spec.warmup,
        "rounds": spec.rounds,
        "warmup_page_faults": ours.warmup_faults,
        "page_faults_per_round": ours.round_faults,
        "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(ours.state.params)),
        "step_time_s": step_s,
        "step_times_s": times,
        "step_time_spread_s": [min(times), max(times)],
        "tokens_per_step": tokens,
        "tokens_per_s": tokens / step_s,
        "flops_per_step": flops,
        "tflops_per_s": flops / step_s / 1e12,
        "peak_flops": peak,
        "peak_source": peak_source,
        "mfu": flops / step_s / peak,
        "compile_s": ours.compile_s,
        "peak_memory_bytes": memory,
        "peak_memory_source": memory_source,
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        # where the run's wall time went: reference (PyTorch, when timed first), init (model,
        # optimizer state, batch), compile, warmup, carbon (codecarbon's start and stop), timed
        # (with PyTorch's rounds when they alternate), profile, report (memory analysis,
        # environment, trace reading)
        "phases_s": phases,
        "final_loss": float(ours.metrics["loss"]),
        "energy_kwh": footprint["energy_kwh"],
        "emissions_kg_co2eq": footprint["emissions_kg_co2eq"],
        "carbon": footprint,
        "environment": environment(),
    }


def _compare_with_reference(
    result: dict, runner, per_round: list, *, alternated: bool, suffix: str = ""
) -> None:
    """Adds PyTorch's result and ours/PyTorch: the median of the rounds' ratios if alternated.
    `suffix` "_compiled" files a second, compiled reference as `reference_compiled`,
    `speedup_per_round_compiled` and `speedup_vs_compiled`."""
    result["reference" + suffix] = ref = runner.result()
    speedup = "speedup_vs_compiled" if suffix else "speedup_vs_reference"
    if alternated:
        ref_rounds = [statistics.median(r) for r in runner.rounds]
        per = result["speedup_per_round" + suffix] = [p / o for o, p in zip(per_round, ref_rounds)]
        result[speedup] = statistics.median(per)
    else:
        result[speedup] = result["tokens_per_s"] / ref["tokens_per_s"]


def _torch_device() -> str:
    """Where the PyTorch reference runs: on the GPU when JAX runs on one."""
    return "cuda" if jax.devices()[0].platform == "gpu" else "cpu"


def _fused_attention_calls(compiled) -> int | None:
    """How many cuDNN fused-attention calls (forward and backward) the compiled step makes, on a
    GPU (None elsewhere): evidence that kernel "auto" really reached cuDNN."""
    if jax.devices()[0].platform != "gpu":
        return None
    return len(re.findall(r'custom_call_target="__cudnn\$fmha', compiled.as_text()))


def decode_benchmark(
    model: str,
    batch: int,
    *,
    prompt_len: int = 32,
    new_tokens: int = 64,
    dtype: str = "f32",
    repeats: int = 3,
    overrides: dict | None = None,
    reference: str | None = None,
) -> dict:
    """Greedy cached generation (train/decode.generate): median seconds of `repeats` calls after
    a compiling call; with reference="torch" also transformers' `generate` on the same weights."""
    import flax.linen as nn

    from models.summary import dummy_inputs
    from train.decode import generate

    cfg = benchmark_config(model, dtype, **(overrides or {}))
    net = models.build(cfg)
    init = jax.jit(lambda r: nn.meta.unbox(net.init(r, **dummy_inputs(cfg))["params"]))
    params = init(jax.random.key(0))
    prompt = np.random.default_rng(0).integers(1, cfg.vocab_size, (batch, prompt_len))
    run = lambda: generate(net, params, prompt, max_new_tokens=new_tokens)  # noqa: E731
    start = time.perf_counter()
    tokens = run()
    first_s = time.perf_counter() - start
    times = []
    with CarbonTracker() as tracker:
        for _ in range(repeats):
            start = time.perf_counter()
            tokens = run()
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    footprint = tracker.result()
    result = {
        "model": model,
        "overrides": overrides or {},
        "dtype": dtype,
        "batch": batch,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "seconds": seconds,
        "times_s": times,
        "tokens_per_s": batch * new_tokens / seconds,
        "first_call_s": first_s,  # compile + one run
        "energy_kwh": footprint["energy_kwh"],
        "emissions_kg_co2eq": footprint["emissions_kg_co2eq"],
        "carbon": footprint,
    }
    if reference_names(reference):  # transformers' eager `generate`, for either reference
        ref = _decode_reference(cfg, params, prompt, new_tokens, tokens, repeats)
        result["reference"] = ref
        result["speedup_vs_reference"] = result["tokens_per_s"] / ref["tokens_per_s"]
    return result


def _decode_reference(cfg, params, prompt, new_tokens: int, tokens, repeats: int) -> dict:
    """transformers' greedy `generate` on the same weights and prompt, timed as ours was, with
    the fraction of its tokens equal to ours (`tokens`)."""
    from train.benchmark_torch import decode_benchmark as torch_decode

    ref = torch_decode(
        cfg.replace(dtype="float32"),
        prompt,
        new_tokens,
        params=params,
        repeats=repeats,
        device=_torch_device(),
    )
    theirs = ref.pop("tokens")
    ref["token_agreement"] = float(np.mean(theirs == tokens))  # same weights, both greedy
    return ref
