"""`python -m tests.faults [--full] [PART ...]`: run the fault-injection suite and print its summary line."""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path

from tests.faults import PARTS, Tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__)
    parser.add_argument("parts", nargs="*", metavar="PART", help=f"some of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--full", action="store_true", help="the full counts (minutes), not the quick variant")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {', '.join(unknown)}: choose from {', '.join(PARTS)}")
    total = Tally()
    for name in args.parts or PARTS:
        part = Tally()
        with tempfile.TemporaryDirectory(prefix=f"faults-{name}-") as workdir:
            importlib.import_module(f"tests.faults.{name}").run(part, Path(workdir), args.full)
        print(f"{name}: {part.line()}", flush=True)
        total.add(part)
    for failure in total.failures:
        print(f"NOT SURVIVED: {failure}", file=sys.stderr)
    print(total.line())
    return 1 if total.failures else 0


if __name__ == "__main__":
    sys.exit(main())
