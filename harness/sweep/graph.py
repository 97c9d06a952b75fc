"""Compile sweeps into one job graph: every cell of every stage becomes a job named by its config's hash.

    graph = compile_sweeps([load_sweep("sweeps/smoke.yaml")], results="results", profile="smoke")
    for job in graph.jobs.values(): print(job.task, job.id, job.upstream)

A job is identified by `config_hash` of its resolved config, and runs in `results/<task>/<hash>/`. The same
pre-training wanted by two tables (or twice in one) is one job with two references. A downstream job receives its
upstream's run folder as `pretrained=` and keeps the upstream's keys as part of its own cell keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.metadata
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.catalog import DATASETS
from harness.config import CONF_DIR, TASKS, Composer, ConfigError, config_hash, encoder_overrides
from harness.io import atomic_write_text, under
from harness.sweep.spec import Block, Stage, Sweep, SweepError, check_cluster, check_override, read_yaml

__all__ = ["Graph", "Job", "Profile", "Ref", "compile_sweeps", "load_cluster", "load_profile"]


@dataclass(frozen=True)
class Ref:
    """Where a job appears: a sweep, one of its stages, and the job's cell keys there."""

    sweep: str
    stage: str
    keys: dict[str, str]

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.keys.items()) or "-"


@dataclass
class Job:
    id: str  # config hash
    task: str
    container: dict  # the resolved config, a plain dict (`config` is the same as a read-only DictConfig)
    run_dir: Path
    upstream: str | None  # id of the job whose encoder this one starts from
    cluster: dict[str, Any]  # resolved cluster settings (profile, then stage, then command line)
    blocked: str | None  # None: it can run; else why not yet (its stage's reason, or its upstream's)
    refs: list[Ref] = field(default_factory=list)

    @functools.cached_property
    def config(self) -> DictConfig:
        cfg = OmegaConf.create(self.container)
        OmegaConf.set_readonly(cfg, True)
        return cfg

    @property
    def stage(self) -> str:
        return self.refs[0].stage

    @property
    def label(self) -> str:
        return self.refs[0].label


@dataclass
class Graph:
    sweeps: list[Sweep]
    jobs: dict[str, Job]  # in dependency order: an upstream comes before its dependents
    _index: dict = field(default_factory=dict, repr=False)

    def refs(self, sweep: str) -> list[tuple[Ref, Job]]:
        return [(ref, job) for job in self.jobs.values() for ref in job.refs if ref.sweep == sweep]

    def select(self, sweep: str, stage: str, keys: dict[str, str]) -> list[tuple[Ref, Job]]:
        """The references of `sweep`'s `stage` whose keys include `keys` (a cell's jobs: its seeds, say)."""
        names = tuple(sorted(keys))
        index = self._index.get((sweep, stage, names))
        if index is None:  # one pass per (stage, key names): cells x jobs stays linear on large sweeps
            index = {}
            for ref, job in self.refs(sweep):
                if ref.stage == stage:
                    index.setdefault(tuple(ref.keys.get(n) for n in names), []).append((ref, job))
            self._index[(sweep, stage, names)] = index
        return index.get(tuple(keys[n] for n in names), [])


@dataclass(frozen=True)
class Profile:
    """`--profile NAME` (harness/conf/profile/NAME.yaml): the same graph with other settings, e.g. micro scale.

    `replace` maps an override of the sweeps (`data=imagenet`, or `key=*` for any value of the key) to the overrides
    that stand in for it, in place: distinct originals must get distinct stand-ins, or the graph loses jobs.
    """

    name: str
    overrides: tuple[str, ...] = ()  # appended to every job
    tasks: dict[str, tuple[str, ...]] = field(default_factory=dict)  # appended to the jobs of one task
    replace: dict[str, tuple[str, ...]] = field(default_factory=dict)
    cluster: dict[str, Any] = field(default_factory=dict)
    stage_cluster: bool = True  # False: ignore the sweeps' per-stage cluster settings (micro jobs fit anywhere)
    seeds: dict[str, int] = field(default_factory=dict)  # a task's jobs n times: seed=i, data.subset.seed=i (key seed)
    # Beside each downstream job, the numbers a reader knows on its data (stage "baselines"): "random" (the job with
    # no pre-trained encoder) and "pixels" (the raw-pixel probe of its data), e.g. {finetune: [random, pixels]}.
    baselines: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def apply(self, task: str, overrides: list[str]) -> list[str]:
        out = []
        for item in overrides:
            stand_in = self.replace.get(item, self.replace.get(item.partition("=")[0] + "=*"))
            out += [item] if stand_in is None else stand_in
        return [*out, *self.overrides, *self.tasks.get(task, ())]


