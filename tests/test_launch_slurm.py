"""The launcher against a real SLURM (scripts/slurm-local.sh): arrays, dependencies, preemption, failures, crashes.

Each test submits to the cluster of the `slurm` fixture with the `workstation` cluster profile and waits for its
jobs to train to the end (the waits are hang guards, not timings): slow, tens of seconds to minutes each.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harness.launch import commands
from harness.launch.journal import Journal
from harness.launch.state import State, log_paths
from harness.sweep import Request, compile_request
from tests.helpers import all_finished, needs_data, wait_for, write_sweep

pytestmark = [pytest.mark.slurm, pytest.mark.slow, needs_data]
# The demo's pipeline in 11 jobs of a few iterations: three pre-trainings (one array), each fine-tuned and probed,
# beside a random initialisation's fine-tuning and probe (the demo itself, 30 jobs of minutes, is `make demo`).
PIPELINE = """
stages:
  pretrain:
    grid:
      method: {splitmask: [method=splitmask], beit: [method=beit], dino: [method=dino, ++method.args.num_local_crops=2]}
  finetune:
    grid:
      - from: pretrain
      - method: {random: []}
  linear:
    grid:
      - from: pretrain
      - method: {random: []}
"""


def request(tmp_path: Path, sweep: str, overrides=(), profile=None) -> Request:
    return Request([sweep], list(overrides), profile=profile, cluster="workstation", results=str(tmp_path / "res"))


def our_queue(name_prefix: str = "harness-") -> list[list[str]]:
    out = subprocess.run(["squeue", "-h", "--array", "-o", "%i|%j|%T|%r"], capture_output=True, text=True).stdout
    return [line.split("|") for line in out.splitlines() if line.split("|")[1].startswith(name_prefix)]


def journal_intents(req: Request) -> list[dict]:
    path = Journal(req.results_dir).path
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["event"] == "intent"]


def test_a_pipeline_sweep_completes_on_slurm_and_a_second_run_submits_nothing(slurm, tmp_path, capsys):
    req = request(tmp_path, write_sweep(tmp_path, PIPELINE))
    assert commands.run(req, "slurm") == 0
    out = capsys.readouterr().out
    assert "11 jobs: 0 done, 0 in flight, 11 to submit (slurm)" in out
    assert "submitted 3 pretrain job(s)" in out  # one array for the three pre-trainings
    states = wait_for(req, all_finished)
    assert {s.state for s in states.values()} == {State.DONE}
    graph = compile_request(req)
    for job in graph.jobs.values():
        if job.upstream:
            up = graph.jobs[job.upstream]
            assert (job.run_dir / "env.json").stat().st_mtime >= (up.run_dir / "result.json").stat().st_mtime

    intents = journal_intents(req)
    assert commands.run(req, "slurm") == 0
    assert "11 jobs: 11 done, 0 in flight, 0 to submit" in capsys.readouterr().out
    assert journal_intents(req) == intents
    assert commands.status(req) == 0
    rows = [
        line.split()
        for line in capsys.readouterr().out.splitlines()
        if line.startswith(("pretrain", "finetune", "linear"))
    ]
    assert len(rows) == 11 and {r[2] for r in rows} == {"done"}


def test_preempted_pretraining_resumes_from_its_checkpoint(slurm, tmp_path):
    sweep = write_sweep(
        tmp_path,
        """
        stages:
          pretrain:
            overrides: [method=beit, data.subset.per_class=500, optim.batch_size=25, log.every=1,
                        log.checkpoint_every=10, log.progress=plain]
        """,
    )
    req = request(tmp_path, sweep)
    assert commands.run(req, "slurm") == 0
    graph = compile_request(req)
    (job,) = graph.jobs.values()
    metrics = job.run_dir / "metrics.jsonl"
    states = wait_for(req, lambda s: metrics.exists() and len(metrics.read_text().splitlines()) >= 25, poll=0.5)
    job_id = states[job.id].job_id
    assert states[job.id].state is State.RUNNING
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)  # what SLURM sends before a preemption

    states = wait_for(req, all_finished)
    assert states[job.id].state is State.DONE and states[job.id].job_id == job_id  # requeued: same job id
    result = json.loads((job.run_dir / "result.json").read_text())
    assert result["iterations"] == 5000 // 25
    its = [json.loads(line)["it"] for line in metrics.read_text().splitlines()]
    assert its == list(range(1, 201))  # every iteration logged once: none missing, none twice
    log = log_paths(req.results_dir, job_id)[0].read_text()
    assert log.count("Starting with JobEnvironment") == 2  # it did stop and start again


def test_failed_job_shows_its_error_and_retry_resubmits_only_it_and_its_dependents(slurm, tmp_path, capsys):
    body = """
        stages:
          pretrain:
            grid:
              method: {{beit: [method=beit], splitmask: [method=splitmask{broken}]}}
          finetune:
            grid: {{from: pretrain}}
        """
    sweep = write_sweep(tmp_path, body.format(broken=", data.root=/nonexistent/fashion-mnist"))
    req = request(tmp_path, sweep)
    assert commands.run(req, "slurm") == 0
    graph = compile_request(req)
    ids = {(j.task, j.label): j.id for j in graph.jobs.values()}
    broken, dependent = ids[("pretrain", "method=splitmask")], ids[("finetune", "method=splitmask")]
    states = wait_for(req, all_finished)
    assert states[broken].state is State.FAILED
    assert states[dependent].state is State.CANCELLED and not (graph.jobs[dependent].run_dir / "env.json").exists()
    assert states[ids[("finetune", "method=beit")]].state is State.DONE
    capsys.readouterr()
    assert commands.status(req) == 1
    out = capsys.readouterr().out
    assert "/nonexistent/fashion-mnist" in out and f"upstream {broken} failed" in out

    sweep = write_sweep(tmp_path, body.format(broken=""))  # the path fixed (it is not part of the identity)
    before = journal_intents(req)
    assert commands.run(req, "slurm") == 1  # held: the sweep is not done
    assert "--retry-failed resubmits it" in capsys.readouterr().out
    assert journal_intents(req) == before
    assert commands.run(req, "slurm", retry_failed=True) == 0
    new = journal_intents(req)[len(before) :]
    assert sorted(j for intent in new for j in intent["jobs"]) == sorted([broken, dependent])
    states = wait_for(req, all_finished)
    assert {s.state for s in states.values()} == {State.DONE}


def test_a_crash_between_sbatch_and_the_journal_does_not_duplicate_the_job(slurm, tmp_path, monkeypatch, capsys):
    sweep = write_sweep(tmp_path, "stages: {pretrain: {overrides: [method=beit]}}")
    req = request(tmp_path, sweep, ["cluster.additional={hold: true}"])  # held: stays in the queue meanwhile

    def crash(self, token, ids):
        raise KeyboardInterrupt("killed right after sbatch")

    with monkeypatch.context() as patch:
        patch.setattr(Journal, "submitted", crash)
        with pytest.raises(KeyboardInterrupt):
            commands.run(req, "slurm")
    (intent,) = journal_intents(req)
    mine = our_queue(f"harness-{intent['token']}")
    assert len(mine) == 1
    try:
        capsys.readouterr()
        assert commands.run(req, "slurm") == 0
        assert "1 jobs: 0 done, 1 in flight, 0 to submit" in capsys.readouterr().out
        assert len(journal_intents(req)) == 1
        assert len(our_queue(f"harness-{intent['token']}")) == 1 and len(our_queue()) >= 1
        assert Journal(req.results_dir).latest()[intent["jobs"][0]].job_id == mine[0][0]  # reconciled, recorded
    finally:
        subprocess.run(["scancel", mine[0][0]], check=False)


def test_two_task_job_trains_with_ddp_across_slurm_tasks(slurm, tmp_path):
    if slurm.cpus < 2:
        pytest.skip("the node has fewer than 2 CPUs")
    sweep = write_sweep(
        tmp_path,
        """
        stages:
          pretrain:
            overrides: [method=beit]
            cluster: {tasks_per_node: 2, cpus_per_task: 1}
        """,
    )
    req = request(tmp_path, sweep)
    assert commands.run(req, "slurm") == 0
    states = wait_for(req, all_finished)
    (job_id,) = states
    assert states[job_id].state is State.DONE, states[job_id].error_tail
    (job,) = compile_request(req).jobs.values()
    assert json.loads((job.run_dir / "result.json").read_text())["world_size"] == 2
    assert json.loads((job.run_dir / "env.json").read_text())["world_size"] == 2


def test_gpus_the_cluster_does_not_have_are_one_line_saying_what_to_pass(slurm, tmp_path, capsys):
    """The default cluster settings ask for 8 GPUs a node; this cluster has none: sbatch's error, and the way out."""
    from harness.cli import main

    sweep = write_sweep(tmp_path, "stages: {pretrain: {overrides: [method=beit]}}")
    results = tmp_path / "res"
    assert main(["run", sweep, "--executor", "slurm", "--cluster", "slurm", "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert "sbatch refused 1 pretrain job(s)" in err and "gres" in err and "Traceback" not in err
    assert "`--cluster workstation` or `cluster.gpus_per_node=0`" in err and len(err.splitlines()) == 1
    (intent,) = [r for r in map(json.loads, Journal(results).path.read_text().splitlines()) if r["event"] == "intent"]
    assert our_queue(f"harness-{intent['token']}") == []  # nothing reached the queue
