"""Launchers: local multi-process runs and cluster scripts (SLURM, TPU VM pods, GKE)."""
