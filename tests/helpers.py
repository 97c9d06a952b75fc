"""Helpers shared by the tests: the Fashion-MNIST skip mark, tiny sweeps, waiting for jobs (a guard, not a timing)."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from harness.data import dataset_root
from harness.launch.state import State, observe
from harness.sweep import Request, compile_request

try:
    dataset_root("fashion_mnist")
    HAVE_FMNIST = True
except FileNotFoundError:
    HAVE_FMNIST = False
needs_data = pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST missing: apt-get install dataset-fashion-mnist")

# Jobs of a few seconds: 100 images, batches of 50, one epoch, evaluation on 100 test images.
TINY = (
    "[model=micro, data=fashion_mnist, data.subset.per_class=10, optim.batch_size=50, optim.epochs=1, "
    "optim.warmup_epochs=0, eval.per_class=10, loader.workers=0]"
)


# Two independent pre-trainings (seeds 1 and 2) and the fine-tuning of each.
TWO_BY_TWO = """
stages:
  pretrain:
    grid: {seed: [1, 2]}
  finetune:
    grid: {from: pretrain}
"""

# A pre-training stage (one BEiT) and the fine-tuning that starts from it.
TWO_STAGES = """
stages:
  pretrain:
    grid:
      method: {beit: [method=beit]}
  finetune:
    grid: {from: pretrain}
"""


def write_sweep(folder: Path, body: str, name: str = "sweep") -> str:
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\noverrides: {TINY}\n" + textwrap.dedent(body))
    return str(path)


def wait_for(req: Request, done, timeout: float = 600.0, poll: float = 2.0) -> dict:
    """Poll the jobs' states until `done(states)` holds; fail with the states if it never does."""
    graph = compile_request(req)
    deadline = time.monotonic() + timeout
    while True:
        states = observe(graph, req.results_dir)
        if done(states):
            return states
        if time.monotonic() > deadline:
            summary = {k: (s.state, s.job_id, s.detail) for k, s in states.items()}
            raise AssertionError(f"jobs did not get there in {timeout:.0f} s: {summary}")
        time.sleep(poll)


def all_finished(states: dict) -> bool:
    return all(s.state in (State.DONE, State.FAILED, State.CANCELLED) for s in states.values())
