"""`harness` command line. The sub-commands arrive with the training, launcher and report issues."""

from __future__ import annotations

import argparse
import sys

COMMANDS = {
    "plan": "show the job graph of sweeps: jobs per stage, done / running / to submit, GPU-hours",
    "run": "submit what a sweep is missing (SLURM, or --executor local)",
    "status": "one row per job: state, job id, elapsed, last metric",
    "report": "the paper's tables and figures with our numbers beside them",
    "train": "run one training job (pretrain / finetune / linear) in a run folder",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text).add_argument("args", nargs="*")
    args = parser.parse_args(argv)
    print(f"harness {args.command}: not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
