"""A real SLURM cluster on this machine for tests: munged, slurmctld and two slurmd.

    with slurm_cluster(directory) as cluster:   # cluster.env: SLURM_CONF for the clients
        subprocess.run(["sbatch", ...], env={**os.environ, **cluster.env})

    python tests/slurm_cluster.py DIR           # the same from a shell, until Ctrl-C

Debian's SLURM 22.05 packages (`slurmctld slurmd slurm-client munge`) are installed with apt-get
where they are missing and this runs as root. Everything else lives in `directory`: a munge key
and socket, slurm.conf, the state, spool and log files. The controller listens on 127.0.0.1:17000
and the two CPU nodes vm1 and vm2 on 127.0.0.1:17001 and :17002 (both run on this machine; free
ports instead where those are taken), in
two partitions: `low` (PriorityTier=1, PreemptMode=REQUEUE, GraceTime=60), the default, and
`urgent` (PriorityTier=10), with `PreemptType=preempt/partition_prio`: a job in `urgent` that
needs a node preempts the `low` job on it. A requeued job may start again after
`cred_expire=5` seconds (SLURM's default is 120), and the scheduler looks every second.

Every daemon is started here and stopped by its PID; jobs still queued are cancelled first, and
a line this adds to /etc/hosts (only where the host name does not resolve) is taken out again.
`Unavailable` says why a cluster cannot be had (not root, no apt-get, a daemon that fails).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
COMMANDS = ("slurmctld", "slurmd", "sbatch", "scontrol", "munged")
CONTROLLER_PORT = 17000
NODES = {"vm1": 17001, "vm2": 17002}
CPUS_PER_NODE = 2

CONF = """\
ClusterName=triptych
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={controller_port}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge/socket,cred_expire=5
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool-%n
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd-%n.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd-%n.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SlurmdParameters=config_overrides
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
MinJobAge=600
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
{nodes}
PartitionName=low Nodes={names} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 \
PreemptMode=REQUEUE GraceTime=60
PartitionName=urgent Nodes={names} MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
"""


class Unavailable(RuntimeError):
    """SLURM cannot be installed or started here; the message says why."""


@dataclass
class Cluster:
    directory: Path
    env: dict  # SLURM_CONF: what sbatch, squeue, scontrol and scancel need
    pids: dict = field(default_factory=dict)  # daemon name -> pid

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        result = subprocess.run(
            command, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=60
        )
        if check and result.returncode:
            raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()}")
        return result

    def job(self, job_id: str) -> dict:
        """`scontrol show job -o` as a dict (JobState, Restarts, ExitCode, ...)."""
        line = self.run("scontrol", "show", "job", "-o", job_id).stdout.strip()
        return dict(item.split("=", 1) for item in line.split() if "=" in item)

    def log(self, name: str) -> str:
        """The tail of one daemon's log (slurmctld, slurmd-vm1, ...)."""
        path = self.directory / f"{name}.log"
        return path.read_text()[-2000:] if path.exists() else ""


def ensure_installed() -> None:
    """Installs the SLURM and munge packages with apt-get where a command is missing.

    Raises:
      Unavailable: missing, and not root or no apt-get, or the install failed.
    """
    missing = [c for c in COMMANDS if shutil.which(c) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Unavailable(
            f"{', '.join(missing)} not installed, and installing needs root and apt-get: "
            f"apt-get install {' '.join(PACKAGES)}"
        )
    install = ["apt-get", "install", "-y", "-qq", *PACKAGES]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, env=env, capture_output=True).returncode:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        result = subprocess.run(install, env=env, capture_output=True, text=True)
        if result.returncode:
            tail = result.stderr.strip().splitlines()[-1:] or ["no output"]
            raise Unavailable(f"apt-get install {' '.join(PACKAGES)} failed: {tail[0]}")


def _start(cluster: Cluster, name: str, command: list[str]) -> None:
    out = open(cluster.directory / f"{name}.out", "wb")  # noqa: SIM115 (the daemon's, closed on exit)
    proc = subprocess.Popen(
        command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **cluster.env}
    )
    out.close()
    cluster.pids[name] = proc.pid


