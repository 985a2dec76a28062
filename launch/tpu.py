"""Run training on every worker of a Cloud TPU VM pod slice with `gcloud`.

    python -m launch.tpu --tpu my-v5p-32 --zone us-east5-a --config configs/gpt_lm.py:gpt2 \\
        --workdir gs://my-bucket/gpt2 --set mesh.fsdp=16 --copy \\
        --setup "pip install -e '.[gcs]' 'jax[tpu]'" \\
        --dry-run

prints the gcloud commands, one per line, in order: optionally create the slice
(--accelerator-type), copy this checkout to every worker (--copy), run a setup line on every
worker (--setup), then start `python -m train` on all workers at once
(`gcloud compute tpus tpu-vm ssh ... --worker=all --command=...`). Without --dry-run they are
run in that order. On the workers `TRIPTYCH_DISTRIBUTED=auto` makes the training CLI call
`jax.distributed.initialize()` with JAX's TPU pod detection (coordinator, process count and
index come from the TPU metadata). The workdir must be storage every worker sees: a bucket
(`--workdir gs://BUCKET/run`, installed with `pip install -e '.[gcs]'`) or a shared file system.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

from launch.common import add_train_arguments, parse_env, train_command
from models.errors import ArgumentParser, one_line_errors


def commands(args: argparse.Namespace) -> list[list[str]]:
    """The gcloud command lines, in order."""
    where = [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])
    tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
    out = []
    if args.accelerator_type:
        out.append(
            [
                *tpu,
                "create",
                args.tpu,
                *where,
                f"--accelerator-type={args.accelerator_type}",
                f"--version={args.version}",
            ]
        )
    if args.copy:
        out.append(
            [
                *tpu,
                "scp",
                "--recurse",
                args.copy,
                f"{args.tpu}:{args.repo_dir}",
                *where,
                "--worker=all",
            ]
        )
    cd = f"cd {args.repo_dir}"
    if args.setup:
        out.append(
            [*tpu, "ssh", args.tpu, *where, "--worker=all", f"--command={cd} && {args.setup}"]
        )
    env = {"TRIPTYCH_DISTRIBUTED": "auto", "TRIPTYCH_INIT_TIMEOUT": str(args.init_timeout)}
    env.update(parse_env(args.env))
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    run = f"{cd} && {assignments} {train_command(args)}"
    if args.log:
        run += f" 2>&1 | tee -a {shlex.quote(args.log)}"
    out.append([*tpu, "ssh", args.tpu, *where, "--worker=all", f"--command={run}"])
    return out


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m launch.tpu", description=__doc__.split("\n")[0])
    p.add_argument("--tpu", required=True, help="TPU VM (pod slice) name")
    p.add_argument("--zone", required=True)
    p.add_argument("--project", default=None)
    p.add_argument(
        "--accelerator-type", default=None, help="create the slice first, e.g. v5p-32, v4-32"
    )
    p.add_argument("--version", default="tpu-ubuntu2204-base", help="TPU VM image (with create)")
    p.add_argument(
        "--copy",
        nargs="?",
        const=".",
        default=None,
        metavar="DIR",
        help="copy DIR (default: this checkout) to --repo-dir on every worker",
    )
    p.add_argument("--repo-dir", default="~/triptych", help="checkout on the workers")
    p.add_argument("--setup", default=None, help="shell line run on every worker first")
    p.add_argument("--log", default=None, help="also append output to this file on each worker")
    p.add_argument("--init-timeout", type=int, default=600, help="seconds for all hosts to join")
    add_train_arguments(p)
    return p


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    lines = commands(args)
    if args.dry_run:
        for line in lines:
            print(shlex.join(line))
        return 0
    for line in lines:
        print(f"+ {shlex.join(line)}", file=sys.stderr)
        code = subprocess.run(line).returncode
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
