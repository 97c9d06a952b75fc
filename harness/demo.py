"""`make demo`: the paper's effect at micro scale, by hand, on Fashion-MNIST (until the smoke sweep replaces it).

SplitMask pre-trains a micro ViT on 30,000 unlabelled Fashion-MNIST images for one epoch, then the encoder is
fine-tuned on 600 labelled images (60 per class) and compared with the same fine-tuning from random initialisation,
over several fine-tuning seeds. Every job is a normal run folder under results/ (content-addressed), so a second
`make demo` reuses the finished ones.
"""

from __future__ import annotations

import argparse
import statistics
import time

from omegaconf import OmegaConf

from harness.config import compose
from harness.train.entry import TrainJob, default_run_dir

PRETRAIN = [
    "task=pretrain",
    "method=splitmask",
    "model=micro",
    "data=fashion_mnist",
    "data.subset.per_class=3000",  # 30,000 images
    "optim.epochs=1",
    "optim.batch_size=256",
    "optim.warmup_epochs=0.1",
]
FINETUNE = [
    "task=finetune",
    "model=micro",
    "data=fashion_mnist",
    "data.subset.per_class=60",  # 600 labels
    "eval.every_epochs=10",
]


def _run(overrides: list[str], workers: int) -> tuple[dict, str]:
    cfg = compose([*overrides, f"loader.workers={workers}", "log.progress=plain", "log.every=25"])
    run_dir = default_run_dir(cfg)
    print(f"\n== harness train {' '.join(overrides)}\n   run folder {run_dir}", flush=True)
    return TrainJob()(OmegaConf.to_container(cfg, resolve=True), str(run_dir)), str(run_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.demo", description=__doc__)
    parser.add_argument("--seeds", type=int, default=2, help="fine-tuning seeds per initialisation")
    parser.add_argument("--workers", type=int, default=1, help="data-loader workers per job")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    _, pretrained = _run(PRETRAIN, args.workers)
    rows = {}
    for name, init in (("SplitMask pre-trained", [f"pretrained={pretrained}"]), ("random init", [])):
        rows[name] = [_run([*FINETUNE, *init, f"seed={seed}"], args.workers)[0]["top1"] for seed in range(args.seeds)]

    print("\nFashion-MNIST, micro ViT, fine-tuned on 600 labels: top-1 on the 10,000 test images")
    print("| initialisation | " + " | ".join(f"seed {s}" for s in range(args.seeds)) + " | mean |")
    print("|---|" + "---|" * (args.seeds + 1))
    for name, accs in rows.items():
        print(f"| {name} | " + " | ".join(f"{a:.2f}" for a in accs) + f" | {statistics.mean(accs):.2f} |")
    print(f"\ndemo took {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
