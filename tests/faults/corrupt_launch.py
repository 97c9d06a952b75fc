"""Corrupt-launch part: damage the launcher's files, then check `plan`, `status`, `run --dry-run` and `report`.

A results folder of a two-stage sweep (a pre-training and its fine-tuning) is made done without training: each job
journalled as a local job whose process has ended, its log ending with the launcher's verdict, its result.json
written. Then, one at a time, each damage below is made and undone:
- the journal (results/.harness/journal.jsonl): a torn last line (ignored), a line in the middle that is not JSON,
  not an object, misses a key or has a key of the wrong type (each skipped with a warning naming the file and its
  line number);
- the graph cache ($HARNESS_CACHE/graphs/*.json): not JSON, truncated, empty, not an object, an entry that points
  nowhere (each compiled again: the same jobs);
- the fine-tuning's result.json: `[1, 2]`, `{"top1": "abc"}`, truncated, empty (the job reads `corrupt`: `status`
  exits 1 and shows it, `plan` counts it to submit, `run --dry-run` would submit it, `report` skips it with a
  warning naming the file).
Every command must give that recovery, or a clear one-line error, and never a traceback. Each damage counts one
corruption (`tally.corruptions`), recovered when all four commands behaved (`tally.corruptions_recovered`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import traceback
from collections.abc import Callable
from pathlib import Path

from tests.faults import Tally
from tests.helpers import TWO_STAGES

DEAD_PID = 4194999  # above Linux's largest pid (2**22): never a live process
SWEEP = TWO_STAGES  # one BEiT pre-training and the fine-tuning from it


def run(tally: Tally, workdir: Path, full: bool) -> None:
    from harness.io import CACHE_ENV

    saved = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(workdir / "cache")  # a graph cache of this part's own, to damage
    try:
        _run(tally, workdir)
    finally:
        if saved is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = saved


def _run(tally: Tally, workdir: Path) -> None:
    from harness.io import cache_dir
    from harness.launch.journal import Journal
    from harness.sweep import Request, compile_request
    from tests.helpers import write_sweep

    sweep = write_sweep(workdir, SWEEP)
    results = workdir / "results"
    results.mkdir()
    req = Request([sweep], [], results=str(results))
    graph = compile_request(req)  # writes the graph cache
    jobs = list(graph.jobs.values())
    journal = Journal(results)
    for n, job in enumerate(jobs):
        _make_done(job, results, journal, str(DEAD_PID - n))
    fine = jobs[-1].run_dir / "result.json"
    (cache,) = (cache_dir() / "graphs").glob("*.json")
    lines = journal.path.read_text().splitlines(keepends=True)
    check = _Checker(tally, sweep, results, workdir / "reports", [j.id for j in jobs])

    # The journal.
    middle = len(lines) // 2
    inserted = {
        "a line that is not JSON": "garbage {",
        "a line that is not an object": "[1, 2]",
        "a record without its token": '{"event": "intent", "jobs": []}',
        "a record whose jobs are not a list": '{"event": "intent", "token": "t", "executor": "local", "jobs": 7}',
    }
    damaged = {"a torn last line": ([*lines, '{"event": "submitted", "tok'], None)}
    damaged |= {what: ([*lines[:middle], bad + "\n", *lines[middle:]], middle + 1) for what, bad in inserted.items()}
    for what, (text, line) in damaged.items():
        with _damaged(journal.path, "".join(text)):
            warning = None if line is None else f"{journal.path}:{line}"
            check(f"journal: {what}", done=True, warning=warning)

    # The graph cache: any damage means compiling again.
    good = cache.read_text()
    for what, text in {
        "not JSON": "{not json",
        "truncated": good[: len(good) // 2],
        "empty": "",
        "not an object": "[1, 2]",
        "an entry that points nowhere": _dangling(good),
    }.items():
        with _damaged(cache, text):
            check(f"graph cache: {what}", done=True)

    # The fine-tuning's result.json.
    result = fine.read_text()
    for what, text in {
        "a list": "[1, 2]",
        "a metric that is not a number": '{"top1": "abc"}',
        "truncated": result[: len(result) // 2],
        "empty": "",
    }.items():
        with _damaged(fine, text):
            check(f"result.json: {what}", done=False, corrupt=jobs[-1].id)


def _make_done(job, results: Path, journal, pid: str) -> None:
    """The job as the local executor leaves it when it finished: journalled, logs with the verdict, a result."""
    from harness.launch.state import log_paths

    token = journal.intent([job.id], "local")
    journal.submitted(token, [pid])
    out, err = log_paths(results, pid)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"harness local job {job.id}: process {pid}\n")
    err.write_text("harness: job completed successfully\n")
    job.run_dir.mkdir(parents=True, exist_ok=True)
    result = {"task": job.task, "final_loss": 1.0, "wall_clock_s": 2.0}
    if job.task != "pretrain":
        result["top1"] = 50.0
    (job.run_dir / "result.json").write_text(json.dumps(result))


def _dangling(cache_text: str) -> str:
    """The cache with one job's config pointing at a part that is not there (valid JSON, wrong content)."""
    data = json.loads(cache_text)
    data["jobs"][0]["container"][0] = len(data["parts"]) + 100
    return json.dumps(data)


