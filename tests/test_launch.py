"""launch.local (process start/stop, env, prefixes, exit status) and what the cluster scripts
render: the TPU pod gcloud commands and the GKE JobSet manifest (the SLURM script:
tests/test_launch_slurm.py, and against a real cluster tests/test_slurm_cluster.py)."""

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["python", "-m", "train", "--config", "configs/gpt_lm.py:gpt2", "--workdir"]


def _launch(*args, timeout=60):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "launch.local", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def _script(body: str) -> list[str]:
    return [sys.executable, "-c", body]


def test_local_sets_env_and_prefixes_output():
    body = (
        "import os; print(os.environ['JAX_PROCESS_ID'], os.environ['JAX_NUM_PROCESSES'], "
        "os.environ['JAX_COORDINATOR_ADDRESS'], os.environ['XLA_FLAGS'], "
        "os.environ['JAX_PLATFORMS'])"
    )
    result = _launch("-n", "3", "--devices-per-process", "2", "--", *_script(body))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = sorted(result.stdout.splitlines())
    assert [line.split()[:3] for line in lines] == [
        ["[0]", "0", "3"],
        ["[1]", "1", "3"],
        ["[2]", "2", "3"],
    ]
    addresses = {line.split()[3] for line in lines}
    assert len(addresses) == 1 and addresses.pop().startswith("127.0.0.1:")
    # the caller's XLA flags kept, their device count replaced
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    expected = [*kept, "--xla_force_host_platform_device_count=2", "cpu"]
    assert all(line.split()[4:] == expected for line in lines)


def test_local_stops_all_when_one_fails_and_propagates_status():
    body = (
        "import os, signal, sys, time\n"
        "i = int(os.environ['JAX_PROCESS_ID'])\n"
        "print('up', i, flush=True)\n"
        "if i == 1:\n    time.sleep(0.5); sys.exit(7)\n"
        "if i == 2:\n    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stuck: needs SIGKILL\n"
        "time.sleep(120)\n"
    )
    start = time.monotonic()
    result = _launch("-n", "3", "--grace", "1", "--", *_script(body))
    assert result.returncode == 7, result.stdout + result.stderr
    assert time.monotonic() - start < 30  # the sleepers were stopped, not waited for
    assert "[launch] process 1 exited with status 7" in result.stdout
    assert {"[0] up 0", "[1] up 1", "[2] up 2"} <= set(result.stdout.splitlines())


def test_local_waits_for_every_process_that_saved_on_sigterm():
    # exit status 75: saved and stopped early; not a failure, so the slower one is not stopped
    body = (
        "import os, sys, time\n"
        "i = int(os.environ['JAX_PROCESS_ID'])\n"
        "time.sleep(2.0 * i)\n"
        "print('saved', i, flush=True)\n"
        "sys.exit(75)\n"
    )
    result = _launch("-n", "2", "--grace", "1", "--", *_script(body))
    assert result.returncode == 75, result.stdout + result.stderr
    assert {"[0] saved 0", "[1] saved 1"} <= set(result.stdout.splitlines())
    assert "[launch]" not in result.stdout


def test_local_requires_a_command():
    result = _launch("-n", "2")
    assert result.returncode == 2 and "no command" in result.stderr


def test_tpu_pod_commands():
    from launch import tpu

    args = tpu.parser().parse_args(
        [
            "--tpu",
            "pod-1",
            "--zone",
            "us-east5-a",
            "--project",
            "proj",
            "--accelerator-type",
            "v5p-32",
            "--copy",
            "--setup",
            "pip install -e .",
            "--config",
            "configs/gpt_lm.py:gpt2",
            "--workdir",
            "/mnt/runs/a b",
            "--set",
            "mesh.fsdp=16",
            "--env",
            "LIBTPU_INIT_ARGS=--x=1",
        ]
    )
    lines = tpu.commands(args)
    assert [line[4] for line in lines] == ["create", "scp", "ssh", "ssh"]
    assert "--accelerator-type=v5p-32" in lines[0] and "--zone=us-east5-a" in lines[0]
    assert lines[1][5:8] == ["--recurse", ".", "pod-1:~/triptych"]
    run = lines[-1]
    assert run[5] == "pod-1" and "--worker=all" in run and "--project=proj" in run
    remote = next(a for a in run if a.startswith("--command=")).removeprefix("--command=")
    assert remote.startswith("cd ~/triptych && ")
    words = shlex.split(remote.removeprefix("cd ~/triptych && "))
    assert words[:3] == [
        "TRIPTYCH_DISTRIBUTED=auto",
        "TRIPTYCH_INIT_TIMEOUT=600",
        "LIBTPU_INIT_ARGS=--x=1",
    ]
    assert words[3:] == [
        "python",
        "-m",
        "train",
        "--config",
        "configs/gpt_lm.py:gpt2",
        "--workdir",
        "/mnt/runs/a b",
        "--config.mesh.fsdp=16",
    ]
    # dry run prints each command shell-quoted, one per line
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.tpu",
            "--tpu",
            "pod-1",
            "--zone",
            "z",
            "--config",
            "c.py",
            "--workdir",
            "gs://bkt/run",  # a bucket workdir passes through as written
            "--dry-run",
        ],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "gcloud compute tpus tpu-vm ssh pod-1 --zone=z --worker=all '--command=cd ~/triptych && "
        "TRIPTYCH_DISTRIBUTED=auto TRIPTYCH_INIT_TIMEOUT=600 python -m train --config c.py "
        "--workdir gs://bkt/run'"
    ]


