"""Run N cooperating JAX processes on this machine.

    python -m launch.local -n 2 --devices-per-process 2 -- \\
        python -m train --config configs/gpt_lm.py:smoke --workdir runs/mh

Each process gets `JAX_COORDINATOR_ADDRESS` (127.0.0.1 and a free port), `JAX_NUM_PROCESSES`,
`JAX_PROCESS_ID`, and `--devices-per-process` simulated CPU devices (`JAX_PLATFORMS=cpu`,
`XLA_FLAGS=--xla_force_host_platform_device_count=D`), so a 2 x 2 run has the same 4-device
global mesh as one process with 4 devices. Output lines are prefixed with `[i]`. When a process
exits with an error the others are stopped (SIGTERM, then SIGKILL after `--grace` seconds) and
that exit status is returned; Ctrl-C stops them all. Status 75 (a run that saved on SIGTERM and
stopped early, train/distributed.py's PREEMPTED_EXIT_STATUS) is not an error: the others are
left to finish their save, and 75 is returned.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from models.errors import ArgumentParser, one_line_errors
from train.distributed import PREEMPTED_EXIT_STATUS

_DEVICE_FLAG = re.compile(r"--xla_force_host_platform_device_count=\S+")


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(
    base: dict, *, process_id: int, num_processes: int, port: int, devices: int
) -> dict:
    """The environment of local process `process_id`."""
    env = dict(base)
    flags = _DEVICE_FLAG.sub("", env.get("XLA_FLAGS", "")).strip()
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COORDINATOR_ADDRESS"] = f"127.0.0.1:{port}"
    env["JAX_NUM_PROCESSES"] = str(num_processes)
    env["JAX_PROCESS_ID"] = str(process_id)
    env.pop("TRIPTYCH_DISTRIBUTED", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _pump(stream, prefix: str, out, lock: threading.Lock) -> None:
    for line in iter(stream.readline, b""):
        with lock:
            out.write(prefix + line.decode(errors="replace"))
            out.flush()
    stream.close()


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by a signal: 128 + sig


def _start(command, num_processes: int, devices: int, port: int, out, lock):
    """Starts the processes, each with a thread copying its output to `out`; returns both lists."""
    procs, pumps = [], []
    for i in range(num_processes):
        env = process_env(
            os.environ, process_id=i, num_processes=num_processes, port=port, devices=devices
        )
        proc = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole
        )
        procs.append(proc)
        pump = threading.Thread(target=_pump, args=(proc.stdout, f"[{i}] ", out, lock))
        pump.start()
        pumps.append(pump)
    return procs, pumps


def _signal_all(procs, sig) -> None:
    """Sends `sig` to the process group of every process still running."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass


def _shut_down(procs, first_signal, grace_s: float) -> None:
    """Sends `first_signal`, waits up to `grace_s` seconds for the processes, then kills them."""
    _signal_all(procs, first_signal)
    deadline = time.monotonic() + grace_s
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_all(procs, signal.SIGKILL)  # processes blocked in a collective ignore SIGTERM


def _supervise(procs, terminated: threading.Event, grace_s: float, out, lock) -> int:
    """Polls until all exit 0 (returns 0) or 0 and PREEMPTED_EXIT_STATUS (saved on SIGTERM:
    returns that), or one fails or SIGTERM comes: stops the rest."""
    clean = (0, PREEMPTED_EXIT_STATUS)
    while True:
        codes = [p.poll() for p in procs]
        failed = [(i, c) for i, c in enumerate(codes) if c not in (None, *clean)]
        if failed or terminated.is_set():
            if failed:
                index, code = failed[0]
                status = _exit_code(code)
                message = f"process {index} exited with status {status}"
            else:
                status, message = 143, "SIGTERM"
            with lock:
                out.write(f"[launch] {message}; stopping the others\n")
                out.flush()
            _shut_down(procs, signal.SIGTERM, grace_s)
            return status
        if all(c in clean for c in codes):
            return max(codes)
        time.sleep(0.1)


def run(
    command: list[str],
    *,
    num_processes: int,
    devices_per_process: int = 1,
    port: int | None = None,
    grace_s: float = 10.0,
    out=None,
) -> int:
    """Starts `command` `num_processes` times and waits. Returns 0 if all succeed, 75 if they
    saved on SIGTERM and stopped early, else the exit status of the first process that failed
    (the others are stopped)."""
    out = out or sys.stdout
    port = port or free_port()
    lock = threading.Lock()
    procs, pumps = _start(command, num_processes, devices_per_process, port, out, lock)
    terminated = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: terminated.set())
    status = 0
    try:
        status = _supervise(procs, terminated, grace_s, out, lock)
    except KeyboardInterrupt:
        _shut_down(procs, signal.SIGINT, grace_s)
        status = 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        for p in procs:
            p.wait()
        for pump in pumps:
            pump.join()
    return status


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        split = argv.index("--")
        ours, command = argv[:split], argv[split + 1 :]
    else:
        ours, command = argv, []
    parser = ArgumentParser(
        prog="python -m launch.local",
        description="Run N cooperating JAX processes on this machine (simulated CPU devices).",
        usage="%(prog)s -n N [--devices-per-process D] [--port P] -- COMMAND ...",
    )
    parser.add_argument("-n", "--num-processes", type=int, required=True)
    parser.add_argument("--devices-per-process", type=int, default=1)
    parser.add_argument("--port", type=int, default=None, help="coordinator port (default: free)")
    parser.add_argument(
        "--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL"
    )
    args = parser.parse_args(ours)
    if not command:
        parser.error("no command given; put it after `--`")
    if args.num_processes < 1 or args.devices_per_process < 1:
        parser.error("-n and --devices-per-process must be positive")
    return run(
        command,
        num_processes=args.num_processes,
        devices_per_process=args.devices_per_process,
        port=args.port,
        grace_s=args.grace,
    )


if __name__ == "__main__":
    sys.exit(main())
