"""Sweep files (one paper table or figure each) and the job graph compiled from them."""

from harness.sweep.graph import Graph, Job, Profile, Ref, compile_sweeps, load_cluster, load_profile
from harness.sweep.spec import Cell, Claim, Figure, Stage, Sweep, SweepError, load_sweep

__all__ = [
    "Cell",
    "Claim",
    "Figure",
    "Graph",
    "Job",
    "Profile",
    "Ref",
    "Stage",
    "Sweep",
    "SweepError",
    "compile_sweeps",
    "load_cluster",
    "load_profile",
    "load_sweep",
]
