"""Submit a training run to a SLURM GPU cluster (one process per node owning all its GPUs).

    python -m launch.slurm --nodes 4 --gpus-per-node 8 --config configs/gpt_lm.py:gpt2 \\
        --workdir /shared/runs/gpt2 --set mesh.fsdp=8 --dry-run

renders the sbatch script; without --dry-run it is written next to the run (--script, default
./<job-name>.sbatch) and submitted with `sbatch`. The script exports JAX_COORDINATOR_ADDRESS
(the first node of the allocation), JAX_NUM_PROCESSES (= nodes) and, per task, JAX_PROCESS_ID
(= SLURM_PROCID), which `python -m train` reads (train/distributed.py). `srun
--kill-on-bad-exit=1` stops every task when one fails.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path
from string import Template

from launch.common import add_train_arguments, parse_env, train_command
from models.errors import ArgumentParser, one_line_errors

TEMPLATE = Template("""\
#!/bin/bash
# Rendered by: python -m launch.slurm $invocation
#SBATCH --job-name=$job_name
#SBATCH --nodes=$nodes
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$gpus_per_node
#SBATCH --time=$time
#SBATCH --output=$output
#SBATCH --exclusive
$extra_sbatch
set -euo pipefail

# One JAX process per node, owning all $gpus_per_node GPUs; process 0 runs on the first node.
# sed reads every line; `head -n 1` could close the pipe early (SIGPIPE: exit 141 under pipefail)
head_node="$$(scontrol show hostnames "$$SLURM_JOB_NODELIST" | sed -n 1p)"
export JAX_COORDINATOR_ADDRESS="$$head_node:$port"
export JAX_NUM_PROCESSES=$nodes
export TRIPTYCH_INIT_TIMEOUT=$init_timeout
$exports
cd $chdir
$setup
srun --kill-on-bad-exit=1 --nodes=$nodes --ntasks=$nodes --ntasks-per-node=1 \\
  bash -c $task
""")


def render(args: argparse.Namespace, invocation: str = "") -> str:
    """The sbatch script for parsed arguments."""
    sbatch = []
    if args.partition:
        sbatch.append(f"#SBATCH --partition={args.partition}")
    if args.account:
        sbatch.append(f"#SBATCH --account={args.account}")
    if args.cpus_per_node:
        sbatch.append(f"#SBATCH --cpus-per-task={args.cpus_per_node}")
    env = parse_env(args.env)
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())
    task = f"export JAX_PROCESS_ID=$SLURM_PROCID; exec {train_command(args)}"
    return TEMPLATE.substitute(
        invocation=invocation,
        job_name=args.job_name,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        time=args.time,
        output=args.output,
        extra_sbatch="\n".join(sbatch),
        port=args.port,
        init_timeout=args.init_timeout,
        exports=exports,
        chdir=shlex.quote(args.chdir),
        setup=args.setup or "",
        task=shlex.quote(task),
    )


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m launch.slurm", description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--cpus-per-node", type=int, default=None)
    p.add_argument("--job-name", default="triptych")
    p.add_argument("--time", default="24:00:00", help="wall-clock limit (HH:MM:SS)")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--output", default="%x-%j.out", help="log file pattern")
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
    if args.nodes < 1 or args.gpus_per_node < 1:
        parser().error("--nodes and --gpus-per-node must be positive")
    script = render(args, shlex.join(a for a in argv if a != "--dry-run"))
    if args.dry_run:
        sys.stdout.write(script)
        return 0
    path = Path(args.script or f"{args.job_name}.sbatch")
    path.write_text(script)
    print(f"wrote {path}; submitting", file=sys.stderr)
    return subprocess.run(["sbatch", str(path)]).returncode


if __name__ == "__main__":
    sys.exit(main())
