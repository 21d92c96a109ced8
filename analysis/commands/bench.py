"""``python -m analysis bench``: speed and memory benchmarks (:mod:`analysis.bench`), as ratios
measured in the same run; writes ``bench.json`` and ``bench.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from analysis.bench import run_benchmarks

EPILOG = """\
examples:
  python -m analysis bench --list
  python -m analysis bench --only psi --permutations 200 --n-jobs 2
  python -m analysis bench --only design --design-null-replicates 40
  python -m analysis bench --only scaling --scaling-studies 10,50,200,500 \
      --scaling-imputations 2 --scaling-permutations 41 --scaling-timeout 900
  python -m analysis bench --only scaling --scaling-imputations 50 --scaling-permutations 1000
"""
"""Examples shown under ``--help`` (argparse epilog)."""


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", action="append", metavar="NAME",
                   help="run only this benchmark (repeatable); default: all")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default results/bench)")
    p.add_argument("--permutations", type=int, default=1000,
                   help="PSI permutations including the identity (default 1000)")
    p.add_argument("--imputations", type=int, default=50, help="imputations (default 50)")
    p.add_argument("--n-jobs", type=int, default=2, help="parallel workers (default 2)")
    p.add_argument("--backend", default="numba", choices=["numpy", "numba", "cupy"],
                   help="array backend of the PSI kernel (default numba)")
    p.add_argument("--reml-permutations", type=int, default=50,
                   help="permutations timed with REML for the REML/DL ratio (default 50)")
    p.add_argument("--naive-permutations", type=int, default=2,
                   help="permutations timed with the naive loop (default 2; ten times as many "
                        "with double precision)")
    p.add_argument("--load-permutations", type=int, default=40,
                   help="psi: permutations timed alone and beside a CPU-bound process "
                        "(0 = skip; default 40)")
    p.add_argument("--tfce-subject-fwhm-mm", type=float, default=None,
                   help="psi-enge and null-calibration: smoothness (mm) of a separate set of "
                        "subject images for the TFCE null (default: the configuration's "
                        "sdm.psi.tfce_subject_fwhm_mm)")
    p.add_argument("--nimare-iters", type=int, default=20,
                   help="Monte-Carlo iterations of the NiMARE comparison (0 = skip)")
    # null-calibration (analysis/bench/calibration.py): its own counts, so that the options
    # above keep their meaning for the other benchmarks
    p.add_argument("--simulations", type=int, default=100,
                   help="null-calibration: simulated null meta-analyses (default 100)")
    p.add_argument("--sim-permutations", type=int, default=100,
                   help="null-calibration: PSI permutations per meta-analysis (default 100)")
    p.add_argument("--sim-imputations", type=int, default=5,
                   help="null-calibration: imputations per meta-analysis (default 5)")
    p.add_argument("--sim-roi-radius-mm", type=float, default=20.0,
                   help="null-calibration: analysis ROI radius around the published peaks "
                        "(mm; 0 = whole grey-matter mask; default 20)")
    p.add_argument("--covariate-voxels", type=int, default=32768,
                   help="meta-covariates, mle-fast: voxels of SDM's mask in the comparisons "
                        "of paths (0 = the whole mask; default 32768)")
    p.add_argument("--paper-quick", action="store_true",
                   help="paper: run the pipeline in its quick mode (a preview of the timings)")
    p.add_argument("--sim-n-studies", type=int, default=11,
                   help="null-calibration: studies per meta-analysis (default 11)")
    # scaling (analysis/bench/scaling.py)
    p.add_argument("--scaling-imputations", type=int, default=None,
                   help="scaling: imputations measured (and 5 times as many; default 2)")
    p.add_argument("--scaling-permutations", type=int, default=None,
                   help="scaling: permutations measured (default 41)")
    p.add_argument("--scaling-studies", default=None, metavar="K1,K2,...",
                   help="scaling: numbers of studies of the synthetic projects "
                        "(default 10,50,200,500)")
    p.add_argument("--scaling-peaks", type=int, default=10,
                   help="scaling: peaks a study (default 10)")
    p.add_argument("--scaling-target-imputations", type=int, default=None,
                   help="scaling: imputations reported, extrapolated linearly when "
                        "--imputations is smaller (default 50)")
    p.add_argument("--scaling-target-permutations", type=int, default=None,
                   help="scaling: permutations reported, extrapolated linearly when "
                        "--permutations is smaller (default 1000)")
    p.add_argument("--scaling-max-run-studies", type=int, default=None,
                   help="scaling: larger projects are not run, only their PSI arrays "
                        "modelled (default 200; 0 = run every size)")
    p.add_argument("--scaling-timeout", type=float, default=0,
                   help="scaling: seconds a size's run may take before it is stopped and "
                        "reported as not completed (0 = no limit)")
    # design (analysis/bench/design_replicates.py): the checks of stage "design" with more replicates
    p.add_argument("--design-null-replicates", type=int, default=None,
                   help="design: whole-brain null meta-analyses (default 20)")
    p.add_argument("--design-sensitivity-replicates", type=int, default=None,
                   help="design: replicates per true effect size (default 5)")
    p.add_argument("--design-imputations", type=int, default=None,
                   help="design: imputations per meta-analysis (default: design.imputations)")


def run_command(args: argparse.Namespace) -> int:
    return run_benchmarks(args)
