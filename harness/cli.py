"""`harness` command line.

    harness train pretrain method=splitmask model=micro data=fashion_mnist optim.epochs=2
    harness plan   sweeps/smoke.yaml                    # jobs per stage: done / running / to submit, GPU-hours
    harness run    sweeps/smoke.yaml --executor local   # submit what is missing (SLURM by default); safe to repeat
    harness status sweeps/smoke.yaml                    # one row per job, failed jobs with their log's tail

Arguments of plan / run / status that contain `=` are overrides: Hydra overrides for every job
(`loader.workers=4`), or `cluster.KEY=VALUE` for the cluster settings (`cluster.partition=gpu`).
    harness report sweeps/smoke.yaml                    # tables, figures, claims, HTML: reports/smoke/
"""

from __future__ import annotations

import argparse
import sys

from harness.launch import EXECUTORS


def _sweep_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("args", nargs="+", metavar="SWEEP_OR_OVERRIDE", help="sweep files, then overrides")
    parser.add_argument("--profile", help="run the same graph with harness/conf/profile/NAME.yaml (e.g. smoke)")
    parser.add_argument("--cluster", help="cluster settings harness/conf/cluster/NAME.yaml ($HARNESS_CLUSTER)")
    parser.add_argument("--results", help="results folder (default: $HARNESS_RESULTS, else ./results)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="harness", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run (or resume) one training job in its run folder")
    train.add_argument("task", choices=["pretrain", "finetune", "linear", "detect", "segment"])
    train.add_argument("overrides", nargs="*", help="Hydra overrides: key=value, group=option (see harness/conf)")
    plan = sub.add_parser("plan", help="the job graph of sweeps: per stage done / running / to submit, hours")
    _sweep_args(plan)
    plan.add_argument(
        "--measure",
        action="store_true",
        help="first time a few steps of each kind of job (task/method) that has no CPU rate on this machine yet "
        "(results/.harness/cpu_throughput.json), for the CPU-h column",
    )
    run = sub.add_parser("run", help="submit what the sweeps are missing; running it again submits nothing new")
    _sweep_args(run)
    run.add_argument("--executor", choices=EXECUTORS, help="slurm (default when squeue exists), local or debug")
    run.add_argument("--retry-failed", action="store_true", help="resubmit failed jobs and their dependents")
    run.add_argument("--dry-run", action="store_true", help="say what would be submitted, submit nothing")
    run.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="--executor local: jobs run at once, each with cores/N torch threads (default: one per 2 cores, "
        "2 on a 2-core machine, 1 with a GPU)",
    )
    _sweep_args(sub.add_parser("status", help="one row per job: state, job id, elapsed, last metric"))
    report = sub.add_parser("report", help="tables, figures, claims and an HTML page per sweep, ours beside the paper")
    _sweep_args(report)
    report.add_argument("--out", help="where reports go (default: reports/; one folder per sweep)")
    args, extra = parser.parse_known_args(argv)  # overrides may come after options: collect them here
    unknown = [e for e in extra if e.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        if args.command == "train":
            args.overrides += extra
        elif args.command in ("plan", "run", "status", "report"):
            args.args += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")

    try:
        return _command(parser, args)
    except KeyboardInterrupt:  # Ctrl-C outside a job (a job's own interruption is reported where it ran)
        print(f"harness {args.command}: interrupted", file=sys.stderr)
        return 130


def _command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from harness.config import ConfigError
    from harness.launch.journal import LockedError
    from harness.launch.pool import PoolError
    from harness.launch.queue import QueueError
    from harness.sweep import SweepError

    if args.command == "train":
        from harness.data import DatasetError
        from harness.train import TrainingError
        from harness.train.entry import main as train_main

        try:
            return train_main(args.task, args.overrides)
        except (ConfigError, DatasetError, FileNotFoundError, TrainingError) as err:
            print(f"harness train: {err}", file=sys.stderr)
            return 2
    try:
        from harness.sweep import Request

        sweeps = [a for a in args.args if "=" not in a]
        if not sweeps:
            parser.error(f"{args.command}: name at least one sweep file (sweeps/*.yaml)")
        req = Request(sweeps, [a for a in args.args if "=" in a], args.profile, args.cluster, args.results)
        if args.command in ("status", "report") and not req.results_dir.is_dir():  # a mistyped --results?
            print(
                f"harness {args.command}: results folder {req.results_dir} does not exist (--results, else "
                "$HARNESS_RESULTS, else ./results): nothing has run there",
                file=sys.stderr,
            )
            return 2
        if args.command == "report":
            from harness.report.build import report

            return report(req, args.out)
        from harness.launch import commands

        if args.command == "plan":
            return commands.plan(req, measure=args.measure)
        if args.command == "status":
            return commands.status(req)
        return commands.run(req, args.executor, args.retry_failed, args.dry_run, jobs=args.jobs)
    except (ConfigError, SweepError, LockedError, QueueError, PoolError) as err:
        print(f"harness {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
