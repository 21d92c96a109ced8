"""``python -m analysis run``: compute every stage into ``results/``.

``--set section.key=value`` (repeatable) and ``--config FILE`` (a YAML mapping of the same
shape as ``analysis/config.yaml``) override the configuration; both are validated against the
configuration schema before any stage runs (an unknown or misspelt key, or a value of the
wrong type, stops the run with a message naming the key).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from analysis.config import load_config, merge, parse_overrides, read_yaml_file
from analysis.errors import ConfigError
from analysis.pipeline import STAGES, run_stages

EPILOG = """\
examples:
  python -m analysis run                               # every stage (valid cached ones reused)
  python -m analysis run --quick --stage meta          # a quick preview of one stage
  python -m analysis run --set sdm.imputations=20 --set sdm.permutations=200
"""
"""Examples shown under ``--help`` (argparse epilog)."""


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="fewer imputations and permutations (for tests and previews)")
    p.add_argument("--force", action="store_true", help="recompute even valid cached stages")
    p.add_argument("--stage", action="append", choices=[s.name for s in STAGES],
                   help="run only this stage (and what it needs); repeatable")
    p.add_argument("--config", metavar="FILE", type=Path, default=None,
                   help="YAML file of configuration overrides (same shape as config.yaml)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="set",
                   help="override one configuration value, e.g. sdm.imputations=20; repeatable "
                        "(applied after --config)")


def config_from_args(args: argparse.Namespace) -> dict:
    """The validated configuration of ``--config FILE`` then ``--set`` overrides."""
    overrides: dict = {}
    source = []
    if getattr(args, "config", None):
        path = Path(args.config)
        extra = read_yaml_file(path)
        if extra is not None and not isinstance(extra, dict):
            raise ConfigError("<root>", "expected a mapping of sections", str(path))
        merge(overrides, extra or {})
        source.append(str(path))
    if getattr(args, "set", None):
        merge(overrides, parse_overrides(args.set))
        source.append("--set")
    return load_config(overrides, source=" + ".join(source) or "override")


def run_command(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    status = run_stages(args.stage, quick=args.quick, force=args.force, config=cfg)
    for name, state in status.items():
        print(f"{name}: {state}")
    return 0
