"""Training configs: composed with Hydra from `harness/conf`, resolved once, saved with every run.

    cfg = compose(["task=finetune", "data=inat2019", "model=small", "pretrained=results/pretrain/ab12cd34"])

The derived values (absolute lr, per-device batch) are computed by one named function, `derived`, and logged both
ways, so the arithmetic that reproductions live or die on is in one tested place.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.catalog import DATASETS, iteration_parity_epochs
from harness.io import atomic_write_text, cache_dir

CONF_DIR = Path(__file__).resolve().parent / "conf"
TASKS = ("pretrain", "finetune", "linear", "detect", "segment")
# Keys that change how a job runs but not what it computes: left out of its identity. `data.root` is where the
# dataset lives on this cluster (a fixed path keeps the job it was meant to be, so a failed job can be retried).
NON_IDENTITY_KEYS = ("run_dir", "data.root", "loader", "log", "run.compile")
TASK_RUN_DIR = re.compile(r"(?:^|/)((?:pretrain|finetune|linear|detect|segment)/[0-9a-f]{12})/?$")

__all__ = [
    "CONF_DIR",
    "TASKS",
    "VALUES",
    "Composer",
    "ConfigError",
    "Derived",
    "check_values",
    "compose",
    "config_hash",
    "derived",
    "encoder_overrides",
    "load_config",
    "save_config",
]  # fmt: skip


class ConfigError(ValueError):
    """A config that cannot be composed or does not make sense, with what was expected."""


def _parity(reference_epochs: int, significant: int = 1, *, _root_: DictConfig) -> int:
    """`optim.epochs=${parity:300}`: the epochs over this job's training images that make as many iterations as
    `reference_epochs` over ImageNet-1k (`harness.catalog.iteration_parity_epochs`; FACTS §3.1: 300 on ImageNet, 3k on
    IN-10% and COCO, 30k on IN-1%). The images are the official train size of `data.name` (of the dataset a
    `--profile` stand-in replaces: `data.stands_in_for`), times `data.subset.fraction`. `${parity:300,2}` keeps two
    significant figures, for the datasets whose epochs the paper does not state."""
    data = _root_.data
    name = data.get("stands_in_for") or data.name
    if name not in DATASETS:
        raise ConfigError(f"${{parity:...}}: unknown dataset '{name}'; valid: {', '.join(DATASETS)}")
    subset = data.subset
    if subset.split_file is not None or subset.per_class is not None:
        raise ConfigError(
            "${parity:...} counts images from data.subset.fraction; with data.subset.split_file or per_class set, "
            "give optim.epochs as a number"
        )
    images = DATASETS[name].train_size * (subset.fraction or 1.0)
    return iteration_parity_epochs(round(images), int(reference_epochs), significant=int(significant))


def _catalog(fact: str, *, _root_: DictConfig):
    """`${catalog:num_classes}`: a fact (num_classes, in_chans, mean, std) of the images a job reads (`data.name`),
    from the dataset catalogue (`harness.catalog.DATASETS`), so that the job's config holds its value."""
    name = _root_.data.name
    if name not in DATASETS:
        raise ConfigError(f"data.name: unknown dataset '{name}'; valid: {', '.join(DATASETS)}")
    if fact not in ("num_classes", "in_chans", "mean", "std"):
        raise ConfigError(f"${{catalog:{fact}}}: not a fact of the catalogue; valid: num_classes, in_chans, mean, std")
    value = getattr(DATASETS[name], fact)
    stand_in = _root_.data.get("stand_in")
    if fact == "num_classes" and stand_in is not None:  # a stand-in's classes (harness/data/standins.py)
        value = 0 if stand_in.mosaic > 1 else len(stand_in.classes) if stand_in.classes else value
    return OmegaConf.create(list(value)) if isinstance(value, tuple) else value


def _pyramid_blocks(depth: int) -> ListConfig:
    """`${pyramid_blocks:${model.args.depth}}`: the four blocks (0-indexed) a dense head reads, XCiT's and BEiT's
    spacing: depth/3, depth/2, 2 depth/3 (rounded) and the last, minus one. 12 blocks: [3, 5, 7, 11]; 24: [7, 11, 15,
    23] (XCiT's large models); the micro ViT's 4: [0, 1, 2, 3]."""
    depth = int(depth)
    if depth < 4:
        raise ConfigError(f"a dense head reads 4 blocks of the ViT; model.args.depth={depth} has fewer")
    return OmegaConf.create([round(depth * k / 6) - 1 for k in (2, 3, 4)] + [depth - 1])


