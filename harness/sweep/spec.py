"""Sweep files: one paper table or figure as stages, grids, dependencies, and the paper's value per cell.

    sweep = load_sweep("sweeps/smoke.yaml")   # parsed and checked; SweepError names the file, the key, the fix

The schema is documented in sweeps/README.md. This module only reads and checks the file's structure; turning the
stages into jobs (configs, identities, upstream links) is `harness.sweep.graph`. What it refuses besides the schema:
a mapping with the same key twice (YAML keeps the last one silently), a sweep or figure `name` that is not a simple
name (it becomes a folder or file of the report: `NAME`), a `paper` / `tolerance` that is not a finite number (or a
negative tolerance), two cells for the same jobs and metric, and a cluster value with a control character (a newline
would add a line, an `#SBATCH` option even, to the job script).
"""

from __future__ import annotations

import difflib
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.config import CONF_DIR, TASKS
from harness.io import under
from harness.sweep.expression import check_expression

__all__ = [
    "CLUSTER_KEYS", "NAME", "Block", "Cell", "Claim", "Figure", "Stage", "Sweep", "SweepError", "check_cluster",
    "check_override", "load_sweep", "read_yaml",
]  # fmt: skip

TOP_KEYS = (
    "name", "title", "source", "overrides", "stages", "cells", "cell_defaults", "layout", "figures", "claims",
)  # fmt: skip
CLAIM_KEYS = ("text", "check", "cells")
STAGE_KEYS = ("task", "overrides", "grid", "cluster", "runnable")  # `runnable: <why not>` is read as Stage.blocked
# Cluster settings of a stage (and of harness/conf/cluster/*.yaml), mapped to submitit in harness.launch.executors.
CLUSTER_KEYS = (
    "partition",
    "nodes",
    "gpus_per_node",
    "tasks_per_node",
    "cpus_per_task",
    "mem_gb",
    "timeout_min",
    "account",
    "qos",
    "constraint",
    "signal_delay_s",
    "array_parallelism",
    "max_num_timeout",
    "setup",
    "additional",
)
BLOCK_KEYS = ("from", "where", "match", "overrides")
CELL_KEYS = ("stage", "keys", "metric", "paper", "tolerance", "protocol", "note", "external")
PROTOCOL_KEYS = ("task", "epochs", "pretrain_epochs", "img_size", "epoch", "layer", "note")
LAYOUT_KEYS = ("rows", "cols")
FIGURE_KEYS = (
    "name", "kind", "stage", "metric", "x", "hue", "facet", "rows", "cols", "title", "logx", "xlabel", "ylabel",
)  # fmt: skip
FIGURE_KINDS = ("line", "bar", "heatmap")
# A name that becomes a folder or a file (reports/<sweep name>/<figure name>.png): no separator, no `..`, not hidden.
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
NAME_RULE = "a simple name of letters, digits, '_', '.' and '-', not starting with '.' or '-'"
METRICS = (
    "top1", "top5", "best_top1", "best_top5", "final_loss", "gpu_hours", "device_hours", "wall_clock_s",
    "wall_clock_hours",                                                     # wall_clock_s / 3600 (T6's "Hours")
    "knn_top1", "knn_top5",                                                 # DINO's k-NN (linear jobs, pre-training)
    "box_ap", "box_ap50", "box_ap75", "mask_ap", "mask_ap50", "mask_ap75",  # COCO (task detect)
    "miou",                                                                 # ADE20k (task segment)
)  # fmt: skip


class SweepError(ValueError):
    """A sweep file that cannot be used as written: the message names the file, the key and what was expected."""


@dataclass(frozen=True)
class Block:
    """One cartesian product of a stage's grid, optionally paired with the jobs of an upstream stage."""

    axes: dict[str, dict[str, tuple[str, ...]]]  # axis -> label -> overrides
    upstream: str | None = None  # stage whose jobs this block starts from (pretrained=<their run folder>)
    where: dict[str, tuple[str, ...]] = field(default_factory=dict)  # upstream key -> allowed labels
    match: dict[str, str] = field(default_factory=dict)  # upstream key -> this block's key that must equal it
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stage:
    name: str
    task: str
    overrides: tuple[str, ...]
    blocks: tuple[Block, ...]
    cluster: dict[str, Any]
    blocked: str | None = None  # None: its jobs can run; else why they cannot yet (planned and shown, not submitted)

    @property
    def upstreams(self) -> set[str]:
        return {b.upstream for b in self.blocks if b.upstream}


