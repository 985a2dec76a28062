"""`python -m train.benchmark`: restarts under tcmalloc where it is installed, then runs the CLI."""

import sys

from train import allocator
from train.benchmark.cli import main

if __name__ == "__main__":
    allocator.reexec_with_tcmalloc()  # XLA:CPU steps without page faults (train/allocator.py)
    sys.exit(main())
