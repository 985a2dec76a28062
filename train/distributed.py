"""Multi-host runtime: `jax.distributed` from the environment, config agreement, ordering.

Every process of a multi-host run executes the same program (JAX's multi-controller model). This
module is what the training CLI calls so that the processes find each other and agree:

- `initialize()` starts `jax.distributed` before any device is used, from (first match wins)
  1. explicit settings: arguments, or `JAX_COORDINATOR_ADDRESS` + `JAX_NUM_PROCESSES` +
     `JAX_PROCESS_ID` (what `launch.local`, the SLURM script and the GKE JobSet set);
  2. `TRIPTYCH_DISTRIBUTED=auto`: JAX's own cluster detection (Cloud TPU VM pods, GKE TPU
     slices, SLURM, Open MPI), used by the TPU pod script;
  3. a SLURM step with more than one task (`SLURM_NTASKS` > 1) or an Open MPI job, detected.
  Otherwise the run is single-process and nothing is started. `TRIPTYCH_DISTRIBUTED=off` forces
  single-process. A coordinator that cannot be reached (or processes that do not all join)
  within `TRIPTYCH_INIT_TIMEOUT` seconds (default 300) ends the process with one clear line
  instead of an XLA abort.
- `check_same_config()` compares a hash of the resolved config across processes.
- `process_zero_first()` lets process 0 do one-time work (train and save the tokenizer, prepare
  the dataset) while the others wait, then the others load what it wrote.
- `global_data_state()` / `local_data_state()` turn the per-host input-iterator states into one
  layout-free state and back, so a checkpoint written by N hosts resumes on M hosts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from models.errors import UserError, report

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300
# `python -m train`'s exit status when SIGTERM made it save and stop before its last step:
# sysexits.h's EX_TEMPFAIL ("try again later"). Schedulers requeue or restart on it (the SLURM
# script runs `scontrol requeue`); 0 stays "finished", 1 and 2 are failures that a restart
# would repeat.
PREEMPTED_EXIT_STATUS = 75


class DistributedError(UserError, RuntimeError):
    """Processes that cannot start together or disagree."""


@dataclass(frozen=True)
class Spec:
    """How this process joins a run. `coordinator`/`num_processes`/`process_id` are None when
    JAX's cluster detection fills them in (method 'auto')."""

    method: str  # explicit | auto | slurm | mpi
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def detect(
    env: dict | None = None,
    *,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> Spec | None:
    """The multi-process setting found in arguments and `env`; None for a single process.

    Raises:
      DistributedError: explicit settings that are incomplete or inconsistent.
    """
    env = os.environ if env is None else env
    mode = env.get("TRIPTYCH_DISTRIBUTED", "").strip().lower()
    if mode in ("off", "0", "false", "none"):
        return None
    coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = _int(env["JAX_NUM_PROCESSES"], "JAX_NUM_PROCESSES")
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = _int(env["JAX_PROCESS_ID"], "JAX_PROCESS_ID")
    explicit = {
        "coordinator": coordinator,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    if any(v is not None for v in explicit.values()) and mode != "auto":
        missing = [k for k, v in explicit.items() if v is None]
        if missing:
            raise DistributedError(
                f"multi-process settings incomplete: {', '.join(missing)} not set (give all of "
                "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID or the matching flags)"
            )
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise DistributedError(
                f"process id {process_id} is not in [0, {num_processes}) (JAX_PROCESS_ID / "
                "JAX_NUM_PROCESSES)"
            )
        if ":" not in coordinator:
            raise DistributedError(f"coordinator address {coordinator!r} needs host:port")
        if num_processes == 1:
            return None
        return Spec("explicit", coordinator, num_processes, process_id)
    if mode == "auto":
        return Spec("auto", coordinator, num_processes, process_id)
    if mode not in ("",):
        raise DistributedError(f"TRIPTYCH_DISTRIBUTED={mode!r}: use auto or off (or leave unset)")
    if "SLURM_JOB_ID" in env and "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", 1)) > 1:
        return Spec("slurm")
    if "OMPI_COMM_WORLD_SIZE" in env and int(env["OMPI_COMM_WORLD_SIZE"]) > 1:
        return Spec("mpi")
    return None


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"{name}={value!r} is not an integer") from None


