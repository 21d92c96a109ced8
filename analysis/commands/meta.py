"""``python -m analysis meta``: run the SDM-PSI engine on any SDM-PSI project folder.

Reads ``sdm_table.txt`` and the peak files of the folder (:mod:`analysis.sdm.project`), fits
:class:`analysis.sdm.estimator.SDMPSI` and writes the maps (``g, var, z, tau2, i2, h2, q, q_z,
p, p_pos, p_neg``; NIfTI), the cluster table (``clusters.tsv``, thresholds of the configuration:
one-tailed p < 0.0025, peak SDM-Z > 1, k > 10) and ``summary.json``. With ``--permutations N``
the PSI permutation test (:mod:`analysis.sdm.permutation`) adds the FWE-corrected maps.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

LGR = logging.getLogger(__name__)


def _non_negative(text: str) -> int:
    """An integer >= 0 (argparse type: refuses e.g. ``--permutations -5``)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{v} is negative (0 = no permutations)")
    return v


def _permutations(text: str) -> int:
    """0 (no permutation test) or at least 2 (the identity and one permutation)."""
    v = _non_negative(text)
    if v == 1:
        raise argparse.ArgumentTypeError("1 is the identity only; give 0 (none) or at least 2")
    return v


def _positive(text: str) -> int:
    """An integer >= 1 (argparse type)."""
    v = _non_negative(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be at least 1")
    return v


EPILOG = """\
examples:
  python -m analysis meta --sdm-dir my_sdm_project --out results/my_meta
  python -m analysis meta --sdm-dir my_sdm_project --out out --permutations 1000 --n-jobs -1
  python -m analysis meta --sdm-dir my_sdm_project --out out --covariates age --hypothesis 0+1
"""
"""Examples shown under ``--help`` (argparse epilog)."""


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sdm-dir", required=True, type=Path,
                   help="SDM project folder (sdm_table.txt + <study>.<software>_<space>.txt)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--mask", type=Path, default=None,
                   help="analysis mask on the 2 mm grid (default: the folder's sdm_mask.nii.gz "
                        "if present, else the mask of the configuration, sdm.mask)")
    p.add_argument("--imputations", type=_positive, default=None, help="MetaNSUE imputations (default: config sdm.imputations)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the configuration's seed)")
    p.add_argument("--permutations", type=_permutations, default=0,
                   help="PSI permutations incl. the identity (0 = none; SDM default 1000)")
    p.add_argument("--covariates", default=None,
                   help="study-table columns added to the design, joined by '+' (e.g. age+sex)")
    p.add_argument("--hypothesis", default=None,
                   help="hypothesis over [intercept, covariates...], e.g. 0+1 (default: intercept)")
    p.add_argument("--unknown-peak-mode", choices=["corrected", "sdm621"], default=None,
                   help="peaks without a statistic: corrected (t = +/- threshold, converted to "
                        "g) or sdm621 (as SDM-PSI v6.21); default config sdm.unknown_peak_mode")
    p.add_argument("--heterogeneity", choices=["dl", "reml"], default=None,
                   help="between-study variance: dl (DerSimonian-Laird, SDM-PSI's default) or "
                        "reml (SDM-PSI's AccurateHeterogeneity); default config sdm.heterogeneity")
    p.add_argument("--fwhm", type=float, default=None, metavar="MM",
                   help="kernel FWHM in mm (default: config sdm.fwhm_mm, 20 as in SDM-PSI)")
    p.add_argument("--anisotropy", type=float, default=None,
                   help="SDM's degree of kernel anisotropy (default: config sdm.anisotropy)")
    p.add_argument("--n-jobs", type=_n_jobs, default=1,
                   help="parallel workers of the fit and the permutations (default 1; -1 = all "
                        "cores)")