@contextlib.contextmanager
def _damaged(path: Path, text: str):
    """`path` holds `text` for the duration; then its bytes are put back."""
    original = path.read_bytes()
    path.write_text(text)
    try:
        yield
    finally:
        path.write_bytes(original)


class _Checker:
    """Runs the four commands on the damaged folder and counts the damage as recovered when each behaved."""

    def __init__(self, tally: Tally, sweep: str, results: Path, reports: Path, job_ids: list[str]) -> None:
        self.tally, self.sweep, self.results, self.reports, self.job_ids = tally, sweep, results, reports, job_ids

    def __call__(self, what: str, done: bool, warning: str | None = None, corrupt: str | None = None) -> None:
        self.tally.corruptions += 1
        base = [self.sweep, "--results", str(self.results)]
        problems = []

        def expect(name: str, argv: list[str], code: int, ok: Callable[[str, str], str | None]) -> None:
            got, out, err = _main(argv)
            if "Traceback" in out + err:
                problems.append(f"`{name}` printed a traceback: {(out + err).strip().splitlines()[-1]}")
            elif got != code:
                problems.append(f"`{name}` exited {got}, not {code}: {(err or out).strip()[-300:]}")
            elif warning and warning not in err:
                problems.append(f"`{name}` did not warn about {warning}: {err.strip()[-300:]}")
            elif (why := ok(out, err)) is not None:
                problems.append(f"`{name}`: {why}")

        status = "2 done" if done else "corrupt"
        plan = "2 done, 0 in flight, 0 to submit" if done else f"would submit finetune method=beit ({corrupt})"
        expect("status", ["status", *base], 0 if done else 1, lambda o, e: None if status in o else f"no {status}: {o}")
        expect("plan", ["plan", *base], 0, lambda o, e: None)
        dry = ["run", *base, "--dry-run", "--executor", "local"]
        expect("run --dry-run", dry, 0, lambda o, e: None if plan in o else f"not '{plan}': {o}")
        expect("report", ["report", *base, "--out", str(self.reports)], 0, lambda o, e: None)
        if problems:
            self.tally.failures.append(f"corrupt_launch: {what}: " + "; ".join(problems))
        else:
            self.tally.corruptions_recovered += 1


def _main(argv: list[str]) -> tuple[int | None, str, str]:
    """`harness ARGV` in this process: (exit code, stdout, stderr); an exception that escapes is its traceback."""
    from harness.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
        except Exception:
            traceback.print_exc()
            code = None
    return code, out.getvalue(), err.getvalue()
