"""Reading a profiled step's trace: the XLA ops that took longest, each with its HLO shape and the
JAX operation it came from."""

from __future__ import annotations

import collections
import gzip
import json
import re
from pathlib import Path


def profile_ops(trace_dir: str, compiled, top: int = 20) -> list[dict]:
    """The `top` XLA ops of a profiled step by total time, each with its HLO shape and the JAX
    operation it came from (the `op_name` metadata of `compiled.as_text()`).

    On a CPU the trace's op events are named after HLO instructions. On a GPU only the device's
    own trace processes count (the host threads hold launches). Their kernels name the
    instruction in `args["hlo_op"]`, except inside a CUDA graph, where `hlo_op` is the command
    buffer and the kernel itself is named after its fusion with "." and "-" turned into "_"
    ("loop_add_fusion_48" for %loop_add_fusion.48). Library kernels with no instruction of their
    own there (cuDNN attention, cuBLAS) are listed under their kernel name, with no shape.
    """
    # the newest trace: a reused directory keeps earlier runs' traces beside it
    newest = max(Path(trace_dir).rglob("perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
    trace = json.load(gzip.open(newest))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    lines = {  # instruction name -> its HLO line
        m.group(1): m.group(0)
        for m in re.finditer(r"^\s*(?:ROOT )?%([\w.\-]+) = .*$", compiled.as_text(), re.M)
    }
    kernel_names = {re.sub(r"[.\-]", "_", name): name for name in lines}
    processes = {
        e.get("pid"): str(e.get("args", {}).get("name", ""))
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    devices = {pid for pid, name in processes.items() if "/device:GPU" in name}
    totals, counts = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") != "X" or (devices and e.get("pid") not in devices):
            continue
        hlo_op, kernel = (e.get("args") or {}).get("hlo_op"), str(e.get("name"))
        if hlo_op in lines and not hlo_op.startswith("command_buffer"):
            name = hlo_op
        elif kernel in lines or kernel in kernel_names:
            name = kernel_names.get(kernel, kernel)
        elif devices and not kernel.startswith("Memcpy"):
            name = kernel[:60]  # a library kernel inside a command buffer
        else:
            continue  # host events, copies
        totals[name] += e.get("dur", 0)
        counts[name] += 1
    ops = []
    for name, micros in totals.most_common(top):
        line = lines.get(name, "")
        shape = re.search(r"= (\S+) ", line)
        source = re.search(r'op_name="([^"]+)"', line)
        ops.append(
            {
                "op": name,
                "ms": micros / 1e3,
                "calls": counts[name],
                "shape": shape.group(1) if shape else None,
                "source": source.group(1) if source else None,
            }
        )
    return ops