@dataclass(frozen=True)
class Cell:
    """One number of the paper: which jobs produce it (stage + keys), the metric, the value and its protocol.

    An `external` cell is a number the paper quotes from elsewhere (MoCo v3's, Liu et al.'s): it names the source,
    has no stage and no job, and the report shows the paper's value alone.
    """

    stage: str | None
    keys: dict[str, str]
    metric: str
    paper: float | None
    tolerance: float | None
    protocol: dict[str, Any]
    note: str | None = None
    external: str | None = None


@dataclass(frozen=True)
class Figure:
    """A plot of a sweep's cells: line (x = a key, e.g. epochs), bar, or heatmap (rows x cols), hue / facet keys."""

    name: str
    kind: str
    stage: str
    metric: str = "top1"
    x: str | None = None
    hue: str | None = None
    facet: str | None = None
    rows: str | None = None
    cols: str | None = None
    title: str | None = None
    logx: bool = False
    xlabel: str | None = None
    ylabel: str | None = None


@dataclass(frozen=True)
class Claim:
    """A sentence of the paper checked on table values: `check` is an expression over named cells (`cells`)."""

    text: str
    check: str
    cells: dict[str, int]  # name in the expression -> index into the sweep's cells


@dataclass(frozen=True)
class Sweep:
    name: str
    path: Path
    title: str
    source: str | None
    overrides: tuple[str, ...]
    stages: dict[str, Stage]  # in dependency order
    cells: tuple[Cell, ...]
    layout: dict[str, tuple[str, ...]]
    figures: tuple[Figure, ...] = ()
    claims: tuple[Claim, ...] = ()


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file (structure, names, dependencies); SweepError on anything that would not run."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{path}: no such sweep file")
    return _Reader(path).sweep(read_yaml(path))


class _DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping that names a key twice (not a syntax error: the message says so)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with the same key twice, where PyYAML keeps the last one silently.
    A key given explicitly beside a merged one (`<<: *defaults`) still overrides it, as YAML means."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: SafeLoader says so
                continue
            if first is not key_node.start_mark:
                raise _DuplicateKey(problem=f"duplicate key {key!r} (first at line {first.line + 1}): a key may "
                                    "appear once in a mapping", problem_mark=key_node.start_mark)  # fmt: skip
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> Any:
    """The YAML file `path`, parsed safely; SweepError with `path:line:column` on a syntax error or a duplicate key."""
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a yaml.SafeLoader: plain data only
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err)
        kind = "YAML" if isinstance(err, _DuplicateKey) else "YAML syntax error"
        raise SweepError(f"{where}: {kind}: {problem}") from err


