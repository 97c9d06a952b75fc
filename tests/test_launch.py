"""The launcher without a cluster: journal, lock, local executor, plan / run / status from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.launch.journal import Journal, LockedError
from harness.sweep import SweepError
from tests.helpers import TWO_STAGES, needs_data, write_sweep


def test_journal_keeps_the_latest_submission_and_ignores_torn_lines(tmp_path):
    journal = Journal(tmp_path)
    first = journal.intent(["a", "b"], "slurm")
    journal.submitted(first, ["10_0", "10_1"])
    second = journal.intent(["b"], "slurm")  # b resubmitted; the crash came before its id was written
    with journal.path.open("a") as f:
        f.write('{"event": "submitted", "tok')  # a torn last line
    latest = journal.latest()
    assert latest["a"].job_id == "10_0" and latest["a"].token == first
    assert latest["b"].token == second and latest["b"].job_id is None and latest["b"].name == f"harness-{second}"
    journal.submitted(second, [None])
    assert journal.latest()["b"].job_id is None


def test_lock_refuses_a_second_run(tmp_path):
    journal = Journal(tmp_path)
    second = Journal(tmp_path)
    with journal.lock(), pytest.raises(LockedError, match=r"another `harness run` .*pid \d+"), second.lock():
        pass
    with Journal(tmp_path).lock():  # released
        pass


@needs_data
@pytest.mark.slow  # two training jobs, each in its own process (~20 s on 2 cores)
def test_local_executor_runs_the_graph_in_order_and_once(tmp_path, capsys):
    sweep = write_sweep(tmp_path, TWO_STAGES)
    results = str(tmp_path / "results")
    assert main(["run", sweep, "--executor", "local", "--results", results]) == 0
    out = capsys.readouterr().out
    assert "2 jobs: 0 done, 0 in flight, 2 to submit (local)" in out
    assert "[1/2] pretrain method=beit" in out and "[2/2] finetune method=beit" in out
    journal_lines = (tmp_path / "results" / ".harness" / "journal.jsonl").read_text()
    pre, fine = sorted((tmp_path / "results").glob("*/*/result.json"), key=lambda p: p.parent.parent.name != "pretrain")
    assert json.loads(fine.read_text())["top1"] is not None
    assert (fine.parent / "env.json").stat().st_mtime >= pre.stat().st_mtime  # started after its upstream ended

    assert main(["run", sweep, "--executor", "local", "--results", results]) == 0
    assert "2 jobs: 2 done, 0 in flight, 0 to submit" in capsys.readouterr().out
    assert (tmp_path / "results" / ".harness" / "journal.jsonl").read_text() == journal_lines

    assert main(["status", sweep, "--results", results]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("pretrain", "finetune"))]
    assert [r[2] for r in rows] == ["done", "done"]
    assert main(["plan", sweep, "--results", results]) == 0
    assert "model" in capsys.readouterr().out  # runs on CPUs do not calibrate GPU-hours


def test_cli_reports_sweep_errors_without_a_traceback(tmp_path, capsys):
    sweep = write_sweep(tmp_path, "stages: {pretrain: {overrides: [data=imagenett]}}")
    assert main(["plan", sweep, "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown data 'imagenett'; did you mean 'imagenet'" in err and "Traceback" not in err
    assert main(["run", str(tmp_path / "missing.yaml"), "--results", str(tmp_path)]) == 2
    assert "no such sweep file" in capsys.readouterr().err
    assert not (tmp_path / ".harness").exists()  # nothing submitted, nothing journalled


def test_a_resubmitted_upstream_takes_its_waiting_dependents_along(tmp_path):
    """Re-pointing: a dependent still waiting on the old upstream id is cancelled and resubmitted after the new one."""
    from harness.launch.commands import _wanted
    from harness.launch.state import JobState, State
    from harness.sweep import compile_sweeps, load_sweep

    graph = compile_sweeps([load_sweep(write_sweep(tmp_path, TWO_STAGES))], tmp_path / "results")
    up, down = graph.jobs
    states = {up: JobState(State.FAILED, "7"), down: JobState(State.PENDING, "8", detail="Dependency")}
    submit, cancel, held = _wanted(graph, states, retry_failed=True)
    assert [j.id for j in submit] == [up, down] and [j.id for j in cancel] == [down] and not held
    submit, cancel, held = _wanted(graph, states, retry_failed=False)
    assert not submit and not cancel and "--retry-failed" in held[0]
    states[up] = JobState(State.FAILED, "7")
    states[down] = JobState(State.CANCELLED, "8")
    submit, _, held = _wanted(graph, states, retry_failed=False)
    assert not submit and "waits for its upstream" in held[1]


def test_cluster_settings_stage_over_profile_and_command_line_over_all(tmp_path):
    from harness.launch.executors import submitit_parameters
    from harness.sweep import Request, compile_request

    sweep = write_sweep(tmp_path, "stages: {pretrain: {cluster: {nodes: 4, timeout_min: 600}}}")
    overrides = ["cluster.timeout_min=30", "cluster.additional={exclude: node1}"]
    req = Request([sweep], overrides, cluster="slurm", results=str(tmp_path / "results"))
    (job,) = compile_request(req).jobs.values()
    assert job.cluster["nodes"] == 4 and job.cluster["timeout_min"] == 30 and job.cluster["gpus_per_node"] == 8
    params = submitit_parameters({**job.cluster, "partition": "gpu", "qos": "high"})
    assert params["tasks_per_node"] == 8  # one process per GPU
    assert params["slurm_partition"] == "gpu" and params["slurm_qos"] == "high" and params["nodes"] == 4
    assert params["slurm_additional_parameters"] == {"exclude": "node1"}
    assert params["slurm_signal_delay_s"] == 120 and "slurm_account" not in params
    with pytest.raises(SweepError, match="unknown cluster setting 'gpu'"):
        compile_request(Request([sweep], ["cluster.gpu=1"], results=str(tmp_path / "results")))


def test_compiled_graph_is_read_back_until_an_input_changes(tmp_path, monkeypatch):
    from harness.io import CACHE_ENV
    from harness.sweep import Request, compile_request

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    sweep = write_sweep(tmp_path, TWO_STAGES)
    req = Request([sweep], ["seed=1"], results=str(tmp_path / "results"))
    first = compile_request(req)
    assert not (tmp_path / "results").exists()  # compiling writes nothing into the results folder
    (cached,) = (tmp_path / "cache" / "graphs").glob("*.json")
    again = compile_request(req)
    assert [(j.id, j.container, list(j.container), j.run_dir, j.upstream, j.refs) for j in again.jobs.values()] == [
        (j.id, j.container, list(j.container), j.run_dir, j.upstream, j.refs) for j in first.jobs.values()
    ]
    parts = json.loads(cached.read_text())["parts"]  # each distinct top-level entry written once
    assert len(parts) == len({json.dumps(p) for p in parts}) < sum(len(j.container) for j in first.jobs.values())
    assert again.jobs[next(iter(again.jobs))].config.seed == 1
    cached.write_text("{not json")  # a damaged cache is compiled again, not trusted
    assert list(compile_request(req).jobs) == list(first.jobs)
    Path(sweep).write_text(Path(sweep).read_text().replace("method=beit", "method=splitmask"))
    assert not set(compile_request(req).jobs) & set(first.jobs)


def test_a_shared_job_gets_the_resources_its_stage_asks_for_whatever_the_order(tmp_path):
    from harness.sweep import compile_sweeps, load_sweep

    big = write_sweep(tmp_path, "stages: {pretrain: {overrides: [seed=3], cluster: {nodes: 2}}}", "big")
    plain = write_sweep(tmp_path, "stages: {pretrain: {overrides: [seed=3]}}", "plain")
    for order in ([big, plain], [plain, big]):
        (job,) = compile_sweeps([load_sweep(p) for p in order], tmp_path).jobs.values()
        assert job.cluster["nodes"] == 2
    (job,) = compile_sweeps([load_sweep(big)], tmp_path, profile="smoke").jobs.values()
    assert "nodes" not in job.cluster  # the smoke profile's micro jobs ignore per-stage resources
    other = write_sweep(tmp_path, "stages: {pretrain: {overrides: [seed=3], cluster: {nodes: 4}}}", "other")
    with pytest.raises(SweepError, match=r"cluster \{'nodes': 4\} differs from .*big.yaml: stages.pretrain"):
        compile_sweeps([load_sweep(big), load_sweep(other)], tmp_path)


def test_plan_counts_blocked_jobs_apart_and_says_why(tmp_path, capsys):
    """A stage that cannot run yet is planned and counted, never `to submit`, and its reason is printed once."""
    sweep = write_sweep(
        tmp_path,
        """
        stages:
          pretrain: {overrides: [data=coco]}
          detect: {grid: {from: pretrain, target: {coco: [data=coco]}}, runnable: "needs the COCO annotations"}
        """,
    )
    assert main(["plan", sweep, "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:7] for line in out.splitlines() if line.startswith(("pretrain", "detect"))}
    assert rows == {"pretrain": ["1", "0", "0", "0", "0", "1"], "detect": ["1", "0", "0", "0", "0", "0"]}
    assert out.count("not runnable yet (1 jobs): needs the COCO annotations") == 1