def _stop(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace_s`; reaps it where it is our child."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _start_munge(cluster: Cluster) -> None:
    """munged with its own key and socket in the cluster directory (root: --force)."""
    munge = cluster.directory / "munge"
    munge.mkdir(mode=0o755)
    key = munge / "key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    _start(
        cluster,
        "munged",
        [
            "munged",
            "--foreground",
            "--force",
            f"--socket={munge}/socket",
            f"--key-file={key}",
            f"--pid-file={munge}/pid",
            f"--seed-file={munge}/seed",
            f"--log-file={munge}/log",
        ],
    )
    _wait(lambda: (munge / "socket").exists(), 10, "munged did not create its socket", cluster)


def _wait(ready, timeout_s: float, what: str, cluster: Cluster) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        for name, pid in cluster.pids.items():
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    out = (cluster.directory / f"{name}.out").read_text(errors="replace")
                    log = cluster.log(name) or out
                    raise Unavailable(f"{name} exited at start: {log.strip()[-400:]}")
        if time.monotonic() > deadline:
            raise Unavailable(f"{what} within {timeout_s:.0f}s: {cluster.log('slurmctld')[-400:]}")
        time.sleep(0.2)


def _idle(cluster: Cluster) -> bool:
    result = cluster.run("sinfo", "-h", "-N", "-o", "%N %t", check=False)
    states = dict(line.split() for line in result.stdout.splitlines() if line.strip())
    return result.returncode == 0 and all(states.get(n) == "idle" for n in NODES)


@contextlib.contextmanager
def _host_resolves(host: str):
    """Adds `127.0.0.1 host` to /etc/hosts while the cluster runs, if `host` does not
    resolve (SLURM's daemons and srun look their own host name up)."""
    try:
        socket.gethostbyname(host)
        yield
        return
    except OSError:
        pass
    hosts = Path("/etc/hosts")
    saved = hosts.read_text()
    hosts.write_text(saved + f"\n127.0.0.1 {host}\n")
    try:
        yield
    finally:
        hosts.write_text(saved)


def _ports() -> list[int]:
    """The controller's and the nodes' ports: 17000-17002, or free ones where those are taken
    (another cluster of this kind, from a second test worker)."""
    wanted = [CONTROLLER_PORT, *NODES.values()]
    sockets = []
    try:
        for port in wanted:
            s = socket.socket()
            sockets.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemons bind
            s.bind(("127.0.0.1", port))
        return wanted
    except OSError:
        for s in sockets:
            s.close()
        sockets = [socket.socket() for _ in wanted]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _write_conf(directory: Path, host: str) -> Path:
    for sub in ("state", *(f"spool-{n}" for n in NODES)):
        (directory / sub).mkdir()
    controller_port, *node_ports = _ports()
    nodes = "\n".join(
        f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} "
        f"CPUs={CPUS_PER_NODE} State=UNKNOWN"
        for name, port in zip(NODES, node_ports)
    )
    conf = directory / "slurm.conf"
    conf.write_text(
        CONF.format(
            host=host,
            controller_port=controller_port,
            user=pwd.getpwuid(os.geteuid()).pw_name,
            dir=directory,
            nodes=nodes,
            names=",".join(NODES),
        )
    )
    return conf


def _cancel_jobs(cluster: Cluster, timeout_s: float = 60.0) -> None:
    """Cancels every job (all their processes get SIGKILL) and waits for the queue to empty."""
    cluster.run("scancel", "--full", "--state=PENDING", check=False)
    cluster.run("scancel", "--full", check=False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        queue = cluster.run("squeue", "-h", "-o", "%i %T", check=False)
        if queue.returncode or not queue.stdout.strip():
            return
        time.sleep(0.5)


def _job_processes(conf: Path) -> list[int]:
    """PIDs of processes left by this cluster's jobs (their environment names its slurm.conf)."""
    mark = f"SLURM_CONF={conf}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if mark in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
    return found


@contextlib.contextmanager
def slurm_cluster(directory: str | Path):
    """Brings the cluster up in `directory` (which must be empty or absent), yields a
    `Cluster`, then cancels its jobs and stops every daemon by PID.

    Raises:
      Unavailable: SLURM cannot be installed, or a daemon does not start.
    """
    ensure_installed()
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)  # munged wants its socket's directories searchable by all
    host = socket.gethostname().split(".")[0]
    with _host_resolves(host):
        conf = _write_conf(directory, host)
        cluster = Cluster(directory, {"SLURM_CONF": str(conf)})
        try:
            _start_munge(cluster)
            _start(cluster, "slurmctld", ["slurmctld", "-D", "-f", str(conf)])
            for name in NODES:
                _start(cluster, f"slurmd-{name}", ["slurmd", "-D", "-N", name, "-f", str(conf)])
            _wait(lambda: _idle(cluster), 60, "the nodes did not become idle", cluster)
            yield cluster
        finally:
            if "slurmctld" in cluster.pids:
                _cancel_jobs(cluster)
            for name in reversed(list(cluster.pids)):
                _stop(cluster.pids[name])
            for pid in _job_processes(conf):
                _stop(pid, grace_s=2)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/slurm_cluster.py DIR")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so that the daemons are stopped
    with slurm_cluster(sys.argv[1]) as up:
        print(f"export SLURM_CONF={up.env['SLURM_CONF']}   # daemons: {up.pids}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
