"""What a `harness plan / run / status / report` command asked for, and the job graph it names.

    req = Request(["sweeps/smoke.yaml"], ["loader.workers=4", "cluster.qos=high"], profile="smoke")
    graph = compile_request(req)      # SweepError before anything is submitted or read

It sits with the sweeps, below the launcher and the reports, because both start from it: the launcher compares the
graph with the queue, the reports read its run folders. Compiled graphs are cached in the user's cache,
`$HARNESS_CACHE/graphs/` (`harness.io.cache_dir`; keyed by everything they depend on, the results folder included:
`harness.sweep.graph.compile_sweeps`), so that a command that only reads writes nothing into the results folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from harness.io import cache_dir
from harness.sweep.graph import Graph, compile_sweeps, load_cluster
from harness.sweep.spec import SweepError, load_sweep

__all__ = ["CLUSTER_ENV", "RESULTS_ENV", "Request", "compile_request"]

RESULTS_ENV = "HARNESS_RESULTS"
CLUSTER_ENV = "HARNESS_CLUSTER"


@dataclass
class Request:
    """What the command line asked for: sweep files, where results live, and how to run."""

    sweeps: list[str]
    overrides: list[str] = field(default_factory=list)  # Hydra overrides for every job; cluster.X=Y for the cluster
    profile: str | None = None
    cluster: str | None = None
    results: str | None = None

    @property
    def results_dir(self) -> Path:
        return Path(self.results or os.environ.get(RESULTS_ENV, "results")).resolve()


def compile_request(req: Request) -> Graph:
    """Load, check and compile the sweeps; SweepError before anything is submitted."""
    cluster = load_cluster(req.cluster or os.environ.get(CLUSTER_ENV, "slurm"))
    job_overrides, cluster_overrides = [], {}
    for item in req.overrides:
        key, sep, value = item.partition("=")
        if key.startswith("cluster.") and sep:
            try:
                cluster_overrides[key.removeprefix("cluster.")] = yaml.safe_load(value)
            except yaml.YAMLError as err:
                problem = getattr(err, "problem", None) or "not a YAML value"
                raise SweepError(f"command line: {key}={value}: {problem} (expected a YAML value)") from None
        else:
            job_overrides.append(item)
    sweeps = [load_sweep(path) for path in req.sweeps]
    cache = cache_dir() / "graphs"
    return compile_sweeps(sweeps, req.results_dir, req.profile, cluster, job_overrides, cluster_overrides, cache)
