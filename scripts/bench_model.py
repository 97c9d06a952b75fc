"""Training-step throughput of the pre-training methods (a benchmark, not a test).

    python scripts/bench_model.py                       # CPU: the micro models at batch 256 (28x28 grey)
    python scripts/bench_model.py --models splitmask_vit_small_p16 beit_vit_small_p16 splitmask_vit_base_p16 \
        beit_vit_base_p16 --batch 128 --device cuda      # GPU: ViT-S/B at 224, bf16 autocast

Each step is forward + backward + AdamW step on random images with masks from the model's own generator (drawn
before timing, as the data-loader workers would). Prints img/s per model, the FLOP model's FLOPs per image of the
step (harness.launch.cost.step_flops, on the config the name composes to) and the FLOP rate they make, and each
model's step time relative to the first one's beside the FLOP model's ratio.

The CPU rates that `harness plan` uses come from `harness plan SWEEPS --measure` (real jobs, a few steps each) and
from finished local runs, not from this script.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so that a checkout works without installing
import model
from harness.config import compose
from harness.launch.cost import step_flops
from model.registry import HOME_DATA, METHODS, MODELS


def flops_per_image(name: str) -> float:
    """The FLOP model's FLOPs per image of one training step of a registered model (forward + backward)."""
    method, size = MODELS[name]
    task = METHODS[method][1]
    cfg = compose([f"task={task}", f"model={size}", f"data={HOME_DATA.get(size, 'imagenet')}", f"method={method}"])
    return step_flops(cfg).total


def bench(name: str, batch: int, steps: int, device: torch.device, compile_model: bool) -> float:
    torch.manual_seed(0)
    net = model.create(name).to(device)
    size, chans = net.encoder.patch_embed.img_size[0], net.encoder.in_chans
    images = torch.randn(batch, chans, size, size, device=device)
    masks = net.sample_masks(batch, device, seed=0)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4, fused=device.type == "cuda")
    step_fn = torch.compile(net) if compile_model else net
    amp = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else nullcontext()

    def step():
        with amp:
            loss, _ = step_fn(images, masks)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up (and compilation)
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["splitmask_vit_micro_p4", "beit_vit_micro_p4"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, batch {args.batch}, {'bf16' if device.type == 'cuda' else 'fp32'}")
    first = None
    for name in args.models:
        speed, flops = bench(name, args.batch, args.steps, device, args.compile), flops_per_image(name)
        first = first or (speed, flops)
        rate = f"{flops / 1e9:7.3f} GFLOP/img  {speed * flops / 1e9:8.1f} GFLOP/s"
        ratio = f"step x{first[0] / speed:.2f} (FLOPs x{flops / first[1]:.2f})"
        print(f"{name:28s} {speed:8.1f} img/s  {rate}  {ratio}", flush=True)


if __name__ == "__main__":
    main()
