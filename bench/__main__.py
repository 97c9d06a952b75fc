"""`python -m bench NAME ...`: see bench/__init__.py, or `python -m bench NAME --help`."""

from __future__ import annotations

import argparse
import shlex
import sys

import bench
from bench import commands, data, dense, step

BENCHMARKS = {
    "step": step,  # training-step throughput, the FLOP model's ratios, MFU, torch._dynamo's graph breaks
    "data": data,  # data-pipeline images per second per worker, and the workers a GPU needs
    "harness": commands,  # plan / status / report / --help: seconds and peak memory, cold and warm
    "dense": dense,  # Mask R-CNN and UperNet training steps
}


def main(argv: list[str] | None = None, out=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="NAME")
    for name, module in BENCHMARKS.items():
        first_line = module.__doc__.strip().splitlines()[0]
        p = sub.add_parser(
            name, help=first_line, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(p)
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["python", "-m", "bench", *argv])
    from harness.config import ConfigError

    try:
        return BENCHMARKS[args.benchmark].run(args, out or sys.stdout)
    except ConfigError as err:  # an --override that does not compose: Hydra's one line, not a traceback
        print(f"bench {args.benchmark}: {err}", file=out or sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
