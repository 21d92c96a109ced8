"""Whole-brain statistical maps as study inputs: reading, checks, conversion to t and resampling.

A study may bring its unthresholded statistical map (a t-map, NIfTI, MNI space, any grid and
orientation) instead of, or beside, its peaks, as in effect-size SDM (Radua et al. 2012, Eur
Psychiatry 27:605-611, "a new meta-analytic method ... that combines reported peak coordinates
and statistical parametric maps"). Conventions used here, each with its source:

Effect size
    A voxel's t becomes Hedges g with the formula of the peaks, ``g = J t sqrt(1/n1 + 1/n2)``
    (two samples) or ``g = J t / sqrt(n)`` (one sample)
    (:func:`analysis.sdm.statistics.effect_sizes.g_from_t`; SDM-PSI's bound maps of Enge et al.
    2021 reproduce ``J t / sqrt(n)`` exactly). Its bounds are exact: ``lower = upper = g``
    (the "fully known" case of MetaNSUE, Radua et al. 2015, JAMA Psychiatry 72:1243-1251), so
    nothing is imputed there and its variance is the exact variance of g from the sample sizes
    (:mod:`analysis.sdm.statistics.hedges`).
Other statistics
    A z-map becomes t with equal one-tailed probability, ``t = sign(z) T⁻¹_df(Φ(|z|))``, the
    conversion of the peaks (:mod:`analysis.sdm.inputs.coords`; SDM-PSI's inputs of Enge et al.
    2021); a contrast estimate with its standard error becomes ``t = beta / se`` and with its
    variance ``t = beta / sqrt(varcope)`` (the definition of a GLM contrast's t). A NIfTI whose
    header declares the intent "z score" is read as a z-map; other intents than none, "t test"
    and "z score" are refused (SDM-PSI v6.23 reads t-maps with intent "t test"; third-party
    observation, see the engine's specification).
Missing voxels
    NaN, and zeros (SPM and FSL write 0 or NaN outside the mask of an analysis), are not part
    of the map. There the study keeps the bounds of its peaks (their kernel bounds near a peak,
    ``[-g_thr, g_thr]`` elsewhere; a study with a map and no peak is censored there like a
    study without peaks). SDM-PSI's manual states no rule for this; it is the engine's own,
    and it is the MetaNSUE reading of what is known at such a voxel.
Resampling
    The map is read at the centres of the analysis voxels (MNI mm through both affines, so any
    grid and orientation) by trilinear interpolation normalised by the interpolated in-map
    indicator: ``t(v) = Σ w_i t_i / Σ w_i`` over the in-map corners ``i`` of the voxel's cell,
    kept where ``Σ w_i >= 0.5`` (so the map's edge is neither shrunk towards 0 by the zeros
    outside it nor extended). SDM-PSI's interpolation is not documented; this is the engine's
    rule, and on the analysis grid itself it returns the map unchanged.
Names in an SDM project folder
    ``<study>.nii.gz`` or ``<study>.nii`` beside ``sdm_table.txt`` (the study's row names it,
    as the peak file ``<study>.<software>_<space>.txt``); a study may have both. No public
    source we could read states the file name SDM-PSI expects for an image, so this naming
    is the engine's rule.

Checks (every entry point: SDM project folder, :class:`~analysis.sdm.inputs.dataset.SDMDataset`,
:meth:`~analysis.sdm.inputs.dataset.SDMDataset.from_nimare`), each a one-line error naming the
file and field: a 3-D image (or 4-D with one volume) with a finite, invertible affine; no
infinite value; ``|t| <= MAX_ABS_T`` (the bound of the peaks); at least one in-map voxel; after
resampling, at least one analysis voxel covered.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats

from analysis.sdm.errors import DataError
from analysis.sdm.inputs.coords import MAX_ABS_T, MAX_ABS_Z

#: file names of a study's statistical map in an SDM project folder (engine's rule, see above)
MAP_SUFFIXES = (".nii.gz", ".nii")
#: statistics a map may hold, in the order of preference when a NiMARE Dataset has several
MAP_KINDS = ("t", "z", "beta+se", "beta+varcope")
#: the in-map indicator a resampled voxel needs (trilinear weight of the in-map corners)
MIN_COVERAGE = 0.5
#: NIfTI intent codes (NIfTI-1 standard): none, t test, z score
_INTENT_NONE, _INTENT_T, _INTENT_Z = 0, 3, 5


def _name(img, source: str | None) -> str:
    if source:
        return source
    fn = img.get_filename() if hasattr(img, "get_filename") else None
    return Path(fn).name if fn else "statistical map"


def load_map(img, source: str | None = None):
    """A NIfTI image from a path or an image, 3-D (a 4-D image must have one volume).

    Parameters
    ----------
    img : str, path-like or nibabel image
        The map.
    source : str, optional
        Names the map in errors (default: its file name).

    Returns
    -------
    nibabel.Nifti1Image
        Float data, the image's affine and header.

    Raises
    ------
    DataError
        Unreadable file, wrong dimensions or a degenerate affine.
    """
    import nibabel as nib

    if isinstance(img, (str, Path)):
        src = source or Path(img).name
        try:
            img = nib.load(str(img))
        except Exception as exc:  # nibabel raises several types for unreadable files
            raise DataError(src, f"cannot read the statistical map: {exc}", field="t") from None
    src = _name(img, source)
    try:
        data = np.asarray(img.dataobj, dtype=np.float64)
    except Exception as exc:
        raise DataError(src, f"cannot read the image data: {exc}", field="t") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(src, f"a statistical map must be 3-D, got shape {data.shape}", field="t")
    aff = np.asarray(img.affine, dtype=float)
    if aff.shape != (4, 4) or not np.isfinite(aff).all() or abs(np.linalg.det(aff[:3, :3])) < 1e-9:
        raise DataError(src, "the image's affine is missing or degenerate (voxel-to-MNI mm "
                        "needed)", field="affine")
    return nib.Nifti1Image(data, aff)


def intent_kind(img) -> str:
    """``"t"`` or ``"z"``: the statistic a NIfTI header declares (``"t"`` when none).

    Raises
    ------
    ValueError
        Another intent (e.g. an F or p map), which is not a signed effect.
    """
    try:
        code = int(img.header["intent_code"])
    except (KeyError, TypeError, ValueError):
        return "t"
    if code in (_INTENT_NONE, _INTENT_T):
        return "t"
    if code == _INTENT_Z:
        return "z"
    raise ValueError(f"NIfTI intent code {code} is not a t or z statistic")


def t_from_z_map(z, df) -> np.ndarray:
    """t with the one-tailed probability of z: ``sign(z) T⁻¹_df(Φ(|z|))`` (NaN kept)."""
    z = np.asarray(z, dtype=float)
    with np.errstate(invalid="ignore"):
        t = np.sign(z) * stats.t.isf(stats.norm.sf(np.abs(z)), df)
    return np.where(z == 0, 0.0, t)


def t_from_beta(beta, se=None, varcope=None) -> np.ndarray:
    """t of a contrast estimate: ``beta / se`` or ``beta / sqrt(varcope)``; NaN where the
    standard error is not positive.
    """
    beta = np.asarray(beta, dtype=float)
    s = np.sqrt(np.asarray(varcope, dtype=float)) if se is None else np.asarray(se, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(s > 0, beta / np.where(s > 0, s, 1.0), np.nan)


def check_t_map(img, source: str | None = None, *, max_abs_t: float = MAX_ABS_T):
    """Check a t-map (values) and return it as a float NIfTI image.

    Parameters
    ----------
    img : path-like or nibabel image
        The t-map (a header with intent "z score" is read as z and converted, which needs
        ``df``; use :func:`read_study_map`).
    source : str, optional
        Names the map in errors.
    max_abs_t : float
        Largest plausible |t| (:data:`analysis.sdm.inputs.coords.MAX_ABS_T`).

    Returns
    -------
    nibabel.Nifti1Image

    Raises
    ------
    DataError
        Infinite values, |t| above the bound, or no in-map voxel.
    """
    img = load_map(img, source)
    src = _name(img, source)
    data = np.asarray(img.dataobj)
    if np.isinf(data).any():
        raise DataError(src, f"{int(np.isinf(data).sum())} infinite voxel value(s); write NaN "
                        "or 0 outside the map", field="t")
    finite = np.isfinite(data)
    big = finite & (np.abs(np.where(finite, data, 0.0)) > max_abs_t)
    if big.any():
        raise DataError(src, f"{int(big.sum())} voxel(s) with |t| > {max_abs_t:g} (largest "
                        f"{np.nanmax(np.abs(data)):.4g}); is it a t-map?", field="t")
    if not (finite & (data != 0)).any():
        raise DataError(src, "no voxel with a value (all zero or NaN)", field="t")
    return img


def read_study_map(img, df, kind: str = "t", source: str | None = None, *, se=None,
                   varcope=None):
    """A study's map as a checked t-map image.

    Parameters
    ----------
    img : path-like or nibabel image
        The statistic (``kind``): a t-map, a z-map, or a contrast estimate ``beta``.
    df : float
        Degrees of freedom of the study (``n1 + n2 - 2`` or ``n - 1``), for z → t.
    kind : {"t", "z", "beta+se", "beta+varcope"}
        What ``img`` holds; a t-map whose header declares intent "z score" is read as z.
    source : str, optional
        Names the map in errors.
    se, varcope : path-like or nibabel image, optional
        The standard error or the variance of ``beta`` on the same grid.

    Returns
    -------
    nibabel.Nifti1Image
        The t-map (float64), checked by :func:`check_t_map`.
    """
    import nibabel as nib

    if kind not in MAP_KINDS:
        raise ValueError(f"kind must be one of {MAP_KINDS}, got {kind!r}")
    src = source or (Path(img).name if isinstance(img, (str, Path)) else _name(img, None))
    base = load_map(img, src)
    if kind == "t":
        try:
            kind = intent_kind(img if not isinstance(img, (str, Path)) else nib.load(str(img)))
        except ValueError as exc:
            raise DataError(src, f"{exc}; give a t-map (intent 't test' or none)",
                            field="intent") from None
    data = np.asarray(base.dataobj)
    if kind == "z":
        if np.isinf(data).any():
            raise DataError(src, "infinite voxel value(s) in the z-map", field="z")
        fin = np.isfinite(data)
        if (fin & (np.abs(np.where(fin, data, 0.0)) > MAX_ABS_Z)).any():
            raise DataError(src, f"voxel(s) with |z| > {MAX_ABS_Z:g}; is it a z-map?", field="z")
        data = t_from_z_map(data, df)
    elif kind.startswith("beta"):
        other_name = "se" if kind == "beta+se" else "varcope"
        other = se if kind == "beta+se" else varcope
        if other is None:
            raise DataError(src, f"a beta map needs its {other_name} map", field=other_name)
        o = load_map(other, None if isinstance(other, (str, Path)) else f"{src} {other_name}")
        odata = np.asarray(o.dataobj)
        if odata.shape != data.shape or not np.allclose(o.affine, base.affine, atol=1e-4):
            raise DataError(src, f"the {other_name} map's grid {odata.shape} differs from the "
                            f"beta map's {data.shape}", field=other_name)
        if (np.isfinite(odata) & (odata < 0)).any():
            raise DataError(src, f"negative values in the {other_name} map", field=other_name)
        data = (t_from_beta(data, se=odata) if kind == "beta+se"
                else t_from_beta(data, varcope=odata))
    return check_t_map(nib.Nifti1Image(data, base.affine), src)


def sample_map(img, space, source: str | None = None) -> np.ndarray:
    """The map at the analysis voxels (trilinear, normalised by the in-map indicator).

    Parameters
    ----------
    img : nibabel image
        A checked map (:func:`check_t_map`).
    space : analysis.sdm.maps.space.MaskSpace-like
        Has ``xyz`` (V, 3), the MNI mm of the analysis voxels.
    source : str, optional
        Names the map in errors.

    Returns
    -------
    numpy.ndarray, float64, shape (V,)
        The value at each voxel; NaN where the map does not cover it (module docstring).

    Raises
    ------
    DataError
        The map covers no analysis voxel (wrong space or an empty map).
    """
    from scipy.ndimage import map_coordinates

    data = np.asarray(img.dataobj, dtype=np.float64)
    inside = np.isfinite(data) & (data != 0)
    ijk = (np.linalg.inv(np.asarray(img.affine, dtype=float))
           @ np.c_[np.asarray(space.xyz, dtype=float), np.ones(len(space.xyz))].T)[:3]
    # exact grid positions stay exact (no interpolation on the map's own grid)
    near = np.rint(ijk)
    ijk = np.where(np.abs(ijk - near) < 1e-6, near, ijk)
    num = map_coordinates(np.where(inside, data, 0.0), ijk, order=1, mode="constant", cval=0.0)
    den = map_coordinates(inside.astype(np.float64), ijk, order=1, mode="constant", cval=0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den >= MIN_COVERAGE, num / np.where(den > 0, den, 1.0), np.nan)
    if not np.isfinite(out).any():
        raise DataError(_name(img, source), "the map covers no voxel of the analysis mask "
                        "(is it in MNI space?)", field="affine")
    return out


def exact_bounds(lower, upper, t, n1, n2) -> int:
    """Make a study's bounds exact where its map has a value: ``lower = upper = g(t)``.

    Parameters
    ----------
    lower, upper : numpy.ndarray (V,)
        The study's peak bounds, changed in place.
    t : numpy.ndarray (V,)
        The resampled map (NaN where missing: those voxels keep their peak bounds).
    n1, n2 : float
        Sample sizes (``n2`` NaN for one sample).

    Returns
    -------
    int
        Voxels made exact.
    """
    from analysis.sdm.statistics.effect_sizes import g_from_t

    n2v = None if n2 is None or not np.isfinite(n2) else float(n2)
    have = np.isfinite(t)
    g = g_from_t(t[have], n1, n2v)
    lower[have] = g
    upper[have] = g
    return int(have.sum())


def project_map_file(folder, study: str) -> Path | None:
    """The statistical map of ``study`` in an SDM project folder (``<study>.nii.gz`` or
    ``<study>.nii``), or None.
    """
    folder = Path(folder)
    found = [folder / f"{study}{s}" for s in MAP_SUFFIXES if (folder / f"{study}{s}").is_file()]
    if len(found) > 1:
        raise DataError(found[1].name, f"second statistical map for study {study!r} (also "
                        f"{found[0].name})")
    return found[0] if found else None
