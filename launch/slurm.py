"""Submit a training run to a SLURM cluster: GPU nodes, GRES-spelled GPU nodes or CPU nodes.

    python -m launch.slurm --nodes 4 --gpus-per-node 8 --config configs/gpt_lm.py:gpt2 \\
        --workdir /shared/runs/gpt2 --set mesh.fsdp=8 --dry-run

renders the sbatch script; without --dry-run it is written next to the run (--script, default
./<job-name>.sbatch) and submitted with `sbatch`. The script exports JAX_COORDINATOR_ADDRESS
(the first node's NodeAddr), JAX_NUM_PROCESSES (= nodes x --tasks-per-node) and, per task,
JAX_PROCESS_ID (= SLURM_PROCID), which `python -m train` reads (train/distributed.py). With
several tasks per node each task owns its share of the node's GPUs (CUDA_VISIBLE_DEVICES from
SLURM_LOCALID). `srun --kill-on-bad-exit=1` stops every task when one fails.

Preemption, `scancel --signal=TERM JOBID` and the time limit (`--signal-before` seconds ahead,
`#SBATCH --signal=TERM@S`, sent to the training steps only) reach the run as SIGTERM: every
process saves the same step and exits with status 75 (train/distributed.py's
PREEMPTED_EXIT_STATUS). The script then requeues the job with `scontrol requeue` (`#SBATCH
--requeue`); the next segment resumes from that checkpoint and appends to the same log
(`--open-mode=append`).
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path
from string import Template

from launch.common import add_train_arguments, parse_env, train_command
from models.errors import ArgumentParser, UserError, one_line_errors
from train.distributed import PREEMPTED_EXIT_STATUS

TEMPLATE = Template("""\
#!/bin/bash
# Rendered by: python -m launch.slurm $invocation
$sbatch
set -euo pipefail

# $layout; process 0 runs on the first node.
echo "triptych: job $$SLURM_JOB_ID segment $$(($${SLURM_RESTART_COUNT:-0} + 1))" \\
  "on $$SLURM_JOB_NODELIST, $$(date -u +%FT%TZ)"
# sed reads every line; `head -n 1` could close the pipe early (SIGPIPE: exit 141 under pipefail)
head_node="$$(scontrol show hostnames "$$SLURM_JOB_NODELIST" | sed -n 1p)"
# the address SLURM itself reaches the node at (NodeAddr; the node name where it is not set)
head_addr="$$(scontrol show node -o "$$head_node" 2>/dev/null \\
  | sed -n 's/.*NodeAddr=\\([^ ]*\\).*/\\1/p' || true)"
export JAX_COORDINATOR_ADDRESS="$${head_addr:-$$head_node}:$port"
export JAX_NUM_PROCESSES=$processes
export TRIPTYCH_INIT_TIMEOUT=$init_timeout
$environment
status=0
srun --kill-on-bad-exit=1 --nodes=$nodes --ntasks=$processes --ntasks-per-node=$tasks_per_node \\
  bash -c $task || status=$$?
# Status $preempted: the run saved a checkpoint on SIGTERM (preemption, scancel --signal=TERM,
# the notice before the time limit) and stopped early. SLURM's requeue starts the next segment
# from that checkpoint, under the same job id and log.
if [ "$$status" -eq $preempted ]; then
  echo "triptych: job $$SLURM_JOB_ID saved and stopped early (status $preempted); requeueing it"
  scontrol requeue "$$SLURM_JOB_ID" \\
    || echo "triptych: requeue failed; submit the script again to resume"