def initialize(spec: Spec | None = None, *, timeout_s: int | None = None) -> Spec | None:
    """Starts `jax.distributed` for `spec` (default: `detect()`); must run before any JAX
    device use. Returns the spec used (None: single process, nothing started).

    Raises:
      DistributedError: bad settings. A coordinator that is unreachable, or processes that do
        not all join within `timeout_s`, print one line and exit the process with status 2
        (XLA would otherwise abort with a C++ stack trace).
    """
    import jax

    spec = detect() if spec is None else spec
    if spec is None:
        return None
    if timeout_s is None:
        timeout_s = _int(os.environ.get("TRIPTYCH_INIT_TIMEOUT", DEFAULT_TIMEOUT_S), "timeout")
    where = spec.coordinator or "(detected)"
    who = "" if spec.process_id is None else f"process {spec.process_id} of {spec.num_processes}: "
    if spec.coordinator and spec.process_id not in (None, 0):
        _wait_for_port(spec.coordinator, timeout_s, who)
    done = threading.Event()

    def watchdog():
        if not done.wait(timeout_s):
            _die(
                f"{who}the {spec.num_processes or 'expected'} processes did not all join the "
                f"coordinator at {where} within {timeout_s}s; start every process (same "
                "JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES, distinct JAX_PROCESS_ID) or "
                "raise TRIPTYCH_INIT_TIMEOUT"
            )

    threading.Thread(target=watchdog, daemon=True, name="distributed-watchdog").start()
    kwargs = {}
    if spec.method == "explicit":
        kwargs = dict(
            coordinator_address=spec.coordinator,
            num_processes=spec.num_processes,
            process_id=spec.process_id,
        )
    elif spec.method in ("slurm", "mpi"):
        kwargs = dict(cluster_detection_method={"slurm": "slurm", "mpi": "ompi"}[spec.method])
    try:
        # XLA's own deadline comes after the watchdog's, so the clear message wins.
        jax.distributed.initialize(initialization_timeout=timeout_s + 60, **kwargs)
    except Exception as e:  # bad detection results, a second initialize, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedError(f"{who}jax.distributed.initialize failed: {first}") from None
    finally:
        done.set()
    log.info(
        "distributed (%s): process %d of %d, %d local / %d global devices",
        spec.method,
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return spec


def _wait_for_port(address: str, timeout_s: float, who: str) -> None:
    """Retries a TCP connection to the coordinator until it answers or `timeout_s` passes."""
    host, port = address.rsplit(":", 1)
    host = host.strip("[]")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                _die(
                    f"{who}cannot reach the coordinator at {address} within {timeout_s:g}s "
                    f"({e.strerror or e}); start process 0 first or check the address and port"
                )
            time.sleep(0.25)


def _die(message: str) -> None:
    """Reports and exits at once: the process may be stuck in a collective that never returns."""
    os._exit(report(message))


# What a collective or the coordination service reports when another process has gone away.
_PEER_FAILURE = (
    "gloo",
    "nccl",
    "connection reset",
    "connection refused",
    "heartbeat",
    "unavailable",
    "coordination service",
    "barrier",
)


@contextlib.contextmanager
def peer_failures_end_the_process():
    """Turns "another process died" into one line and exit status 1 on the survivors.

    With several processes, a host that is killed (preempted before the agreement, OOM-killed,
    crashed) makes the others' next collective fail (Gloo on CPUs: at once) or hang until JAX's
    heartbeat timeout (100 s) ends them. The checkpoint on disk is untouched: a save that did
    not finalize is never restored. The process exits at once with `os._exit`; a normal exit
    would wait in `jax.distributed.shutdown`'s barrier for the dead host, then abort.
    """
    import jax

    try:
        yield
    except jax.errors.JaxRuntimeError as e:
        text = str(e).strip()
        if jax.process_count() == 1 or not any(k in text.lower() for k in _PEER_FAILURE):
            raise
        first = text.splitlines()[0][:300]
        who = f"process {jax.process_index()} of {jax.process_count()}"
        _lost(f"{who}: another process of this run stopped ({first})")


def _lost(message: str) -> None:
    """One line, exit status 1, at once: the process may be blocked in a collective, and a
    normal exit would wait in `jax.distributed.shutdown`'s barrier for the lost process."""
    sys.stderr.write("\n")  # the progress bar may be mid-line (the watch thread ends it)
    report(
        f"{message}; the last complete checkpoint is kept: restart every process to resume from it"
    )
    logging.shutdown()
    os._exit(1)


def config_hash(config) -> str:
    """A stable hex digest of a config (ConfigDict or dict)."""
    data = config.to_dict() if hasattr(config, "to_dict") else config
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_same_config(config, what: str = "config") -> None:
    """Raises DistributedError on every process when the processes' configs differ.

    One small collective: each process contributes 16 bytes of the config's SHA-256.
    """
    import jax

    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    digest = config_hash(config)
    mine = np.frombuffer(bytes.fromhex(digest[:32]), dtype=np.uint32)
    every = np.asarray(multihost_utils.process_allgather(mine)).reshape(jax.process_count(), -1)
    hashes = [row.astype(np.uint32).tobytes().hex()[:12] for row in every]
    if len(set(hashes)) > 1:
        groups = {}
        for index, h in enumerate(hashes):
            groups.setdefault(h, []).append(index)
        listing = "; ".join(
            f"{h} on process{'es' if len(ids) > 1 else ''} {','.join(map(str, ids))}"
            for h, ids in groups.items()
        )
        raise DistributedError(
            f"the {len(hashes)} processes disagree on the {what} (hash {listing}); start every "
            "process with the same --config, --config.* overrides and --workdir"
        )


@contextlib.contextmanager
def process_zero_first(name: str, timeout_s: int = 3600):
    """Process 0 runs the body first; the others enter it once process 0 has left it.

    For one-time work whose result the others then read from a shared file system (a trained
    tokenizer, a prepared dataset). If process 0 fails inside the body the others stay at the
    barrier until the launcher stops them or `timeout_s` passes.
    """
    import jax

    if jax.process_count() == 1:
        yield
        return
    if jax.process_index() != 0:
        _barrier(f"triptych:{name}", timeout_s)
    yield
    if jax.process_index() == 0:
        _barrier(f"triptych:{name}", timeout_s)


def _barrier(name: str, timeout_s: int) -> None:
    from jax._src import distributed as jax_distributed  # the coordination service client

    client = jax_distributed.global_state.client
    if client is None:  # cannot happen with process_count() > 1 from jax.distributed
        raise DistributedError("no jax.distributed client for a multi-process barrier")
    client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)


