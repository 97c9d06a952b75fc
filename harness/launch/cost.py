"""What a job costs before it runs: GPU-hours on the cluster, hours on this CPU, hours on one GPU.

GPU-h (`CostModel`): epochs x images x seconds per image, calibrated by finished runs (their iterations x batch size
over their GPU-hours). The reference point is FACTS T6: BEiT pre-training of ViT-B/16 on ImageNet (1,281,167
images, 300 epochs) took 32.5 h on 16 GPUs, i.e. 16 x 32.5 x 3600 / (300 x 1,281,167) = 4.9 ms of one GPU per image.
Other models scale with embed_dim^2 x depth x tokens (the blocks' FLOPs), other methods and tasks by a factor
(below: SplitMask from T6, the others assumptions). Once runs of the same kind (task, method, size) have finished,
their measured seconds per image replace the model.

One GPU (`gpu_hours`): the job's FLOPs (`step_flops`, `job_flops`: the FLOP model below) over an assumed fraction of
one named GPU's peak (`GPU_PEAK_FLOPS` x `GPU_MFU`), with no step faster than `GPU_MIN_STEP_S`.

This CPU (`CpuModel`): the job's FLOPs over the FLOP rate measured on this machine for its kind (task, method), from
finished local runs (result.json, env.json naming this host, and how many of the cores the run had) or else from
`harness plan --measure` (a few steps of one job of each kind, cached in results/.harness/cpu_throughput.json). A rate
is per second of the whole machine: a job that ran with 1 of 2 cores for 10 s used 5 machine-seconds, so the hours
are those of `harness run --executor local`, which runs jobs side by side.

Nothing here imports torch: `harness plan` reads the configs' plain values (lint-imports checks it).
"""

from __future__ import annotations

import json
import math
import platform
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.catalog import DATASETS

__all__ = [
    "CPU_BENCH_FILE",
    "GPU_MFU",
    "GPU_MIN_STEP_S",
    "GPU_NAME",
    "GPU_PEAKS",
    "GPU_PEAK_FLOPS",
    "RUNS_FILE",
    "CostModel",
    "CpuModel",
    "Estimate",
    "StepFlops",
    "block_flops",
    "cpu_kind",
    "gpu_hours",
    "gpu_peak_flops",
    "images_per_epoch",
    "job_flops",
    "step_flops",
    "training_iterations",
]

REFERENCE_S_PER_IMAGE = 16 * 32.5 * 3600 / (300 * 1_281_167)  # BEiT, ViT-B/16 at 224 (FACTS T6)
REFERENCE_WORK = 768**2 * 12 * 196
# Per-image cost relative to BEiT pre-training at equal model size and tokens.
METHOD_FACTOR = {
    "beit": 1.0,
    "splitmask": 34.0 / 32.5,  # FACTS T6: 34.0 h vs BEiT's 32.5 h
    "dino": 4.5,  # assumption: student on 2x224 + 10x96 crops, teacher forward on the 2 global crops
    "supervised": 1.0,  # assumption: DeiT, one forward and backward over all tokens, as BEiT
    "classifier": 1.0,  # fine-tuning: one forward and backward over all tokens
    "linear": 0.35,  # assumption: a forward pass of the frozen encoder, about a third of forward + backward
    # Dense tasks at their own resolution (the config's img_size is the classification one). Assumptions: Mask R-CNN
    # at ~1333x800 is ~21x the tokens of 224x224, plus the heads; UperNet at 512x512 is ~5x, plus its decoder.
    "mask_rcnn": 25.0,
    "upernet": 8.0,
}

# ---------------------------------------------------------------------------------------------------------------
# One GPU: assumptions, named. Change them here (or pass others to `gpu_hours`).
GPU_NAME = "H100"
# Dense bf16 tensor-core peaks (NVIDIA's datasheets, without sparsity), by the name torch.cuda.get_device_name gives;
# the first key found in the name wins, so the PCIe and NVL variants come before the SXM ones.
GPU_PEAKS = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,  # SXM
    "H200": 989e12,  # the H100's chip with more memory
    "A100": 312e12,  # SXM and PCIe alike
}
GPU_PEAK_FLOPS = GPU_PEAKS[GPU_NAME]  # assumption: the cluster's GPUs are H100 SXM
GPU_MFU = 0.35  # assumption: model-FLOPs utilisation of a bf16 ViT training step (issue 16 targets 45 % for ViT-B)
GPU_MIN_STEP_S = 0.01  # assumption: no step is faster (kernel launches and host work): micro jobs sit on this floor