def _n_jobs(text: str) -> int:
    """``--n-jobs``: a non-zero integer (joblib: 1, 2, ... workers; -1 all cores)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value == 0:
        raise argparse.ArgumentTypeError("0 workers: give 1, 2, ... or -1 for all cores")
    return value


def load_mask(path: Path):
    """The ``--mask`` image; a file that is not a NIfTI image is a one-line error naming it."""
    import nibabel as nib

    from analysis.errors import DataError

    path = Path(path)
    if path.is_dir():
        raise DataError(str(path), "is a folder, not a mask image (a NIfTI file is expected)")
    if not path.is_file():
        raise DataError(str(path), "file not found (the --mask image)")
    try:
        img = nib.load(str(path))
        img.get_fdata()  # noqa: B018 (a truncated file fails here, not later)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError) as exc:
        raise DataError(str(path), f"not a NIfTI mask image ({' '.join(str(exc).split())})"
                        ) from None
    if img.ndim != 3:
        raise DataError(str(path), f"a mask image must be 3-D, this one has shape {img.shape}")
    return img


def run_command(args: argparse.Namespace) -> int:

    from analysis.config import load_config
    from analysis.errors import DataError
    from analysis.grid import gm_mask
    from analysis.io import write_json, write_tsv
    from analysis.labels import aal_labeler
    from analysis.sdm.clusters import threshold_clusters
    from analysis.sdm.dataset import SDMDataset
    from analysis.stages import params

    cfg = load_config()
    folder = Path(args.sdm_dir)
    if not (folder / "sdm_table.txt").exists():
        raise DataError(folder / "sdm_table.txt", "no SDM study table in this folder")
    dataset = SDMDataset.from_sdm_project(folder, **params.study_checks(cfg))
    if args.mask is not None:
        mask, mask_name = load_mask(args.mask), str(args.mask)
    elif dataset.mask is not None:
        mask, mask_name = dataset.mask, str(folder / "sdm_mask.nii.gz")
    else:
        mask, mask_name = gm_mask(cfg["sdm"]["mask"]), f"sdm.mask ({cfg['sdm']['mask']})"
    covs = [c for c in (args.covariates or "").split("+") if c]
    given = {"fwhm": args.fwhm, "anisotropy": args.anisotropy,
             "unknown_peak_mode": args.unknown_peak_mode, "heterogeneity": args.heterogeneity}
    seed = int(cfg["seed"] if args.seed is None else args.seed)
    n_imp = int(cfg["sdm"]["imputations"] if args.imputations is None else args.imputations)
    est = params.estimator(cfg, n_imp, seed, covariates=covs, hypothesis=args.hypothesis,
                           n_jobs=args.n_jobs, progress=True,
                           **{k: v for k, v in given.items() if v is not None})
    t0 = time.perf_counter()
    res = est.fit(dataset, mask_img=mask)
    out = Path(args.out)
    res.save_maps(out)
    clusters = threshold_clusters(res.maps["z"], res.space, labeler=aal_labeler,
                                  **params.threshold_params(cfg))
    write_tsv(out / "clusters.tsv", clusters.table)
    summary = {
        "sdm_dir": str(folder),
        "mask": mask_name,
        "n_studies": len(res.studies), "n_voxels": res.space.n_voxels, "df": res.df,
        "params": res.params, "timings_s": res.timings, "description": res.description_,
        "n_clusters": clusters.peaks()["direction"].value_counts().to_dict(),
    }
    if args.permutations and args.permutations > 1:
        from analysis.sdm.permutation import psi_permutation_test

        psi = {**params.psi_params(cfg), "n_jobs": args.n_jobs}
        perm = psi_permutation_test(res, n_permutations=args.permutations, seed=seed,
                                    progress=True, **psi)
        perm.save(out)
        summary["permutations"] = int(args.permutations)
    summary["total_s"] = round(time.perf_counter() - t0, 2)
    write_json(out / "summary.json", summary)
    print(f"wrote {out} ({len(res.studies)} studies, {res.space.n_voxels} voxels, "
          f"{len(clusters.peaks())} clusters)")
    return 0
