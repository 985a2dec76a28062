"""A GKE JobSet that runs training on N hosts (GPU node pools or a multi-host TPU slice).

    python -m launch.gke --name gpt2 --image us-docker.pkg.dev/P/triptych/train:latest \\
        --hosts 4 --accelerator gpu --gpus-per-host 8 --config configs/gpt_lm.py:gpt2 \\
        --workdir /data/runs/gpt2 --pvc training-data --dry-run

prints the manifest; without --dry-run it is applied with `kubectl apply -f -`. Needs the
JobSet controller in the cluster (https://jobset.sigs.k8s.io). One Indexed Job of N pods, one
per host; with DNS hostnames enabled pod 0 is `<name>-workers-0-0.<name>`, the coordinator.
Each pod gets JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (its completion
index), which `python -m train` reads (train/distributed.py). Any pod failing fails the JobSet
(restarts: --max-restarts; a restarted run resumes from its latest checkpoint). A preempted pod
saves and exits 75, a failure too, so that the JobSet restarts rather than completes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from string import Template

from launch.common import add_train_arguments, parse_env, train_argv
from models.errors import ArgumentParser, one_line_errors

TEMPLATE = Template("""\
# Rendered by: python -m launch.gke $invocation
apiVersion: jobset.x-k8s.io/v1alpha2
kind: JobSet
metadata:
  name: $name
  namespace: $namespace
  annotations:
    alpha.jobset.sigs.k8s.io/exclusive-topology: cloud.google.com/gke-nodepool
spec:
  failurePolicy:
    maxRestarts: $max_restarts
  network:
    enableDNSHostnames: true
  replicatedJobs:
  - name: workers
    replicas: 1
    template:
      spec:
        parallelism: $hosts
        completions: $hosts
        completionMode: Indexed
        backoffLimit: 0
        template:
          spec:
            restartPolicy: Never
            nodeSelector:
$node_selector
            containers:
            - name: train
              image: $image
              imagePullPolicy: Always
              workingDir: $working_dir
              command: $command
              ports:
              - containerPort: $port
              env:
              - name: JAX_COORDINATOR_ADDRESS
                value: $coordinator
              - name: JAX_NUM_PROCESSES
                value: "$hosts"
              - name: JAX_PROCESS_ID
                valueFrom:
                  fieldRef:
                    fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']
              - name: TRIPTYCH_INIT_TIMEOUT
                value: "$init_timeout"
$extra_env
              resources:
                limits:
$limits
$volume_mounts
$volumes
""")


def render(args: argparse.Namespace, invocation: str = "") -> str:
    """The JobSet manifest (YAML) for parsed arguments."""
    q = json.dumps  # a JSON string is a valid YAML scalar, quoted and escaped
    if args.accelerator == "gpu":
        selector = {"cloud.google.com/gke-accelerator": args.gpu_type}
        limits = {"nvidia.com/gpu": args.gpus_per_host}
    else:
        selector = {
            "cloud.google.com/gke-tpu-accelerator": args.tpu_type,
            "cloud.google.com/gke-tpu-topology": args.tpu_topology,
        }
        limits = {"google.com/tpu": args.chips_per_host}
    env = parse_env(args.env)
    extra_env = "\n".join(
        f"              - name: {k}\n                value: {q(v)}" for k, v in env.items()
    )
    mounts = volumes = ""
    if args.pvc:
        mounts = (
            "              volumeMounts:\n"
            f"              - name: data\n                mountPath: {q(args.mount_path)}"
        )
        volumes = (
            "            volumes:\n            - name: data\n"
            f"              persistentVolumeClaim:\n                claimName: {q(args.pvc)}"
        )
    text = TEMPLATE.substitute(
        invocation=invocation,
        name=args.name,
        namespace=args.namespace,
        max_restarts=args.max_restarts,
        hosts=args.hosts,
        node_selector="\n".join(f"              {k}: {q(v)}" for k, v in selector.items()),
        image=q(args.image),
        working_dir=q(args.working_dir),
        command=q(train_argv(args.config, args.workdir, args.overrides, args.python)),
        port=args.port,
        coordinator=q(f"{args.name}-workers-0-0.{args.name}:{args.port}"),
        init_timeout=args.init_timeout,
        extra_env=extra_env,
        limits="\n".join(f"                  {k}: {v}" for k, v in limits.items()),
        volume_mounts=mounts,
        volumes=volumes,
    )
    return "\n".join(line for line in text.splitlines() if line.strip()) + "\n"


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m launch.gke", description=__doc__.split("\n")[0])
    p.add_argument("--name", required=True, help="JobSet name (DNS label)")
    p.add_argument("--image", required=True, help="container image with this repository")
    p.add_argument("--hosts", type=int, required=True, help="pods = JAX processes, one per host")
    p.add_argument("--namespace", default="default")
    p.add_argument("--accelerator", choices=("gpu", "tpu"), default="gpu")
    p.add_argument("--gpus-per-host", type=int, default=8)
    p.add_argument("--gpu-type", default="nvidia-h100-80gb", help="gke-accelerator node label")
    p.add_argument("--tpu-type", default="tpu-v5p-slice", help="gke-tpu-accelerator node label")
    p.add_argument("--tpu-topology", default="2x2x4", help="gke-tpu-topology, e.g. 2x2x4")
    p.add_argument("--chips-per-host", type=int, default=4)
    p.add_argument("--working-dir", default="/app", help="repository inside the image")
    p.add_argument("--pvc", default=None, help="PersistentVolumeClaim holding the workdir")
    p.add_argument("--mount-path", default="/data")
    p.add_argument("--max-restarts", type=int, default=0)
    p.add_argument("--init-timeout", type=int, default=600, help="seconds for all pods to join")
    add_train_arguments(p)
    return p


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    import shlex

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.hosts < 1:
        parser().error("--hosts must be positive")
    manifest = render(args, shlex.join(a for a in argv if a != "--dry-run"))
    if args.dry_run:
        sys.stdout.write(manifest)
        return 0
    return subprocess.run(["kubectl", "apply", "-f", "-"], input=manifest, text=True).returncode


if __name__ == "__main__":
    sys.exit(main())
