"""Resources of the compendium's SDM analyses.

* SDM-PSI's ``gray_matter_2mm`` analysis mask and the compendium's masks:
  :mod:`analysis.grid` (the engine fetches the mask, :func:`analysis.sdm.maps.space.sdm_gm_mask`);
* the anisotropic kernel's stretch template fitted on SDM-PSI's own bound maps of Enge et al.
  (2021, NeuroImage 241:118436; dataset ``validation/enge2021_sdm``): shipped precomputed with
  the engine (``"enge_fit"`` of :mod:`analysis.sdm.maps.templates`); :func:`stretch_resource`
  recomputes that file's contents from the fetched maps
  (:func:`analysis.kernel_template.fit_enge_template`) and :func:`write_stretch_resource`
  rewrites it;
* :func:`stretch_template`: a template by its configuration name (``sdm.kernel_template``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from analysis.kernel_template import FIT_VERSION, fit_enge_template
from analysis.sdm.inputs.io import atomic_path
from analysis.sdm.maps.space import MaskSpace, grid_affine, grid_shape, sdm_gm_mask
from analysis.sdm.maps.templates import ENGE_TEMPLATE_RESOURCE, TEMPLATES, encode_edge_values
from analysis.sdm.maps.templates import stretch_template as engine_template

LGR = logging.getLogger(__name__)

#: dataset holding SDM-PSI's bound maps of Enge et al. (2021)
ENGE_DATASET = "validation/enge2021_sdm"
#: template names of the configuration (those of the engine)
TEMPLATE_NAMES = TEMPLATES


def stretch_template(name: str, params: dict | None = None) -> np.ndarray:
    """Stretch template ``name`` on SDM-PSI's grid (:func:`analysis.sdm.maps.templates.stretch_template`).

    Parameters
    ----------
    name : {"enge_fit", "gray_matter", "uniform"}
        ``"enge_fit"`` is the fitted template shipped with the engine.
    params : dict, optional
        Parameters of the tissue template ``"gray_matter"``.
    """
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; known: {TEMPLATE_NAMES}")
    return engine_template(name, grid_affine(), grid_shape(), params)


def _source_checksums() -> dict:
    """Registry file -> SHA-256 of every input of the fit (mask, bound maps, tables)."""
    from analysis.fetch import registry

    reg = registry()
    keep = [k for k in sorted(reg) if k.startswith(ENGE_DATASET + "/")
            and (k.endswith("sdm_mask.nii.gz") or "/pp/" in k or k.endswith(".txt"))]
    return {k: reg[k]["sha256"] for k in keep}


def stretch_resource(folder=None, fwhm: float = 20.0) -> dict:
    """The contents of the engine's fitted template file, recomputed from SDM-PSI's maps.

    Parameters
    ----------
    folder : path-like, optional
        The Enge et al. project folder (default: fetched, SHA-256 checked,
        :func:`analysis.fetch.fetch_dataset`).
    fwhm : float
        Kernel FWHM of the fit (mm).

    Returns
    -------
    dict
        ``edge_planes`` ((4, E) uint8, :func:`analysis.sdm.maps.templates.encode_edge_values` of the
        fitted stretch of every edge of SDM-PSI's mask), ``fill`` (float32, every other edge),
        ``provenance`` (JSON text, :func:`analysis.sdm.maps.templates.enge_template_provenance`) and
        ``stretch`` (the assembled (13, X, Y, Z) template, not written to the file).
    """
    from analysis.fetch import fetch_dataset
    from analysis.sdm.maps.kernel import mask_edges

    folder = fetch_dataset(ENGE_DATASET) if folder is None else Path(folder)
    stretch, meta = fit_enge_template(folder, fwhm=fwhm)
    space = MaskSpace(sdm_gm_mask())
    src, _, noff, _ = mask_edges(space)
    values = stretch[(noff, *space.ijk[src].T)]
    rest = np.ones(stretch.shape, dtype=bool)
    rest[(noff, *space.ijk[src].T)] = False
    fill = np.unique(stretch[rest])
    if fill.size != 1:
        raise ValueError(f"the fitted template has {fill.size} values off SDM-PSI's mask edges")
    prov = {"fit_version": FIT_VERSION, "fwhm_mm": float(fwhm), "method":
            "analysis.kernel_template.fit_enge_template", "train": list(meta["train"]),
            "edges": int(meta["edges"]), "edges_steepest": float(meta["edges_steepest"]),
            "voxels_reached": float(meta["voxels_reached"]), "fallback": float(meta["fallback"]),
            "dense_sha256": hashlib.sha256(np.ascontiguousarray(stretch, np.float32).tobytes())
            .hexdigest(), "sources": _source_checksums()}
    return {"edge_planes": encode_edge_values(values), "fill": np.float32(fill[0]),
            "provenance": json.dumps(prov, sort_keys=True), "stretch": stretch}


def write_stretch_resource(path=None, folder=None) -> Path:
    """Refit the template and write the engine's file (atomic); returns its path.

    Parameters
    ----------
    path : path-like, optional
        Destination (default: ``analysis/sdm/data/`` of this checkout).
    folder : path-like, optional
        The Enge et al. project folder (default: fetched).
    """
    from analysis import paths

    path = (paths.PACKAGE_DIR / "sdm" / "data" / ENGE_TEMPLATE_RESOURCE if path is None
            else Path(path))
    res = stretch_resource(folder)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, edge_planes=res["edge_planes"], fill=res["fill"],
                            provenance=np.asarray(res["provenance"]))
    LGR.info("wrote %s", path)
    return path
