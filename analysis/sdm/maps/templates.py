"""Edge "stretch" templates for the anisotropic kernel (our stand-in for SDM's correlation templates).

SDM-PSI ships binary correlation templates (correlation of each voxel with its neighbours across
individual images; Radua et al. 2014, Front Psychiatry 5:13) that are distributed only with its
binaries. We build the equivalent reproducibly, with no download, from data
that ship with nilearn: the MNI152 (2009) grey- and white-matter probability templates
(``nilearn.datasets.load_mni152_gm_template`` / ``load_mni152_wm_template``) and the MNI152
brain mask, resampled onto the analysis grid.

Tissue-similarity model ("gray_matter")
    Each voxel has a tissue composition ``P(v) = (GM, WM, CSF/other)`` with
    ``CSF/other = 1 - GM - WM`` (clipped to [0, 1]). Across individuals, neighbouring voxels of
    the same tissue correlate strongly and voxels on either side of a tissue boundary weakly, so
    the virtual length of an edge ``v -> w`` is stretched by the tissue change along it::

        s(v, w) = s0 * (1 + beta * TV(v, w) / l(v, w)) * (1 + gamma * (1 - GMbar(v, w)))

    with ``TV = 0.5 * sum |P(v) - P(w)|`` (total-variation distance of the two compositions,
    per mm of edge length ``l``) and ``GMbar`` the mean grey-matter probability of the two
    voxels (the "gray_matter" template correlates grey-matter voxels best).

    ``s0`` (< 1: SDM's fully anisotropic kernel is wider than the 20 mm Gaussian inside grey
    matter), ``beta`` and ``gamma`` default to :data:`TISSUE_PARAMS` (0.65, 0, 0.75). They were chosen by the mean voxelwise correlation with
    the SDM-PSI v6.21 bound maps of Enge et al. (2021) on 5 of the 10 mirrored studies
    (bauer2017, backes2002, mooreparks2010, balsamo2006, skeide2014six; r = 0.932 vs 0.914
    for the isotropic 20 mm kernel) and checked on the other 5 (r = 0.928 vs 0.920). The
    surface is flat (training r 0.930-0.932 for gamma 0.25-1 with a mean stretch near 0.8) and
    the tissue-boundary term ``beta`` brought nothing, so it is 0.

    What the SDM maps show (single-peak study skeide2014six): the implied virtual distance
    ``D = sigma sqrt(2 ln 1/K)`` grows linearly along paths (the eikonal slope ``|grad D|``,
    i.e. the local stretch, has median 0.81 at every distance from 0 to 40 mm), which supports
    the Gaussian-of-path-length model over the product-of-correlations one (training r 0.78).
    The local stretch varies (IQR 0.67-0.95) but is unrelated to the MNI152 tissue
    probabilities (r = 0.03 with GM, 0.01 with the GM gradient): SDM's template carries
    individual-variability structure that population tissue maps cannot supply. So this is a
    model of SDM's kernel, not its template: expect voxelwise deviations.

Fitted template ("enge_fit", the default)
    The edge stretch fitted on SDM-PSI v6.21's own bound maps of the 25 studies at even
    positions of the sorted study list of Enge et al. (2021, NeuroImage 241:118436)
    (:func:`analysis.kernel_template.fit_enge_template`), shipped precomputed with the engine
    (``analysis/sdm/data/stretch_enge2021.npz``, :data:`ENGE_TEMPLATE_RESOURCE`; no fit at
    first use). Of the template only the edges of SDM-PSI's grey-matter mask
    (:func:`analysis.sdm.maps.space.sdm_gm_mask`, 2,345,776 edges; fetched on first use, so loading
    this template needs that file too) carry fitted values; every other
    edge of the grid has one value, the median fitted voxel slope (0.868). The file stores
    exactly that: the edge values as float32 in the order of
    :func:`analysis.sdm.maps.kernel.mask_edges` on SDM-PSI's mask (their four bytes as four planes,
    which zlib compresses 13 % better), the fill value, the SHA-256 of the assembled
    (13, 91, 109, 91) float32 array, which :func:`stretch_template` checks on loading, and its
    provenance (fit version, training studies, SHA-256 of every input file of the dataset
    registry; :func:`enge_template_provenance`). The input maps are MIT-licensed (SkeideLab,
    github SkeideLab/meta_semantics at commit de53184b, ``results/sdm``). The compendium
    rebuilds the file with :func:`analysis.resources.write_stretch_resource`, and a slow test
    refits it from the fetched maps and compares it value for value. Held-out agreement with
    SDM-PSI's bound maps (the other 25 studies): mean voxelwise r 0.973 (min 0.945) against
    about 0.92 for the tissue model and for the isotropic kernel; of the engine's whole run,
    r(z) 0.933 against SDM-PSI's map of Enge's model mod1 from the peaks alone, 0.836 with the
    tissue model (see ``tests/test_sdm_preprocess.py`` and the compendium's README). On
    another mask of the same grid (e.g. the MNI152 grey matter) edges outside SDM-PSI's mask
    take the fill value. Any other fitted array of shape (13, X, Y, Z) can be passed to the
    kernel instead of a name.

"uniform"
    ``s = 1`` everywhere: a Gaussian of the geodesic distance inside the mask (paths cannot
    leave the mask), the anisotropy coming from the mask's shape only.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from functools import lru_cache

import numpy as np

from analysis.sdm.maps.kernel import OFFSETS
from analysis.sdm.maps.space import GRID_SHAPE, data_file_bytes, grid_affine

LGR = logging.getLogger(__name__)

#: names of the templates (module docstring)
TEMPLATES = ("enge_fit", "gray_matter", "uniform")
#: the engine's default: the best template validated against SDM-PSI (module docstring)
DEFAULT_TEMPLATE = "enge_fit"
#: file of the fitted template in ``analysis/sdm/data/``
ENGE_TEMPLATE_RESOURCE = "stretch_enge2021.npz"
#: parameters of the tissue-similarity template, chosen on 5 of Enge et al.'s (2021) SDM-PSI
#: bound maps and checked on 5 others
TISSUE_PARAMS = {"s0": 0.65, "beta": 0.0, "gamma": 0.75}


def _resample(img, affine, shape):
    # linear: on the SDM grid the nilearn 2 mm templates' voxel centres coincide with ours
    # (x flipped, integer shifts), so no value is interpolated there
    from nilearn.image import resample_img

    return resample_img(img, target_affine=affine, target_shape=shape,
                        interpolation="linear", force_resample=True, copy_header=True)


def tissue_probabilities(affine, shape) -> np.ndarray:
    """(3, X, Y, Z) GM, WM, CSF/other probabilities of nilearn's MNI152 templates on a grid.

    Cached per grid; the returned array is read-only.
    """
    arr = _tissue_cached(tuple(np.asarray(affine, float).ravel()), tuple(shape))
    arr.flags.writeable = False
    return arr


@lru_cache(maxsize=2)
def _tissue_cached(affine_key: tuple, shape: tuple) -> np.ndarray:
    from nilearn.datasets import load_mni152_gm_template, load_mni152_wm_template

    affine = np.asarray(affine_key, dtype=float).reshape(4, 4)
    gm = np.asarray(_resample(load_mni152_gm_template(resolution=2), affine, shape).dataobj,
                    dtype=float)
    wm = np.asarray(_resample(load_mni152_wm_template(resolution=2), affine, shape).dataobj,
                    dtype=float)
    gm = np.clip(np.nan_to_num(gm), 0.0, 1.0)
    wm = np.clip(np.nan_to_num(wm), 0.0, 1.0)
    other = np.clip(1.0 - gm - wm, 0.0, 1.0)
    return np.stack([gm, wm, other])


def _shifted(a: np.ndarray, off) -> np.ndarray:
    """``a[i + off]`` on the same grid (edge-padded)."""
    pad = np.pad(a, [(0, 0)] * (a.ndim - 3) + [(1, 1)] * 3, mode="edge")
    sl = tuple(slice(1 + o, 1 + o + n) for o, n in zip(off, a.shape[-3:]))
    return pad[(Ellipsis, *sl)]


def tissue_stretch(prob: np.ndarray, voxel_mm: np.ndarray, s0: float, beta: float,
                   gamma: float) -> np.ndarray:
    """Stretch of each forward edge from tissue probabilities (model in the module docstring).

    Parameters
    ----------
    prob : numpy.ndarray, shape (3, X, Y, Z)
        Tissue probabilities.
    voxel_mm : numpy.ndarray, shape (3,)
        Voxel size.
    s0, beta, gamma : float
        Model parameters.

    Returns
    -------
    numpy.ndarray, shape (13, X, Y, Z), float32
    """
    out = np.empty((len(OFFSETS), *prob.shape[1:]), dtype=np.float32)
    for n, off in enumerate(OFFSETS):
        nb = _shifted(prob, off)
        tv = 0.5 * np.abs(prob - nb).sum(axis=0)
        length = float(np.linalg.norm(off * voxel_mm))
        gmbar = 0.5 * (prob[0] + nb[0])
        out[n] = s0 * (1.0 + beta * tv / length) * (1.0 + gamma * (1.0 - gmbar))
    return out


@lru_cache(maxsize=4)
def _stretch_cached(name: str, affine_key: tuple, shape: tuple, params: tuple) -> np.ndarray:
    affine = np.asarray(affine_key, dtype=float).reshape(4, 4)
    if name == "uniform":
        return np.ones((len(OFFSETS), *shape), dtype=np.float32)
    s0, beta, gamma = params
    prob = tissue_probabilities(affine, shape)
    return tissue_stretch(prob, np.abs(np.diag(affine)[:3]), s0, beta, gamma)


def encode_edge_values(values) -> np.ndarray:
    """float32 values as a (4, n) uint8 array of their little-endian bytes, one plane per byte.

    The layout of :data:`ENGE_TEMPLATE_RESOURCE` (the planes compress better than the values);
    :func:`decode_edge_values` inverts it exactly.
    """
    v = np.ascontiguousarray(values, dtype="<f4")
    return np.ascontiguousarray(v.view(np.uint8).reshape(-1, 4).T)


def decode_edge_values(planes) -> np.ndarray:
    """float32 values from the byte planes of :func:`encode_edge_values`."""
    planes = np.asarray(planes, dtype=np.uint8)
    if planes.ndim != 2 or planes.shape[0] != 4:
        raise ValueError(f"expected (4, n) byte planes, got shape {planes.shape}")
    return np.ascontiguousarray(planes.T).view("<f4").ravel().astype(np.float32)


def assemble_template(edge_values, fill: float, space) -> np.ndarray:
    """(13, X, Y, Z) float32 stretch with ``edge_values`` on the edges of ``space``'s mask.

    Parameters
    ----------
    edge_values : array-like, shape (E,)
        One stretch per edge of :func:`analysis.sdm.maps.kernel.mask_edges` (its order).
    fill : float
        Stretch of every other edge of the grid.
    space : MaskSpace
        The mask whose edges carry the values.

    Returns
    -------
    numpy.ndarray, shape (13, X, Y, Z), float32
    """
    from analysis.sdm.maps.kernel import mask_edges

    src, _, noff, _ = mask_edges(space)
    edge_values = np.asarray(edge_values, dtype=np.float32)
    if edge_values.shape != src.shape:
        raise ValueError(f"{edge_values.size} edge values for the {src.size} edges of the mask")
    out = np.full((len(OFFSETS), *space.shape), np.float32(fill), dtype=np.float32)
    out[(noff, *space.ijk[src].T)] = edge_values
    return out


def _read_enge_resource() -> tuple[np.ndarray, float, dict]:
    with np.load(io.BytesIO(data_file_bytes(ENGE_TEMPLATE_RESOURCE))) as z:
        return (decode_edge_values(z["edge_planes"]), float(z["fill"]),
                json.loads(str(z["provenance"])))


def enge_template_provenance() -> dict:
    """What :data:`ENGE_TEMPLATE_RESOURCE` records about its fit.

    Returns
    -------
    dict
        ``fit_version``, ``fwhm_mm``, ``train`` (the 25 training studies), ``sources`` (dataset
        registry file -> SHA-256 of every input), ``edges``, ``edges_steepest``,
        ``voxels_reached``, ``fallback`` (the fill value) and ``dense_sha256`` (SHA-256 of the
        assembled float32 array).
    """
    return _read_enge_resource()[2]


@lru_cache(maxsize=1)
def _enge_template() -> np.ndarray:
    from analysis.sdm.maps.space import MaskSpace, sdm_gm_mask

    values, fill, prov = _read_enge_resource()
    arr = assemble_template(values, fill, MaskSpace(sdm_gm_mask()))
    if hashlib.sha256(arr.tobytes()).hexdigest() != prov["dense_sha256"]:
        raise ValueError(f"analysis/sdm/data/{ENGE_TEMPLATE_RESOURCE}: the assembled template "
                         f"differs from the recorded SHA-256 {prov['dense_sha256']}")
    return arr


def stretch_template(name: str, affine, shape, params: dict | None = None) -> np.ndarray:
    """Edge stretch template on a grid.

    Parameters
    ----------
    name : {"enge_fit", "gray_matter", "uniform"}
        Template (module docstring); ``"enge_fit"`` exists on SDM-PSI's 2 mm grid only.
    affine : array-like, shape (4, 4)
        Grid affine.
    shape : tuple of int
        Grid shape.
    params : dict, optional
        ``s0, beta, gamma`` for "gray_matter" (default :data:`TISSUE_PARAMS`).

    Returns
    -------
    numpy.ndarray, shape (13, X, Y, Z), float32 (read-only, cached)
    """
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; known: {TEMPLATES}")
    if name == "enge_fit":
        if tuple(shape) != GRID_SHAPE or not np.allclose(np.asarray(affine, float),
                                                         grid_affine()):
            raise ValueError("the fitted template 'enge_fit' exists only on SDM-PSI's 2 mm MNI "
                             f"grid {GRID_SHAPE}")
        arr = _enge_template()
    else:
        cfg = {**TISSUE_PARAMS, **(params or {})}
        p = (float(cfg.get("s0", 1.0)), float(cfg.get("beta", 0.0)),
             float(cfg.get("gamma", 0.0)))
        arr = _stretch_cached(name, tuple(np.asarray(affine, float).ravel()), tuple(shape), p)
    arr.flags.writeable = False
    return arr