OmegaConf.register_new_resolver("parity", _parity, replace=True)
OmegaConf.register_new_resolver("pyramid_blocks", _pyramid_blocks, replace=True)
OmegaConf.register_new_resolver("catalog", _catalog, replace=True)


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The resolved config for Hydra-style `overrides` (`key=value`, `group=option`), read-only."""
    try:
        cfg = _hydra_compose(overrides)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_explain(err, overrides)) from err
    _validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _hydra_compose(overrides: Sequence[str]) -> DictConfig:
    """Hydra's composition, unresolved: the groups' defaults list merged, then the value overrides applied."""
    with initialize_config_dir(version_base=None, config_dir=str(CONF_DIR), job_name="harness"):
        return hydra_compose("config", overrides=list(overrides))


# Keys `_validate`'s own checks and the resolvers (`${catalog:...}`, `${parity:...}`) read: an override of one of them
# always goes through `compose`. (`check_values` checks the whole result of the Composer's fast path too.)
VALIDATED_KEYS = ("task", "method", "optim.lr", "optim.blr", "optim.batch_size", "optim.accum_steps", "run.amp")
RESOLVER_KEYS = ("data.name", "data.stands_in_for", "data.subset", "data.stand_in")


# Hydra's composition of each set of group options (unresolved), shared by every Composer of this process and keyed
# by the config tree's content too: a plan, its tests and a report compose the same few dozen sets again and again.
_GROUP_CONFIGS: dict[tuple[str, tuple[str, ...]], DictConfig] = {}
GROUP_CACHE_FORMAT = 1  # of the files under $HARNESS_CACHE/configs/: a new one when what they hold changes


def _group_config(conf_digest: str, groups: tuple[str, ...]) -> DictConfig:
    """Hydra's composition of the group options `groups` (unresolved), kept in this process and on disk.

    Hydra reads and merges the whole tree again for every composition (~80 ms each), and the paper's plan needs 76
    of them. Kept as YAML under `$HARNESS_CACHE/configs/` (keyed by the config tree's content, Hydra's and
    OmegaConf's versions and the options), a set composed once, by any command, is read back in ~7 ms: a plan after a
    change of a sweep file or of the code (which the job graph's cache depends on) composes nothing again. The file
    is Hydra's result as OmegaConf writes it under a first line with the digest of the rest; one whose digest does
    not match (damaged, truncated) is composed again."""
    import hydra
    import omegaconf
    import yaml

    key = (conf_digest, groups)
    if key in _GROUP_CONFIGS:
        return _GROUP_CONFIGS[key]
    versions = (GROUP_CACHE_FORMAT, hydra.__version__, omegaconf.__version__)
    name = hashlib.sha256(repr((versions, conf_digest, groups)).encode()).hexdigest()[:32]
    path = cache_dir() / "configs" / f"{name}.yaml"
    try:
        head, _, text = path.read_text().partition("\n")
        if head != f"# sha256 {hashlib.sha256(text.encode()).hexdigest()}":
            raise ValueError(f"{path}: damaged")
        cfg = OmegaConf.create(text)
        OmegaConf.set_struct(cfg, True)  # as Hydra leaves it: an override of an unknown key is an error
    except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException):
        cfg = _hydra_compose(groups)
        text = OmegaConf.to_yaml(cfg)
        with contextlib.suppress(OSError):  # no cache where it cannot be written
            atomic_write_text(path, f"# sha256 {hashlib.sha256(text.encode()).hexdigest()}\n{text}")
    _GROUP_CONFIGS[key] = cfg
    return cfg


class Composer:
    """Many configs that differ in a few plain values (a sweep's grid), fast, and exactly as `compose` makes them.

    - Hydra composes each set of group options (`task=`, `data=`, `method=`, `model=`) once; the other overrides
      are applied to a copy with Hydra's own function, then resolved and validated (~15 ms instead of ~0.2 s).
    - A trailing `key=value` is set on a copy of the resolved config of the overrides before it when nothing can
      tell the difference: the key exists as a plain value, no interpolation of the config tree refers to it (or
      to a parent or a child of it), and `_validate` does not read it (~0.1 ms).

        composer = Composer()
        container = composer.container(["task=finetune", "data=inat2019", "seed=3"])   # a resolved plain dict

    A grid of 10,000 seeds costs one composition and 10,000 dict copies.
    """

    def __init__(self) -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.parser = OverridesParser.create()
        self.bases: dict[tuple[str, ...], dict] = {}
        self.parsed: dict[str, tuple[str, object] | None] = {}  # Hydra's parser costs ~1.5 ms an override
        text = "\n".join(p.read_text() for p in sorted(CONF_DIR.rglob("*.yaml")))
        self.conf_digest = hashlib.sha256(text.encode()).hexdigest()  # the config tree this process composes from
        self.referenced = set(re.findall(r"\$\{([^}:]+)\}", text))

    def _compose(self, overrides: list[str]) -> dict:
        """`compose(overrides)` as a resolved plain dict. Hydra's composition of the group options (`data=`,
        `method=`...) is what costs (~0.1-0.3 s: it reads every YAML file again); it is done once per set of options,
        and the value overrides are applied to a copy the way Hydra applies them (its own function). Anything that
        goes wrong there is composed again by `compose`, which says what is wrong."""
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        groups = tuple(o for o in overrides if (CONF_DIR / o.lstrip("+~").split("=", 1)[0]).is_dir())
        values = [o for o in overrides if o not in groups]
        try:
            cfg = copy.deepcopy(_group_config(self.conf_digest, groups))
            ConfigLoaderImpl._apply_overrides_to_config([self.parser.parse_override(o) for o in values], cfg)
            OmegaConf.resolve(cfg)
            _validate(cfg)
        except Exception:
            cfg = compose(overrides)
        return OmegaConf.to_container(cfg, resolve=True)

    def _plain(self, item: str) -> tuple[str, object] | None:
        """(key, value) when `item` is a plain value override nothing else in the tree depends on; else None."""
        if item not in self.parsed:
            self.parsed[item] = self._parse_plain(item)
        return self.parsed[item]

    def _parse_plain(self, item: str) -> tuple[str, object] | None:
        try:
            override = self.parser.parse_override(item)
        except Exception:
            return None
        key = override.key_or_group
        if override.is_add() or override.is_force_add() or override.is_delete() or override.is_sweep_override():
            return None
        if override.package is not None or (CONF_DIR / key).is_dir():
            return None

        def related(a: str, b: str) -> bool:
            return a == b or a.startswith(b + ".") or b.startswith(a + ".")

        read = (*VALIDATED_KEYS, *RESOLVER_KEYS)
        if any(related(key, r) for r in self.referenced) or any(related(key, v) for v in read):
            return None
        return key, override.value()

    def container(self, overrides: Sequence[str]) -> dict:
        """The resolved config of `overrides` as a plain dict (validated as `compose` does)."""
        head, tail = list(overrides), []
        keys = [o.lstrip("+~").split("=", 1)[0] for o in head]
        # An interpolation among the overrides (`optim.epochs=${parity:300}`) may read any key: no plain tail then.
        interpolated = any("${" in o for o in head)
        while head and not interpolated and keys.count(keys[-1]) == 1 and (plain := self._plain(head[-1])) is not None:
            tail.insert(0, plain)
            head.pop()
            keys.pop()
        if tuple(head) not in self.bases:
            self.bases[tuple(head)] = self._compose(head)
        out = dict(self.bases[tuple(head)])  # copied along the paths that change; the rest is shared, read-only
        for key, value in tail:
            *parents, leaf = key.split(".")
            node = out
            for p in parents:
                child = node.get(p) if isinstance(node, dict) else None
                if not isinstance(child, dict):
                    node = None
                    break
                node[p] = node = dict(child)
            if not isinstance(node, dict) or leaf not in node or isinstance(node[leaf], dict):
                return OmegaConf.to_container(compose(overrides), resolve=True)  # Hydra says what is wrong
            node[leaf] = copy.deepcopy(value)
        if tail:
            check_values(out)
        return out


def _explain(err: Exception, overrides: Sequence[str]) -> str:
    """Hydra's or OmegaConf's error in one line: what is wrong (a group's options, the closest valid key for a misspelt
    override, the recipe a dataset lacks), without Hydra's search path and grammar links."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(err, MissingConfigException) and err.options is not None and err.missing_cfg_file:
        group, _, option = err.missing_cfg_file.rpartition("/")
        return f"{group}={option}: no such option in harness/conf/{group}/; valid: {', '.join(sorted(err.options))}"
    if isinstance(err, OverrideParseException):
        lines = err.message.strip().splitlines()
        return f"{err.override}: not a valid override ({lines[0]}; expected key=value, group=option or +key=value)"
    lines = [line.strip() for line in str(err).strip().splitlines()]
    lines = [line for line in lines if line and not line.startswith(("full_key:", "object_type=", "To append"))]
    message = re.sub(r"^\w+ raised while resolving interpolation: ", "", "; ".join(lines))
    if "Interpolation key 'recipe." in message:
        recipes = ", ".join(sorted(p.stem for p in (CONF_DIR / "recipe").glob("*.yaml")))
        message += (
            "; this dataset has no fine-tuning recipe (unlabelled: pre-training only); "
            f"pick one with recipe=NAME ({recipes})"
        )
    base = OmegaConf.load(CONF_DIR / "config.yaml")
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if (CONF_DIR / key).is_dir() or f"'{key}'" not in message:
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(base, parent) if parent else base
        if isinstance(node, DictConfig) and leaf not in node:
            close = difflib.get_close_matches(leaf, [str(k) for k in node], n=1)
            guess = f": did you mean '{(parent + '.') if parent else ''}{close[0]}'?" if close else ""
            message = f"unknown key '{key}'{guess} (a new key is added with +{key}=VALUE)"
    return message


def _validate(cfg: DictConfig) -> None:
    check_values(cfg)
    heads = {"finetune": ("classifier",), "linear": ("linear", "pixels"), "detect": ("mask_rcnn",)}
    heads["segment"] = ("upernet",)
    allowed = heads.get(cfg.task)
    if allowed is not None and cfg.method.name not in allowed:
        raise ConfigError(f"task={cfg.task} trains method={' or '.join(allowed)}, not method={cfg.method.name}")
    if cfg.optim.lr is None and cfg.optim.blr is None:
        raise ConfigError("set optim.lr (absolute) or optim.blr (scaled by batch_size / 256)")
    tokenizer = cfg.method.args.get("tokenizer")
    if tokenizer is not None and not isinstance(tokenizer, DictConfig):
        names = ", ".join(sorted(p.stem for p in (CONF_DIR / "tokenizer").glob("*.yaml")))
        raise ConfigError(
            f"method.args.tokenizer={tokenizer}: a tokenizer is a config group with its own arguments; select it with "
            f"tokenizer={tokenizer} (harness/conf/tokenizer/: {names})"
        )


# ---------------------------------------------------------------------------------------------------------------
# Values: what each key takes. `compose` and the Composer (so `harness plan`, `run` and `train`) refuse anything else
# with the key, the value and what was expected, before a job is planned or run.
@dataclass(frozen=True)
class Number:
    """A number (an int when `integer`) in [low, high]; `above` / `below` exclude an end; `optional`: null too."""

    low: float | None = None
    high: float | None = None
    integer: bool = False
    optional: bool = False
    above: bool = False
    below: bool = False

    def accepts(self, value) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.above else value < self.low):
            return False
        return self.high is None or (value < self.high if self.below else value <= self.high)

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.above else "[", ")" if self.below else "]"
            text = f"{kind} in {left}{self.low:g}, {self.high:g}{right}"
        elif self.low is not None:
            text = f"{kind} {'>' if self.above else '>='} {self.low:g}"
        else:
            text = kind
        return text + (", or null" if self.optional else "")


@dataclass(frozen=True)
class OneOf:
    options: tuple

    def accepts(self, value) -> bool:
        return isinstance(value, str) and value in self.options

    def __str__(self) -> str:
        return "one of " + ", ".join(self.options)


POSITIVE, POSITIVE_INT = Number(0, above=True), Number(0, above=True, integer=True)
NON_NEGATIVE, COUNT = Number(0), Number(0, integer=True)
PROBABILITY, FRACTION = Number(0, 1), Number(0, 1, below=True)  # [0, 1] and [0, 1)
SOME = Number(0, above=True, integer=True, optional=True)  # a count, or null: all of them / no limit

# Keys absent from a job's config (a method's own arguments) are not checked.
VALUES: dict[str, Number | OneOf] = {
    "task": OneOf(TASKS),
    "seed": COUNT,
    "data.img_size": POSITIVE_INT,
    "data.subset.fraction": Number(0, 1, above=True, optional=True),
    "data.subset.per_class": SOME,
    "data.subset.seed": COUNT,
    "data.mim.mask_ratio": Number(0, 1, above=True, below=True),
    "data.mim.mask_pattern": OneOf(("block", "random")),
    "method.args.mask_ratio": Number(0, 1, above=True, below=True),
    "method.args.vocab_size": POSITIVE_INT,
    "method.args.temperature": POSITIVE,
    "method.args.momentum_teacher": PROBABILITY,
    "method.args.num_local_crops": COUNT,
    "model.args.patch_size": POSITIVE_INT,
    "model.args.embed_dim": POSITIVE_INT,
    "model.args.depth": POSITIVE_INT,
    "model.args.num_heads": POSITIVE_INT,
    "model.args.mlp_ratio": POSITIVE,
    "model.args.drop_path_rate": FRACTION,
    "model.args.layer_scale_init": Number(0, above=True, optional=True),
    "optim.epochs": POSITIVE,
    "optim.epoch_scale": POSITIVE,
    "optim.max_iters": SOME,
    "optim.batch_size": POSITIVE_INT,
    "optim.accum_steps": POSITIVE_INT,
    "optim.lr": Number(0, optional=True),
    "optim.blr": Number(0, optional=True),
    "optim.min_lr": NON_NEGATIVE,
    "optim.warmup_epochs": NON_NEGATIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.weight_decay_end": Number(0, optional=True),
    "optim.clip_grad": Number(0, above=True, optional=True),
    "optim.layer_decay": Number(0, 1, above=True, optional=True),
    "optim.schedule.warmup_iters": COUNT,
    "aug.hflip": PROBABILITY,
    "aug.reprob": PROBABILITY,
    "aug.mixup": NON_NEGATIVE,
    "aug.cutmix": NON_NEGATIVE,
    "aug.label_smoothing": FRACTION,
    "aug.crop_pct": Number(0, 1, above=True),
    "linear.layer": POSITIVE_INT,
    "linear.solver": OneOf(("sgd", "lbfgs")),
    "linear.folds": Number(2, integer=True),
    "linear.tol": POSITIVE,
    "linear.max_iter": POSITIVE_INT,
    "knn.k": POSITIVE_INT,
    "knn.temperature": POSITIVE,
    "knn.pool": OneOf(("avg", "cls", "cls_avg")),
    "knn.train_per_class": SOME,
    "eval.every_epochs": POSITIVE,
    "eval.per_class": SOME,
    "loader.workers": COUNT,
    "loader.eval_batch_size": SOME,
    "run.amp": OneOf(("auto", "bf16", "fp16", "fp32")),
    "run.device": OneOf(("auto", "cpu", "cuda")),
    "log.every": POSITIVE_INT,
    "log.checkpoint_every": POSITIVE_INT,
    "log.progress": OneOf(("auto", "bar", "plain", "none")),
    "log.stop_after": SOME,
}
# (a, b, why, unless): the value of `a` must be a multiple of the value of `b`, unless the key `unless` is true.
MULTIPLES = (
    ("data.img_size", "model.args.patch_size", "the image is cut into whole patches", "model.args.dynamic_img_size"),
    ("model.args.embed_dim", "model.args.num_heads", "each attention head gets an equal part of the width", None),
    ("optim.batch_size", "optim.accum_steps", "each accumulation step gets an equal part of the batch", None),
)
_MISSING = object()


def _get(node, key: str):
    """The value at dotted `key` of a config or plain dict; _MISSING when absent. A value where a section is expected
    (`optim=3`) is an error."""
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, (dict, DictConfig)):
            section = ".".join(parts[:depth])
            raise ConfigError(f"{section}={_show(node)}: expected a section of keys ({section}.KEY=VALUE), got a value")
        if part not in node:
            return _MISSING
        node = node[part]
    return node


