"""Truncate or garble a run folder's files, run its job again, check the documented recovery (train/entry.py).

    last.pt unreadable           set aside as last.pt.corrupt (a warning); resumed from prev.pt
    prev.pt unreadable           nothing to do: resumed from last.pt, and the next checkpoint replaces it
    both unreadable              both set aside; the job starts afresh
    result.json corrupt          set aside as result.json.corrupt (a warning); the job is done again from its last
                                 checkpoint (a finished one only writes its result again)
    config.yaml unreadable       written again by the rerun; a `harness train ... pretrained=<folder>` of it is one
                                 clear line, exit status 2
    encoder.harness.pt damaged   a fine-tuning from it is one clear line (exit status 2) saying to delete the
                                 pre-training's result.json; done so, the pre-training's rerun writes it again
    metrics.jsonl torn line      dropped on resume (it is past the checkpoint), the iteration logged again

A recovery counts when the rerun ends as the uncorrupted job did (the same result: top-1, final loss, iterations;
every iteration logged once), or with the one-line error; never with a traceback. Every job here is a fine-tuning of
10 steps on 40 Fashion-MNIST images, with an evaluation each epoch. All of it runs in one child process (torch's
import costs ~4 s a process): `python -m tests.faults.corrupt_run --child WORKDIR [--full]`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

from tests.faults import Tally

FINETUNE = [
    "task=finetune",
    "model=micro",
    "data=fashion_mnist",
    "data.subset.per_class=4",
    "optim.batch_size=8",
    "optim.epochs=2",
    "optim.warmup_epochs=0",
    "eval.per_class=2",
    "loader.workers=0",
    "log.every=1",
    "log.checkpoint_every=2",
    "log.progress=none",
]
SAME = ("top1", "top5", "best_top1", "final_epoch", "final_loss", "iterations")
REPORT = "report.json"
HANG_S = 600.0  # a guard against a hung child, not a timing


def run(tally: Tally, workdir: Path, full: bool) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "tests.faults.corrupt_run", "--child", str(workdir), *(["--full"] if full else [])]
    root = str(Path(__file__).resolve().parents[2])  # the checkout: `tests` importable from the child
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get(
        "PYTHONPATH")])), "HARNESS_RESULTS": str(workdir / "results")}  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_S, cwd=workdir, env=env)
    except subprocess.TimeoutExpired:
        tally.failures.append(f"corrupt_run: the child process hung for {HANG_S:.0f} s")
        return
    report = workdir / REPORT
    if done.returncode != 0 or not report.is_file():
        tail = done.stderr.strip().splitlines()[-3:]
        tally.failures.append(f"corrupt_run: the child process failed ({done.returncode}): {' | '.join(tail)}")
        return
    for case in json.loads(report.read_text()):
        tally.corruptions += 1
        if case["ok"]:
            tally.corruptions_recovered += 1
        else:
            tally.failures.append(f"corrupt_run: {case['name']}: {case['detail']}")


# ---------------------------------------------------------------------------------------------------------------
# the child: prepare the folders, corrupt them, run the jobs again
def truncate(path: Path, rng: random.Random) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: rng.randrange(len(data) // 2)])


def garble(path: Path, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    at = rng.randrange(len(data) // 4, 3 * len(data) // 4)
    data[at : at + 32] = rng.randbytes(32)
    path.write_bytes(bytes(data))


def write(text: str):
    return lambda path, rng: path.write_text(text)


def append(text: str):
    return lambda path, rng: path.write_text(path.read_text() + text)


def cases(full: bool) -> list[tuple[str, str, list[tuple[str, object]]]]:
    """(name, source folder, [(file, corruption)]) for each case."""
    out = [
        ("partial: last.pt truncated", "partial", [("last.pt", truncate)]),
        ("partial: last.pt garbled", "partial", [("last.pt", garble)]),
        ("partial: prev.pt truncated", "partial", [("prev.pt", truncate)]),
        ("partial: prev.pt garbled", "partial", [("prev.pt", garble)]),
        ("partial: last.pt and prev.pt truncated", "partial", [("last.pt", truncate), ("prev.pt", truncate)]),
        ("partial: config.yaml garbled", "partial", [("config.yaml", write("model: {args: [1, 2\n"))]),
        ("partial: metrics.jsonl torn last line", "partial", [("metrics.jsonl", append('{"it": 8, "lo'))]),
        ("finished: result.json truncated", "finished", [("result.json", truncate)]),
        ("finished: result.json empty", "finished", [("result.json", write(""))]),
        ("finished: result.json [1,2]", "finished", [("result.json", write("[1, 2]"))]),
        ("finished: result.json top1 abc", "finished", [("result.json", write('{"top1": "abc"}'))]),
        ("finished: result.json and last.pt truncated", "finished", [("result.json", truncate), ("last.pt", truncate)]),
        ("finished: config.yaml garbled", "finished", [("config.yaml", write("- not\n- a mapping\n"))]),
    ]
    if full:  # more positions of the damage
        for seed in range(3):
            out += [
                (f"partial: last.pt garbled (draw {seed})", "partial", [("last.pt", garble)]),
                (f"finished: result.json garbled (draw {seed})", "finished", [("result.json", garble)]),
                (f"finished: result.json truncated (draw {seed})", "finished", [("result.json", truncate)]),
            ]
    return out


def _job(config: dict, run_dir: Path) -> tuple[dict | None, list[str], str]:
    """TrainJob on `run_dir`: (its result or None when it raised, the warnings, what went wrong)."""
    from harness.train.entry import TrainJob

    stderr = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(stderr):
        warnings.simplefilter("always")
        try:
            result = TrainJob()(config, str(run_dir))
        except Exception:
            return None, [], "raised " + traceback.format_exc().strip().splitlines()[-1]
    return result, [str(w.message) for w in caught] + stderr.getvalue().splitlines(), ""


def _check(run_dir: Path, result: dict | None, reference: dict, its: list[int]) -> str:
    """What differs from the uncorrupted job ('' when nothing)."""
    if not isinstance(result, dict):
        return f"returned {result!r}"
    wrong = {k: (result.get(k), reference[k]) for k in SAME if result.get(k) != reference[k]}
    if wrong:
        return f"result differs (got, expected): {wrong}"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r["it"] for r in records if not r.get("eval")]
    if logged != its:
        return f"logged iterations {logged}, expected {its}"
    from harness.config import ConfigError, load_config

    try:
        load_config(run_dir / "config.yaml")
    except ConfigError as err:
        return f"config.yaml still unreadable ({err})"
    return ""


PRETRAIN = ["model=micro", "data.subset.per_class=2", "optim.batch_size=8", "optim.max_iters=1",
            "knn.after_pretrain=false", "loader.workers=0", "log.progress=none"]  # fmt: skip


def _finetune_from(pre: Path) -> tuple[int | None, list[str]]:
    """`harness train finetune pretrained=<pre>`: its exit status and stderr's lines (a traceback if it raised)."""
    from harness.cli import main

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(["train", "finetune", f"pretrained={pre}", *FINETUNE[1:]])
        except BaseException:
            rc, stderr = None, io.StringIO(traceback.format_exc())
    return rc, stderr.getvalue().strip().splitlines()


