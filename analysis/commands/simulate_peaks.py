"""``python -m analysis simulate-peaks [--write] [--seed S]``: the stand-in peaks.

The generator is ``simulation.generator_version``: ``3`` (default) the constructed stand-ins
of :mod:`analysis.standins`, ``2`` the simulated ones of :mod:`analysis.simulate`.

Without ``--write`` it prints, per study, how many peaks the simulation gives (and whether the
committed ``data/peaks.tsv`` already holds exactly these rows); with ``--write`` it rewrites the
simulated rows of ``peaks.tsv`` atomically, keeping every real row unchanged
(:func:`analysis.simulate.regenerate_peaks`).
"""

from __future__ import annotations

import argparse
import logging

from analysis import paths
from analysis.config import load_config

LGR = logging.getLogger(__name__)


EPILOG = """\
examples:
  python -m analysis simulate-peaks                    # summarise, change nothing
  python -m analysis simulate-peaks --write --seed 7
"""
"""Examples shown under ``--help`` (argparse epilog)."""


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--write", action="store_true",
                   help="rewrite the simulated rows of data/peaks.tsv (default: only summarise)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the stand-ins (default: the configuration's seed)")


def run_command(args: argparse.Namespace) -> int:
    from analysis.data_tables import PEAKS_FILE, load_studies
    from analysis.sdm.inputs.io import read_tsv_text
    from analysis.simulate import regenerate_peaks, summarise_peaks

    cfg = load_config()
    seed = cfg["seed"] if args.seed is None else args.seed
    ddir = paths.data_dir()
    path = ddir / PEAKS_FILE
    before = read_tsv_text(path).reset_index(drop=True) if path.exists() else None
    new = regenerate_peaks(ddir, seed=seed, cfg=cfg, write=args.write)
    from analysis.stages.params import study_checks

    summary = summarise_peaks(new, load_studies(ddir, **study_checks(cfg)))
    print(f"stand-in peaks (seed {seed}, generator v{cfg['simulation']['generator_version']}); "
          f"they are NOT the studies' data")
    print(summary.to_string(index=False))
    sim = summary["kind"] == "simulated"
    print(f"total: {int(summary['n'].sum())} peaks ({int(summary.loc[sim, 'n'].sum())} simulated "
          f"in {int(sim.sum())} studies, {int(summary.loc[~sim, 'n'].sum())} real)")
    same = (before is not None and list(before.columns) == list(new.columns)
            and before.astype(str).values.tolist() == new.astype(str).values.tolist())
    if args.write:
        print(f"wrote {path}" + (" (unchanged)" if same else ""))
    else:
        print(f"{path}: " + ("up to date" if same else "differs; run with --write to update"))
    return 0