def _read_yaml(group: str, name: str) -> tuple[Path, dict]:
    """harness/conf/<group>/<name>.yaml (a profile, a cluster) and its mapping; a name leading out of the group's
    folder (`../x`) is an unknown one."""
    folder = CONF_DIR / group
    try:
        path = under(folder, f"{name}.yaml")
    except ValueError:
        path = None
    if path is None or not path.is_file():
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        raise SweepError(f"unknown {group} '{name}': no {folder / f'{name}.yaml'}; valid: {', '.join(options)}")
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise SweepError(f"{path}: expected a mapping at the top level")
    return path, data


def load_profile(name: str | None) -> Profile:
    if not name:
        return Profile("none")
    path, data = _read_yaml("profile", name)
    valid = ("overrides", "tasks", "replace", "cluster", "stage_cluster", "seeds", "baselines")
    unknown = set(data) - set(valid)
    if unknown:
        raise SweepError(f"{path}: unknown keys {sorted(unknown)}; valid: {', '.join(valid)}")
    if not isinstance(data.get("stage_cluster", True), bool):
        raise SweepError(f"{path}: stage_cluster: expected true or false")

    def overrides(value: Any, where: str) -> tuple[str, ...]:
        items = [value] if isinstance(value, str) else list(value or [])
        for item in items:
            check_override(str(item), lambda m, w=where: SweepError(f"{path}: {w}: {m}"))
        return tuple(str(i) for i in items)

    return Profile(
        name=name,
        overrides=overrides(data.get("overrides"), "overrides"),
        tasks={k: overrides(v, f"tasks.{k}") for k, v in (data.get("tasks") or {}).items()},
        replace={k: overrides(v, f"replace.{k}") for k, v in (data.get("replace") or {}).items()},
        cluster=check_cluster(data.get("cluster") or {}, f"{path}: cluster"),
        stage_cluster=data.get("stage_cluster", True),
        seeds=_check_seeds(data.get("seeds") or {}, path),
        baselines=_check_baselines(data.get("baselines") or {}, path),
    )


def _check_seeds(seeds: Any, path: Path) -> dict[str, int]:
    if not isinstance(seeds, dict) or any(t not in TASKS or not isinstance(n, int) or n < 1 for t, n in seeds.items()):
        raise SweepError(f"{path}: seeds: expected a mapping task -> number of seeds (>= 1), tasks: {', '.join(TASKS)}")
    return dict(seeds)


BASELINES = ("random", "pixels")
BASELINE_STAGE = "baselines"  # the stage name of the baseline jobs' references


def _check_baselines(baselines: Any, path: Path) -> dict[str, tuple[str, ...]]:
    expected = f"a mapping finetune|linear -> a list of {' / '.join(BASELINES)}"
    if not isinstance(baselines, dict):
        raise SweepError(f"{path}: baselines: expected {expected}")
    for task, names in baselines.items():
        if task not in ("finetune", "linear") or not isinstance(names, list) or not set(names) <= set(BASELINES):
            raise SweepError(f"{path}: baselines.{task}: expected {expected}, got {names!r}")
    return {task: tuple(names) for task, names in baselines.items()}


def load_cluster(name: str) -> dict[str, Any]:
    """A cluster profile (harness/conf/cluster/NAME.yaml): partition, GPUs, time limit... for submitit."""
    path, data = _read_yaml("cluster", name)
    return check_cluster(data, str(path))


