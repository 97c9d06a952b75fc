"""Submitting a sweep's job graph (SLURM through submitit, or this machine) and knowing where each job stands."""
