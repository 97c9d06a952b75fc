"""Training-step throughput of the dense tasks: Mask R-CNN (`task=detect`) and UperNet (`task=segment`) on the ViT.

    python -m bench dense                                   # CPU: the micro profile's models on 64 px scenes
    python -m bench dense --size small base --device cuda   # GPU: the paper's recipes (800 px, 512 crops)

Each step is forward + backward + AdamW step of the model a job of that task and size builds (its config composed
as `harness train` composes it), on random images with a few random boxes and masks (detection) or random labels
(segmentation), at the batch of the profile (micro: 16) or of the recipe per GPU (2 for detection: 16 over 8 GPUs;
segmentation: 2). Prints iterations and images per second after `--warmup` steps. The micro sizes are the micro
profile's (harness/conf/profile/micro.yaml); `--size small|base` the paper's recipes at their largest training size
(detection: short side 800, long side 1333 max: 800 x 1216 images; segmentation: 512 x 512 crops).
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from pathlib import Path

from bench.common import default_out, machine, table, write_result

__all__ = ["add_arguments", "run"]

# The micro profile's stand-ins (harness/conf/profile/micro.yaml): 64 px scenes, 10 item categories.
MICRO = {
    "detect": ["data.name=fashion_mnist", "data.img_size=28", "method.args.num_classes=10",
               "method.args.min_size=[48,56,64,72,80]", "method.args.max_size=133"],
    "segment": ["data.name=fashion_mnist", "data.img_size=28", "method.args.num_classes=11"],
}  # fmt: skip
IMAGE = {"micro": {"detect": (64, 64), "segment": (64, 64)}, "paper": {"detect": (800, 1216), "segment": (512, 512)}}


def _model(task: str, size: str):
    from omegaconf import OmegaConf

    import model
    from harness.config import compose

    data = {"detect": "data=coco", "segment": "data=ade20k"}[task]
    overrides = [f"task={task}", data, f"model={size}", *(MICRO[task] if size == "micro" else [])]
    cfg = compose(overrides)
    args = OmegaConf.to_container(cfg, resolve=True)
    net = model.build(cfg.method.name, args["model"]["args"], args["method"]["args"])
    return net, cfg


def _batch(task: str, cfg, batch: int, hw: tuple[int, int], device):
    import torch

    g = torch.Generator().manual_seed(0)
    channels = cfg.data.in_chans
    if task == "segment":
        images = torch.randn(batch, channels, *hw, generator=g)
        labels = torch.randint(0, cfg.method.args.num_classes, (batch, *hw), generator=g)
        return images.to(device), labels.to(device)
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(channels, *hw, generator=g).to(device))
        boxes, masks = [], torch.zeros(3, *hw, dtype=torch.uint8)
        for k in range(3):  # three objects an image, each a filled box of a random size
            h, w = (int(v) for v in torch.randint(hw[0] // 8, hw[0] // 2, (2,), generator=g))
            y, x = (
                int(torch.randint(0, hw[0] - h, (1,), generator=g)),
                int(torch.randint(0, hw[1] - w, (1,), generator=g)),
            )
            boxes.append([x, y, x + w, y + h])
            masks[k, y : y + h, x : x + w] = 1
        labels = torch.randint(1, cfg.method.args.num_classes + 1, (3,), generator=g)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32).to(device), "labels": labels.to(device),
                        "masks": masks.to(device)})  # fmt: skip
    return images, targets


def bench(task: str, size: str, batch: int, steps: int, warmup: int, device) -> tuple[float, float]:
    import torch

    net, cfg = _model(task, size)
    net.to(device).train()
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    hw = IMAGE["micro" if size == "micro" else "paper"][task]
    inputs = _batch(task, cfg, batch, hw, device)
    autocast = torch.autocast(device.type, torch.bfloat16) if device.type == "cuda" else nullcontext()
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with autocast:
            loss, _ = net(*inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    return 1 / seconds, batch / seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", nargs="+", default=["detect", "segment"], choices=["detect", "segment"])
    parser.add_argument("--size", nargs="+", default=["micro"], help="model sizes: micro (CPU), small, base")
    parser.add_argument("--batch", type=int, default=None, help="default: micro 16, paper sizes 2 (per GPU)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="folder of the JSON result (default: see bench --help)")


def run(args, out) -> int:
    import torch

    device = torch.device(args.device)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"dense: device {device} ({where})", file=out, flush=True)
    records = []
    for size in args.size:
        for task in args.tasks:
            batch = args.batch or (16 if size == "micro" else 2)
            its, imgs = bench(task, size, batch, args.steps, args.warmup, device)
            hw = IMAGE["micro" if size == "micro" else "paper"][task]
            records.append({"task": task, "size": size, "batch": batch, "image": list(hw), "it_s": its, "img_s": imgs})
    headers = ["task", "size", "batch", "image", "it/s", "img/s"]
    lines = [[r["task"], r["size"], r["batch"], "x".join(map(str, r["image"])), f"{r['it_s']:.3g}", f"{r['img_s']:.3g}"]
             for r in records]  # fmt: skip
    print(table(headers, lines), file=out)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {"machine": machine(args.device), "settings": settings, "rows": records}
    print(f"JSON: {write_result(args.out or default_out(), 'dense', payload, args.command_line)}", file=out)
    return 0