class _Compiler:
    def __init__(self, results: Path, profile: Profile, cluster: dict, cluster_cli: dict, overrides: tuple) -> None:
        self.results, self.profile, self.cli = results, profile, overrides
        self.cluster, self.cluster_cli = cluster, cluster_cli
        self.jobs: dict[str, Job] = {}
        self.stage_cluster: dict[str, tuple[dict, str]] = {}  # job -> the stage cluster settings it got, and whose
        self.composer = Composer()  # compose is slow (~0.1 s): once per distinct set of non-grid overrides

    def sweep(self, sweep: Sweep) -> None:
        by_stage: dict[str, list[tuple[dict[str, str], Job]]] = {}
        for stage in sweep.stages.values():
            by_stage[stage.name] = []
            for i, block in enumerate(stage.blocks):
                where = f"stages.{stage.name}.grid" + (f"[{i}]" if len(stage.blocks) > 1 else "")
                made = self.block(sweep, stage, block, by_stage, where)
                if not made:
                    raise SweepError(f"{sweep.path}: {where}: selects no jobs (check 'where' and 'match' labels)")
                by_stage[stage.name] += made
        self.check_cells(sweep, by_stage)

    def block(self, sweep: Sweep, stage: Stage, block: Block, by_stage: dict, where: str) -> list:
        upstreams: list[tuple[dict[str, str], Job | None]] = [({}, None)]
        if block.upstream:
            upstreams = by_stage[block.upstream]
            known = {k for keys, _ in upstreams for k in keys}
            for key in [*block.where, *block.match]:
                if key not in known:
                    raise SweepError(
                        f"{sweep.path}: {where}: '{key}' is not a key of stage '{block.upstream}' "
                        f"(its keys: {', '.join(sorted(known))})"
                    )
            upstreams = [(k, j) for k, j in upstreams if all(k.get(a) in v for a, v in block.where.items())]
        made = []
        axes = dict(block.axes)
        seeds = self.profile.seeds.get(stage.task, 1)
        if seeds > 1 and "seed" not in axes:  # the profile's seeds: one more axis, the label draw with the seed
            axes["seed"] = {str(i): [f"seed={i}", f"data.subset.seed={i}"] for i in range(seeds)}
        for combo in itertools.product(*[list(v.items()) for v in axes.values()]):
            local = {axis: label for axis, (label, _) in zip(axes, combo)}
            axis_overrides = [o for _, ovs in combo for o in ovs]
            for up_keys, up_job in upstreams:
                if any(up_keys.get(u) != local[k] for u, k in block.match.items()):
                    continue
                if any(up_keys[k] != v for k, v in local.items() if k in up_keys):
                    continue  # a key named in both stages pairs equal values
                keys = {**up_keys, **local}
                overrides = [*sweep.overrides, *stage.overrides, *block.overrides, *axis_overrides]
                job = self.job(sweep, stage, keys, overrides, up_job, where)
                made.append((keys, job))
                if up_job is not None:
                    self.baselines(sweep, stage, local, overrides, job, where)
        return made

    def baselines(self, sweep: Sweep, stage: Stage, local: dict, overrides: list[str], job: Job, where: str) -> None:
        """The profile's baselines of a downstream `job`, on its data: "random", the same job with no pre-trained
        encoder (keyed by the job's own axes); "pixels", the raw-pixel probe of its data (task linear, only its
        data and seed overrides: the pixels have no encoder to set up). Equal baselines of several jobs are one job."""
        data = job.container["data"]
        name = data.get("stands_in_for") or data["name"]
        for baseline in self.profile.baselines.get(stage.task, ()):
            if baseline == "random":
                keys = {"baseline": baseline, "task": stage.task, "data": name, **local}
                self.job(sweep, stage, keys, overrides, None, where, ref_stage=BASELINE_STAGE)
            else:
                own = [o for o in overrides if o.startswith(("data=", "data.", "seed="))]
                keys = {"baseline": baseline, "task": "linear", "data": name}
                keys |= {"seed": local["seed"]} if "seed" in local else {}
                probe = dataclasses.replace(stage, task="linear")
                self.job(sweep, probe, keys, [*own, "method=pixels"], None, where, ref_stage=BASELINE_STAGE)

    def job(
        self,
        sweep: Sweep,
        stage: Stage,
        keys: dict,
        overrides: list[str],
        upstream: Job | None,
        where: str,
        ref_stage: str | None = None,
    ) -> Job:
        task = stage.task
        # A downstream job's encoder has its upstream's shape (and LayerScale): before the job's own overrides.
        inherited = encoder_overrides(upstream.container) if upstream is not None else []
        full = [f"task={task}", *inherited, *self.profile.apply(task, overrides), *self.cli]
        if upstream is not None:
            full.append(f"pretrained={upstream.run_dir}")
        try:
            container = self.composer.container(full)
        except ConfigError as err:
            cell = " ".join(f"{k}={v}" for k, v in keys.items()) or "-"
            raise SweepError(f"{sweep.path}: {where}, job {cell}: {err}") from err
        job_id = config_hash(container)
        ref = Ref(sweep.name, ref_stage or stage.name, keys)
        wanted = stage.cluster if self.profile.stage_cluster else {}
        cluster = {**self.cluster, **self.profile.cluster, **wanted, **self.cluster_cli}
        if job_id not in self.jobs:
            blocked = upstream.blocked if upstream is not None and upstream.blocked else stage.blocked
            self.jobs[job_id] = Job(
                id=job_id,
                task=task,
                container=container,
                run_dir=self.results / task / job_id,
                upstream=upstream.id if upstream else None,
                cluster=cluster,
                blocked=blocked,
            )
            self.stage_cluster[job_id] = (wanted, f"{sweep.path}: stages.{stage.name}")
        elif wanted:  # a shared job: the stage that sets its resources decides, whichever sweep comes first
            first, where_first = self.stage_cluster[job_id]
            if first and first != wanted:
                raise SweepError(
                    f"{sweep.path}: stages.{stage.name}.cluster {wanted} differs from {where_first}.cluster {first} "
                    f"for the same job ({job_id}): give the shared job one cluster setting"
                )
            self.jobs[job_id].cluster = cluster
            self.stage_cluster[job_id] = (wanted, f"{sweep.path}: stages.{stage.name}")
        job = self.jobs[job_id]
        if ref not in job.refs:
            job.refs.append(ref)
        return job

    def check_cells(self, sweep: Sweep, by_stage: dict) -> None:
        """Every paper value must land on a job: a cell whose keys select nothing is a typo."""
        known: dict[str, dict[str, set[str]]] = {}
        combos: dict[tuple, set[tuple]] = {}
        for i, cell in enumerate(sweep.cells):
            if cell.external is not None:
                continue  # a quoted number: no job
            if cell.stage not in known:
                known[cell.stage] = {}
                for keys, _ in by_stage[cell.stage]:
                    for k, v in keys.items():
                        known[cell.stage].setdefault(k, set()).add(v)
            stage_keys = known[cell.stage]
            for k, v in cell.keys.items():
                if k not in stage_keys:
                    raise SweepError(
                        f"{sweep.path}: cells[{i}].keys.{k}: stage '{cell.stage}' has no key '{k}' "
                        f"(its keys: {', '.join(sorted(stage_keys)) or 'none'})"
                    )
                if v not in stage_keys[k]:
                    raise SweepError(
                        f"{sweep.path}: cells[{i}].keys.{k}: no job of stage '{cell.stage}' has "
                        f"{k}={v} (values: {', '.join(sorted(stage_keys[k]))})"
                    )
            names = tuple(sorted(cell.keys))
            if (cell.stage, names) not in combos:
                combos[(cell.stage, names)] = {tuple(keys.get(n) for n in names) for keys, _ in by_stage[cell.stage]}
            if tuple(cell.keys[n] for n in names) not in combos[(cell.stage, names)]:
                raise SweepError(f"{sweep.path}: cells[{i}]: no job of stage '{cell.stage}' has all of {cell.keys}")


