"""`python -m model --smoke`: one training step of every pre-training method at micro scale, printed.

A quick check that the install works; the real demo is `make demo` (a sweep on Fashion-MNIST, ending in a report).
"""

from __future__ import annotations

import argparse
import time

import torch

import model


def smoke() -> None:
    torch.manual_seed(0)
    images = torch.randn(8, 1, 28, 28)
    for name in ("splitmask_vit_micro_p4", "beit_vit_micro_p4", "dino_vit_micro_p4", "supervised_vit_micro_p4"):
        m = model.create(name)
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
        start = time.perf_counter()
        if isinstance(m, model.DINO):
            local = torch.nn.functional.interpolate(images, size=m.local_crop_size, mode="bilinear")
            batch = ([images, images.flip(-1)] + [local] * m.num_local_crops,)
        elif isinstance(m, model.Classifier):
            batch = (images, torch.arange(8) % 10)
        else:
            batch = (images,)
        loss, logs = m(*batch)
        loss.backward()
        m.after_backward(epoch=0)
        opt.step()
        m.after_step()
        values = ", ".join(f"{k} {v.item():.3f}" for k, v in logs.items())
        print(f"{name:26s} {time.perf_counter() - start:5.2f}s  {values}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m model", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="one step of every method on random 28x28 images")
    parser.add_argument("--list", action="store_true", help="list the registered models")
    args = parser.parse_args()
    if args.list:
        print("\n".join(model.list_models()))
    if args.smoke or not args.list:
        smoke()


if __name__ == "__main__":
    main()
