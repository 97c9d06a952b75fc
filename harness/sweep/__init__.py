"""Sweep files (one paper table or figure each), the job graph compiled from them, and the request naming both.

The layer below the launcher and the reports: it reads sweep files and composes configs, and never imports the
training code or torch (planning a sweep is quick anywhere).
"""

from harness.sweep.graph import Graph, Job, Profile, Ref, compile_sweeps, load_cluster, load_profile
from harness.sweep.request import Request, compile_request
from harness.sweep.spec import Cell, Claim, Figure, Stage, Sweep, SweepError, load_sweep

__all__ = [
    "Cell",
    "Claim",
    "Figure",
    "Graph",
    "Job",
    "Profile",
    "Ref",
    "Request",
    "Stage",
    "Sweep",
    "SweepError",
    "compile_request",
    "compile_sweeps",
    "load_cluster",
    "load_profile",
    "load_sweep",
]