def compile_sweeps(
    sweeps: list[Sweep],
    results: str | Path = "results",
    profile: str | Profile | None = None,
    cluster: dict[str, Any] | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    cluster_overrides: dict[str, Any] | None = None,
    cache: str | Path | None = None,
) -> Graph:
    """The job graph of `sweeps` (shared jobs once), with `overrides` (Hydra syntax) appended to every job.

    Cluster settings: `cluster` (a profile), then the `--profile`'s, then each stage's, then `cluster_overrides`
    (the command line's `cluster.KEY=VALUE`), the last one winning. With `cache` (a folder), a graph compiled
    before from the very same inputs (see `_cache_key`: sweep files, config tree, code, catalogue, library versions,
    arguments) is read back instead.
    """
    _check_names(sweeps)
    if not isinstance(profile, Profile):
        profile = load_profile(profile)
    for item in overrides:
        check_override(item)
    cluster_cli = check_cluster(dict(cluster_overrides or {}), "command line: cluster")
    results = Path(results).resolve()
    path = None
    if cache is not None:
        key = _cache_key(sweeps, [str(results), profile, cluster, list(overrides), cluster_cli])
        path = Path(cache) / f"{key}.json"
        if path.exists():
            try:
                return Graph(sweeps=list(sweeps), jobs=_read_jobs(path))
            except (OSError, ValueError, KeyError, IndexError, TypeError):
                pass  # a damaged cache file: compile again
    compiler = _Compiler(results, profile, dict(cluster or {}), cluster_cli, tuple(overrides))
    for sweep in sweeps:
        compiler.sweep(sweep)
    if path is not None:
        with contextlib.suppress(OSError):  # a cache that cannot be written (read-only home, full disk) is no cache
            _write_jobs(path, compiler.jobs)
    return Graph(sweeps=list(sweeps), jobs=compiler.jobs)


