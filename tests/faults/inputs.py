"""Bad inputs (tests/bad_inputs/): every sweep file and override there is refused with one clear line.

    run(tally, workdir, full=False)     # each case through `harness.cli.main` in this process (~0.1 s a case)
    run(tally, workdir, full=True)      # and again through `python -m harness.cli` in a child process (~1 s a case)

A sweep case `tests/bad_inputs/sweeps/<case>.yaml` opens with comment lines: `# expect: <text>` (first), then
optionally `# command: report` (run `harness report` instead of `harness plan`) and `# with: <sweep files>` (files of
the checkout named before the case, e.g. `sweeps/smoke.yaml` for a case that reuses its name). Each runs with
`--profile smoke --results <folder>/results` (and `--out <folder>/reports`) from a scratch working folder. An entry
`{overrides: [...], expect: <text>, train: <task>}` of `tests/bad_inputs/overrides.yaml` runs `harness plan
sweeps/smoke.yaml --profile smoke <overrides>`, or with `train`, `harness train <task> <overrides> run_dir=...`.

A case holds when the command exits with status 2, its stderr contains the expected text, and no "Traceback"
appears. And nothing may be written outside the results and reports folders: each case gets a folder three levels
below its own, so that a name climbing out of `--out` (`../../x`) lands in a folder that is checked, and the
filesystem root and the folder beside `workdir` are checked for new entries named like the corpus's escapes
(`ESCAPE` in the name: the path cases all say where they would write with it).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import yaml

from tests.faults import Tally

__all__ = ["ESCAPE", "run"]

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "bad_inputs"
SMOKE = ROOT / "sweeps" / "smoke.yaml"
ESCAPE = "escape"  # in the name of whatever a path case would write outside its folders


def run(tally: Tally, workdir: Path, full: bool) -> None:
    workdir = Path(workdir)
    cases = [(f"sweeps/{p.name}", *_sweep_case(p)) for p in sorted((CORPUS / "sweeps").glob("*.yaml"))]
    overrides = CORPUS / "overrides.yaml"
    if overrides.exists():
        entries = yaml.safe_load(overrides.read_text()) or []
        cases += [(f"overrides.yaml[{i}] {' '.join(e.get('overrides', []))}", *_override_case(e))
                  for i, e in enumerate(entries)]  # fmt: skip
    for i, (name, argv, expect) in enumerate(cases):
        tally.bad_inputs += 1
        folder = workdir / f"case{i:03d}"
        problem = _check(argv, expect, folder, workdir, _in_process)
        if problem is None and full:
            problem = _check(argv, expect, workdir / f"case{i:03d}-child", workdir, _child)
        if problem is None:
            tally.clear_errors += 1
        else:
            tally.failures.append(f"bad input {name}: {problem}")


def _sweep_case(path: Path) -> tuple[list[str], str | None]:
    """The command line of a sweep case (with `{results}` and `{out}` to fill in) and its expected text."""
    header = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        key, _, value = line.lstrip("# ").partition(":")
        header.setdefault(key.strip(), value.strip())
    command = header.get("command", "plan")
    others = [str(ROOT / p) for p in header.get("with", "").split()]
    argv = [command, *others, str(path), "--profile", "smoke", "--results", "{results}"]
    if command == "report":
        argv += ["--out", "{out}"]
    expect = header.get("expect") if path.read_text().startswith("# expect:") else None
    return argv, expect


def _override_case(entry: dict) -> tuple[list[str], str | None]:
    items = [str(o) for o in entry.get("overrides") or []]
    if entry.get("train"):
        return ["train", str(entry["train"]), *items, "run_dir={results}/run"], entry.get("expect")
    return ["plan", str(SMOKE), "--profile", "smoke", "--results", "{results}", *items], entry.get("expect")


def _check(argv: list[str], expect: str | None, folder: Path, workdir: Path, harness) -> str | None:
    """None when the case is refused as it must be; else what went wrong, in one line."""
    if not expect:
        return "the case gives no expected text (first line `# expect: <text>`, or `expect:`)"
    sandbox = folder / "a" / "b" / "c"
    results, reports, cwd = sandbox / "results", sandbox / "reports", sandbox / "cwd"
    for made in (cwd, results):  # `report` reads an existing results folder (a mistyped one is refused)
        made.mkdir(parents=True)
    argv = [a.replace("{results}", str(results)).replace("{out}", str(reports)) for a in argv]
    watched = [Path("/"), workdir.parent]
    before = {d: set(os.listdir(d)) for d in watched}
    code, out, err = harness(argv, cwd)
    escaped = [d / n for d in watched for n in set(os.listdir(d)) - before[d] if ESCAPE in n]
    escaped += [p for p in folder.rglob("*") if not p.is_dir() and not _inside(p, results, reports)]
    for path in escaped:  # this case's own mess: never leave it behind
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
    said = (err.strip().splitlines() or ["(nothing on stderr)"])[-1][:300]
    if "Traceback" in out + err:
        return f"a traceback: {said}"
    if escaped:
        return f"wrote outside its folders: {', '.join(map(str, escaped))}"
    if code != 2:
        return f"exit status {code}, expected 2; stderr: {said}"
    if expect not in err:
        return f"stderr lacks {expect!r}; it says: {said}"
    return None


def _inside(path: Path, *roots: Path) -> bool:
    return any(root == path or root in path.parents for root in roots)


def _in_process(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """`harness <argv>` by `harness.cli.main` in this process, from `cwd`: (exit status, stdout, stderr)."""
    from harness.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit:  # argparse's errors
            code = exit.code if isinstance(exit.code, int) else 1
        except Exception:  # what the user would see as a traceback
            traceback.print_exc()
            code = 1
    return code, out.getvalue(), err.getvalue()


def _child(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """The same through `python -m harness.cli` in a child process, as a user's shell runs it."""
    done = subprocess.run([sys.executable, "-m", "harness.cli", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    return done.returncode, done.stdout, done.stderr
