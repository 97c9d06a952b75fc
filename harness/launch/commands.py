"""`harness plan / run / status`: compare what the sweeps want with what exists, then act.

harness plan   sweeps/smoke.yaml                      # jobs per stage: done / running / to submit, GPU-hours
harness run    sweeps/smoke.yaml --executor local     # submit (or run here) what is missing; safe to repeat
harness status sweeps/smoke.yaml                      # one row per job; non-zero exit when something failed

`run` exits 1 when a job it was asked for did not finish or is held back (failed, or waiting on a failed upstream:
`--retry-failed` resubmits them), 130 when interrupted.

`harness report` is the layer above (`harness.report.build`): it reads the same graph and states.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter

from harness.launch.journal import Journal
from harness.launch.queue import Queue, QueueError
from harness.launch.state import IN_FLIGHT, JobState, State, observe
from harness.sweep import Graph, Job, Request, compile_request
from harness.train import RESULT_FILE

__all__ = ["plan", "run", "status", "text_table"]

# States `run` submits again (when nothing holds the job back): a cancelled job never started; a corrupt, missing or
# interrupted one resumes from its last checkpoint, if any. A failed one waits for --retry-failed.
RESUBMIT = (State.NOT_SUBMITTED, State.CANCELLED, State.CORRUPT, State.MISSING, State.INTERRUPTED)
HERE = ("local", "debug")  # executors that run jobs on this machine


def text_table(headers: list[str], rows: list[list]) -> str:
    """A plain left-aligned text table, as `plan` and `status` print theirs."""
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _hours(h: float) -> str:
    return f"{h:.3g}" if h >= 0.01 else f"{h:.1e}"


# ---------------------------------------------------------------------------------------------------------------
def plan(req: Request, out=None, measure: bool = False) -> int:
    """Per sweep and stage: jobs, their states, and what they cost: GPU-h on the cluster (the cost model, or runs
    that finished on GPUs), hours on this CPU (measured rates: `measure` takes them first where missing) and on one
    GPU (the FLOP model at an assumed utilisation). See harness.launch.cost."""
    from harness.launch import cost as costs

    out = out or sys.stdout
    graph = compile_request(req)
    if not req.results_dir.exists():
        print(f"results folder {req.results_dir} does not exist yet: nothing done", file=out)
    states = observe(graph, req.results_dir)
    done = {j.run_dir: j.container for j in graph.jobs.values() if states[j.id].state is State.DONE}
    cost = costs.CostModel()
    cost.calibrate(req.results_dir, done)
    cpu = costs.CpuModel(req.results_dir)
    cpu.calibrate(done)
    if measure:
        from harness.launch.measure import measure_cpu  # torch: only when asked

        missing = {}
        for job in graph.jobs.values():
            if job.blocked is None and cpu.rate(job.container) is None:
                missing.setdefault(costs.cpu_kind(job.container), job)
        measure_cpu(missing, cpu, out)
    estimates = {}
    for j in graph.jobs.values():
        estimates[j.id] = (cost.estimate(j.container), cpu.estimate(j.container), costs.gpu_hours(j.container))
    columns = ["stage", "jobs", "done", "running", "pending", "failed", "to submit", "GPU-h/job", "GPU-h", "estimate"]
    columns += ["CPU-h", "CPU rate", f"1 {costs.GPU_NAME} h"]
    for sweep in graph.sweeps:
        print(f"\n{sweep.name}: {sweep.title} ({sweep.path})", file=out)
        by_stage: dict[str, dict[str, Job]] = {name: {} for name in sweep.stages}  # + a profile's "baselines"
        for ref, job in graph.refs(sweep.name):
            by_stage.setdefault(ref.stage, {})[job.id] = job
        rows = [_plan_row(name, list(jobs.values()), states, estimates) for name, jobs in by_stage.items()]
        print(text_table(columns, rows), file=out)
    all_jobs = list(graph.jobs.values())
    _print_blocked(all_jobs, out)
    if len(graph.sweeps) > 1:
        refs = sum(len(j.refs) for j in all_jobs)
        print(f"\nall sweeps: {len(all_jobs)} jobs ({refs - len(all_jobs)} shared references counted once)", file=out)
        rows = [
            _plan_row(task, [j for j in all_jobs if j.task == task], states, estimates)
            for task in dict.fromkeys(j.task for j in all_jobs)
        ]
        rows.append(_plan_row("total", all_jobs, states, estimates))
        print(text_table(columns, rows), file=out)
    _print_hours(req, [j for j in all_jobs if j.blocked is None], estimates, cpu, out)
    return 0


def _print_blocked(jobs: list[Job], out) -> None:
    for reason, n in Counter(j.blocked for j in jobs if j.blocked is not None).items():
        print(f"not runnable yet ({n} jobs): {reason}", file=out)


def _plan_row(name: str, jobs: list[Job], states: dict[str, JobState], estimates: dict) -> list:
    count = Counter(states[j.id].state for j in jobs)
    todo = sum(1 for j in jobs if states[j.id].state in RESUBMIT and j.blocked is None)
    hours = [estimates[j.id][0].hours for j in jobs]
    sources = sorted({estimates[j.id][0].source for j in jobs})
    per_job = _hours(sum(hours) / len(hours)) if hours else "-"
    cpu = [estimates[j.id][1] for j in jobs if j.blocked is None]  # hours of the jobs that can run
    measured = [e.hours for e in cpu if not math.isnan(e.hours)]
    cpu_hours = "-" if not measured else _hours(sum(measured)) + ("" if len(measured) == len(cpu) else "+")
    return [
        name,
        len(jobs),
        count[State.DONE],
        count[State.RUNNING],
        count[State.PENDING],
        count[State.FAILED],
        todo,
        per_job,
        _hours(sum(hours)),
        ", ".join(sources),
        cpu_hours,
        ", ".join(sorted({e.source for e in cpu})) or "-",
        _hours(sum(estimates[j.id][2].hours for j in jobs)),
    ]


def _print_hours(req: Request, jobs: list[Job], estimates: dict, cpu, out) -> None:
    """The CPU and one-GPU columns in words: their assumptions, and what has no CPU measurement yet."""
    from harness.launch import cost as costs
    from harness.launch.pool import default_slots, usable_cores

    cores = usable_cores()
    measured = [estimates[j.id][1].hours for j in jobs if not math.isnan(estimates[j.id][1].hours)]
    missing = Counter(costs.cpu_kind(j.container) for j in jobs if math.isnan(estimates[j.id][1].hours))
    hours = _hours(sum(measured)) if measured else "-"
    print(
        f"\nCPU-h: this machine ({cpu.host}, {cores} cores, jobs side by side as `harness run --executor local` runs "
        f"{default_slots(cores)} at a time): {hours} h for {len(measured)} of {len(jobs)} runnable jobs, from their "
        "kind's FLOP rate measured here (runs: finished local runs; bench: `harness plan --measure`)",
        file=out,
    )
    if missing:
        kinds = ", ".join(f"{kind} ({n})" for kind, n in missing.items())
        words = [*req.sweeps, *req.overrides]
        words += [f"--profile {req.profile}"] * bool(req.profile) + [f"--results {req.results}"] * bool(req.results)
        print(
            f"  no measurement for {kinds} (a CPU-h with a + counts only the others): "
            f"run `harness plan {' '.join(words)} --measure`",
            file=out,
        )
    gpu = sum(estimates[j.id][2].hours for j in jobs)
    floor = sum(1 for j in jobs if estimates[j.id][2].source == "steps")
    print(
        f"1 {costs.GPU_NAME} h: {_hours(gpu)} h one job after another, from the FLOP model at an assumed "
        f"{costs.GPU_MFU:.0%} of {costs.GPU_PEAK_FLOPS / 1e12:.0f} TFLOP/s (dense bf16 peak), no step under "
        f"{costs.GPU_MIN_STEP_S * 1e3:.0f} ms ({floor} of {len(jobs)} jobs on that floor; harness/launch/cost.py)",
        file=out,
    )


# ---------------------------------------------------------------------------------------------------------------
def _wanted(
    graph: Graph, states: dict[str, JobState], retry_failed: bool, executor: str | None = None
) -> tuple[list[Job], list[Job], list[str]]:
    """Jobs to submit (dependency order), in-flight dependents to cancel and resubmit, and what is held back. With
    `executor`, a job whose upstream is in flight elsewhere (SLURM for a local run, this machine for SLURM) is held:
    a dependency cannot cross from one to the other."""
    submit: dict[str, Job] = {}
    cancel: list[Job] = []
    held = []
    for job in graph.jobs.values():  # dependency order
        st = states[job.id]
        if st.state is State.DONE or job.blocked is not None:
            continue
        up = graph.jobs.get(job.upstream) if job.upstream else None
        up_new = up is not None and up.id in submit
        if st.state in IN_FLIGHT:
            if up_new and st.state is State.PENDING:  # it waits on the old upstream id: re-point by resubmitting
                cancel.append(job)
                submit[job.id] = job
            continue
        if st.state is State.FAILED and not retry_failed:
            held.append(f"{job.task} {job.label} ({job.id}) failed: --retry-failed resubmits it")
            continue
        if up is not None and not up_new and states[up.id].state not in (State.DONE, *IN_FLIGHT):
            held.append(f"{job.task} {job.label} ({job.id}) waits for its upstream {up.id} ({states[up.id].state})")
            continue
        if executor and up is not None and not up_new and states[up.id].state in IN_FLIGHT:
            where = states[up.id].executor
            if (where == "slurm") != (executor == "slurm"):
                held.append(
                    f"{job.task} {job.label} ({job.id}) waits for its upstream {up.id}, in flight "
                    f"{'on SLURM' if where == 'slurm' else 'on this machine'}: run again once it is done"
                )
                continue
        submit[job.id] = job
    return list(submit.values()), cancel, held


def run(
    req: Request,
    executor: str | None = None,
    retry_failed: bool = False,
    dry_run: bool = False,
    out=None,
    jobs: int | None = None,
) -> int:
    """Submit (or, `local` / `debug`, run here) what the sweeps miss. `jobs`: how many local jobs run at once
    (default: `harness.launch.pool.default_slots`). Exit code 0 when all went well, 130 when interrupted."""
    out = out or sys.stdout
    graph = compile_request(req)
    executor = executor or ("slurm" if Queue.available() else "local")
    results = req.results_dir
    journal = Journal(results)
    with journal.lock():
        queue = Queue()
        states = observe(graph, results, queue, journal)
        unknown = [s for s in states.values() if s.state is State.UNKNOWN]
        if unknown:  # submitting blind could duplicate jobs that are in the queue
            raise QueueError(f"cannot tell which jobs are in flight: {unknown[0].detail}")
        _record_reconciled(journal, states)
        submit, cancel, held = _wanted(graph, states, retry_failed, executor)
        # Jobs of this machine still running, whose `harness run` is gone (this one holds the lock): waited for here.
        adopt = {}
        if executor in HERE:
            adopt = {j: s.job_id for j, s in states.items() if s.state is State.RUNNING and s.executor == "local"}
        done = sum(1 for s in states.values() if s.state is State.DONE)
        flying = sum(1 for s in states.values() if s.state in IN_FLIGHT)
        print(
            f"{len(graph.jobs)} jobs: {done} done, {flying} in flight, {len(submit)} to submit"
            + (f" ({executor})" if submit else ""),
            file=out,
        )
        for line in held:
            print(f"  held: {line}", file=out)
        code = _held(held)
        if dry_run or not (submit or adopt):
            for job in submit:
                print(f"  would submit {job.task} {job.label} ({job.id})", file=out)
            return code
        if cancel:
            print(f"  resubmitting {len(cancel)} waiting dependents of resubmitted jobs", file=out)
            Queue.cancel([states[j.id].job_id for j in cancel])
        from harness.launch.executors import run_here, submit_slurm  # submitit and the training code

        if executor == "slurm":
            groups = _groups(submit, states)
            ids = submit_slurm(groups, results, journal)
            for group in groups:
                first = group.jobs[0]
                after = f" after {group.after}" if group.after else ""
                print(
                    f"  submitted {len(group.jobs)} {first.task} job(s): {ids[first.id].split('_')[0]}{after}", file=out
                )
            return code
        finished = {j for j, s in states.items() if s.state is State.DONE}
        wanted = {j.id for j in submit} | set(adopt)
        here = [j for j in graph.jobs.values() if j.id in wanted]  # dependency order
        outcome = run_here(here, results, journal, executor, finished, slots=jobs, adopt=adopt)
        if "interrupted" in outcome.values():
            return 130
        return 1 if code or any(v != "done" for v in outcome.values()) else 0


def _held(held: list[str]) -> int:
    """1 (and why, in one line) when jobs the sweeps want are held back, else 0."""
    if not held:
        return 0
    failed = sum(1 for line in held if line.endswith("--retry-failed resubmits it"))
    print(
        f"harness run: {len(held)} job(s) held back, not run ({failed} failed, {len(held) - failed} waiting on an "
        "upstream that is not done): `harness run --retry-failed` resubmits failed jobs and their dependents",
        file=sys.stderr,
    )
    return 1


def _record_reconciled(journal: Journal, states: dict[str, JobState]) -> None:
    """Jobs found in the queue by name after a crash: write their ids, so the next call needs no lookup."""
    subs = journal.latest()
    by_token: dict[str, dict[int, str]] = {}
    for job_id, st in states.items():
        sub = subs.get(job_id)
        if sub is not None and sub.job_id is None and st.job_id is not None:
            by_token.setdefault(sub.token, {})[sub.index] = st.job_id
    for token, found in by_token.items():
        journal.submitted(token, [found.get(i) for i in range(max(found) + 1)])


def _groups(jobs: list[Job], states: dict[str, JobState]) -> list:
    """One array per (stage, cluster settings, upstream); an upstream's group comes before its dependents'."""
    from harness.launch.executors import Group

    groups: dict[tuple, Group] = {}
    for job in jobs:
        up_state = states[job.upstream] if job.upstream else None
        after = up_state.job_id if up_state is not None and up_state.state in IN_FLIGHT else None
        key = (job.stage, json.dumps(job.cluster, sort_keys=True, default=str), job.upstream)
        groups.setdefault(key, Group([], after)).jobs.append(job)
    return list(groups.values())


# ---------------------------------------------------------------------------------------------------------------
def status(req: Request, out=None) -> int:
    """One row per job; exit 1 when a job failed or its result is corrupt."""
    out = out or sys.stdout
    graph = compile_request(req)
    states = observe(graph, req.results_dir)
    failed = False
    for sweep in graph.sweeps:
        print(f"\n{sweep.name}: {sweep.title}", file=out)
        rows, tails = [], []
        for ref, job in graph.refs(sweep.name):
            st = states[job.id]
            rows.append(
                [
                    ref.stage,
                    ref.label,
                    st.state,
                    st.job_id or "-",
                    st.elapsed or "-",
                    st.last_metric or st.detail or "-",
                ]
            )
            if st.state in (State.FAILED, State.CORRUPT):
                failed = True
                tails.append((ref, job, st))
        print(text_table(["stage", "cell", "state", "job id", "elapsed", "last metric"], rows), file=out)
        for ref, job, st in tails:
            if st.state is State.CORRUPT:
                print(f"\n{ref.stage} {ref.label} ({job.id}) corrupt: {job.run_dir / RESULT_FILE}", file=out)
                continue
            print(f"\n{ref.stage} {ref.label} ({job.id}) failed, job {st.job_id}; last lines of its log:", file=out)
            for line in st.error_tail:
                print(f"  | {line}", file=out)
    counts = Counter(s.state for s in states.values())
    print("\n" + ", ".join(f"{n} {state}" for state, n in counts.items()), file=out)
    return 1 if failed else 0