def check_cluster(settings: dict, where: str, error=SweepError) -> dict:
    """Cluster settings (harness/conf/cluster/*.yaml keys): known keys, and values on one line. A string anywhere in a
    value (`setup` lines, `additional` options and their names) with a control character is refused: a newline in
    `partition` would add a line to the job script, an `#SBATCH` option even."""

    def one_line(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                one_line(k, key)
                one_line(v, f"{key}.{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                one_line(v, f"{key}[{i}]")
        elif isinstance(value, str) and any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value):
            raise error(f"{where}: {key}: {value!r} holds a control character (a newline, a tab, ...): "
                        "a cluster setting is one line of text")  # fmt: skip

    if not isinstance(settings, dict):
        raise error(f"{where}: expected a mapping of cluster settings, got {settings!r}")
    for key, value in settings.items():
        if key not in CLUSTER_KEYS:
            raise error(f"{where}: unknown cluster setting '{key}'; {_closest(str(key), CLUSTER_KEYS)}"
                        f"valid: {', '.join(CLUSTER_KEYS)}")  # fmt: skip
        one_line(value, key)
    return dict(settings)


def check_override(item: str, error=SweepError) -> None:
    """`key=value` syntax, and for config groups (`data=inat2019`) an option that exists, with the valid list."""
    if "=" not in item:
        raise error(f"'{item}' is not an override: expected key=value or group=option")
    key, value = item.split("=", 1)
    try:
        group = under(CONF_DIR, key.lstrip("+~"))
    except ValueError:  # `../x=1`: no group of harness/conf; Hydra refuses the key when the job is composed
        return
    if group.is_dir() and "." not in key:
        options = sorted(p.stem for p in group.glob("*.yaml"))
        if value not in options:
            raise error(f"unknown {key.lstrip('+~')} '{value}'; {_closest(value, options)}valid: {', '.join(options)}")


def _closest(word: str, valid: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(valid), n=1)
    return f"did you mean '{close[0]}'? " if close else ""


class _Reader:
    """Walks the parsed YAML, turning every mistake into a SweepError that says where it is."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, where: str, message: str) -> SweepError:
        return SweepError(f"{self.path}: {where or 'top level'}: {message}")

    def mapping(self, value: Any, where: str, valid: tuple[str, ...] | None = None) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(where, f"expected a mapping, got {type(value).__name__} {value!r}")
        for key in value:
            if not isinstance(key, str):
                raise self.error(where, f"keys must be strings, got {key!r}")
            if valid is not None and key not in valid:
                raise self.error(
                    f"{where}.{key}" if where else key,
                    f"unknown key; {_closest(key, valid)}valid keys: {', '.join(valid)}",
                )
        return value

    def overrides(self, value: Any, where: str) -> tuple[str, ...]:
        """Hydra overrides: a string or a list of `key=value` / `group=option` strings."""
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(o, str) for o in items):
            raise self.error(where, f"expected a list of Hydra overrides like 'optim.epochs=300', got {value!r}")
        for item in items:
            check_override(item, lambda message: self.error(where, message))
        return tuple(items)

    # ------------------------------------------------------------------------------------------------------------
    def sweep(self, data: Any) -> Sweep:
        data = self.mapping(data, "", TOP_KEYS)
        if "stages" not in data:
            raise self.error("stages", "missing: a sweep needs at least one stage")
        stages_data = self.mapping(data["stages"], "stages")
        if not stages_data:
            raise self.error("stages", "empty: a sweep needs at least one stage")
        stages = {name: self.stage(name, spec) for name, spec in stages_data.items()}
        stages = self.ordered(stages)
        defaults = self.mapping(data.get("cell_defaults"), "cell_defaults", CELL_KEYS)
        cells_data = data.get("cells") or []
        if not isinstance(cells_data, list):
            raise self.error("cells", "expected a list of cells")
        cells = []
        for i, c in enumerate(cells_data):
            spec = {**defaults, **self.mapping(c, f"cells[{i}]", CELL_KEYS)}
            if spec.get("external") is not None and "stage" not in c:
                spec.pop("stage", None)  # a quoted number has no stage, whatever the defaults say
            cells.append(self.cell(i, spec, stages))
        cells = tuple(cells)
        layout = self.mapping(data.get("layout"), "layout", LAYOUT_KEYS)
        figures_data = data.get("figures") or []
        if not isinstance(figures_data, list):
            raise self.error("figures", "expected a list of figures")
        figures = tuple(self.figure(i, f, stages) for i, f in enumerate(figures_data))
        claims_data = data.get("claims") or []
        if not isinstance(claims_data, list):
            raise self.error("claims", "expected a list of claims")
        claims = tuple(self.claim(i, c, cells) for i, c in enumerate(claims_data))
        self.distinct(cells, figures)
        return Sweep(
            name=self.name(data.get("name"), "name", self.path.stem),
            path=self.path,
            title=str(data.get("title") or self.path.stem),
            source=data.get("source"),
            overrides=self.overrides(data.get("overrides"), "overrides"),
            stages=stages,
            cells=cells,
            layout={k: tuple([v] if isinstance(v, str) else v) for k, v in layout.items()},
            figures=figures,
            claims=claims,
        )

    def name(self, value: Any, where: str, default: str) -> str:
        """A name that becomes a folder or a file of the report: `NAME` (`..`, `/` or an absolute path would put
        it outside `--out`). The default (the file's name, `figure<i>`) is held to the same rule."""
        if value is None or value == "":
            if not NAME.fullmatch(default):
                raise self.error(where, f"missing, and the default {default!r} is not {NAME_RULE}: give a name")
            return default
        if not isinstance(value, str) or not NAME.fullmatch(value):
            raise self.error(where, f"expected {NAME_RULE} (it names a folder or file of the report), got {value!r}")
        return value

    def distinct(self, cells: tuple[Cell, ...], figures: tuple[Figure, ...]) -> None:
        """Two cells of the same jobs and metric are one table cell given twice (the report would keep one paper
        value and list both rows); two figures of one name would overwrite each other's files."""
        seen: dict[tuple, int] = {}
        for i, cell in enumerate(cells):
            first = seen.setdefault((cell.stage, cell.metric, tuple(sorted(cell.keys.items()))), i)
            if first != i:
                raise self.error(f"cells[{i}]", f"the same cell as cells[{first}] (stage {cell.stage}, metric "
                                 f"{cell.metric}, keys {cell.keys}): give each table cell once")  # fmt: skip
        names: dict[str, int] = {}
        for i, figure in enumerate(figures):
            first = names.setdefault(figure.name, i)
            if first != i:
                raise self.error(f"figures[{i}].name", f"'{figure.name}' is also the name of figures[{first}]: "
                                 "each figure needs its own name (its files are <name>.png, .svg)")  # fmt: skip

    def claim(self, i: int, spec: Any, cells: tuple[Cell, ...]) -> Claim:
        """`cells: {name: {stage, metric, <key>: <label>...}}` must each select exactly one cell of the sweep."""
        where = f"claims[{i}]"
        spec = self.mapping(spec, where, CLAIM_KEYS)
        for key in CLAIM_KEYS:
            if not spec.get(key):
                raise self.error(f"{where}.{key}", "missing")
        named = {}
        for name, selector in self.mapping(spec["cells"], f"{where}.cells").items():
            selector = {str(k): str(v) for k, v in self.mapping(selector, f"{where}.cells.{name}").items()}
            found = [
                j
                for j, cell in enumerate(cells)
                if all(
                    (cell.stage if k == "stage" else cell.metric if k == "metric" else cell.keys.get(k)) == v
                    for k, v in selector.items()
                )
            ]
            if len(found) != 1:
                raise self.error(f"{where}.cells.{name}", f"{selector} selects {len(found)} cells, expected one")
            named[name] = found[0]
        try:
            check_expression(str(spec["check"]), set(named))
        except ValueError as err:
            raise self.error(f"{where}.check", str(err)) from err
        return Claim(text=str(spec["text"]), check=str(spec["check"]), cells=named)

    def figure(self, i: int, spec: Any, stages: dict[str, Stage]) -> Figure:
        where = f"figures[{i}]"
        spec = self.mapping(spec, where, FIGURE_KEYS)
        kind = spec.get("kind")
        if kind not in FIGURE_KINDS:
            raise self.error(f"{where}.kind", f"expected one of {', '.join(FIGURE_KINDS)}, got {kind!r}")
        if spec.get("stage") not in stages:
            raise self.error(f"{where}.stage", f"unknown stage {spec.get('stage')!r}; stages: {', '.join(stages)}")
        needed = ("rows", "cols") if kind == "heatmap" else ("x",)
        for key in needed:
            if not spec.get(key):
                raise self.error(f"{where}.{key}", f"a {kind} figure needs '{key}' (a cell key)")
        metric = spec.get("metric", "top1")
        if metric not in METRICS:
            raise self.error(f"{where}.metric", f"unknown metric '{metric}'; valid: {', '.join(METRICS)}")
        name = self.name(spec.get("name"), f"{where}.name", f"figure{i + 1}")
        return Figure(**{**spec, "name": name, "metric": metric, "logx": bool(spec.get("logx"))})

    def stage(self, name: str, spec: Any) -> Stage:
        where = f"stages.{name}"
        spec = self.mapping(spec, where, STAGE_KEYS)
        task = spec.get("task", name)
        if task not in TASKS:
            raise self.error(
                f"{where}.task", f"unknown task '{task}'; {_closest(str(task), TASKS)}valid: {', '.join(TASKS)}"
            )
        grid = spec.get("grid")
        blocks_data = grid if isinstance(grid, list) else [grid or {}]
        blocks = tuple(
            self.block(f"{where}.grid" + (f"[{i}]" if isinstance(grid, list) else ""), b)
            for i, b in enumerate(blocks_data)
        )
        blocked = self.blocked(where, spec.get("runnable", True))
        return Stage(
            name=name,
            task=task,
            overrides=self.overrides(spec.get("overrides"), f"{where}.overrides"),
            blocks=blocks,
            cluster=check_cluster(
                self.mapping(spec.get("cluster"), f"{where}.cluster", CLUSTER_KEYS),
                f"{where}.cluster",
                lambda message: SweepError(f"{self.path}: {message}"),
            ),
            blocked=blocked,
        )

    def blocked(self, where: str, runnable: Any) -> str | None:
        """The file's `runnable:` (true, false, or a sentence saying why not) as `Stage.blocked`: None or a reason."""
        if runnable is True:
            return None
        if runnable is False:
            return f"{self.path}: {where}.runnable is false"
        if isinstance(runnable, str) and runnable.strip():
            return runnable.strip()
        raise self.error(f"{where}.runnable", "expected true, or a sentence saying why the stage cannot run yet")

    def block(self, where: str, spec: Any) -> Block:
        spec = self.mapping(spec, where)
        axes = {}
        for axis, values in spec.items():
            if axis in BLOCK_KEYS:
                continue
            axes[axis] = self.axis(f"{where}.{axis}", axis, values)
        upstream = spec.get("from")
        if upstream is not None and not isinstance(upstream, str):
            raise self.error(f"{where}.from", f"expected the name of an upstream stage, got {upstream!r}")
        where_keys = {
            k: tuple(str(x) for x in (v if isinstance(v, list) else [v]))
            for k, v in self.mapping(spec.get("where"), f"{where}.where").items()
        }
        match = {k: str(v) for k, v in self.mapping(spec.get("match"), f"{where}.match").items()}
        if (where_keys or match) and upstream is None:
            raise self.error(where, "'where' and 'match' select upstream jobs: they need 'from: <stage>'")
        for up_key, local_key in match.items():
            if local_key not in axes:
                raise self.error(f"{where}.match.{up_key}", f"'{local_key}' is not an axis of this block {list(axes)}")
        return Block(axes, upstream, where_keys, match, self.overrides(spec.get("overrides"), f"{where}.overrides"))

    def axis(self, where: str, axis: str, values: Any) -> dict[str, tuple[str, ...]]:
        """`{label: overrides}`, or a list of scalars for a config key (`seed: [0, 1]` -> seed=0, seed=1)."""
        if isinstance(values, list):
            if not values or not all(isinstance(v, (str, int, float, bool)) for v in values):
                raise self.error(where, "a list axis holds scalar values of the config key it is named after")
            return {str(v): (f"{axis}={v}",) for v in values}
        values = self.mapping(values, where)
        if not values:
            raise self.error(where, "an axis needs at least one value")
        return {str(label): self.overrides(ov, f"{where}.{label}") for label, ov in values.items()}

    def ordered(self, stages: dict[str, Stage]) -> dict[str, Stage]:
        """Stages in dependency order; unknown upstreams and cycles are errors."""
        for stage in stages.values():
            for i, block in enumerate(stage.blocks):
                if block.upstream is not None and block.upstream not in stages:
                    raise self.error(
                        f"stages.{stage.name}.grid" + (f"[{i}]" if len(stage.blocks) > 1 else "") + ".from",
                        f"unknown stage '{block.upstream}'; {_closest(block.upstream, list(stages))}"
                        f"stages: {', '.join(stages)}",
                    )
        order: list[str] = []
        state: dict[str, str] = {}

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == "done":
                return
            if state.get(name) == "visiting":
                cycle = [*path[path.index(name) :], name]
                raise self.error("stages", "dependency cycle: " + " -> ".join(cycle))
            state[name] = "visiting"
            for up in sorted(stages[name].upstreams):
                visit(up, [*path, name])
            state[name] = "done"
            order.append(name)

        for name in stages:
            visit(name, [])
        return {name: stages[name] for name in order}

    def cell(self, i: int, spec: dict, stages: dict[str, Stage]) -> Cell:
        where = f"cells[{i}]"
        stage = spec.get("stage")
        external = spec.get("external")
        if external is not None:
            if not isinstance(external, str) or not external.strip():
                raise self.error(f"{where}.external", "expected the source of a quoted number (a sentence)")
            if spec.get("stage") is not None:
                raise self.error(f"{where}.stage", "an external cell quotes another paper: it has no stage")
            if spec.get("paper") is None:
                raise self.error(f"{where}.paper", "an external cell is a quoted number: give its value")
        elif stage not in stages:
            raise self.error(
                f"{where}.stage",
                f"unknown stage {stage!r}; {_closest(str(stage), list(stages))}stages: {', '.join(stages)}",
            )
        metric = spec.get("metric", "top1")
        if metric not in METRICS:
            raise self.error(
                f"{where}.metric",
                f"unknown metric '{metric}'; {_closest(str(metric), METRICS)}valid: {', '.join(METRICS)}",
            )
        for key in ("paper", "tolerance"):
            value = spec.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise self.error(f"{where}.{key}", f"expected a finite number (or null: none), got {value!r}")
            if key == "tolerance" and value < 0:
                raise self.error(f"{where}.{key}", f"expected a number >= 0 (points either side), got {value!r}")
        return Cell(
            stage=stage,
            keys={str(k): str(v) for k, v in self.mapping(spec.get("keys"), f"{where}.keys").items()},
            metric=metric,
            paper=None if spec.get("paper") is None else float(spec["paper"]),
            tolerance=None if spec.get("tolerance") is None else float(spec["tolerance"]),
            protocol=self.mapping(spec.get("protocol"), f"{where}.protocol", PROTOCOL_KEYS),
            note=spec.get("note"),
            external=external,
        )
