"""Data-pipeline throughput: images per second per loader worker, and the workers one GPU needs.

    python -m bench data                                  # Fashion-MNIST (28 px) and synthetic 224 px JPEGs
    python -m bench data --workers 8 --gpu-img-s 2500     # also a DataLoader of 8 workers; workers for 2,500 img/s

Every pipeline is a training job's own: its config composed as `harness train` composes it, its training set built
by `harness.train.build.build_datasets` (the dataset reader, the transform the method's views need, the mask
generator, the per-sample seeding of `harness.train.loader.SeededTransformDataset`):

- pretrain-splitmask, pretrain-beit: decode, RandomResizedCrop and flip, normalise, the method's mask (`MaskedView`:
  SplitMask's 50 % blocks, BEiT's 75 of 196). The visual words are not made here: the tokenizer runs on the device
  inside the step (model/tokenizers.py), so `bench step` times it.
- pretrain-dino: decode and DINO's 2 global and 8 local crops, each with colour jitter, blur and solarisation.
- finetune: decode, timm's RandAugment (rand-m9-mstd0.5-inc1), flip, random erasing (FACTS Table 7:
  `recipe=table7_small`). Mixup and CutMix act on a batch in the training loop, on the device: `mixup` is timmed
  apart, as images per second of the main process on `--device`.

The images: Fashion-MNIST as the micro profile reads it (28 px grey, decoded once into memory), when it is on this
machine; and synthetic ImageNet, `--images` JPEGs of 500x375 (about ImageNet's median size; smooth random content,
quality 90) written in ImageNet's folder layout under a temporary folder and read by the ImageNet reader at 224 px.
The files are in the page cache after the first pass: this is decoding and augmenting, not disk reading.

Per worker: `--samples` items through the dataset in this process, as one worker makes them, after `--warmup`
(`decode`: the reader alone). With `--workers N`, also a real DataLoader (`harness.train.loader.build_loader`, as the
loop builds it) of N workers over `--batches` batches, timed from its first batch (the workers' start-up left out):
its images per second over N is the rate per worker when N share the machine. Workers one GPU needs: `--gpu-img-s`
(a GPU's training step rate, from `bench step`) over the per-worker rate (the DataLoader's when measured), rounded up.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

from bench.common import default_out, machine, table, write_result

__all__ = ["PIPELINES", "add_arguments", "run", "synthetic_imagenet"]

# pipeline -> (task, method, extra overrides)
PIPELINES = {
    "pretrain-splitmask": ("pretrain", "splitmask", []),
    "pretrain-beit": ("pretrain", "beit", []),
    "pretrain-dino": ("pretrain", "dino", []),
    "finetune": ("finetune", None, ["recipe=table7_small"]),
}
DATASETS = {"fashion_mnist": ("micro", 28), "synthetic": ("small", 224)}  # -> model size, image size


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=list(PIPELINES))
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--samples", type=int, default=200, help="items timed in this process (one worker)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--images", type=int, default=64, help="synthetic JPEGs written (read round-robin)")
    p.add_argument("--workers", type=int, default=0, help="also time a DataLoader of this many workers (0: no)")
    p.add_argument("--batch", type=int, default=64, help="the DataLoader's and Mixup's batch")
    p.add_argument("--batches", type=int, default=20, help="DataLoader batches timed after the first")
    p.add_argument("--gpu-img-s", type=float, default=2500.0, help="one GPU's step rate to feed (img/s)")
    p.add_argument("--device", default="cpu", help="where Mixup runs (the loop runs it on the training device)")
    p.add_argument("--out", type=Path, default=None, help="folder of the JSON result (default: see bench --help)")


def synthetic_imagenet(root: Path, images: int, classes: int = 4, size: tuple[int, int] = (500, 375)) -> Path:
    """`images` JPEGs (and a few for `val`) in ImageNet's layout, `root/{train,val}/<wnid>/<name>.JPEG`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", images), ("val", classes)):
        for k in range(count):
            folder = root / split / f"n{k % classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            coarse = rng.integers(0, 256, (size[1] // 25, size[0] // 25, 3), dtype=np.uint8)  # smooth content
            img = Image.fromarray(coarse).resize(size, Image.BICUBIC)
            noisy = np.asarray(img, np.int16) + rng.integers(-12, 13, (size[1], size[0], 3))
            Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(folder / f"img_{k:05d}.JPEG", quality=90)
    return root


def _config(pipeline: str, dataset: str, root: Path | None):
    from harness.config import compose

    task, method, extra = PIPELINES[pipeline]
    size = DATASETS[dataset][0]
    overrides = [f"task={task}", f"model={size}", *([f"method={method}"] if method else []), *extra]
    if dataset == "synthetic":
        overrides += ["data=imagenet", f"data.root={root}"]
    else:
        overrides += ["data=fashion_mnist"]
    return compose(overrides)


def _rate(fn, count: int, warmup: int) -> float:
    for i in range(warmup):
        fn(i)
    start = time.perf_counter()
    for i in range(count):
        fn(warmup + i)
    return count / (time.perf_counter() - start)