fi
exit "$$status"
""")

# SLURM's --time: MINUTES, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS.
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def time_limit_s(value: str) -> int | None:
    """Seconds in a SLURM `--time` value; None for UNLIMITED/INFINITE.

    Raises:
      UserError: a value SLURM would not take.
    """
    if value.upper() in ("UNLIMITED", "INFINITE"):
        return None
    match = _TIME.match(value)
    days, first, second, third = match.groups() if match else (None, "0", None, None)
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = int(days) * 24 + int(first), int(second or 0), int(third or 0)
    elif third is not None:  # HH:MM:SS
        hours, minutes, seconds = int(first), int(second), int(third)
    else:  # MINUTES or MM:SS
        hours, minutes, seconds = 0, int(first), int(second or 0)
    total = hours * 3600 + minutes * 60 + seconds
    if not total:
        raise UserError(
            f"--time {value!r} is not a SLURM time limit: give MINUTES, HH:MM:SS or D-HH:MM:SS "
            "above zero (e.g. --time 48:00:00)"
        )
    return total


def gpus_per_node(args: argparse.Namespace) -> int:
    """The GPUs of one node: from --gres (gpu[:TYPE]:N), else --gpus-per-node (default 8).

    Raises:
      UserError: a --gres without a GPU count, or one that disagrees with --gpus-per-node.
    """
    if not args.gres:
        return 8 if args.gpus_per_node is None else args.gpus_per_node
    match = re.fullmatch(r"gpu(?::[\w.-]+)?:(\d+)", args.gres)
    if not match:
        raise UserError(
            f"--gres {args.gres!r} names no GPU count: give gpu:N or gpu:TYPE:N (e.g. "
            "--gres gpu:a100:8), or --gpus-per-node N where the cluster takes that"
        )
    count = int(match.group(1))
    if args.gpus_per_node is not None and args.gpus_per_node != count:
        raise UserError(
            f"--gres {args.gres} gives {count} GPUs per node but --gpus-per-node says "
            f"{args.gpus_per_node}: give one of the two"
        )
    return count


def check(args: argparse.Namespace) -> int:
    """Checks the layout flags together; returns the GPUs per node.

    Raises:
      UserError: one line naming the flag and the fix.
    """
    if args.nodes < 1:
        raise UserError(f"--nodes {args.nodes}: a job needs 1 node or more")
    if args.tasks_per_node < 1:
        raise UserError(
            f"--tasks-per-node {args.tasks_per_node}: give 1 (one process per node, owning "
            "all its GPUs) or more (e.g. one per GPU)"
        )
    if args.gpus_per_node is not None and args.gpus_per_node < 0:
        raise UserError(f"--gpus-per-node {args.gpus_per_node}: give 0 for CPU nodes, or more")
    gpus = gpus_per_node(args)
    if gpus % args.tasks_per_node:
        divisors = [d for d in range(1, gpus + 1) if gpus % d == 0]
        raise UserError(
            f"{gpus} GPUs per node do not split evenly over --tasks-per-node "
            f"{args.tasks_per_node}: give one of {', '.join(map(str, divisors))}"
        )
    if args.cpus_per_node is not None and (
        args.cpus_per_node < 1 or args.cpus_per_node % args.tasks_per_node
    ):
        raise UserError(
            f"--cpus-per-node {args.cpus_per_node} must be a positive multiple of "
            f"--tasks-per-node {args.tasks_per_node} (each task gets an equal share)"
        )
    limit = time_limit_s(args.time)
    if not 0 <= args.signal_before <= 65535:
        raise UserError(
            f"--signal-before {args.signal_before}: give seconds from 0 (no notice) to 65535"
        )
    if limit is not None and args.signal_before >= limit:
        raise UserError(
            f"--signal-before {args.signal_before}s is not shorter than --time {args.time} "
            f"({limit}s): the run would be stopped before it trains; lower it or raise --time"
        )
    return gpus


def _task(args: argparse.Namespace, gpus: int) -> str:
    """The command each srun task runs: its process id, its GPUs, then the training command."""
    lines = ["export JAX_PROCESS_ID=$SLURM_PROCID"]
    share = gpus // args.tasks_per_node
    if gpus and args.tasks_per_node > 1:
        every = ",".join(map(str, range(gpus)))
        lines += [
            f"# local task i owns GPUs {share}i to {share}i+{share - 1} of the {gpus} visible "
            "(the list SLURM set, else 0 to N-1)",
            f'IFS=, read -ra gpus <<< "${{CUDA_VISIBLE_DEVICES:-{every}}}"',
            f'if [ "${{#gpus[@]}}" -eq {gpus} ]; then',
            f'  mine=("${{gpus[@]:$((SLURM_LOCALID * {share})):{share}}}")',
            '  CUDA_VISIBLE_DEVICES="$(IFS=,; echo "${mine[*]}")"; export CUDA_VISIBLE_DEVICES',
            "fi",
        ]
    lines.append(f"exec {train_command(args)}")
    return "\n".join(lines)


def _layout(args: argparse.Namespace, gpus: int) -> str:
    if args.tasks_per_node == 1:
        owns = f"all {gpus} GPUs" if gpus else "the node (CPU only)"
        return f"One JAX process per node, owning {owns}"
    owns = f"{gpus // args.tasks_per_node} of its {gpus} GPUs" if gpus else "a share of its CPUs"
    return f"{args.tasks_per_node} JAX processes per node, each owning {owns}"


def render(args: argparse.Namespace, invocation: str = "") -> str:
    """The sbatch script for parsed arguments.

    Raises:
      UserError: flags that do not fit together (see `check`).
    """
    gpus = check(args)
    sbatch = [
        f"--job-name={args.job_name}",
        f"--nodes={args.nodes}",
        f"--ntasks-per-node={args.tasks_per_node}",
        f"--time={args.time}",
        f"--output={args.output}",
        "--open-mode=append",  # a requeued segment appends to the same log
        "--exclusive",
        "--requeue",
    ]
    if args.gres:
        sbatch.append(f"--gres={args.gres}")
    elif gpus:
        sbatch.append(f"--gpus-per-node={gpus}")
    if args.signal_before:
        # no B: prefix: the steps get it, not the batch shell (srun would end the steps at once)
        sbatch.append(f"--signal=TERM@{args.signal_before}")
    if args.partition:
        sbatch.append(f"--partition={args.partition}")
    if args.account:
        sbatch.append(f"--account={args.account}")
    if args.cpus_per_node:
        sbatch.append(f"--cpus-per-task={args.cpus_per_node // args.tasks_per_node}")
    environment = [f"export {k}={shlex.quote(v)}" for k, v in parse_env(args.env).items()]
    environment += [f"cd {shlex.quote(args.chdir)}", *([args.setup] if args.setup else [])]
    return TEMPLATE.substitute(
        invocation=invocation,
        sbatch="\n".join(f"#SBATCH {line}" for line in sbatch),
        nodes=args.nodes,
        tasks_per_node=args.tasks_per_node,
        processes=args.nodes * args.tasks_per_node,
        layout=_layout(args, gpus),
        port=args.port,
        init_timeout=args.init_timeout,
        environment="\n".join(environment),
        task=shlex.quote(_task(args, gpus)),
        preempted=PREEMPTED_EXIT_STATUS,
    )


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m launch.slurm", description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument(
        "--tasks-per-node",
        type=int,
        default=1,
        help="JAX processes per node, each owning an equal share of its GPUs (default 1)",
    )
    p.add_argument(
        "--gpus-per-node",
        type=int,
        default=None,
        help="GPUs per node (default 8); 0 for CPU nodes: no GPU request is written",
    )
    p.add_argument(
        "--gres",
        default=None,
        metavar="gpu[:TYPE]:N",
        help="request GPUs as a generic resource (#SBATCH --gres=gpu:a100:8) instead of "
        "--gpus-per-node, for clusters that spell them so",
    )
    p.add_argument("--cpus-per-node", type=int, default=None)
    p.add_argument("--job-name", default="triptych")
    p.add_argument("--time", default="24:00:00", help="wall-clock limit (HH:MM:SS)")
    p.add_argument(
        "--signal-before",
        type=int,
        default=120,
        metavar="SECONDS",
        help="SIGTERM to the run this long before the time limit, so that it saves and is "
        "requeued (#SBATCH --signal=TERM@SECONDS; SLURM may send it up to 60 s earlier); "
        "0: none",
    )
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument(
        "--output", default="%x-%j.out", help="log file pattern (requeued segments append)"
    )
    p.add_argument("--chdir", default=".", help="repository checkout on the nodes")
    p.add_argument(
        "--setup", default=None, help="shell line run before srun, e.g. 'source .venv/bin/activate'"
    )
    p.add_argument("--init-timeout", type=int, default=600, help="seconds for all nodes to join")
    p.add_argument(
        "--script", default=None, help="where to write the script (default ./JOB.sbatch)"
    )
    add_train_arguments(p)
    return p


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    script = render(args, shlex.join(a for a in argv if a != "--dry-run"))
    if args.dry_run:
        sys.stdout.write(script)
        return 0
    path = Path(args.script or f"{args.job_name}.sbatch")
    path.write_text(script)
    print(f"wrote {path}; submitting", file=sys.stderr)
    try:
        return subprocess.run(["sbatch", str(path)]).returncode
    except FileNotFoundError:
        raise UserError(
            f"sbatch not found: submit {path} from a SLURM login node, or add --dry-run to "
            "print the script"
        ) from None


if __name__ == "__main__":
    sys.exit(main())
