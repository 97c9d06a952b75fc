"""Submitting a sweep's job graph (SLURM through submitit, or this machine) and knowing where each job stands."""

EXECUTORS = ("slurm", "local", "debug")  # submitit's executors: a SLURM cluster, subprocesses here, this process
