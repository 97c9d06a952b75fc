"""Shared fixtures: `slurm`, a running SLURM cluster (the one-node cluster of scripts/slurm-local.sh, or any other)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

import pytest

HOW_TO_START = "start one with `sudo scripts/slurm-local.sh up` (or `make slurm` as root)"
# Node states (sinfo %t, without the suffix flags) in which a node takes jobs.
USABLE_STATES = {"idle", "mix", "mixed", "alloc", "allocated", "comp", "completing"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slurm: submits real jobs to a SLURM cluster (the `slurm` fixture)")


def pytest_terminal_summary(terminalreporter) -> None:
    """The fault-injection suite's one line (tests/test_faults.py), when this session ran it."""
    from tests.faults import SESSION

    if SESSION.kills or SESSION.launcher_kills or SESSION.corruptions or SESSION.bad_inputs:
        terminalreporter.write_line(SESSION.line())


@pytest.fixture(autouse=True)
def _results_outside_the_checkout(tmp_path_factory, monkeypatch):
    """A test that names no results folder writes into a temporary one, never into the checkout's results/
    (`Request.results_dir` defaults to $HARNESS_RESULTS, else ./results: graph caches, journals, run folders)."""
    from harness.sweep.request import RESULTS_ENV

    monkeypatch.setenv(RESULTS_ENV, str(tmp_path_factory.mktemp("results")))


@pytest.fixture(scope="session")
def _session_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _cache_outside_home(_session_cache, monkeypatch):
    """Built data (the dense stand-ins' scenes, compiled graphs) goes to one temporary cache for the session, never
    to ~/.cache."""
    from harness.io import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(_session_cache))


@dataclass(frozen=True)
class SlurmCluster:
    partition: str  # the default partition (jobs go there when they name none)
    node: str
    cpus: int  # CPUs of that node


def _run(*cmd: str) -> str:
    """stdout of a SLURM client command; raises with its stderr when it fails or hangs."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"`{' '.join(cmd)}` did not answer within 10 s") from e
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _probe() -> SlurmCluster:
    for tool in ("sinfo", "squeue", "sbatch", "srun"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"`{tool}` is not on the PATH")
    _run("squeue", "-h")
    # One line per node and partition: partition (default one marked *), node, CPUs, state.
    rows = [line.split("|") for line in _run("sinfo", "-h", "-N", "-o", "%P|%N|%c|%t").splitlines()]
    if not rows:
        raise RuntimeError("sinfo lists no nodes")
    rows.sort(key=lambda r: not r[0].endswith("*"))  # the default partition first
    partition, node, cpus, state = rows[0]
    # sinfo appends flags to the state: * not responding, ~ powered off, # powering up, ! powering down, ...
    if state.rstrip("*~#!%$@^-") not in USABLE_STATES or state.endswith("*"):
        raise RuntimeError(f"node {node} of partition {partition.rstrip('*')} is {state}")
    return SlurmCluster(partition=partition.rstrip("*"), node=node, cpus=int(cpus))


@pytest.fixture(scope="session")
def slurm() -> SlurmCluster:
    """A SLURM controller that answers and a node that takes jobs; skips otherwise (fails under
    HARNESS_REQUIRE_SLURM=1, as in CI, so a suite never passes by skipping its SLURM tests)."""
    try:
        return _probe()
    except RuntimeError as e:
        reason = f"no usable SLURM cluster ({e}); {HOW_TO_START}"
    if os.environ.get("HARNESS_REQUIRE_SLURM") == "1":
        pytest.fail(f"HARNESS_REQUIRE_SLURM=1: {reason}", pytrace=False)
    pytest.skip(reason)
