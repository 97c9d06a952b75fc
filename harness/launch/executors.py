"""Submission through submitit: SLURM arrays with exact `afterok` dependencies, or this machine in order.

One SLURM array holds the jobs of one stage that share cluster settings and the same upstream job, so every
dependency is exact: `afterok:<the upstream's id>`, with `--kill-on-invalid-dep=yes` so dependents of a failed job
leave the queue instead of waiting forever. The local executor runs the same `TrainJob` on the same run folders in
a pool of persistent workers, independent jobs side by side, each job once its upstream is done
(`harness.launch.pool`); the debug executor runs them one at a time in this process (a failing job is reported and
the sweep goes on; no debugger is entered: `harness train` runs one job where a debugger can follow it).

What SLURM refuses (no SLURM here, an sbatch error) is one `SubmitError` line, with what to change where it is known.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from harness.launch import EXECUTORS
from harness.launch.journal import JOB_NAME_PREFIX, Journal
from harness.launch.queue import SubmitError, debug_id, local_alive
from harness.launch.state import VERDICT, cause, headline, log_paths, read_result, submitit_folder
from harness.sweep.graph import Job
from harness.train import RESULT_FILE

__all__ = ["EXECUTORS", "Group", "SubmitError", "run_here", "submit_slurm", "submitit_parameters"]

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


def _check_slurm() -> None:
    """SubmitError unless SLURM's client commands are here (submitit needs `srun` and `sbatch`)."""
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if missing:
        raise SubmitError(
            f"--executor slurm: SLURM is not installed here (no {' or '.join(f'`{t}`' for t in missing)} on the "
            "PATH): run `harness run` on the cluster's login node, or pass `--executor local` to run the jobs here"
        )


def _refusal(err: Exception, chunk: list[Job]) -> SubmitError:
    """sbatch's error in one line, with what to pass where the cause is known (GPUs the cluster does not have)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or ["(no error output)"]
    said = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1])
    message = f"sbatch refused {len(chunk)} {chunk[0].task} job(s) ({chunk[0].stage}): {said}"
    gpus = int(chunk[0].cluster.get("gpus_per_node") or 0)
    if "gres" in said.lower() or "generic resource" in said.lower():
        message += (
            f"; the cluster settings ask for {gpus} GPU(s) per node (gpus_per_node), which this cluster does not "
            "have: on a cluster without GPUs pass `--cluster workstation` or `cluster.gpus_per_node=0`"
        )
    return SubmitError(message)


def submit_slurm(groups: list[Group], results: Path, journal: Journal) -> dict[str, str]:
    """Submit each group as one array (upstream groups first); returns `{job identity: SLURM job id}`."""
    _check_slurm()
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
            for job in chunk:  # a job's folder exists once it is submitted (state: missing when it is gone)
                job.run_dir.mkdir(parents=True, exist_ok=True)
            token = journal.intent([j.id for j in chunk], "slurm")
            executor.update_parameters(name=JOB_NAME_PREFIX + token, **params)
            try:
                with contextlib.redirect_stderr(io.StringIO()), executor.batch():  # submitit prints sbatch's error
                    submitted = [executor.submit(TrainJob(), *_args(job)) for job in chunk]
            except submitit.core.utils.FailedJobError as err:  # the intent stays without ids: not submitted
                raise _refusal(err, chunk) from None
            job_ids = [s.job_id for s in submitted]
            journal.submitted(token, job_ids)
            ids.update(zip([j.id for j in chunk], job_ids))
    return ids


def run_here(
    jobs: list[Job],
    results: Path,
    journal: Journal,
    executor_name: str,
    done: set[str],
    slots: int | None = None,
    adopt: dict[str, str] | None = None,
) -> dict[str, str]:
    """Run `jobs` (dependency order) on this machine; returns `{identity: outcome}` ("done" when it finished).

    A job whose upstream failed is not started. `local`: a pool of `slots` persistent workers, one process per job
    (`harness.launch.pool`: logs under results/.submitit/<pid>/). `debug`: one at a time in this process (logs under
    results/.submitit/debug-<pid>-<time>-<n>/). `adopt`: `{identity: pid}` of jobs of `jobs` still running from an
    earlier `harness run` (local executor): waited for, then run again if they ended without a result.
    """
    if executor_name == "local":
        from harness.launch.pool import Pool

        return Pool(results, journal, slots=slots).run(jobs, done, adopt)
    return _run_debug(jobs, results, journal, done, adopt or {})


class _Tee(io.TextIOBase):
    """Writes to the console and to a job's log file at once (the debug executor's stdout and stderr)."""

    def __init__(self, console, log) -> None:
        self.console, self.log = console, log

    def write(self, text: str) -> int:
        self.console.write(text)
        self.log.write(text)
        return len(text)

    def flush(self) -> None:
        self.console.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return self.console.isatty()


@contextlib.contextmanager
def _logs(results: Path, job_id: str):
    """The job's stdout and stderr, also into `.submitit/<id>/<id>_0_log.{out,err}` (where `status` reads them)."""
    out_path, err_path = log_paths(results, job_id)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        out, err = stack.enter_context(out_path.open("a")), stack.enter_context(err_path.open("a"))
        stack.enter_context(contextlib.redirect_stdout(_Tee(sys.stdout, out)))
        stack.enter_context(contextlib.redirect_stderr(_Tee(sys.stderr, err)))
        yield err