def _show(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def check_values(cfg: DictConfig | dict) -> None:
    """Every key of `VALUES` holds what it must, and `MULTIPLES` divide (a ConfigError naming the key otherwise)."""
    for key, rule in VALUES.items():
        value = _get(cfg, key)
        if value is not _MISSING and not rule.accepts(value):
            kind = " (a string)" if isinstance(value, str) and isinstance(rule, Number) else ""
            raise ConfigError(f"{key}={_show(value)}{kind}: expected {rule}")
    for a, b, why, unless in MULTIPLES:
        va, vb = _get(cfg, a), _get(cfg, b)
        if va is not _MISSING and vb is not _MISSING and va % vb and not (unless and _get(cfg, unless) is True):
            raise ConfigError(f"{a}={va} is not a multiple of {b}={vb}: {why}")


# The ViT arguments a downstream job (fine-tuning, probe) takes from the pre-training whose encoder it starts from.
INHERITED_ENCODER_ARGS = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "layer_scale_init")


def encoder_overrides(upstream: dict | DictConfig) -> list[str]:
    """`model.args.KEY=VALUE` overrides that give a downstream job the encoder of its upstream pre-training (a
    resolved config): the same shape, and LayerScale where the pre-training had it, as BEiT fine-tunes its encoders.
    They go before the job's own overrides, which may still change them."""
    args = _get(upstream, "model.args")
    mapping = isinstance(args, (dict, DictConfig))
    missing = [k for k in INHERITED_ENCODER_ARGS if not mapping or k not in args]
    if missing:
        raise ConfigError(f"not the config of a pre-training: no model.args.{missing[0]}")
    return [f"model.args.{k}={'null' if args[k] is None else args[k]}" for k in INHERITED_ENCODER_ARGS]