def _pretrained_cases(workdir: Path, rng: random.Random) -> list[dict]:
    """A fine-tuning from a pre-training folder whose config.yaml, or encoder, is damaged: one line, status 2; and the
    encoder's recovery (the pre-training's result deleted, its rerun writes the encoder again)."""
    from omegaconf import OmegaConf

    from harness.config import compose
    from harness.train import RESULT_FILE
    from harness.train.checkpoint import read_checked
    from harness.train.loop import train

    pre, enc = workdir / "pretrained", workdir / "pretrained-encoder"
    pre_config = compose(PRETRAIN)
    train(pre_config, pre)
    shutil.copytree(pre, enc)
    (pre / "config.yaml").write_text("model: {args: [1, 2\n")
    rc, lines = _finetune_from(pre)
    ok = rc == 2 and len(lines) == 1 and "config.yaml" in lines[0] and "Traceback" not in lines[0]
    out = [{"name": "pretrained= folder: config.yaml garbled", "ok": ok, "detail": f"exit {rc}: {lines[-3:]}"}]

    garble(enc / "encoder.harness.pt", rng)
    rc, lines = _finetune_from(enc)
    said = " ".join(lines)
    ok = rc == 2 and len(lines) == 1 and "encoder.harness.pt" in said and RESULT_FILE in said
    (enc / RESULT_FILE).unlink()  # the recovery the message names; then the pre-training is run again
    _, _, problem = _job(OmegaConf.to_container(pre_config, resolve=True), enc)
    try:
        read_checked(enc / "encoder.harness.pt")
    except Exception as err:
        problem = problem or f"the rerun left the encoder unreadable ({err})"
    detail = f"exit {rc}: {lines[-3:]}" + (f"; {problem}" if problem else "")
    out.append({"name": "pretrained= folder: encoder.harness.pt garbled", "ok": ok and not problem, "detail": detail})
    return out


def child(workdir: Path, full: bool) -> None:
    from omegaconf import OmegaConf

    from harness.config import compose

    config = OmegaConf.to_container(compose(FINETUNE), resolve=True)
    partial_config = OmegaConf.to_container(compose([*FINETUNE, "log.stop_after=7"]), resolve=True)
    reference, _, problem = _job(config, workdir / "finished")
    if problem:
        raise RuntimeError(f"the uncorrupted job failed: {problem}")
    its = list(range(1, reference["iterations"] + 1))
    _job(partial_config, workdir / "partial")  # stopped after 7 steps: last.pt of step 7, prev.pt of step 6
    report = []
    for n, (name, source, damage) in enumerate(cases(full)):
        run_dir, rng = workdir / f"case{n}", random.Random(n)
        shutil.copytree(workdir / source, run_dir)
        for file, corrupt in damage:
            corrupt(run_dir / file, rng)
        result, said, problem = _job(config, run_dir)
        problem = problem or _check(run_dir, result, reference, its)
        if not problem and any(f in ("last.pt", "result.json") for f, _ in damage):
            names = [f for f, _ in damage if f in ("last.pt", "result.json")]
            unsaid = [f for f in names if not any(f in line for line in said)]
            problem = f"no warning names {unsaid}" if unsaid else ""
        report.append({"name": name, "ok": not problem, "detail": problem or "; ".join(said)})
    report += _pretrained_cases(workdir, random.Random(len(report)))
    (workdir / REPORT).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    if sys.argv[1:2] != ["--child"]:
        sys.exit("usage: python -m tests.faults.corrupt_run --child WORKDIR [--full]")
    child(Path(sys.argv[2]), "--full" in sys.argv[3:])