def global_data_state(local_state: dict) -> dict:
    """The input iterator's state of the whole run (all rows) from every host's local state.

    `data.pipeline` hosts own contiguous blocks of global rows, in process order, so the
    global state is the single-host state: the hosts' row cursors concatenated. A collective:
    every process must call it (it gathers the JSON of each host's state).
    """
    import jax

    if jax.process_count() == 1:
        return local_state
    states = _allgather_json(local_state)
    first = states[0]
    for index, state in enumerate(states):
        if state.get("process_index") != index or state.get("step") != first.get("step"):
            raise DistributedError(
                f"data iterator states disagree across processes (process {index}: "
                f"process_index={state.get('process_index')}, step={state.get('step')})"
            )
    merged = dict(first)
    merged["process_index"], merged["process_count"] = 0, 1
    merged["cursors"] = [cursor for state in states for cursor in state["cursors"]]
    return merged


def local_data_state(state: dict, process_index: int, process_count: int) -> dict:
    """This host's share of a saved iterator state (global, or local from one old host)."""
    if state.get("process_count", 1) != 1:
        raise DistributedError(
            f"the checkpoint's data state belongs to host {state.get('process_index')} of "
            f"{state.get('process_count')} only; cannot resume the input position from it"
        )
    cursors = state["cursors"]
    if len(cursors) % process_count:
        raise DistributedError(
            f"{len(cursors)} batch rows cannot be split over {process_count} processes"
        )
    per_host = len(cursors) // process_count
    local = dict(state)
    local["process_index"], local["process_count"] = process_index, process_count
    local["cursors"] = cursors[process_index * per_host : (process_index + 1) * per_host]
    return local


