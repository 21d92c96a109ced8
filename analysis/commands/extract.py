"""``python -m analysis extract X Y Z``: SDM-PSI's extract at one voxel of the main analysis.

Prints (or writes with ``--out``) every study's imputed Hedges' g at the mask voxel nearest the
MNI coordinate X Y Z (mean and SD over the imputations, variance, 95 % interval, random-effects
weight, exact or censored) and the pooled model there (g, variance, SDM-Z, p, tau2, I2, H2, Q),
in SDM-PSI's extract layout (``--format sdm``, the default; the layout of SDM-PSI's own
``extract_<x>_<y>_<z>.txt``) or as a tidy tab-separated table (``--format tsv``).

The fit is that of the stage ``meta`` of a results folder: it is re-created exactly from what the
stage stored (``intermediate/meta_fit.npz``: the bound maps, sample sizes and seed) with the
configuration the stage recorded (``.stages/meta.json``), as the stage ``robustness`` does; the
pre-processing is not repeated. The re-created SDM-Z at the voxel is checked against the stage's
``maps/z.nii.gz``. Where the stage ``robustness`` wrote the corrected maps
(``maps/corrp_*.nii.gz``) their values at the voxel are added, as SDM-PSI does.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

LGR = logging.getLogger(__name__)

EPILOG = """\
examples:
  python -m analysis extract 0 48 0                       # SDM-PSI's layout, on the screen
  python -m analysis extract 0 48 0 --format tsv --out acc.tsv
  python -m analysis extract -52 -70 2 --results other_results/
"""
"""Examples shown under ``--help`` (argparse epilog)."""

#: largest |SDM-Z| difference between the re-created fit and the stage's map at the voxel
#: (the map is float32; the fit is re-created bit for bit, see stage robustness)
Z_TOLERANCE = 1e-4


def configure_parser(parser: argparse.ArgumentParser) -> None:
    for axis in ("X", "Y", "Z"):
        parser.add_argument(axis.lower(), metavar=axis, type=float,
                            help=f"MNI {axis.lower()} coordinate (mm)")
    parser.add_argument("--results", metavar="DIR", default=None,
                        help="results folder of a pipeline run (default: results/)")
    parser.add_argument("--format", choices=("sdm", "tsv"), default="sdm",
                        help="SDM-PSI's extract layout (default) or a tidy table")
    parser.add_argument("--out", metavar="FILE", default=None,
                        help="write to FILE instead of the screen")


def voxel_extract(results: Path, xyz):
    """The :class:`~analysis.sdm.diagnostics.voxel.VoxelExtract` of the stage meta's fit.

    Raises
    ------
    analysis.sdm.errors.DataError
        The folder has no result of the stage ``meta``, or its fit does not re-create its map.
    ValueError
        ``xyz`` is outside the analysis mask.
    """
    import nibabel as nib

    from analysis.pipeline import recorded_config
    from analysis.sdm.diagnostics.voxel import CORRP_ROWS, voxel_of
    from analysis.sdm.errors import DataError
    from analysis.sdm.maps.space import MaskSpace
    from analysis.stages import params
    from analysis.stages.meta import FIT_FILE, load_fit

    manifest = results / ".stages" / "meta.json"
    fit_file = results / FIT_FILE
    for path in (manifest, fit_file):
        if not path.is_file():
            raise DataError(path, "not found: the folder holds no result of the stage meta "
                            "(python -m analysis run)")
    cfg = recorded_config([json.loads(manifest.read_text(encoding="utf-8"))])
    space = MaskSpace(params.masks(cfg)[0])
    voxel = voxel_of(space, xyz)  # refuse a coordinate outside the mask before fitting
    bounds, seed, imputations = load_fit(fit_file, space)
    LGR.info("extract: re-creating the meta fit (%d studies, %d imputations, seed %d)",
             len(bounds.studies), imputations, seed)
    result = params.estimator(cfg, imputations, seed).fit_preprocessed(bounds)
    z_map = results / "maps" / "z.nii.gz"
    if z_map.is_file():
        stored = float(space.from_img(nib.load(z_map))[voxel])
        if abs(stored - float(result.maps["z"][voxel])) > Z_TOLERANCE:
            raise DataError(z_map, f"SDM-Z {stored:.6g} at the voxel, the fit re-created from "
                            f"{FIT_FILE} gives {float(result.maps['z'][voxel]):.6g}: the results "
                            "are stale (python -m analysis run)")
    ex = result.extract(space.xyz[voxel])
    for name in CORRP_ROWS:
        path = results / "maps" / f"{name}.nii.gz"
        if path.is_file():
            ex.corrected[name] = float(space.from_img(nib.load(path))[voxel])
    return ex


def run_command(args: argparse.Namespace) -> int:
    from analysis import paths
    from analysis.sdm.inputs.io import atomic_path

    results = Path(args.results) if args.results else paths.results_dir()
    ex = voxel_extract(results, (args.x, args.y, args.z))
    if args.format == "sdm":
        text = ex.to_sdm_text()
    else:
        text = ex.to_frame().to_csv(sep="\t", index=False, float_format="%.6g",
                                    lineterminator="\n")
    if args.out:
        with atomic_path(Path(args.out)) as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
        x, y, z = ex.xyz
        print(f"wrote the extract at MNI ({x:g}, {y:g}, {z:g}) ({ex.pooled['k']} studies, "
              f"{ex.pooled['m']} imputations) to {args.out}")
    else:
        print(text, end="")
    return 0