def _jobset(*extra):
    from launch import gke

    args = gke.parser().parse_args(
        [
            "--name",
            "gpt2-run",
            "--image",
            "reg/triptych:1",
            "--hosts",
            "4",
            "--config",
            "configs/gpt_lm.py:gpt2",
            "--workdir",
            "/data/runs/x",
            "--set",
            "steps=10",
            *extra,
        ]
    )
    return yaml.safe_load(gke.render(args))


def test_gke_jobset_gpu():
    manifest = _jobset("--pvc", "runs", "--env", "NCCL_DEBUG=INFO", "--port", "1234")
    assert manifest["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and manifest["kind"] == "JobSet"
    assert manifest["metadata"]["name"] == "gpt2-run"
    job = manifest["spec"]["replicatedJobs"][0]
    assert job["name"] == "workers" and job["replicas"] == 1
    assert job["template"]["spec"]["parallelism"] == job["template"]["spec"]["completions"] == 4
    assert job["template"]["spec"]["completionMode"] == "Indexed"
    pod = job["template"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "reg/triptych:1"
    assert container["command"] == [
        "python",
        "-m",
        "train",
        "--config",
        "configs/gpt_lm.py:gpt2",
        "--workdir",
        "/data/runs/x",
        "--config.steps=10",
    ]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["JAX_COORDINATOR_ADDRESS"] == "gpt2-run-workers-0-0.gpt2-run:1234"
    assert env["JAX_NUM_PROCESSES"] == "4" and env["NCCL_DEBUG"] == "INFO"
    assert env["JAX_PROCESS_ID"] == {
        "fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        }
    }
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 8}
    assert container["ports"] == [{"containerPort": 1234}]
    assert container["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "runs"
    assert manifest["spec"]["network"]["enableDNSHostnames"] is True


def test_gke_jobset_tpu():
    manifest = _jobset(
        "--accelerator",
        "tpu",
        "--tpu-type",
        "tpu-v6e-slice",
        "--tpu-topology",
        "4x4",
        "--chips-per-host",
        "4",
    )
    pod = manifest["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v6e-slice",
        "cloud.google.com/gke-tpu-topology": "4x4",
    }
    assert pod["containers"][0]["resources"]["limits"] == {"google.com/tpu": 4}
    assert "volumes" not in pod


# train.allocator: the command-line tools restart once under tcmalloc where it is installed.

_SHOW_ALLOCATOR = (
    "import os; from train import allocator; allocator.reexec_with_tcmalloc(); "
    "print(allocator.in_use(), os.environ.get('TCMALLOC_RELEASE_RATE'))"
)


def _allocator_of(env_overrides: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "TRIPTYCH_TCMALLOC")}
    env.update(PYTHONPATH=str(ROOT), **env_overrides)
    out = subprocess.run(
        _script(_SHOW_ALLOCATOR), env=env, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_tcmalloc_environ_preloads_first_and_keeps_user_settings():
    from train import allocator

    env = allocator.tcmalloc_environ(
        {"LD_PRELOAD": "libfoo.so", "TCMALLOC_RELEASE_RATE": "2", "HOME": "/h"}, "libtc.so.4"
    )
    assert env["LD_PRELOAD"] == "libtc.so.4 libfoo.so"
    assert env["TCMALLOC_RELEASE_RATE"] == "2"  # the user's value wins
    assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 1 << 40
    assert env["TRIPTYCH_TCMALLOC"] == "active" and env["HOME"] == "/h"
    assert allocator.tcmalloc_environ({}, "libtc.so.4")["LD_PRELOAD"] == "libtc.so.4"


def test_reexec_restarts_once_under_tcmalloc_unless_told_not_to():
    from train import allocator

    if allocator.find_tcmalloc() is None:
        # Nothing to restart into: the process keeps the system allocator and runs on.
        assert _allocator_of({}) == "system None"
        return
    assert _allocator_of({}) == "tcmalloc 0"
    assert _allocator_of({"TRIPTYCH_TCMALLOC": "0"}) == "system None"
