"""``python -m analysis meta``: run the SDM-PSI engine on any SDM-PSI project folder.

Reads ``sdm_table.txt`` and the peak files of the folder (:mod:`analysis.sdm.inputs.project`), fits
:class:`analysis.sdm.estimator.SDMPSI` and writes the maps (``g, var, z, tau2, i2, h2, q, q_z,
p, p_pos, p_neg``; NIfTI), the cluster table (``clusters.tsv``, thresholds of the configuration:
one-tailed p < 0.0025, peak SDM-Z > 1, k > 10) and ``summary.json``. With ``--permutations N``
the PSI permutation test (:mod:`analysis.sdm.inference.permutation`) adds the FWE-corrected maps.

The output folder is written whole or not at all: everything goes into a staging folder beside
it (``.<name>.partial-<pid>``), which replaces the folder only once every file is written, so
an interrupted run leaves the previous results untouched, and a run without permutations never
leaves older corrected maps beside new ones. An existing folder is replaced only when it holds
the output of an earlier ``meta`` run (its ``summary.json``); any other non-empty folder is
refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from analysis.io import process_alive

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


_STAGED = re.compile(r"^\.(?P<name>.+)\.(partial|old)-(?P<pid>\d+)$")


def _is_meta_output(folder: Path) -> bool:
    """Whether ``folder`` holds the output of an earlier ``meta`` run (its summary.json)."""
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and "sdm_dir" in summary


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Write a whole output folder, then swap it in place of ``out``.

    Yields a staging folder beside ``out``; when the block ends without error the staging
    folder becomes ``out`` (the previous ``out``, if any, moved aside first and removed after),
    on any error it is removed and ``out`` is left as it was. Staging folders of killed runs
    (``.<name>.partial-<pid>``, ``.<name>.old-<pid>`` of a process no longer running) are
    removed first.

    Raises
    ------
    analysis.sdm.errors.DataError
        ``out`` is a file, or a non-empty folder that is not the output of a ``meta`` run.
    """
    from analysis.sdm.errors import DataError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(str(out), "the output is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not _is_meta_output(out):
        raise DataError(str(out), "the output folder is not empty and holds no earlier meta "
                        "output (summary.json); choose an empty or new folder")
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    for d in parent.iterdir():
        m = _STAGED.match(d.name)
        if m and m.group("name") == out.name and not process_alive(int(m.group("pid"))):
            shutil.rmtree(d, ignore_errors=True)
            LGR.info("removed %s, left by an interrupted run", d)
    staging = parent / f".{out.name}.partial-{os.getpid()}"
    old = parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        if out.exists():
            os.replace(out, old)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old.exists() and not out.exists():
            os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


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
    p.add_argument("--dask-scheduler", default=None, metavar="ADDRESS",
                   help="run the PSI permutations on the Dask cluster whose scheduler is at "
                        "ADDRESS (e.g. tcp://10.0.0.5:8786), on all its worker threads; the "
                        "result is the same as on this machine")


def _n_jobs(text: str) -> int:
    """``--n-jobs``: a non-zero integer (joblib: 1, 2, ... workers; -1 all cores)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value == 0:
        raise argparse.ArgumentTypeError("0 workers: give 1, 2, ... or -1 for all cores")
    return value


def _permutation_workers(address: str | None):
    """Where the permutations run: this machine (``None``), or the Dask cluster at ``address``."""
    import contextlib

    if address is None:
        return contextlib.nullcontext()
    from analysis.sdm.backend import dask_cluster

    return dask_cluster(address)


def load_mask(path: Path):
    """The ``--mask`` image; a file that is not a NIfTI image is a one-line error naming it."""
    import nibabel as nib

    from analysis.sdm.errors import DataError

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
    from analysis.grid import gm_mask
    from analysis.sdm.errors import DataError
    from analysis.sdm.inputs.dataset import SDMDataset
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
    with staged_output(Path(args.out)) as out:
        summary = _fit_and_write(args, cfg, est, dataset, mask, mask_name, folder, seed, out)
    print(f"wrote {args.out} ({summary['n_studies']} studies, {summary['n_voxels']} voxels, "
          f"{summary['n_cluster_peaks']} clusters)")
    return 0


def _fit_and_write(args, cfg, est, dataset, mask, mask_name, folder, seed, out: Path) -> dict:
    """Fit, threshold and (with ``--permutations``) correct; write everything into ``out``."""
    from analysis.io import write_json
    from analysis.labels import aal_labeler
    from analysis.sdm.inference.clusters import threshold_clusters
    from analysis.sdm.inputs.io import write_tsv
    from analysis.stages import params

    t0 = time.perf_counter()
    res = est.fit(dataset, mask_img=mask)
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
        from analysis.sdm.inference.permutation import psi_permutation_test

        psi = {**params.psi_params(cfg), "n_jobs": args.n_jobs}
        with _permutation_workers(getattr(args, "dask_scheduler", None)):
            perm = psi_permutation_test(res, n_permutations=args.permutations, seed=seed,
                                        progress=True, **psi)
        perm.save(out)
        summary["permutations"] = int(args.permutations)
        summary["permutation_timings_s"] = {"setup_s": perm.info["seconds_setup"],
                                            "permutations_s": perm.info["seconds_permutations"]}
    summary["total_s"] = round(time.perf_counter() - t0, 2)
    write_json(out / "summary.json", summary)
    return {**summary, "n_cluster_peaks": len(clusters.peaks())}
