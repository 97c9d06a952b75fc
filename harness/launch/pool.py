"""The local executor: a few persistent workers, each importing torch and the training code once, each job a fork.

    harness run sweeps/smoke.yaml --executor local            # jobs = a default from this machine's cores
    harness run sweeps/smoke.yaml --executor local --jobs 1   # one job at a time, with every core

`import torch, timm` and the training code take 3-7 s; the demo and the micro profile have dozens of jobs. So a
worker (`python -m harness.launch.pool`, started once per slot) imports them, then forks one child per job:
- the child is the job. It has its own pid (the job id in the journal, as submitit's local jobs had), its own logs
  (`results/.submitit/<pid>/<pid>_0_log.{out,err}`, where `harness status` reads a failed job's tail) and its own
  crash: a segfault, an `os._exit` or the OOM killer ends the child, and the worker reports it failed and goes on
  with the next job (a worker that dies itself is replaced). Each job starts from the same clean state (RNGs,
  thread settings, caches), as in a fresh process, for the price of a `fork` (milliseconds), not of the imports.
- `harness status` from another shell sees a running job as today: its pid lives, and its command line (the
  worker's: `... -m harness.launch.pool --log-folder <results>/.submitit`) names submitit's log folder, which is what
  `harness.launch.queue.local_alive` checks against recycled pids. Done is `result.json`, as everywhere.
- Up to `slots` jobs run at once, each child with `torch.set_num_threads(cores // slots)`. A job starts when a slot
  is free and its upstream is done, in the graph's dependency order; a job whose upstream failed is not started.

Why not `multiprocessing`? Its spawn and forkserver children re-import the caller's `__main__` (an unguarded user
script would run again), a forkserver child's command line is multiprocessing's (so `status` could not tell it from
any other process), and a pool of in-process workers would share one pid, and one log, between many jobs. A worker
started with `subprocess` as `python -m harness.launch.pool` imports only this package and the job's target, and
a `fork` of a process that has imported torch but run nothing is safe (no thread pool exists yet), which is also how
torch's own DataLoader workers start.

Each job's error log ends with the launcher's verdict, a line `harness: ...` (`job completed successfully`, `its
process exited with code 1`, `interrupted: ...`): `harness status` tells a failed job from one stopped with its
`harness run` by it (harness.launch.state).

Stopping: Ctrl-C, SIGTERM or SIGHUP of `harness run` terminates every worker's process group (the workers, their
jobs, the jobs' data-loader processes) and notes `interrupted` in the logs of the jobs that ran, so they read
`interrupted` and the next plain `harness run` starts them again: they resume from their last checkpoint. If `harness
run` is killed with SIGKILL, each worker gets SIGTERM from the kernel (Linux `PR_SET_PDEATHSIG`, set in each worker
and, after the fork, in each job; elsewhere a worker sees its input close and stops its job): nothing is left
running, and those jobs, whose logs end without a verdict, read `interrupted` too. A job starts only once `harness
run` has journalled its pid, so a kill in between leaves an intent without a pid (`not submitted`), never a job
that runs unknown to the journal. A job still running when the next `harness run` starts (its process outlived its
launcher) is adopted: the new run waits for it, reads its result, and runs it again if it ended without one.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from harness.launch.cost import RUNS_FILE  # results/.harness/: each local job's threads and cores, for `plan`
from harness.launch.journal import Journal
from harness.launch.queue import local_alive
from harness.launch.state import VERDICT, cause, headline, log_paths, read_result, submitit_folder, tail
from harness.sweep.graph import Job
from harness.train import RESULT_FILE

__all__ = ["DEFAULT_TARGET", "INTERRUPTED", "Pool", "PoolError", "default_slots", "upstream_done", "usable_cores"]

DEFAULT_TARGET = "harness.train.entry:TrainJob"  # `module:callable` (a class is instantiated): target(config, run_dir)
STOP_GRACE_S = 10.0  # after SIGTERM, how long a worker's process group gets before SIGKILL
INTERRUPTED = "interrupted: `harness run` was stopped; the next `harness run` resumes this job"  # the verdict


class PoolError(RuntimeError):
    """A worker could not start (its log's tail says why): no job can run in this environment."""


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. a cgroup's or taskset's), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_slots(cores: int | None = None) -> int:
    """Jobs at once: 2 on 2 cores (1 thread each), else one per 2 cores, at most 8; 1 on a machine with a GPU.

    The micro jobs are small matmuls, which one thread runs nearly as fast as two, and a job's data loading and
    Python overhead are serial: on 2 cores, the smoke-profile demo (11 jobs) took 20 s as 2 jobs x 1 thread and
    102 s as 1 job x 2 threads, on a machine busy with other work, where OpenMP's threads wait for each other's
    core. Wider machines get 2 threads a job (each job holds its own data and model in memory). On a machine with
    an NVIDIA GPU the jobs would share it, so one job at a time unless `--jobs` says otherwise.
    """
    if Path("/dev/nvidia0").exists():
        return 1
    cores = cores or usable_cores()
    return max(1, min(8, cores if cores <= 2 else cores // 2))


# ---------------------------------------------------------------------------------------------------------------
# Both sides: JSON lines over pipes, read without blocking on a partial line.
class _Lines:
    def __init__(self, fd: int) -> None:
        self.fd, self.buffer, self.closed = fd, b"", False

    def read(self) -> list[dict]:
        """The complete messages available now (call when the fd is readable); `closed` once the writer is gone."""
        try:
            chunk = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        if not chunk:
            self.closed = True
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]


def _send(fd: int, message: dict) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(fd, data) :]