@dataclass(frozen=True)
class Derived:
    """Values computed from the config and the world size (logged next to what they came from)."""

    lr: float  # absolute peak learning rate
    batch_per_device: int  # micro-batch each process loads per step
    world_size: int
    accum_steps: int


def derived(cfg: DictConfig, world_size: int) -> Derived:
    """Absolute lr (`blr * batch_size / 256` when `lr` is null) and the per-device micro-batch."""
    batch, accum = cfg.optim.batch_size, cfg.optim.accum_steps
    if batch % (world_size * accum):
        raise ConfigError(
            f"optim.batch_size={batch} does not split over {world_size} processes x {accum} accumulation steps"
        )
    lr = cfg.optim.lr if cfg.optim.lr is not None else cfg.optim.blr * batch / 256
    return Derived(
        lr=float(lr), batch_per_device=batch // (world_size * accum), world_size=world_size, accum_steps=accum
    )


def config_hash(cfg: DictConfig | dict, length: int = 12) -> str:
    """A job's identity: hash of its resolved config without the keys that do not change its result.

    `pretrained` enters as the upstream's identity (`pretrain/<hash>`) when it names a run folder, so the same
    fine-tuning has one identity whether results/ is given as a relative or an absolute path.
    """
    data = dict(cfg) if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)
    for dotted in NON_IDENTITY_KEYS:  # removed from copies of the dicts on the way, never from `cfg`
        *parents, leaf = dotted.split(".")
        node = data
        for p in parents:
            if not isinstance(node.get(p), dict):
                break
            node[p] = node = dict(node[p])
        else:
            node.pop(leaf, None)
    if data.get("pretrained"):  # a run folder is named by its job's identity: where results/ lives does not matter
        found = TASK_RUN_DIR.search(str(data["pretrained"]))
        data["pretrained"] = found.group(1) if found else str(Path(data["pretrained"]).resolve())
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def save_config(cfg: DictConfig, path: str | Path) -> None:
    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))


def load_config(path: str | Path) -> DictConfig:
    """A saved `config.yaml` (read with yaml.safe_load semantics by OmegaConf), read-only; a ConfigError in one line
    when it is missing, unreadable or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no config at {path}: expected the config.yaml of a run folder")
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:
        raise ConfigError(f"{path}: not a readable YAML config ({' '.join(str(err).split())})") from err
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: not a readable YAML config (a {type(cfg).__name__}, not a mapping of keys)")
    OmegaConf.set_readonly(cfg, True)
    return cfg
