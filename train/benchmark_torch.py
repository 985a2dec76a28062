"""The Hugging Face PyTorch reference for `train.benchmark`: the same shapes, timed the same way.

The reference model is the `transformers` class that `models.hf.config_to_hf` picks for our config
(GPT2LMHeadModel for gpt2, BertForMaskedLM for bert, T5ForConditionalGeneration for t5), built
from that config with random initialisation, so that a ratio "ours / PyTorch" is measured in one
run on one machine. Training: forward with `labels`, backward, `torch.optim.AdamW` step, with f32
weights and either f32 compute or `torch.autocast(dtype=bfloat16)`. Decoding: `generate` (greedy,
use_cache=True) with EOS suppressed so that every row produces exactly `new_tokens` tokens.
`device` is "cpu" or "cuda" (the caller passes the one JAX runs on); on CUDA the model uses
PyTorch's default attention (SDPA, flash attention in bf16), each step is launched before
waiting for the one before it, and a step's time ends at a CUDA event recorded after it.
`TrainRunner` keeps the model between timed rounds, so that train/benchmark/timing.py can alternate
PyTorch's steps with ours.

Needs the `hf` extra (torch + transformers); importing this module does not import them.
"""

from __future__ import annotations

import contextlib
import statistics
import time

import numpy as np

from models.config import ModelConfig

_OPTIMIZER = "torch.optim.AdamW(lr=1e-4, weight_decay=0.01, fused=True)"


def hf_model(cfg: ModelConfig, params=None):
    """The transformers model with the same architecture as `cfg` (random init, or `params`
    converted from ours through models/hf.py)."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSeq2SeqLM,
    )

    from models import hf

    hf_dict = hf.config_to_hf(cfg)
    model_type = hf_dict.pop("model_type")
    hf_dict.pop("architectures", None)
    hf_config = AutoConfig.for_model(model_type, **hf_dict)
    auto = {
        "decoder": AutoModelForCausalLM,
        "encoder": AutoModelForMaskedLM,
        "encoder_decoder": AutoModelForSeq2SeqLM,
    }[cfg.family]
    torch.manual_seed(0)
    model = auto.from_config(hf_config)
    if params is not None:
        state = {k: torch.from_numpy(v) for k, v in hf.convert_params_to_hf(cfg, params).items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        # tied output weights are absent from the converted state; BertForMaskedLM has no pooler
        missing = [k for k in missing if k not in _tied_keys(model)]
        unexpected = [k for k in unexpected if ".pooler." not in k]
        if missing or unexpected:
            raise ValueError(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    return model


def _tied_keys(model) -> set[str]:
    """Parameter names that share storage with another parameter (tied heads)."""
    tied_map = getattr(model, "_tied_weights_keys", None) or {}
    tied = set(tied_map) | set(tied_map.values()) if isinstance(tied_map, dict) else set(tied_map)
    seen = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if p.data_ptr() in seen:
            tied.add(name)
        seen.setdefault(p.data_ptr(), name)
    return tied


def _torch_batch(host: dict, family: str, device: str = "cpu") -> dict:
    """Our synthetic batch (numpy) -> the keyword arguments of the HF forward with labels."""
    import torch

    t = lambda x: torch.from_numpy(np.asarray(x, np.int64)).to(device)  # noqa: E731
    if family == "encoder_decoder":
        return {
            "input_ids": t(host["input_ids"]),
            "decoder_input_ids": t(host["decoder_input_ids"]),
            "labels": t(host["targets"]),
        }
    # GPT2LMHeadModel shifts labels itself (T-1 predictions), BertForMaskedLM takes every token;
    # both cost the same matmuls as ours up to one position.
    return {"input_ids": t(host["input_ids"]), "labels": t(host["targets"])}


def train_benchmark(
    cfg: ModelConfig,
    host_batch: dict,
    *,
    steps: int = 10,
    warmup: int = 2,
    dtype: str = "f32",
    threads: int | None = None,
    device: str = "cpu",
) -> dict:
    """Times `steps` AdamW training steps of the HF model on `host_batch` (ours, numpy)."""
    runner = TrainRunner(cfg, host_batch, dtype=dtype, threads=threads, device=device)
    try:
        runner.warm_up(warmup)
        runner.run(steps)
        return runner.result()
    finally:
        runner.close()


class TrainRunner:
    """The HF model, its AdamW optimizer and the batch, kept between timed rounds.

    `run` may be called several times, alternating with our own steps (train/benchmark/timing.py's
    `rounds`), so that both sides see the same machine when its speed drifts; `result` reports
    every timed step so far.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        host_batch: dict,
        *,
        dtype: str = "f32",
        threads: int | None = None,
        device: str = "cpu",
        compile: bool = False,
    ):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.dtype, self.device, self.compiled = dtype, device, compile
        self.model = hf_model(cfg).to(device)
        self.model.train()  # dropout rates are 0 in the benchmark config; train mode as in training
        self._module = self.model  # its parameters; `model` may be the compiled wrapper
        if compile:  # nanoGPT's `model = torch.compile(model)`; the first step compiles
            self.model = torch.compile(self.model)
        self.inputs = _torch_batch(host_batch, cfg.family, device)
        self.optimizer = torch.optim.AdamW(
            self._module.parameters(), lr=1e-4, weight_decay=0.01, fused=True
        )
        self.times: list[float] = []
        self.rounds: list[list[float]] = []
        self.loss = None
        self.warmup_s: list[float] = []  # each warm-up's seconds (a compiled model's compiles)
        self._info = {
            "class": type(self._module).__name__,
            "attn_implementation": getattr(self._module.config, "_attn_implementation", None),
            "tokens_per_step": sum(
                int(np.prod(v.shape)) for k, v in self.inputs.items() if k.endswith("input_ids")
            ),
        }
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def _step(self):
        import torch

        autocast = (
            torch.autocast(self.device, dtype=torch.bfloat16)
            if self.dtype == "bf16"
            else contextlib.nullcontext()
        )
        self.optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = self.model(**self.inputs).loss
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def warm_up(self, steps: int) -> None:
        """Runs `steps` untimed steps (the first ones allocate and pick kernels, or compile)."""
        start = time.perf_counter()
        for _ in range(steps):
            self._step()
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
        self.warmup_s.append(time.perf_counter() - start)
        self._free_gradients()

    def run(self, steps: int) -> list[float]:
        """Times `steps` steps; returns this round's seconds."""
        times, self.loss = _time_steps(self._step, self.device, steps)
        self.times += times
        self.rounds.append(times)
        self._free_gradients()
        return times

    def _free_gradients(self) -> None:
        """Frees the gradients between rounds. Each step allocates them afresh anyway
        (`zero_grad(set_to_none=True)`); kept, their 0.5 GB (gpt2) sat in the middle of the
        heap that our step reuses next, and on a CPU our next round faulted in 3.4 GB anew."""
        self.optimizer.zero_grad(set_to_none=True)

    def result(self) -> dict:
        import torch

        step_s = statistics.median(self.times)
        tokens = self._info["tokens_per_step"]
        return {
            "framework": "pytorch",
            "class": self._info["class"],
            "device": self.device,
            "dtype": self.dtype,
            "compute": "torch.autocast(bfloat16), f32 weights"
            if self.dtype == "bf16"
            else "float32",
            "optimizer": _OPTIMIZER,
            "torch": torch.__version__,
            "torch_compile": self.compiled,
            "warmup_s": list(self.warmup_s),
            "transformers": _transformers_version(),
            "threads": torch.get_num_threads(),
            "attn_implementation": self._info["attn_implementation"],
            "step_time_s": step_s,
            "step_times_s": list(self.times),
            "rounds": len(self.rounds),
            "tokens_per_step": tokens,
            "tokens_per_s": tokens / step_s,
            "final_loss": self.loss,
            "peak_memory_bytes": torch.cuda.max_memory_allocated()
            if self.device == "cuda"
            else None,
        }

    def close(self) -> None:
        """Frees the model and optimizer (and PyTorch's cached GPU memory); result() still works."""
        del self.model, self._module, self.optimizer, self.inputs
        _release(self.device)