def _check_names(sweeps: list[Sweep]) -> None:
    """A sweep's name keys its jobs' references (`status`, `report`): two files of one name would merge their jobs."""
    seen: dict[str, Sweep] = {}
    for sweep in sweeps:
        if sweep.name not in seen:
            seen[sweep.name] = sweep
            continue
        first = seen[sweep.name]
        if Path(first.path).resolve() == Path(sweep.path).resolve():
            raise SweepError(f"{sweep.path}: given twice: name each sweep file once")
        raise SweepError(f"{sweep.path}: name '{sweep.name}' is also the name of {first.path}: the two would merge "
                         "their jobs in status and report; give each sweep file its own name")  # fmt: skip


# Compiling 10,000 jobs costs seconds; plan / status / report read a compiled graph back when nothing changed.
CACHE_KEEP = 8  # graph files kept per results folder (the most recently used)
CACHE_FORMAT = 2  # the layout of a graph file; 2: jobs carry `blocked` (1 had `runnable`)
ROOT = Path(__file__).resolve().parents[2]
# What a compiled graph depends on besides the sweep files and the arguments: all the code that composes, resolves
# and hashes a config (`${parity}` reads the dataset catalogue; the fast Composer calls a private function of Hydra),
# the whole config tree, and the versions of the libraries that compose and of the project.
CACHE_CODE = ("harness", "model")  # every *.py below these folders of the checkout
CACHE_PACKAGES = ("hydra-core", "omegaconf", "splitmask-harness")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cache_key(sweeps: list[Sweep], arguments: list) -> str:
    """A digest of everything the compiled graph depends on: the arguments, the cache format, the dataset catalogue
    as this process holds it (a value changed at run time changes the key too), the library versions, and the bytes
    of the sweep files, of every file of the config tree and of every Python file of `harness` and `model`. Reading
    ~100 small files costs a few milliseconds; a stale graph costs wrong epochs and wrong job identities."""
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, arguments], sort_keys=True, default=repr).encode())
    digest.update(repr(list(DATASETS.items())).encode())
    digest.update(repr([(p, _version(p)) for p in CACHE_PACKAGES]).encode())
    files = [Path(s.path) for s in sweeps] + sorted(p for p in CONF_DIR.rglob("*") if p.is_file())
    files += sorted(p for folder in CACHE_CODE for p in (ROOT / folder).rglob("*.py"))
    for path in files:
        data = path.read_bytes()
        digest.update(f"\0{path}\0{len(data)}\0".encode() + data)
    return digest.hexdigest()[:24]


def _write_jobs(path: Path, jobs: dict[str, Job]) -> None:
    """The graph as JSON. A config is written as the indices of its top-level `[key, value]` entries in `parts`,
    where each distinct entry is written once: a grid's configs share all but the groups their keys change (the
    report benchmark's 10,000 jobs: 6.4 MB instead of 23 MB, read back in 0.3-0.6 s instead of 1.4 s)."""
    parts: list[list] = []
    by_text: dict[str, int] = {}
    by_object: dict[tuple[str, int], int] = {}  # the Composer hands out unchanged groups as the same object

    def part(key: str, value: object) -> int:
        at = by_object.get((key, id(value)))  # every value stays alive meanwhile: an id is never reused
        if at is None:
            at = by_object[(key, id(value))] = by_text.setdefault(json.dumps([key, value]), len(parts))
            if at == len(parts):
                parts.append([key, value])
        return at

    records = [
        {"id": j.id, "task": j.task, "container": [part(k, v) for k, v in j.container.items()],
         "run_dir": str(j.run_dir), "upstream": j.upstream, "cluster": j.cluster, "blocked": j.blocked,
         "refs": [vars(r) for r in j.refs]}
        for j in jobs.values()
    ]  # fmt: skip
    atomic_write_text(path, json.dumps({"parts": parts, "jobs": records}))
    old = sorted(path.parent.glob("*.json"), key=lambda p: p.stat().st_mtime)[:-CACHE_KEEP]
    for stale in old:
        stale.unlink(missing_ok=True)


def _read_jobs(path: Path) -> dict[str, Job]:
    data = json.loads(path.read_text())
    path.touch()  # most recently used
    parts, jobs = data["parts"], {}
    for r in data["jobs"]:
        refs = [Ref(**ref) for ref in r["refs"]]
        container = dict(parts[i] for i in r["container"])  # entries shared between jobs: read-only, as composed
        jobs[r["id"]] = Job(r["id"], r["task"], container, Path(r["run_dir"]), r["upstream"], r["cluster"],
                            r["blocked"], refs)  # fmt: skip
    return jobs
