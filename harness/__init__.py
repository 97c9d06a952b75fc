"""The harness: configs, training entry points, sweeps, SLURM launch and reports for the SplitMask reproduction."""