def _loader_rate(train, workers: int, batch: int, batches: int) -> float:
    """Images per second of the loop's DataLoader with `workers` workers, from its first batch on."""
    from harness.train.loader import EpochSampler, build_loader

    needed = (batches + 1) * batch
    sampler = EpochSampler(len(train), needed, seed=0, repeats=math.ceil(needed / len(train)))
    loader = build_loader(train, sampler, batch, workers, pin_memory=False, seed=0)
    it = iter(loader)
    next(it)  # the workers have started
    start = time.perf_counter()
    count = sum(1 for _ in it)
    return count * batch / (time.perf_counter() - start)


def _mixup_rate(cfg, net, batch: int, device: str, count: int = 20) -> float:
    """Images per second of the loop's Mixup/CutMix (timm's, as `Trainer._mixup` builds it) on a batch."""
    import torch
    from timm.data import Mixup

    a = cfg.aug
    mixup = Mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, label_smoothing=a.label_smoothing,
                  num_classes=net.num_classes)  # fmt: skip
    size, chans = cfg.data.img_size, cfg.data.in_chans
    images = torch.randn(batch - batch % 2, chans, size, size, device=device)
    labels = torch.randint(0, net.num_classes, (images.shape[0],), device=device)

    def one(_):
        mixup(images, labels)
        if images.is_cuda:
            torch.cuda.synchronize()

    return images.shape[0] * _rate(one, count, warmup=2)


def measure(pipeline: str, dataset: str, root: Path | None, args) -> dict:
    import torch

    from harness.train.build import build_datasets, build_model

    cfg = _config(pipeline, dataset, root)
    net = build_model(cfg)
    train, _ = build_datasets(cfg, net)
    n = len(train)
    record = {"pipeline": pipeline, "dataset": dataset, "img_size": cfg.data.img_size, "items": n}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a loader worker (the DataLoader gives each one thread)
    try:
        record["decode_img_s"] = _rate(lambda i: train.dataset[i % n], args.samples, args.warmup)
        record["worker_img_s"] = _rate(lambda i: train[i % n], args.samples, args.warmup)
    finally:
        torch.set_num_threads(threads)
    record["loader_workers"] = args.workers or None
    record["loader_img_s"] = _loader_rate(train, args.workers, args.batch, args.batches) if args.workers else None
    per_worker = record["loader_img_s"] / args.workers if args.workers else record["worker_img_s"]
    record["per_worker_img_s"] = per_worker
    record["gpu_img_s"] = args.gpu_img_s
    record["workers_needed"] = math.ceil(args.gpu_img_s / per_worker)
    if pipeline == "finetune" and (cfg.aug.mixup > 0 or cfg.aug.cutmix > 0):
        record["mixup_img_s"] = _mixup_rate(cfg, net, args.batch, args.device)
        record["mixup_device"] = args.device
    return record


def _fmnist_available() -> bool:
    from harness.data import dataset_root

    try:
        dataset_root("fashion_mnist")
        return True
    except FileNotFoundError:
        return False


def run(args, out) -> int:
    if min(args.samples, args.images, args.batch, args.batches) < 1 or args.gpu_img_s <= 0 or args.workers < 0:
        print("bench data: --samples, --images, --batch, --batches must be >= 1, --gpu-img-s > 0, --workers >= 0",
              file=out)  # fmt: skip
        return 2
    records, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        root = None
        if "synthetic" in args.datasets:
            start = time.perf_counter()
            root = synthetic_imagenet(Path(tmp) / "imagenet", args.images)
            print(f"data: {args.images} synthetic JPEGs written in {time.perf_counter() - start:.1f} s", file=out)
        for dataset in args.datasets:
            if dataset == "fashion_mnist" and not _fmnist_available():
                skipped.append("fashion_mnist: not on this machine (apt-get install dataset-fashion-mnist)")
                continue
            for pipeline in args.pipelines:
                records.append(measure(pipeline, dataset, root, args))
                print(f"  {dataset} {pipeline}: {records[-1]['worker_img_s']:.0f} img/s in one worker", file=out)
    print(_table(records), file=out)
    for line in skipped:
        print(f"skipped {line}", file=out)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {"machine": machine(args.device), "settings": settings, "rows": records, "skipped": skipped}
    path = write_result(args.out or default_out(), "data", payload, args.command_line)
    print(f"JSON: {path}", file=out)
    return 0


def _table(records: list[dict]) -> str:
    headers = ["dataset", "pipeline", "px", "decode img/s", "1 worker img/s", "loader img/s", "per worker"]
    headers += ["workers for GPU", "mixup img/s"]
    lines = []
    for r in records:
        loader = "-" if r["loader_img_s"] is None else f"{r['loader_img_s']:.0f} ({r['loader_workers']} w)"
        mixup = f"{r['mixup_img_s']:.0f} ({r['mixup_device']})" if "mixup_img_s" in r else "-"
        lines.append([r["dataset"], r["pipeline"], r["img_size"], f"{r['decode_img_s']:.0f}",
                      f"{r['worker_img_s']:.0f}", loader, f"{r['per_worker_img_s']:.0f}",
                      f"{r['workers_needed']} at {r['gpu_img_s']:.0f} img/s", mixup])  # fmt: skip
    return table(headers, lines)