def _allgather_json(obj) -> list:
    import jax
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int32)))
    sizes = sizes.reshape(jax.process_count())
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: data.size] = data
    every = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [json.loads(row[:n].tobytes().decode()) for row, n in zip(every, sizes)]


def next_in_step(iterator, local_rows: int):
    """`next(iterator)` on every host, in step: None once every host's iterator is exhausted,
    and all-padding rows (`iterator.rows.empty()`) from a host that ran out before the others.

    Finite packed streams end at different batches on different hosts (a host's rows may even
    be empty from the start), so a plain loop would leave some hosts in a collective the others
    never enter. One tiny collective per call when there are several processes.
    """
    import jax

    batch = next(iterator, None)
    if jax.process_count() == 1:
        return batch
    from jax.experimental import multihost_utils

    live = multihost_utils.process_allgather(np.array([batch is not None], np.int32))
    if not np.asarray(live).any():
        return None
    if batch is None:
        empty = iterator.rows.empty()
        batch = {k: np.stack([v] * local_rows) for k, v in empty.items()}
    return batch


class AgreedWidths:
    """The hosts' agreement on each batch's widths with `data.trim_padding`: every host gives
    its own widths (a tuple), and gets the elementwise maximum over all hosts, one round per
    call (`data.pipeline.make_pipeline(agree=...)`).

    The values go through the key-value store of JAX's coordination service, which
    `jax.distributed.initialize` started. Those are host-side RPCs, not a device collective, so
    they are safe from the feed thread, which builds batches while the loop's thread runs the
    step's collectives. Every host creates its agreements in the same order (the pipelines are
    built in the same order), and that order names them.
    """

    _created = 0

    def __init__(self, timeout_s: float = 600.0):
        import jax
        from jax._src import distributed as jax_distributed

        self._client = jax_distributed.global_state.client
        if self._client is None:
            raise DistributedError("AgreedWidths needs jax.distributed (several processes)")
        self._me, self._count = jax.process_index(), jax.process_count()
        self._name = f"triptych/widths/{AgreedWidths._created}"
        AgreedWidths._created += 1
        self._round, self._timeout_ms = 0, int(timeout_s * 1000)

    def __call__(self, widths: tuple[int, ...]) -> tuple[int, ...]:
        key = f"{self._name}/{self._round}"
        self._client.key_value_set(f"{key}/{self._me}", ",".join(map(str, widths)))
        every = [
            tuple(
                map(
                    int,
                    self._client.blocking_key_value_get(f"{key}/{i}", self._timeout_ms).split(","),
                )
            )
            for i in range(self._count)
        ]
        if self._round >= 2:  # every host has read round - 2: it has written this round
            self._client.key_value_delete(f"{self._name}/{self._round - 2}/{self._me}")
        self._round += 1
        return tuple(max(column) for column in zip(*every))