def _run_debug(jobs: list[Job], results: Path, journal: Journal, done: set[str], adopt: dict[str, str]) -> dict:
    from harness.launch.pool import INTERRUPTED, interrupted_line, upstream_done
    from harness.train.entry import TrainJob

    outcome: dict[str, str] = {}
    for n, job in enumerate(jobs, 1):
        head = f"[{n}/{len(jobs)}] {job.task} {job.label} ({job.id})"
        if job.id in adopt:  # still running from an earlier `harness run`: wait for it, then take its result
            print(f"{head}: still running from an earlier `harness run` (process {adopt[job.id]}): waiting for it")
            while local_alive(adopt[job.id], submitit_folder(results)):
                time.sleep(0.5)
            result, _ = read_result(job.run_dir / RESULT_FILE)
            if result is not None:
                outcome[job.id] = "done"
                print(f"{head}: done (its earlier process), {headline(result)}", flush=True)
                continue
        up_ok = not job.upstream or job.upstream in done or outcome.get(job.upstream) == "done"
        if not up_ok and not upstream_done(job):
            outcome[job.id] = "skipped"
            print(f"{head}: skipped, its upstream {job.upstream} did not finish", flush=True)
            continue
        job_id = debug_id(n)
        job.run_dir.mkdir(parents=True, exist_ok=True)
        token = journal.intent([job.id], "debug")
        journal.submitted(token, [job_id])
        print(f"{head}: running", flush=True)
        start = time.perf_counter()
        with _logs(results, job_id) as log:
            try:
                TrainJob()(*_args(job))
                result, corrupt = read_result(job.run_dir / RESULT_FILE)
                if result is not None:
                    outcome[job.id], verdict = "done", "job completed successfully"
                elif corrupt is None:
                    outcome[job.id], verdict = "stopped", "stopped without a result (resumable)"
                else:
                    outcome[job.id], verdict = "failed", f"it wrote a corrupt result.json ({corrupt})"
            except KeyboardInterrupt:
                outcome[job.id], verdict = "interrupted", INTERRUPTED
            except (Exception, SystemExit) as error:  # the job's failure is its own, not the sweep's
                traceback.print_exc(file=log)  # into its log only: the console gets the FAILED line
                outcome[job.id], verdict = "failed", f"the job raised {type(error).__name__}"
            log.write(f"{VERDICT}{verdict}\n")
        seconds, errlog = time.perf_counter() - start, log_paths(results, job_id)[1]
        if outcome[job.id] == "interrupted":
            print(interrupted_line(1), file=sys.stderr, flush=True)
            break
        if outcome[job.id] == "failed":
            print(f"{head}: FAILED after {seconds:.0f} s: {cause(errlog)}\n    log: {errlog}", file=sys.stderr)
        elif outcome[job.id] == "stopped":
            print(f"{head}: stopped after {seconds:.0f} s without a result (resumable)", flush=True)
        else:
            print(f"{head}: done in {seconds:.0f} s, {headline(result)}", flush=True)
    return outcome