PREFIX_TOKENS = 1  # the class token (timm's ViT with global_pool="token"); no register tokens
BACKWARD_FACTOR = 2.0  # backward = 2 x forward FLOPs (activations' and weights' gradients) for what trains

RUNS_FILE = "local_runs.jsonl"  # results/.harness/: threads and cores of each local job (harness.launch.pool)
CPU_BENCH_FILE = "cpu_throughput.json"  # results/.harness/: `harness plan --measure`, per host


@dataclass(frozen=True)
class Estimate:
    hours: float  # device-hours (GPU-hours on GPUs); nan when there is nothing to estimate from
    source: str  # "model", "measured (n)", ...


# ---------------------------------------------------------------------------------------------------------------
# Plain-value access: a job's config is a DictConfig (planning) or a dict (a run's container), read the same way.
def _get(cfg, path: str, default=None):
    node = cfg
    for key in path.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


def _img(cfg) -> int:
    return int(_get(cfg, "model.args.img_size") or _get(cfg, "data.img_size"))


def _classes(cfg) -> int:
    """The classes of the images a job reads: a class subset's (data.classes, data.stand_in.classes), else the
    dataset's."""
    subset = _get(cfg, "data.classes") or _get(cfg, "data.stand_in.classes")
    if subset:
        return len(subset)
    info = DATASETS.get(_get(cfg, "data.name"))
    return info.num_classes if info else int(_get(cfg, "data.num_classes") or 0)


def images_per_epoch(cfg) -> int:
    """Training images of a job: the dataset's, a class subset's share, then `per_class` x classes or a fraction."""
    info = DATASETS.get(_get(cfg, "data.name"))
    total = info.train_size if info else 1_000_000
    classes = _classes(cfg)
    if info is not None and info.num_classes and classes and classes < info.num_classes:
        total = total * classes // info.num_classes  # a class subset (classes of about equal size)
    for per_class in (_get(cfg, "data.stand_in.per_class"), _get(cfg, "data.subset.per_class")):
        if per_class is not None and classes:
            total = min(total, int(per_class) * classes)
    fraction = _get(cfg, "data.subset.fraction")
    if fraction is not None and _get(cfg, "data.subset.per_class") is None:
        total = max(1, round(total * float(fraction)))
    return total


def _epochs_run(cfg) -> float:
    scale = _get(cfg, "optim.epoch_scale")
    return float(_get(cfg, "optim.epochs")) * (1.0 if scale is None else float(scale))