class PeerWatch:
    """Ends this process with one line when another process of the run stops answering.

    A host that hangs (a stuck collective on NCCL, a stopped or lost machine) would otherwise
    leave the others blocked until JAX's coordination service misses its heartbeats (100 s)
    and aborts them with a C++ stack trace. While the loop trains, every process bumps a
    counter in the coordination service's key-value store every `every_s` seconds and watches
    the others'; one that has not moved for `timeout_s` (`TRIPTYCH_PEER_TIMEOUT`, default 60;
    0 turns the watch off) ends this process: one error line, exit status 1, the checkpoint
    directory untouched. A process that holds the GIL keeps answering: compilation releases it.
    """

    def __init__(self, timeout_s: float | None = None, every_s: float = 2.0):
        import jax

        if timeout_s is None:
            timeout_s = float(os.environ.get("TRIPTYCH_PEER_TIMEOUT", 60))
        self.timeout_s, self.every_s = timeout_s, every_s
        self._me, self._count = jax.process_index(), jax.process_count()
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self._count > 1 and self.timeout_s > 0:
            from jax._src import distributed as jax_distributed

            client = jax_distributed.global_state.client
            self._thread = threading.Thread(
                target=self._watch, args=(client,), daemon=True, name="peer-watch"
            )
            self._thread.start()
        return self

    def _watch(self, client) -> None:
        who = f"process {self._me} of {self._count}"
        seen = {i: (None, time.monotonic()) for i in range(self._count) if i != self._me}
        beat = 0
        while not self._stop.wait(self.every_s if beat else 0):
            try:
                client.key_value_set(f"triptych/alive/{self._me}", str(beat), allow_overwrite=True)
                values = {i: _try_get(client, f"triptych/alive/{i}") for i in seen}
            except Exception:  # the coordinator (process 0) is gone
                _lost(f"{who}: lost the coordinator (process 0)")
            beat += 1
            now = time.monotonic()
            for i, value in values.items():
                if value != seen[i][0]:
                    seen[i] = (value, now)
                elif now - seen[i][1] > self.timeout_s:
                    _lost(
                        f"{who}: process {i} has not answered for {self.timeout_s:.0f}s (hung, "
                        "or its host is lost)"
                    )

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def _try_get(client, key: str) -> str | None:
    try:
        return client.key_value_try_get(key)
    except Exception as error:  # not written yet
        if "not found" in str(error).lower():
            return None
        raise


def width_agreement(data) -> AgreedWidths | None:
    """An `AgreedWidths` when the hosts must agree (`data.trim_padding` with several), else None."""
    import jax

    return AgreedWidths() if data.get("trim_padding") and jax.process_count() > 1 else None


class Preemption:
    """SIGTERM, on any host, becomes a step at which every host saves and stops.

    One process: a SIGTERM handler sets a flag that the loop reads at the next step boundary.
    Several processes: the notice must reach every host, or the host that got it would enter
    the (collective) save alone and the job would hang. `jax.distributed.initialize` installs
    JAX's preemption notifier, which owns SIGTERM; the loop asks `due(step)` after every step,
    and JAX's preemption sync manager answers True on every host at the same step (the largest
    step any host had reached when the notice came, plus one).
    """

    def __init__(self):
        import jax

        self.requested = False
        self._previous = None
        self._agreed = jax.process_count() > 1 and _sync_manager_running()

    def __enter__(self):
        if self._agreed:
            return self  # JAX's notifier handles SIGTERM; replacing it would lose the notice
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def due(self, step: int) -> bool:
        """Whether to save at `step` and stop; call it after every step, on every host."""
        if self._agreed and not self.requested:
            from jax.experimental import multihost_utils

            self.requested = multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def ignore_further_notices() -> None:
    """After the preemption save, on the way out: a second SIGTERM no longer matters, and must
    not turn the exit status into 143. srun sends one to the step's other tasks when the first
    of them exits with PREEMPTED_EXIT_STATUS (`--kill-on-bad-exit`), and the job would then not
    be requeued."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _sync_manager_running() -> bool:
    """Whether JAX's preemption sync manager runs (`jax_enable_preemption_service`, on by
    default, when `jax.distributed` is initialized)."""
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.preemption_sync_manager is not None
