"""`harness` command line.

    harness train pretrain method=splitmask model=micro data=fashion_mnist optim.epochs=2
    harness train finetune pretrained=results/pretrain/<hash> optim.epochs=10

`plan`, `run`, `status` and `report` (sweeps on SLURM, tables and figures) arrive with the launcher and report issues.
"""

from __future__ import annotations

import argparse
import sys

COMMANDS = {
    "plan": "show the job graph of sweeps: jobs per stage, done / running / to submit, GPU-hours",
    "run": "submit what a sweep is missing (SLURM, or --executor local)",
    "status": "one row per job: state, job id, elapsed, last metric",
    "report": "the paper's tables and figures with our numbers beside them",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="harness", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run (or resume) one training job in its run folder")
    train.add_argument("task", choices=["pretrain", "finetune", "linear"])
    train.add_argument("overrides", nargs="*", help="Hydra overrides: key=value, group=option (see harness/conf)")
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text).add_argument("args", nargs="*")
    args = parser.parse_args(argv)
    if args.command == "train":
        from harness.config import ConfigError
        from harness.data import DatasetError
        from harness.train.entry import main as train_main

        try:
            return train_main(args.task, args.overrides)
        except (ConfigError, DatasetError, FileNotFoundError) as err:
            print(f"harness train: {err}", file=sys.stderr)
            return 2
    print(f"harness {args.command}: not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