def training_iterations(cfg) -> int:
    """Optimiser steps of a job, as the training loop counts them (harness/train/loop.py `Trainer.setup`)."""
    batch = int(_get(cfg, "optim.batch_size"))
    per_epoch = max(1, images_per_epoch(cfg) // batch)
    total = max(1, round(per_epoch * _epochs_run(cfg)))
    cap = _get(cfg, "optim.max_iters")
    return min(total, int(cap)) if cap is not None else total


# ---------------------------------------------------------------------------------------------------------------
# The FLOP model: `step_flops`, the one function that says what a training step costs (`job_flops`, `gpu_hours`,
# the CPU rates of `harness plan` and `python -m bench step` all read it). A multiply-add is 2 FLOPs, and only the
# matmuls (and convolutions) count: LayerNorm, softmax, GELU, residual adds, losses, the EMA teacher update and the
# optimiser are left out (a few % at these widths). What trains costs its forward x (1 + BACKWARD_FACTOR); what does
# not (DINO's teacher, a tokenizer, a probe's frozen encoder) its forward. tests/test_flops.py checks it against a
# hand count and against torch.utils.flop_counter.FlopCounterMode on the micro model of every method (within 1 %).
def block_flops(tokens: float, dim: int, mlp_ratio: float = 4.0) -> float:
    """Forward FLOPs of one ViT block on `tokens` tokens of width `dim`: the qkv projection 6nD^2, the attention
    scores QK^T 2n^2D and the weighted values 2n^2D (all heads together), the output projection 2nD^2 and the MLP
    2 x 2 x mlp_ratio x nD^2. With mlp_ratio 4: 24nD^2 + 4n^2D."""
    n, d = float(tokens), float(dim)
    return (8 + 4 * mlp_ratio) * n * d * d + 4 * n * n * d


def _encoder(args: Mapping, img_size: int, visible: int | None = None, depth: int | None = None) -> float:
    """Patch embedding of every patch of an `img_size` image, then `depth` blocks on `visible` patches (default:
    all) plus the class token."""
    patch, dim = int(args["patch_size"]), int(args["embed_dim"])
    grid = (img_size // patch) ** 2
    embed = 2.0 * grid * patch * patch * int(args.get("in_chans", 3)) * dim
    n = (grid if visible is None else visible) + PREFIX_TOKENS
    blocks = int(args["depth"]) if depth is None else depth
    return embed + blocks * block_flops(n, dim, float(args.get("mlp_ratio", 4.0)))


def _num_masked(patches: int, ratio: float) -> int:
    return max(1, min(patches - 1, round(ratio * patches)))  # model.masking.num_masked_for


def _tokenizer(method_args: Mapping, model_args: Mapping, img_size: int) -> float:
    """Forward FLOPs of the visual-word tokenizer on one image (no gradient)."""
    tok = method_args.get("tokenizer") or {}
    name = tok.get("name", "random_projection") if isinstance(tok, Mapping) else str(tok)
    vocab, patch = int(method_args.get("vocab_size", 8192)), int(model_args["patch_size"])
    side = img_size // patch
    if name != "dalle":  # cosine similarity of each patch's pixels with `vocab` codewords
        return 2.0 * side * side * patch * patch * int(model_args.get("in_chans", 3)) * vocab
    # The DALL-E dVAE encoder (model/tokenizers.py DalleTokenizer) on a (8 x grid)^2 RGB view: a 7x7 conv to n_hid,
    # 4 groups of 2 blocks (widths n_hid x 1, 2, 4, 8; a 2x2 max-pool after each of the first three), a 1x1 to vocab.
    n_hid = int(tok.get("n_hid", 256)) if isinstance(tok, Mapping) else 256
    res = 8 * side
    flops = 2.0 * res * res * 49 * 3 * n_hid
    width = n_hid
    for i, mult in enumerate((1, 2, 4, 8)):
        for _ in range(2):
            out = mult * n_hid
            hid = out // 4
            conv = 9 * width * hid + 2 * 9 * hid * hid + hid * out + (width * out if width != out else 0)
            flops += 2.0 * res * res * conv
            width = out
        if i < 3:
            res //= 2
    return flops + 2.0 * res * res * width * vocab


def _dino_head(dim: int, a: Mapping) -> float:
    hidden, bottleneck, out = int(a.get("hidden_dim", 2048)), int(a.get("bottleneck_dim", 256)), int(a["out_dim"])
    return 2.0 * (dim * hidden + hidden * hidden + hidden * bottleneck + bottleneck * out)


@dataclass(frozen=True)
class StepFlops:
    """FLOPs per image of one training step: the forward of what trains (its backward comes on top) and the forward
    of what does not."""

    trained: float
    frozen: float = 0.0

    @property
    def total(self) -> float:
        return (1 + BACKWARD_FACTOR) * self.trained + self.frozen


def step_flops(cfg) -> StepFlops:
    """FLOPs per training image of a job's step, from its config's plain values (`model.args`, `method.args`): a
    DictConfig or the plain dict of a job's container, read the same way (no torch, no OmegaConf needed).

    The parts, each a forward (`block_flops` for a ViT block on n tokens: 24nD^2 + 4n^2D):

    - splitmask: one patch embedding; the encoder on each branch's visible patches (A and B: at 50 % each half of
      the grid, so together about one full-grid pass); the decoder (`decoder_depth` blocks of the encoder's width)
      on the full grid once per branch; the vocabulary head on each branch's unseen positions; the tokenizer.
    - beit: the encoder on every patch (mask tokens in place); the head on the masked positions; the tokenizer.
    - dino: the student on `num_global_crops` global and `num_local_crops` local crops, its head on each crop; the
      teacher's forward on the global crops.
    - supervised / classifier (fine-tuning): the encoder on every patch and a linear head.
    - linear: the frozen encoder up to block `linear.layer` (a forward), a linear head that trains.
    - pixels: a linear head on the pixels. Other methods (detection, segmentation): METHOD_FACTOR x an encoder pass.
    - the tokenizer (no gradient: `frozen`): a cosine tokenizer (random projection, random patches, k-means) the
      similarity of every patch with every codeword, 2 N (p^2 C) V; DALL-E's dVAE encoder its convolutions
      (`_tokenizer`).
    Every encoder pass includes its patch embedding, 2 N (p^2 C) D, and the class token among its tokens.
    """
    m, a = _get(cfg, "model.args"), _get(cfg, "method.args") or {}
    method = _get(cfg, "method.name")
    img = _img(cfg)
    dim, patch = int(m["embed_dim"]), int(m["patch_size"])
    grid = (img // patch) ** 2
    classes = max(1, _classes(cfg))
    if method == "splitmask":
        masked = _num_masked(grid, float(a.get("mask_ratio", 0.5)))
        visible = (grid - masked, masked) if a.get("subsets", "complement") == "complement" else (grid - masked,) * 2
        embed_once = _encoder(m, img, visible=0, depth=0)
        encoders = sum(_encoder(m, img, visible=v) - embed_once for v in visible)
        decoder = 2 * int(a.get("decoder_depth", 2)) * block_flops(grid + PREFIX_TOKENS, dim)
        inpaint = a.get("inpaint", True)
        head = 2.0 * dim * int(a.get("vocab_size", 8192)) * sum(grid - v for v in visible) if inpaint else 0.0
        tokenizer = _tokenizer(a, m, img) if inpaint else 0.0
        return StepFlops(embed_once + encoders + decoder + head, tokenizer)
    if method == "beit":
        masked = _num_masked(grid, float(a.get("mask_ratio", 0.4)))
        head = 2.0 * dim * int(a.get("vocab_size", 8192)) * masked
        return StepFlops(_encoder(m, img) + head, _tokenizer(a, m, img))
    if method == "dino":
        g, loc = int(a.get("num_global_crops", 2)), int(a.get("num_local_crops", 8))
        g_size, l_size = int(a.get("global_crop_size") or img), int(a.get("local_crop_size") or img)
        head = _dino_head(dim, a)
        global_crop, local_crop = _encoder(m, g_size) + head, _encoder(m, l_size) + head
        return StepFlops(g * global_crop + loc * local_crop, g * global_crop)
    if method in ("supervised", "classifier"):
        return StepFlops(_encoder(m, img) + 2.0 * dim * classes)
    if method == "linear":
        layer = int(_get(cfg, "linear.layer") or m["depth"])
        return StepFlops(2.0 * dim * classes, _encoder(m, img, depth=layer))
    if method == "pixels":
        return StepFlops(2.0 * img * img * int(m.get("in_chans", 3)) * classes)
    return StepFlops(METHOD_FACTOR.get(method, 1.0) * _encoder(m, img))


def _eval_images(cfg) -> int:
    """Evaluation images, when the config says how many (`eval.per_class`); 0 otherwise (small at paper scale)."""
    per_class = _get(cfg, "eval.per_class")
    return int(per_class) * _classes(cfg) if per_class else 0


def _eval_forward(cfg) -> float:
    """Forward FLOPs per evaluated image: the encoder (up to the probed block) and the head."""
    m = _get(cfg, "model.args")
    step = step_flops(cfg)
    if _get(cfg, "method.name") == "linear":
        return step.trained + step.frozen
    if _get(cfg, "method.name") == "pixels":
        return step.trained
    return _encoder(m, _img(cfg))


def _lbfgs_probe(cfg) -> bool:
    return _get(cfg, "task") == "linear" and _get(cfg, "linear.solver") == "lbfgs"


def _knn_train_images(cfg) -> int:
    per_class = _get(cfg, "knn.train_per_class")
    return min(images_per_epoch(cfg), int(per_class) * _classes(cfg)) if per_class else images_per_epoch(cfg)


def job_flops(cfg, iterations: int | None = None) -> float:
    """FLOPs of a whole job: its training steps (`iterations`, default the loop's count, x batch size x
    `step_flops`), plus forwards without a step where their size is known: the evaluation every
    `eval.every_epochs` and at the end (when `eval.per_class` sizes it), and the frozen features of the k-NN (every
    linear job, a pre-training on labelled images). An L-BFGS probe is only the features, extracted once."""
    batch = int(_get(cfg, "optim.batch_size"))
    task = _get(cfg, "task")
    evals = _eval_images(cfg)
    if _lbfgs_probe(cfg):
        return (images_per_epoch(cfg) + evals) * _eval_forward(cfg)
    iterations = training_iterations(cfg) if iterations is None else iterations
    flops = iterations * batch * step_flops(cfg).total
    if task in ("finetune", "linear") and evals:
        every = float(_get(cfg, "eval.every_epochs") or 1)
        epochs = iterations * batch / max(1, images_per_epoch(cfg))
        flops += (math.floor(epochs / every) + 1) * evals * _eval_forward(cfg)
    labelled = int(_get(cfg, "data.num_classes") or 0) > 0  # a mosaic stand-in has no labels: no k-NN
    knn = task == "linear" or (task == "pretrain" and _get(cfg, "knn.after_pretrain") and labelled)
    if knn and _get(cfg, "method.name") != "pixels":
        layer = int(_get(cfg, "linear.layer") or _get(cfg, "model.args.depth")) if task == "linear" else None
        flops += (_knn_train_images(cfg) + evals) * _encoder(_get(cfg, "model.args"), _img(cfg), depth=layer)
    fit = _get(cfg, "method.args.tokenizer.fit")
    if isinstance(fit, Mapping):  # k-means visual words: mini-batch steps of patch-to-centroid similarities
        m, vocab = _get(cfg, "model.args"), int(_get(cfg, "method.args.vocab_size") or 8192)
        patch_dim = int(m["patch_size"]) ** 2 * int(m.get("in_chans", 3))
        flops += 2.0 * int(fit.get("iters", 0)) * int(fit.get("batch_size", 0)) * vocab * patch_dim
    return flops


def gpu_peak_flops(device_name: str) -> float | None:
    """The dense bf16 peak FLOP/s of a GPU named as `torch.cuda.get_device_name` names it ("NVIDIA H100 80GB
    HBM3"); None for a GPU not in `GPU_PEAKS`."""
    return next((peak for key, peak in GPU_PEAKS.items() if key.lower() in device_name.lower()), None)


def gpu_hours(cfg, peak: float = GPU_PEAK_FLOPS, mfu: float = GPU_MFU, min_step_s: float = GPU_MIN_STEP_S) -> Estimate:
    """Hours of one GPU (`GPU_NAME` by default) for a job: its FLOPs at `mfu` of `peak`, each step at least
    `min_step_s`."""
    seconds = job_flops(cfg) / (peak * mfu)
    steps = 0 if _lbfgs_probe(cfg) else training_iterations(cfg)
    floor = steps * min_step_s
    return Estimate(max(seconds, floor) / 3600, "steps" if floor > seconds else "flops")


# ---------------------------------------------------------------------------------------------------------------
def _kind(cfg) -> tuple[str, str, str, int]:
    return (_get(cfg, "task"), _get(cfg, "method.name"), _get(cfg, "model.size"), int(_get(cfg, "data.img_size")))


def _model_s_per_image(cfg) -> float:
    args = _get(cfg, "model.args")  # a job's config holds its ViT's shape (harness/conf/model/<size>.yaml)
    dim, depth = args["embed_dim"], args["depth"]
    tokens = (int(_get(cfg, "data.img_size")) // args["patch_size"]) ** 2
    factor = METHOD_FACTOR.get(_get(cfg, "method.name"), 1.0)
    return REFERENCE_S_PER_IMAGE * factor * dim**2 * depth * tokens / REFERENCE_WORK


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class CostModel:
    """GPU-hour estimates per job; `calibrate` with finished run folders to use measured seconds per image instead."""

    def __init__(self) -> None:
        self.measured: dict[tuple, list[float]] = {}

    def calibrate(self, results: Path, configs: dict) -> None:
        """Read result.json of finished runs (`{run_dir: config}`): GPU-hours per image and epoch, by kind. Runs
        on CPUs (gpu_hours 0) say nothing about GPUs and are left out."""
        for run_dir, cfg in configs.items():
            result = _read_json(Path(run_dir) / "result.json")
            try:
                hours = float(result["gpu_hours"])
                images = float(result["iterations"]) * _get(cfg, "optim.batch_size")
            except (ValueError, KeyError, TypeError):
                continue
            if hours > 0 and images > 0:
                self.measured.setdefault(_kind(cfg), []).append(hours * 3600 / images)

    def estimate(self, cfg) -> Estimate:
        epochs = _epochs_run(cfg)
        work = epochs * images_per_epoch(cfg)  # evaluation passes are left out: small
        if _get(cfg, "optim.max_iters") is not None:  # a capped run (--profile smoke)
            work = min(work, float(_get(cfg, "optim.max_iters")) * _get(cfg, "optim.batch_size"))
        samples = self.measured.get(_kind(cfg))
        if samples:
            return Estimate(work * statistics.median(samples) / 3600, f"measured ({len(samples)})")
        return Estimate(work * _model_s_per_image(cfg) / 3600, "model")


# ---------------------------------------------------------------------------------------------------------------
def cpu_kind(cfg) -> str:
    """What a CPU rate is measured for: `task/method` (and an L-BFGS probe apart: it trains no steps)."""
    kind = f"{_get(cfg, 'task')}/{_get(cfg, 'method.name')}"
    return kind + "/lbfgs" if _lbfgs_probe(cfg) else kind


def this_host() -> str:
    return platform.node()


class CpuModel:
    """Hours on this machine's CPUs: a job's FLOPs over the FLOP rate measured here for its kind (`cpu_kind`).

    Rates are FLOPs per second of the whole machine. From a finished local run: its FLOPs (with the iterations it
    ran) over its wall-clock x the share of the cores it had (results/.harness/local_runs.jsonl says how many threads
    the local executor gave it; a run it does not list is taken to have had them all). From `harness plan --measure`:
    the img/s of a few steps x the FLOP model, scaled the same way. Runs on a GPU or on another host are left out.
    """

    def __init__(self, results: Path, host: str | None = None) -> None:
        self.results = Path(results)
        self.host = host or this_host()
        self.from_runs: dict[str, list[float]] = {}
        bench = _read_json(self.results / ".harness" / CPU_BENCH_FILE) or {}
        mine = bench.get(self.host) if isinstance(bench, dict) else None
        self.bench: dict[str, dict] = dict((mine or {}).get("rates", {}))
        self.cores = (mine or {}).get("cores")

    def calibrate(self, configs: dict) -> None:
        """Finished runs (`{run_dir: config}`) of this host on CPUs: their FLOP rate, by kind."""
        shares = self._shares()
        for run_dir, cfg in configs.items():
            run_dir = Path(run_dir)
            env, result = _read_json(run_dir / "env.json"), _read_json(run_dir / "result.json")
            if not isinstance(env, dict) or not isinstance(result, dict):
                continue
            if env.get("hostname") != self.host or env.get("device_type") != "cpu":
                continue
            try:
                wall, iterations = float(result["wall_clock_s"]), int(result["iterations"])
            except (KeyError, TypeError, ValueError):
                continue
            seconds = wall * shares.get(run_dir.name, 1.0)
            if seconds > 0:
                self.from_runs.setdefault(cpu_kind(cfg), []).append(job_flops(cfg, iterations) / seconds)

    def _shares(self) -> dict[str, float]:
        """Per job identity, the share of the machine its latest local run had (threads / cores)."""
        shares = {}
        path = self.results / ".harness" / RUNS_FILE
        lines = path.read_text().splitlines() if path.exists() else []
        for line in lines:
            try:
                record = json.loads(line)
                if record.get("host") == self.host:
                    shares[record["job"]] = min(1.0, float(record["threads"]) / float(record["cores"]))
            except (ValueError, KeyError, TypeError, ZeroDivisionError):
                continue
        return shares

    def rate(self, cfg) -> tuple[float, str] | None:
        """(FLOPs per machine-second, where it comes from) for the job's kind, or None when never measured here."""
        kind = cpu_kind(cfg)
        if self.from_runs.get(kind):
            return statistics.median(self.from_runs[kind]), "runs"
        entry = self.bench.get(kind)
        if entry and entry.get("flops_per_s"):
            return float(entry["flops_per_s"]), "bench"
        return None

    def estimate(self, cfg) -> Estimate:
        found = self.rate(cfg)
        if found is None:
            return Estimate(math.nan, "none")
        rate, source = found
        return Estimate(job_flops(cfg) / rate / 3600, source)

    def save_bench(self, rates: dict[str, dict], cores: int) -> Path:
        """Merge measured rates for this host into results/.harness/cpu_throughput.json."""
        path = self.results / ".harness" / CPU_BENCH_FILE
        everything = _read_json(path) or {}
        if not isinstance(everything, dict):
            everything = {}
        mine = everything.get(self.host) or {}
        mine = {"cores": cores, "rates": {**mine.get("rates", {}), **rates}}
        everything[self.host] = mine
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(everything, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
        self.bench, self.cores = dict(mine["rates"]), cores
        return path