def _die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Linux: the kernel sends `sig` to this process when its parent exits (even by SIGKILL). Elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG = 1


# ---------------------------------------------------------------------------------------------------------------
# The worker process: `python -u -m harness.launch.pool --log-folder F --parent PID`.
def _worker_main(log_folder: Path, parent: int) -> int:
    proto = os.dup(1)  # messages to `harness run`; stray prints of the imports go to the worker's log instead
    os.dup2(2, 1)
    _die_with_parent()
    if os.getppid() != parent:  # `harness run` was gone before the line above
        return 1
    inbox = _Lines(0)
    init = None
    while init is None and not inbox.closed:
        messages = inbox.read()
        init = messages[0] if messages else None
    if init is None:
        return 0
    sys.path[:0] = [p for p in init["sys_path"] if p not in sys.path]
    start = time.perf_counter()
    target = _load(init["target"])  # torch, timm and the training code: once for all this worker's jobs
    _send(proto, {"ready": os.getpid(), "import_s": time.perf_counter() - start})

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a child's end wakes the select below
    os.set_blocking(0, False)
    os.set_blocking(wake_r, False)
    child = go_w = None
    with selectors.DefaultSelector() as sel:
        sel.register(0, selectors.EVENT_READ)
        sel.register(wake_r, selectors.EVENT_READ)
        while True:
            for key, _ in sel.select():
                if key.fd == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 1024)
                    continue
                for message in inbox.read():
                    if "go" in message:  # `harness run` has journalled the job's pid: it may start
                        if go_w is not None and message["go"] == child:
                            os.write(go_w, b"go")
                            os.close(go_w)
                            go_w = None
                        continue
                    if child is not None:
                        raise RuntimeError("a job was sent to a busy worker")
                    sys.stdout.flush()
                    sys.stderr.flush()
                    go_r, go_w = os.pipe()  # the job waits until `harness run` knows its pid
                    child = os.fork()
                    if child == 0:
                        os.close(go_w)
                        _child(message, target, log_folder, go_r, (proto, wake_r, wake_w))  # never returns
                    os.close(go_r)
                    _send(proto, {"started": child, "job": message["job"]})
            if inbox.closed:  # `harness run` is gone: take the job down with us
                if child is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGTERM)
                return 0
            if child is not None:
                pid, status = os.waitpid(child, os.WNOHANG)
                if pid:
                    _send(proto, {"ended": child, "code": os.waitstatus_to_exitcode(status)})
                    child = None
                    if go_w is not None:  # it ended before it was told to start
                        os.close(go_w)
                        go_w = None


def _load(spec: str):
    module, _, name = spec.partition(":")
    obj = getattr(importlib.import_module(module), name)
    return obj() if isinstance(obj, type) else obj


