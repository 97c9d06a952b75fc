"""Submitting a sweep's job graph (SLURM through submitit, or this machine) and knowing where each job stands."""

EXECUTORS = ("slurm", "local", "debug")  # SLURM through submitit; a pool of processes here; this very process
