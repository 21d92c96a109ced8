"""Resources of the compendium's SDM analyses: fetched, checked and cached once.

* SDM-PSI's ``gray_matter_2mm`` analysis mask and the compendium's masks:
  :mod:`analysis.grid`;
* the anisotropic kernel's stretch template fitted on SDM-PSI's own bound maps of Enge et al.
  (2021, NeuroImage 241:118436; dataset ``validation/enge2021_sdm``):
  :func:`enge_stretch_template` (the fit is :func:`analysis.sdm.kernel_fit.fit_enge_template`);
* :func:`stretch_template`: a template by its configuration name (``sdm.kernel_template``).
"""

from __future__ import annotations

import hashlib
import logging
from functools import lru_cache

import numpy as np

from analysis.sdm.io import atomic_path
from analysis.sdm.kernel_fit import FIT_VERSION, fit_enge_template
from analysis.sdm.space import grid_affine, grid_shape
from analysis.sdm.templates import TEMPLATES
from analysis.sdm.templates import stretch_template as engine_template

LGR = logging.getLogger(__name__)

#: dataset holding SDM-PSI's bound maps of Enge et al. (2021)
ENGE_DATASET = "validation/enge2021_sdm"
#: template names of the configuration: the engine's own, and the fitted one
TEMPLATE_NAMES = ("enge_fit", *TEMPLATES)


def stretch_template(name: str, params: dict | None = None) -> np.ndarray:
    """Stretch template ``name`` on SDM-PSI's grid: ``"enge_fit"`` (fitted, cached) or one of
    the engine's (:func:`analysis.sdm.templates.stretch_template`).
    """
    if name == "enge_fit":
        return enge_stretch_template(grid_affine(), grid_shape())
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; known: {TEMPLATE_NAMES}")
    return engine_template(name, grid_affine(), grid_shape(), params)


def _source_checksums() -> dict:
    from analysis.fetch import registry

    reg = registry()
    keep = [k for k in sorted(reg) if k.startswith(ENGE_DATASET + "/")
            and (k.endswith("sdm_mask.nii.gz") or "/pp/" in k or k.endswith(".txt"))]
    return {k: reg[k]["sha256"] for k in keep}


def enge_stretch_template(affine, shape, fwhm: float = 20.0) -> np.ndarray:
    """The fitted template on a grid, cached in the dataset cache with its source checksums.

    The inputs come through :func:`analysis.fetch.fetch_dataset` (SHA-256 checked); the cache
    file name carries a hash of their checksums, the fit version and the FWHM, and the file
    stores the checksums. Only SDM's 2 mm MNI grid is supported.
    """
    arr = _enge_cached(tuple(np.asarray(affine, float).ravel()), tuple(shape), float(fwhm))
    arr.flags.writeable = False
    return arr


@lru_cache(maxsize=1)
def _enge_cached(affine_key: tuple, shape: tuple, fwhm: float) -> np.ndarray:
    import json

    from analysis.fetch import cache_dir, fetch_dataset

    if shape != tuple(grid_shape()) or not np.allclose(np.reshape(affine_key, (4, 4)),
                                                       grid_affine()):
        raise ValueError("the fitted Enge template exists only on the 2 mm MNI analysis grid")
    sums = _source_checksums()
    key = hashlib.sha256(json.dumps([sums, FIT_VERSION, fwhm], sort_keys=True).encode()
                         ).hexdigest()[:16]
    path = cache_dir() / "derived" / f"sdm_stretch_enge2021_{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            if json.loads(str(z["sources"])) == sums:
                return z["stretch"]
    LGR.info("fitting the SDM stretch template on Enge et al. (2021) (cached in %s)", path)
    stretch, meta = fit_enge_template(fetch_dataset(ENGE_DATASET), fwhm=fwhm)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, stretch=stretch, sources=json.dumps(sums),
                                meta=json.dumps(meta), version=FIT_VERSION)
    return stretch