def _child(message: dict, target, log_folder: Path, go: int, inherited: tuple[int, ...]) -> None:
    """The job, in the forked child: its own logs on fds 1 and 2, then `target(config, run_dir)`; never returns.

    It starts once `harness run` has journalled its pid (`go`, through the worker), so that a job which takes its
    worker down at once is still reported under its own pid, and a `harness run` killed before the journal knows the
    pid leaves no job running unknown to it (the job reads EOF instead of `go` and exits)."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in inherited:  # the worker's pipes: `harness run` must see them close when the worker ends
            os.close(fd)
        _die_with_parent()
        if os.read(go, 2) != b"go":  # the worker died before it could say who this is
            os._exit(1)
        os.close(go)
        pid = os.getpid()
        out_path, err_path = log_paths(log_folder.parent, str(pid))
        out_path.parent.mkdir(parents=True, exist_ok=True)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        for fd, path in ((1, out_path), (2, err_path)):
            log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(log, fd)
            os.close(log)
        import faulthandler

        faulthandler.enable(all_threads=True)  # a segfault leaves its traceback in the error log
        threads = int(message["threads"])
        os.environ["OMP_NUM_THREADS"] = str(threads)  # for what the job starts (its data-loader workers)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
        print(
            f"harness local job {message['job']}: process {pid} of worker {os.getppid()}, {threads} thread(s), "
            f"run folder {message['run_dir']}",
            flush=True,
        )
        target(message["config"], message["run_dir"])
        code = 0
    except SystemExit as exit_:
        code = 0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


# ---------------------------------------------------------------------------------------------------------------
# `harness run`'s side.
@dataclass
class _Running:
    job: Job
    n: int  # its place in the list: [n/N]
    token: str
    start: float
    pid: str | None = None


@dataclass
class _Adopted:
    """A job whose process an earlier `harness run` started and that still runs: waited for, not restarted."""

    job: Job
    n: int
    pid: str
    fd: int | None  # a pidfd, readable once the process has ended (Linux 5.3+), else None: polled


@dataclass
class _Worker:
    proc: subprocess.Popen
    lines: _Lines
    log: Path
    ready: bool = False
    running: _Running | None = None
    import_s: float = 0.0


@dataclass
class Pool:
    """Run jobs (dependency order) in `slots` persistent workers; `run` returns `{identity: outcome}`.

    Outcomes: done, failed, stopped (exited without result.json, e.g. `log.stop_after`), skipped (its upstream did
    not finish), interrupted. `target` is what each job calls (`module:callable`): tests swap in their own.
    """

    results: Path
    journal: Journal
    slots: int | None = None
    threads: int | None = None
    target: str | None = None  # None: DEFAULT_TARGET, read when the pool is made
    out: object = None
    workers: list[_Worker] = field(default_factory=list)
    adopted: dict[str, _Adopted] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.results = Path(self.results)
        self.cores = usable_cores()
        self.slots = max(1, self.slots or default_slots(self.cores))
        self.fixed_threads = self.threads is not None  # else cores // the slots a run fills
        self.out = self.out or sys.stdout
        self.target = self.target or DEFAULT_TARGET
        self.started = 0  # workers started, replacements included
        self.wake: int | None = None  # read end of the signal wake-up pipe, while `run` runs in the main thread

    # -----------------------------------------------------------------------------------------------------------
    def run(self, jobs: list[Job], done: set[str], adopt: dict[str, str] | None = None) -> dict[str, str]:
        """Run `jobs`; `done`: the ids of jobs already done (upstreams); `adopt`: `{id: pid}` of jobs of `jobs` whose
        process from an earlier `harness run` still runs: waited for, then run again if they ended without a result."""
        outcome: dict[str, str] = {}
        if not self.fixed_threads:  # fewer jobs than slots: the cores go to those there are
            self.threads = max(1, self.cores // max(1, min(self.slots, len(jobs))))
        adopt = adopt or {}
        waiting = [(n, job) for n, job in enumerate(jobs, 1) if job.id not in adopt]
        total = len(jobs)
        ours = {job.id for job in jobs}
        previous = self._catch_signals()
        wake_w, previous_wake = self._wake_on_signals()
        try:
            for n, job in enumerate(jobs, 1):
                if job.id in adopt:
                    self._adopt(job, n, adopt[job.id], total)
            for _ in range(min(self.slots, len(waiting) or bool(self.adopted))):
                self._start_worker()
            while waiting or self._busy():
                waiting = self._skip_orphans(waiting, outcome, done, ours, total)
                for worker in self.workers:
                    if worker.ready and worker.running is None:
                        ready = [i for i, (_, j) in enumerate(waiting) if self._upstream_ok(j, outcome, done)]
                        if not ready:
                            break
                        n, job = waiting.pop(ready[0])  # the first in dependency order that can start
                        self._dispatch(worker, job, n)
                if not waiting and not self._busy():
                    break
                waiting += self._wait(outcome, total, bool(waiting) or bool(self.adopted))
        except KeyboardInterrupt:
            self._interrupt(outcome)
        finally:
            self._close()
            self._restore_signals(previous)
            if wake_w is not None:
                signal.set_wakeup_fd(previous_wake)
                os.close(wake_w)
                os.close(self.wake)
                self.wake = None
        return outcome

    def _wake_on_signals(self) -> tuple[int | None, int]:
        """A pipe that every handled signal writes a byte to, watched by `_wait`'s select. The kernel hands a
        process's signal to any thread that does not block it: when that is not the main thread (a program that
        embeds the pool and blocks signals there), the main thread's select would sleep on, its Python handler
        pending until some worker speaks, and Ctrl-C would wait for the jobs. Not in the main thread: (None, -1),
        signals are left alone."""
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        try:
            previous = signal.set_wakeup_fd(w)
        except ValueError:
            os.close(r)
            os.close(w)
            return None, -1
        self.wake = r
        return w, previous

    def _busy(self) -> bool:
        return bool(self.adopted) or any(w.running for w in self.workers)

    @staticmethod
    def _upstream_ok(job: Job, outcome: dict, done: set[str]) -> bool:
        return not job.upstream or job.upstream in done or outcome.get(job.upstream) == "done"

    def _skip_orphans(self, waiting: list, outcome: dict, done: set[str], ours: set[str], total: int) -> list:
        """Jobs whose upstream ended without a result (or is not ours to run and not done) are not started. Before a
        job is skipped, its upstream's result.json is read again: it may have been written since `done` was read."""
        kept = []
        for n, job in waiting:
            up = job.upstream
            lost = up and up not in done and (outcome.get(up, "done") != "done" if up in ours else True)
            if lost and upstream_done(job):
                done.add(up)
                lost = False
            if lost:
                outcome[job.id] = "skipped"
                head = self._head(n, total, job)
                print(f"{head}: skipped, its upstream {up} did not finish", file=self.out, flush=True)
            else:
                kept.append((n, job))
        return kept

    @staticmethod
    def _head(n: int, total: int, job: Job) -> str:
        return f"[{n}/{total}] {job.task} {job.label} ({job.id})"

    # -----------------------------------------------------------------------------------------------------------
    def _start_worker(self) -> _Worker:
        folder = submitit_folder(self.results)
        logs = self.results / ".harness" / "workers"
        logs.mkdir(parents=True, exist_ok=True)
        self.started += 1
        log = logs / f"worker-{self.started}.log"
        cmd = [sys.executable, "-u", "-m", "harness.launch.pool", "--log-folder", str(folder.resolve())]
        with log.open("ab") as err:
            proc = subprocess.Popen(
                [*cmd, "--parent", str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,  # its own process group: Ctrl-C reaches `harness run` only, which stops it
            )
        worker = _Worker(proc, _Lines(proc.stdout.fileno()), log)
        os.set_blocking(proc.stdout.fileno(), False)
        _send(proc.stdin.fileno(), {"sys_path": sys.path, "target": self.target})
        self.workers.append(worker)
        return worker

    def _dispatch(self, worker: _Worker, job: Job, n: int) -> None:
        job.run_dir.mkdir(parents=True, exist_ok=True)  # a job's folder exists once it is submitted (state: missing)
        token = self.journal.intent([job.id], "local")
        message = {"job": job.id, "config": job.container, "run_dir": str(job.run_dir), "threads": self.threads}
        worker.running = _Running(job, n, token, time.perf_counter())
        _send(worker.proc.stdin.fileno(), message)

    def _wait(self, outcome: dict, total: int, more: bool) -> list[tuple[int, Job]]:
        """Handle what the workers say (or their ends), waiting for at least one message or an adopted job's end;
        returns the adopted jobs that ended without a result, to run again."""
        with selectors.DefaultSelector() as sel:
            for worker in self.workers:
                sel.register(worker.lines.fd, selectors.EVENT_READ, worker)
            if self.wake is not None:
                sel.register(self.wake, selectors.EVENT_READ, None)
            for adopted in self.adopted.values():
                if adopted.fd is not None:
                    sel.register(adopted.fd, selectors.EVENT_READ, adopted)
            polled = any(a.fd is None for a in self.adopted.values())  # no pidfd here: look again each second
            events = sel.select(timeout=1.0 if polled else None)
        for key, _ in events:
            if key.data is None:  # a signal arrived (its handler has run by now): drain the pipe, carry on
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake, 1024)
                continue
            if isinstance(key.data, _Adopted):
                continue  # below
            worker: _Worker = key.data
            for message in worker.lines.read():
                self._handle(worker, message, outcome, total)
            if worker.lines.closed:
                self._worker_died(worker, outcome, total, more)
        again = []
        for adopted in list(self.adopted.values()):
            if not local_alive(adopted.pid, submitit_folder(self.results)):
                again += self._adopted_ended(adopted, outcome, total)
        return again

    # -----------------------------------------------------------------------------------------------------------
    def _adopt(self, job: Job, n: int, pid: str, total: int) -> None:
        """Watch the process of a job started by an earlier `harness run` (a pidfd where Linux has them)."""
        fd = None
        with contextlib.suppress(AttributeError, OSError):
            fd = os.pidfd_open(int(pid))
        self.adopted[job.id] = _Adopted(job, n, pid, fd)
        print(
            f"{self._head(n, total, job)}: still running from an earlier `harness run` (process {pid}): waiting for it",
            file=self.out,
            flush=True,
        )

    def _adopted_ended(self, adopted: _Adopted, outcome: dict, total: int) -> list[tuple[int, Job]]:
        del self.adopted[adopted.job.id]
        if adopted.fd is not None:
            os.close(adopted.fd)
        head = self._head(adopted.n, total, adopted.job)
        result, _ = read_result(adopted.job.run_dir / RESULT_FILE)
        if result is not None:
            outcome[adopted.job.id] = "done"
            print(f"{head}: done (its earlier process), {headline(result)}", file=self.out, flush=True)
            return []
        print(f"{head}: its earlier process ended without a result: running it again", file=self.out, flush=True)
        return [(adopted.n, adopted.job)]

    def _handle(self, worker: _Worker, message: dict, outcome: dict, total: int) -> None:
        if "ready" in message:
            worker.ready, worker.import_s = True, float(message.get("import_s", 0.0))
            return
        running = worker.running
        if running is None:
            return
        if "started" in message:
            running.pid = str(message["started"])
            self.journal.submitted(running.token, [running.pid])
            _send(worker.proc.stdin.fileno(), {"go": message["started"]})  # journalled: the job may start
            self._record_run(running)
            print(f"{self._head(running.n, total, running.job)}: running", file=self.out, flush=True)
        elif "ended" in message:
            worker.running = None
            self._ended(running, int(message["code"]), outcome, total)

    def _ended(self, running: _Running, code: int, outcome: dict, total: int, why: str | None = None) -> None:
        job, head = running.job, self._head(running.n, total, running.job)
        seconds = time.perf_counter() - running.start
        result, corrupt = read_result(job.run_dir / RESULT_FILE)
        if code == 0 and result is not None:
            outcome[job.id] = "done"
            self._note(running, "job completed successfully")
            print(f"{head}: done in {seconds:.0f} s, {headline(result)}", file=self.out, flush=True)
            return
        if code == 0 and corrupt is None:
            outcome[job.id] = "stopped"
            self._note(running, "stopped without a result (resumable): the next `harness run` resumes it")
            print(f"{head}: stopped after {seconds:.0f} s without a result (resumable)", file=self.out, flush=True)
            return
        outcome[job.id] = "failed"
        why = why or (f"its process {_exit_reason(code)}" if code else f"it wrote a corrupt result.json ({corrupt})")
        last = cause(log_paths(self.results, running.pid)[1]) if running.pid else ""
        errlog = self._note(running, why)
        said = f": {last}" if last else ""
        print(f"{head}: FAILED after {seconds:.0f} s, {why}{said}\n    log: {errlog}", file=sys.stderr, flush=True)

    def _note(self, running: _Running, line: str) -> Path | None:
        """Append the launcher's word on a job's end to its error log (what `status` shows); returns the log."""
        if running.pid is None:
            return None
        errlog = log_paths(self.results, running.pid)[1]
        errlog.parent.mkdir(parents=True, exist_ok=True)
        with errlog.open("a") as f:
            f.write(f"{VERDICT}{line}\n")
        return errlog

    def _worker_died(self, worker: _Worker, outcome: dict, total: int, more: bool) -> None:
        self.workers.remove(worker)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.proc.wait(timeout=5)
        code = worker.proc.returncode
        if not worker.ready:
            lines = "\n".join(f"  | {line}" for line in tail(worker.log, 12)) or "  (no output)"
            raise PoolError(f"a local worker {_exit_reason(code)} before it was ready; {worker.log}:\n{lines}")
        if worker.running is not None:
            self._ended(worker.running, 1, outcome, total, f"its worker process {_exit_reason(code)}")
        if more:
            self._start_worker()

    def _record_run(self, running: _Running) -> None:
        """How the job ran, for the CPU estimate of `harness plan` (harness.launch.cost): threads of how many cores."""
        record = {
            "job": running.job.id,
            "pid": running.pid,
            "threads": self.threads,
            "cores": self.cores,
            "slots": self.slots,
            "host": os.uname().nodename,
            "time": time.time(),
        }
        path = self.journal.dir / RUNS_FILE
        with path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    # -----------------------------------------------------------------------------------------------------------
    def _catch_signals(self) -> dict:
        """SIGTERM and SIGHUP end `harness run` as Ctrl-C does (so the workers are stopped, not orphaned)."""
        previous = {}

        def interrupt(signum, frame):
            raise KeyboardInterrupt(signal.Signals(signum).name)

        for sig in (signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                previous[sig] = signal.signal(sig, interrupt)
        return previous

    @staticmethod
    def _restore_signals(previous: dict) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _interrupt(self, outcome: dict) -> None:
        """Stop every job (adopted ones too) and note `interrupted` in their logs: they read `interrupted`, and the
        next plain `harness run` starts them again (harness.launch.state)."""
        running = [w.running for w in self.workers if w.running is not None]
        for adopted in self.adopted.values():
            with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                if local_alive(adopted.pid, submitit_folder(self.results)):
                    os.kill(int(adopted.pid), signal.SIGTERM)
            running.append(_Running(adopted.job, adopted.n, "", 0.0, adopted.pid))
        self._stop_all()
        for r in running:
            outcome[r.job.id] = "interrupted"
            if r.pid is not None:
                self._note(r, INTERRUPTED)
        print(interrupted_line(len(running)), file=sys.stderr, flush=True)

    def _stop_all(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(worker.proc.pid, signal.SIGTERM)
        self._reap(STOP_GRACE_S)

    def _close(self) -> None:
        """Close each worker's input: an idle worker exits; then make sure none (nor its group) is left."""
        for worker in self.workers:
            with contextlib.suppress(OSError):
                worker.proc.stdin.close()
        self._reap(STOP_GRACE_S)
        for worker in self.workers:
            with contextlib.suppress(OSError):
                worker.proc.stdout.close()
        self.workers = []

    def _reap(self, grace: float) -> None:
        """Wait for the workers to exit; SIGKILL the process group of any still there after `grace` seconds (the
        worker, the job it forked, the job's data-loader processes). A group whose worker has exited is left alone:
        its id may be another program's by now; its job and their helpers end with their parent."""
        deadline = time.monotonic() + grace
        for worker in self.workers:
            try:
                worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(worker.proc.pid, signal.SIGKILL)
                worker.proc.wait()


def upstream_done(job: Job) -> bool:
    """The job's upstream has a result on disk now (its run folder reaches the job as `pretrained=`)."""
    pretrained = job.container.get("pretrained") if job.upstream else None
    return bool(pretrained) and read_result(Path(pretrained) / RESULT_FILE)[0] is not None


def interrupted_line(n: int) -> str:
    return f"interrupted: {n} running job(s) stopped; `harness run` again resumes them from their last checkpoint"


def _exit_reason(code: int | None) -> str:
    """How a process ended, from its exit code (negative: the signal that killed it): "exited with code 3"."""
    if code is None:
        return "ended, its exit status unknown"
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    hint = {"SIGKILL": " (out of memory? the kernel's OOM killer sends it)", "SIGSEGV": " (a crash in native code)"}
    return f"was killed by {name}{hint.get(name, '')}"


def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m harness.launch.pool", description="a local executor's worker")
    parser.add_argument("--log-folder", type=Path, required=True, help="submitit's log folder: results/.submitit")
    parser.add_argument("--parent", type=int, required=True, help="the pid of the `harness run` it serves")
    args = parser.parse_args(argv)
    return _worker_main(args.log_folder, args.parent)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
