"""``python -m analysis run``: compute every stage into ``results/``."""

from __future__ import annotations

import argparse

from analysis.pipeline import STAGES, run_stages


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="fewer imputations and permutations (for tests and previews)")
    p.add_argument("--force", action="store_true", help="recompute even valid cached stages")
    p.add_argument("--stage", action="append", choices=[s.name for s in STAGES],
                   help="run only this stage (and what it needs); repeatable")


def run_command(args: argparse.Namespace) -> int:
    status = run_stages(args.stage, quick=args.quick, force=args.force)
    for name, state in status.items():
        print(f"{name}: {state}")
    return 0
