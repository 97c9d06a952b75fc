"""`harness train` processes under faults from outside: a second process on a busy run folder, the preemption
signal mid-run. The kill -9 and corruption parts of the fault suite (tests/faults/training.py, corrupt_run.py) run in
tests/test_faults.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import pytest
import torch

from tests.faults.training import HANG_S, command, environment, start, wait_for_progress
from tests.helpers import needs_data


@needs_data
@pytest.mark.slow  # ~20 s: three processes that import torch
def test_a_busy_run_folder_refuses_a_second_train_and_usr2_stops_the_first_at_a_step(tmp_path):
    """Issue 15.3: two `harness train` on one folder both ran (every metrics line twice); the second is refused,
    naming the first (frozen by SIGSTOP meanwhile: the test does not race it). Issue 15.19: the preemption signal
    stops the first after a whole step, with that step's checkpoint (no submitit here: nobody requeues, it says so),
    and a rerun resumes from it to a complete, contiguous log."""
    run_dir, env = tmp_path / "run", environment(tmp_path)
    first = start(command(run_dir), env, tmp_path / "first.log")
    try:
        assert wait_for_progress(first, tmp_path / "first.log"), (tmp_path / "first.err").read_text()
        os.kill(first.pid, signal.SIGSTOP)  # frozen mid-run (wherever it is), the folder's lock held
        second = subprocess.run(command(run_dir), env=env, capture_output=True, text=True, timeout=HANG_S)
        assert second.returncode != 0 and f"in use by pid {first.pid}" in second.stderr, second.stderr
        os.kill(first.pid, signal.SIGUSR2)  # handled where it continues: maybe mid-step
        os.kill(first.pid, signal.SIGCONT)
        first.wait(timeout=HANG_S)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    said = (tmp_path / "first.err").read_text()
    stopped = re.search(r"stopped by SIGUSR2 after iteration (\d+) \(checkpoint written\)", said)
    assert first.returncode != 0 and stopped, said
    it = int(stopped.group(1))
    assert torch.load(run_dir / "last.pt", weights_only=True)["it"] == it
    logged = [json.loads(line)["it"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(2, it + 1, 2))  # every 2 steps, up to the signal's step, once each

    again = subprocess.run(command(run_dir), env=env, capture_output=True, text=True, timeout=HANG_S)
    assert again.returncode == 0, again.stderr
    assert f"resuming from iteration {it} of 30" in again.stdout
    logged = [json.loads(line)["it"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(2, 31, 2))
