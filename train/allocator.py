"""tcmalloc under the command-line tools: XLA:CPU steps that do not fault their memory in again.

XLA:CPU allocates a compiled step's temporaries afresh at every execution. Under glibc's
malloc, allocations that large are mmap-ed and unmapped each time, so every page of them is
faulted in and zeroed by the kernel again on the next step. For gpt2 at batch 8 x 256 that was
875,000 page faults and 2.4-3.0 s of kernel time per step on a 2-core EPYC. tcmalloc with its
release rate at 0 keeps freed pages mapped and hands them out again: the median step went from
15.1 s to 13.8 s (docs/benchmarks/cpu-profile.md). PyTorch's eager ops gain from it as well.

`python -m train` and `python -m train.benchmark` call `reexec_with_tcmalloc()` first: where
libtcmalloc is installed (Debian and Ubuntu: `apt install libtcmalloc-minimal4`) and not yet
preloaded, the process restarts itself once with `LD_PRELOAD` set (AXLearn preloads tcmalloc on
its hosts too). `TRIPTYCH_TCMALLOC=0` keeps the system allocator. Where the library is missing
nothing happens: the tools run as before, only slower on CPUs.
"""

from __future__ import annotations

import ctypes.util
import os
import sys

ENV = "TRIPTYCH_TCMALLOC"
LIBRARIES = ("tcmalloc_minimal", "tcmalloc")  # gperftools' two builds, minimal first
TCMALLOC_ENV = {
    # Never hand freed pages back to the kernel: the next step reuses them without faults.
    "TCMALLOC_RELEASE_RATE": "0",
    # gperftools prints a line for every allocation above 1 GiB by default; a step's
    # temporaries are one such allocation (4.7 GiB for gpt2 at 8 x 256).
    "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40),
}


def find_tcmalloc() -> str | None:
    """The shared library's name for LD_PRELOAD, or None where tcmalloc is not installed."""
    if not sys.platform.startswith("linux"):
        return None
    for name in LIBRARIES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def in_use() -> str:
    """The allocator of this process: 'tcmalloc' when libtcmalloc is mapped, else 'system'."""
    try:
        with open("/proc/self/maps") as f:
            return "tcmalloc" if "libtcmalloc" in f.read() else "system"
    except OSError:
        return "system"


def tcmalloc_environ(environ: dict, library: str) -> dict:
    """`environ` with `library` preloaded first and tcmalloc's settings (user's values kept)."""
    env = dict(environ)
    env["LD_PRELOAD"] = " ".join(filter(None, (library, env.get("LD_PRELOAD"))))
    for key, value in TCMALLOC_ENV.items():
        env.setdefault(key, value)
    env[ENV] = "active"  # restart once, even if the preload fails
    return env


def reexec_with_tcmalloc() -> None:
    """Restarts this Python command under tcmalloc, once, where that is possible and wanted.

    Returns without doing anything when TRIPTYCH_TCMALLOC is 0 or already set by a restart,
    when tcmalloc is already loaded, or when the library is not installed."""
    if os.environ.get(ENV, "1") != "1" or in_use() == "tcmalloc":
        return
    library = find_tcmalloc()
    if library is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(
        sys.executable, [sys.executable, *sys.orig_argv[1:]], tcmalloc_environ(os.environ, library)
    )
