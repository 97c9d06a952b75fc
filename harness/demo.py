"""`make demo`: the smoke sweep (sweeps/smoke.yaml) on this machine with the local executor, then its table.

SplitMask, BEiT and DINO pre-train a micro ViT on unlabelled Fashion-MNIST; each encoder, and a random
initialisation, is fine-tuned on 600 labels and linear-probed. Exactly `harness run sweeps/smoke.yaml --executor
local` followed by `harness report sweeps/smoke.yaml`: every job is a normal run folder under results/, so a second
`make demo` finds them done and only prints the table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from harness.launch import commands
from harness.report.build import report
from harness.sweep import Request

SMOKE = Path(__file__).resolve().parents[1] / "sweeps" / "smoke.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.demo", description=__doc__)
    parser.add_argument("--results", help="results folder (default: $HARNESS_RESULTS, else ./results)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job, e.g. loader.workers=0")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    req = Request([str(SMOKE)], args.overrides, results=args.results)
    status = commands.run(req, executor="local")
    report(req)
    print(f"\ndemo took {time.perf_counter() - start:.0f} s (results in {req.results_dir})")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