def _time_steps(step, device: str, steps: int):
    """(per-step seconds, last loss) of `steps` calls of `step`."""
    import torch

    if device != "cuda":  # eager CPU steps have finished when step() returns
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            loss = step().item()
            times.append(time.perf_counter() - start)
        return times, loss

    def launched():
        """Runs one step; returns (its loss, an event recorded after it). Waiting on the event
        waits for that step only; reading the loss (`.item()`) would also wait for the next
        step, queued behind it on the same stream."""
        loss = step()
        done = torch.cuda.Event()
        done.record()
        return loss, done

    # as train/benchmark/timing.py's _timed_steps: step i is launched before waiting for step i-1
    start = time.perf_counter()
    loss, done = launched()
    ready = []
    for _ in range(steps - 1):
        pending = done
        loss, done = launched()
        pending.synchronize()
        ready.append(time.perf_counter())
    done.synchronize()
    ready.append(time.perf_counter())
    return [b - a for a, b in zip([start, *ready], ready)], loss.item()


def _release(device: str) -> None:
    """Hands PyTorch's cached GPU memory back, so that the next JAX run can use it."""
    if device == "cuda":
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()


def decode_benchmark(
    cfg: ModelConfig,
    prompt: np.ndarray,
    new_tokens: int,
    *,
    params=None,
    repeats: int = 3,
    threads: int | None = None,
    device: str = "cpu",
) -> dict:
    """Times greedy `generate` (use_cache=True) of `new_tokens` tokens after `prompt` (B, P).

    Returns the median wall time of `repeats` calls after one warm-up call, and the tokens.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    model = hf_model(cfg, params).to(device)
    model.eval()
    ids = torch.from_numpy(np.asarray(prompt, np.int64)).to(device)
    kwargs = dict(
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,  # suppresses EOS: every row makes exactly new_tokens
        do_sample=False,
        num_beams=1,
        use_cache=True,
        pad_token_id=0,
    )
    if cfg.family == "encoder_decoder":
        kwargs["decoder_start_token_id"] = 0
    with torch.inference_mode():
        out = model.generate(ids, **kwargs)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = model.generate(ids, **kwargs)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    tokens = out[:, -new_tokens:].cpu().numpy()
    seconds = statistics.median(times)
    name = type(model).__name__
    del model, out
    _release(device)
    return {
        "framework": "pytorch",
        "class": name,
        "device": device,
        "batch": int(ids.shape[0]),
        "prompt_len": int(ids.shape[1]),
        "new_tokens": new_tokens,
        "seconds": seconds,
        "times_s": times,
        "tokens_per_s": ids.shape[0] * new_tokens / seconds,
        "threads": torch.get_num_threads(),
        "tokens": tokens,
    }


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
