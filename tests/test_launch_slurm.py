"""The SLURM script that `launch.slurm` renders, run by bash against fake `scontrol` and `srun`:
the coordinator address, the processes and their GPUs, the #SBATCH lines for GPU, GRES and CPU
clusters, and the requeue on exit status 75 (tests/test_slurm_cluster.py runs it on a real
cluster)."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from launch import slurm

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--config", "configs/gpt_lm.py:gpt2", "--workdir", "/shared/w"]

# srun runs its command once per task with SLURM_PROCID and SLURM_LOCALID and returns the
# highest exit status, as the real one does; scontrol answers hostnames, node and requeue.
FAKES = {
    "scontrol": """#!/bin/bash
case "$1 $2" in
  "show hostnames") printf "gpu-node-017\\ngpu-node-018\\n" ;;
  "show node") echo "NodeName=$4 Arch=x86_64 CoresPerSocket=8 NodeAddr=10.1.0.17 NodeHostName=$4" ;;
  requeue*) echo "scontrol requeue $2" >&2 ;;
  *) exit 1 ;;
esac
""",
    "srun": """#!/bin/bash
echo "srun $*" >&2
ntasks=1; per_node=1
while [[ "$1" == --* ]]; do
  [[ "$1" == --ntasks=* ]] && ntasks="${1#--ntasks=}"
  [[ "$1" == --ntasks-per-node=* ]] && per_node="${1#--ntasks-per-node=}"
  shift
