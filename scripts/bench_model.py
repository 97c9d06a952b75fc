"""Training-step throughput of the pre-training methods (a benchmark, not a test).

    python scripts/bench_model.py                       # CPU: the micro models at batch 256 (28x28 grey)
    python scripts/bench_model.py --models splitmask_vit_small_p16 beit_vit_small_p16 splitmask_vit_base_p16 \
        beit_vit_base_p16 --batch 128 --device cuda      # GPU: ViT-S/B at 224, bf16 autocast

Each step is forward + backward + AdamW step on random images with masks from the model's own generator (drawn
before timing, as the data-loader workers would). Prints img/s per model.
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
    for name in args.models:
        print(f"{name:28s} {bench(name, args.batch, args.steps, device, args.compile):8.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
