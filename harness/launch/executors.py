"""Submission through submitit: SLURM arrays with exact `afterok` dependencies, or this machine in order.

One SLURM array holds the jobs of one stage that share cluster settings and the same upstream job, so every
dependency is exact: `afterok:<the upstream's id>`, with `--kill-on-invalid-dep=yes` so dependents of a failed job
leave the queue instead of waiting forever. The local executor runs the same `TrainJob` on the same run folders in
a pool of persistent workers, independent jobs side by side, each job once its upstream is done
(`harness.launch.pool`); the debug executor runs them one at a time in this process.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from harness.launch import EXECUTORS
from harness.launch.journal import JOB_NAME_PREFIX, Journal
from harness.launch.state import headline, log_paths, submitit_folder, tail
from harness.sweep.graph import Job

__all__ = ["EXECUTORS", "Group", "run_here", "submit_slurm", "submitit_parameters"]

MAX_ARRAY = 1000  # SLURM's default MaxArraySize is 1001: larger groups are split


@dataclass
class Group:
    """Jobs submitted as one array: same stage, same cluster settings, same upstream (`after` its job id)."""

    jobs: list[Job]
    after: str | None  # scheduler id of the upstream job still in flight, or None


def submitit_parameters(cluster: dict[str, Any]) -> dict[str, Any]:
    """Cluster settings (harness/conf/cluster/*.yaml) as `update_parameters` arguments for SLURM."""
    c = dict(cluster)
    gpus = int(c.get("gpus_per_node") or 0)
    params: dict[str, Any] = {
        "nodes": int(c.get("nodes") or 1),
        "tasks_per_node": int(c.get("tasks_per_node") or max(gpus, 1)),  # one process per GPU
        "gpus_per_node": gpus,
        "cpus_per_task": int(c.get("cpus_per_task") or 1),
        "timeout_min": int(c.get("timeout_min") or 60),
    }
    if c.get("mem_gb"):
        params["mem_gb"] = c["mem_gb"]
    for key in ("partition", "account", "qos", "constraint"):
        if c.get(key):
            params[f"slurm_{key}"] = c[key]
    if c.get("signal_delay_s") is not None:
        params["slurm_signal_delay_s"] = int(c["signal_delay_s"])
    if c.get("array_parallelism"):
        params["slurm_array_parallelism"] = int(c["array_parallelism"])
    if c.get("setup"):
        params["slurm_setup"] = list(c["setup"])
    params["slurm_additional_parameters"] = dict(c.get("additional") or {})
    return params


def _args(job: Job) -> tuple[dict, str]:
    return job.container, str(job.run_dir)


def submit_slurm(groups: list[Group], results: Path, journal: Journal) -> dict[str, str]:
    """Submit each group as one array (upstream groups first); returns `{job identity: SLURM job id}`."""
    from harness.train.entry import TrainJob  # torch: only where jobs are pickled or run here

    ids: dict[str, str] = {}
    for group in groups:
        for start in range(0, len(group.jobs), MAX_ARRAY):
            chunk = group.jobs[start : start + MAX_ARRAY]
            after = group.after
            up = chunk[0].upstream
            if up in ids:  # the upstream was submitted a moment ago, by this call
                after = ids[up]
            cluster = chunk[0].cluster
            executor = submitit.AutoExecutor(
                folder=submitit_folder(results) / "%j",
                cluster="slurm",
                slurm_max_num_timeout=int(cluster.get("max_num_timeout", 3)),
            )
            params = submitit_parameters(cluster)
            params["slurm_additional_parameters"] |= {"kill-on-invalid-dep": "yes"}
            if after:
                params["slurm_additional_parameters"]["dependency"] = f"afterok:{after}"
            token = journal.intent([j.id for j in chunk], "slurm")
            executor.update_parameters(name=JOB_NAME_PREFIX + token, **params)
            with executor.batch():
                submitted = [executor.submit(TrainJob(), *_args(job)) for job in chunk]
            job_ids = [s.job_id for s in submitted]
            journal.submitted(token, job_ids)
            ids.update(zip([j.id for j in chunk], job_ids))
    return ids


def run_here(
    jobs: list[Job], results: Path, journal: Journal, executor_name: str, done: set[str], slots: int | None = None
) -> dict[str, str]:
    """Run `jobs` (dependency order) on this machine; returns `{identity: outcome}` ("done" when it finished).

    A job whose upstream failed is not started. `local`: a pool of `slots` persistent workers, one process per job
    (`harness.launch.pool`: logs under results/.submitit/<pid>/). `debug`: one at a time in this process.
    """
    if executor_name == "local":
        from harness.launch.pool import Pool

        return Pool(results, journal, slots=slots).run(jobs, done)
    return _run_debug(jobs, results, journal, executor_name, done)


def _run_debug(jobs: list[Job], results: Path, journal: Journal, executor_name: str, done: set[str]) -> dict[str, str]:
    from harness.train.entry import TrainJob

    outcome: dict[str, str] = {}
    for n, job in enumerate(jobs, 1):
        head = f"[{n}/{len(jobs)}] {job.task} {job.label} ({job.id})"
        if job.upstream and job.upstream not in done and outcome.get(job.upstream) != "done":
            outcome[job.id] = "skipped"
            print(f"{head}: skipped, its upstream {job.upstream} did not finish", flush=True)
            continue
        cluster = job.cluster
        executor = submitit.AutoExecutor(folder=submitit_folder(results) / "%j", cluster=executor_name)
        executor.update_parameters(timeout_min=int(cluster.get("timeout_min") or 60), name=f"{JOB_NAME_PREFIX}{job.id}")
        token = journal.intent([job.id], executor_name)
        start = time.perf_counter()
        sjob = executor.submit(TrainJob(), *_args(job))
        journal.submitted(token, [sjob.job_id])
        print(f"{head}: running", flush=True)
        try:
            result = sjob.result()
        except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError):
            outcome[job.id] = "failed"
            errlog = log_paths(results, sjob.job_id)[1]
            last = tail(errlog, 1) or ["(no error output)"]
            print(
                f"{head}: FAILED after {time.perf_counter() - start:.0f} s: {last[0]}\n    log: {errlog}",
                file=sys.stderr,
                flush=True,
            )
            continue
        outcome[job.id] = "done"
        print(f"{head}: done in {time.perf_counter() - start:.0f} s, {headline(result)}", flush=True)
    return outcome