done
worst=0
for ((i = 0; i < ntasks; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$((i % per_node)) "$@" || { s=$?; ((s > worst)) && worst=$s; }
done
exit $worst
""",
    "fakepython": """#!/bin/bash
echo "ENV $JAX_PROCESS_ID $JAX_NUM_PROCESSES $JAX_COORDINATOR_ADDRESS $NCCL_DEBUG" \
  "GPUS=${CUDA_VISIBLE_DEVICES-unset}"
printf "ARG %s\\n" "$@"
exit "${FAKE_EXIT:-0}"
""",
}


def _render(*flags: str) -> str:
    return slurm.render(slurm.parser().parse_args([*flags, "--python", "fakepython", *SMOKE]))


def _run(tmp_path: Path, script: str, **env: str) -> subprocess.CompletedProcess:
    """Runs a rendered script under the fake SLURM commands, as job 4242."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in FAKES.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    env = {
        **{k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"},
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "gpu-node-[017-018]",
        "SLURM_JOB_ID": "4242",
        **env,
    }
    return subprocess.run(
        ["bash", str(path)], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=30
    )


def _sbatch(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if "#SBATCH" in line]


def test_script_renders_and_runs_under_fake_slurm(tmp_path):
    workdir = "/shared/runs/it's gpt2"  # a quote in the path must survive two shells
    argv = [
        *("--nodes", "2", "--gpus-per-node", "8", "--partition", "a100q"),
        *("--time", "02:00:00", "--config", "configs/gpt_lm.py:gpt2", "--workdir", workdir),
        *("--set", "mesh.fsdp=8", "--set", "steps=50", "--env", "NCCL_DEBUG=WARN"),
        *("--python", "fakepython", "--port", "9123", "--dry-run"),
    ]
    script = slurm.render(slurm.parser().parse_args(argv))
    assert _sbatch(script) == [
        "--job-name=triptych",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--time=02:00:00",
        "--output=%x-%j.out",
        "--open-mode=append",  # a requeued segment appends to the log
        "--exclusive",
        "--requeue",
        "--gpus-per-node=8",
        "--signal=TERM@120",  # the steps only: srun is left to wait for them
        "--partition=a100q",
    ]
    assert "export JAX_NUM_PROCESSES=2" in script.splitlines()
    assert "$" + "{" not in script.replace("${SLURM_RESTART", "").replace("${head_addr", "")
    result = _run(tmp_path, script)
    assert result.returncode == 0, result.stderr
    assert "srun --kill-on-bad-exit=1 --nodes=2 --ntasks=2 --ntasks-per-node=1" in result.stderr
    assert "requeue" not in result.stderr
    out = result.stdout.splitlines()
    assert out[0].startswith("triptych: job 4242 segment 1 on gpu-node-[017-018], ")
    envs = [line for line in out if line.startswith("ENV")]
    # the coordinator is the head node's NodeAddr; one process owns all of a node's GPUs
    assert envs == [
        "ENV 0 2 10.1.0.17:9123 WARN GPUS=unset",
        "ENV 1 2 10.1.0.17:9123 WARN GPUS=unset",
    ]
    args = [line[4:] for line in out if line.startswith("ARG")]
    expected = ["-m", "train", "--config", "configs/gpt_lm.py:gpt2", "--workdir", workdir]
    assert args == [*expected, "--config.mesh.fsdp=8", "--config.steps=50"] * 2


def test_the_second_segment_says_so(tmp_path):
    result = _run(tmp_path, _render("--nodes", "1"), SLURM_RESTART_COUNT="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("triptych: job 4242 segment 2 on ")


@pytest.mark.parametrize("visible", [None, "7,6,5,4,3,2,1,0"])
def test_tasks_per_node_split_the_gpus(tmp_path, visible):
    script = _render("--nodes", "2", "--tasks-per-node", "4", "--gpus-per-node", "8")
    assert "--ntasks-per-node=4" in _sbatch(script) and "--gpus-per-node=8" in _sbatch(script)
    env = {"CUDA_VISIBLE_DEVICES": visible} if visible else {}
    result = _run(tmp_path, script, **env)
    assert result.returncode == 0, result.stderr
    assert "srun --kill-on-bad-exit=1 --nodes=2 --ntasks=8 --ntasks-per-node=4" in result.stderr
    envs = [line.split() for line in result.stdout.splitlines() if line.startswith("ENV")]
    assert [e[1:3] for e in envs] == [[str(i), "8"] for i in range(8)]
    gpus = [e[-1].removeprefix("GPUS=") for e in envs]
    if visible:  # the ones SLURM made visible, in its order
        assert gpus == ["7,6", "5,4", "3,2", "1,0"] * 2
    else:
        assert gpus == ["0,1", "2,3", "4,5", "6,7"] * 2


def test_cpu_and_gres_clusters_get_their_own_lines():
    cpu = _sbatch(_render("--nodes", "2", "--gpus-per-node", "0", "--tasks-per-node", "2"))
    assert not [line for line in cpu if "gpu" in line or "gres" in line]
    gres = _sbatch(_render("--nodes", "2", "--gres", "gpu:a100:8", "--tasks-per-node", "8"))
    assert "--gres=gpu:a100:8" in gres and not [line for line in gres if "gpus" in line]
    split = _sbatch(_render("--nodes", "1", "--cpus-per-node", "32", "--tasks-per-node", "4"))
    assert "--cpus-per-task=8" in split
    unsignalled = _sbatch(_render("--nodes", "1", "--signal-before", "0"))
    assert not [line for line in unsignalled if "signal" in line]


@pytest.mark.parametrize("status,requeued", [(75, True), (1, False), (0, False)])
def test_exit_status_75_requeues_the_job(tmp_path, status, requeued):
    result = _run(tmp_path, _render("--nodes", "2"), FAKE_EXIT=str(status))
    assert result.returncode == status, result.stderr
    assert ("scontrol requeue 4242" in result.stderr) == requeued, result.stderr
    said = "job 4242 saved and stopped early (status 75); requeueing it" in result.stdout
    assert said == requeued


def _cli(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    """`python -m launch.slurm` with an `sbatch` that only records that it ran, where there is
    a tmp_path/bin (no sbatch at all otherwise)."""
    bin_dir = tmp_path / "bin"
    return subprocess.run(
        [sys.executable, "-m", "launch.slurm", *flags, *SMOKE],
        env=dict(os.environ, PYTHONPATH=str(ROOT), PATH=f"{bin_dir}:/nonexistent"),
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )


def test_dry_run_prints_the_script_and_submits_nothing(tmp_path):
    (tmp_path / "bin").mkdir()
    sbatch = tmp_path / "bin" / "sbatch"
    sbatch.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/submitted\n')
    sbatch.chmod(0o755)
    result = _cli(tmp_path, "--nodes", "4", "--gpus-per-node", "8", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("#!/bin/bash\n")
    assert "#SBATCH --nodes=4" in result.stdout and "JAX_NUM_PROCESSES=4" in result.stdout
    assert "python -m train --config configs/gpt_lm.py:gpt2 --workdir /shared/w" in result.stdout
    assert not (tmp_path / "submitted").exists() and not (tmp_path / "triptych.sbatch").exists()
    submitted = _cli(tmp_path, "--nodes", "4", "--script", "run.sbatch")
    assert submitted.returncode == 0, submitted.stderr
    assert (tmp_path / "submitted").read_text().strip() == "run.sbatch"
    assert (tmp_path / "run.sbatch").read_text().startswith("#!/bin/bash\n")


def test_no_sbatch_is_one_line(tmp_path):
    result = _cli(tmp_path, "--nodes", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: sbatch not found") and "--dry-run" in last


@pytest.mark.parametrize(
    "value,seconds",
    [("90", 5400), ("30:00", 1800), ("02:00:00", 7200), ("1-12", 129600), ("2-00:30:15", 174615)],
)
def test_time_limits_in_every_slurm_form(value, seconds):
    assert slurm.time_limit_s(value) == seconds
