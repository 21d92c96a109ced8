"""Coordinate spaces and statistic conversions used to read published peaks.

Talairach → MNI
    * Lancaster et al. (2007) "icbm2tal" transforms (Hum Brain Mapp 28:1194-1205), inverted:
      ``icbm_other`` (software other than SPM/FSL; NiMARE's ``nimare.utils.tal2mni``),
      ``icbm_spm`` and ``icbm_fsl`` (BrainMap ``icbm_spm2tal.m`` / ``icbm_fsl2tal.m``). SDM-PSI
      does not publish the matrices it uses; we assume that its ``other_tal`` peak files need
      the inverse of ``icbm_other`` (the transform named by the software part of the suffix).
    * Brett's piecewise affine ``mni2tal`` (M. Brett 1999, MRC CBU; ``mni2tal.m``), inverted, for
      Talairach coordinates that authors obtained from MNI with Brett's transform
      (SDM suffixes ``spm_brett`` / ``fsl_brett``).

Statistics → t (as in the SDM-PSI inputs of Enge et al. 2021, NeuroImage 241:118436)
    * z → t with equal one-tailed probability: ``t = sign(z) · T⁻¹_df(Φ(|z|))``;
    * one-tailed p → t: ``t = T⁻¹_df(1 − p)``;
    * a voxel threshold p → ``t_thr = T⁻¹_df(1 − p)``.

Upper-tail functions (``isf``/``sf``) are used throughout so that very small p and large z keep
full precision.

Plausibility bounds
    No fMRI group comparison reaches ``|t| > 100`` or ``|z| > 30`` (published peaks rarely
    exceed 15); larger values are typing or unit errors (or a software's "infinity") and would
    dominate, or overflow, the effect-size recreation. :data:`MAX_ABS_T` and :data:`MAX_ABS_Z`
    are enforced on every peak and threshold the data layer reads (also after converting z or
    p to t).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import stats

LGR = logging.getLogger(__name__)

#: Largest |t| accepted for a peak or a voxel threshold (see "Plausibility bounds").
MAX_ABS_T = 100.0
#: Largest |z| accepted for a peak.
MAX_ABS_Z = 30.0

#: Lancaster et al. (2007) MNI → Talairach affines (BrainMap icbm_*2tal.m).
LANCASTER = {
    "icbm_other": np.array([
        [0.9357, 0.0029, -0.0072, -1.0423],
        [-0.0065, 0.9396, -0.0726, -1.3940],
        [0.0103, 0.0752, 0.8967, 3.6475],
        [0.0, 0.0, 0.0, 1.0],
    ]),
    "icbm_spm": np.array([
        [0.9254, 0.0024, -0.0118, -1.0207],
        [-0.0048, 0.9316, -0.0871, -1.7667],
        [0.0152, 0.0883, 0.8924, 4.0926],
        [0.0, 0.0, 0.0, 1.0],
    ]),
    "icbm_fsl": np.array([
        [0.9464, 0.0034, -0.0026, -1.0680],
        [-0.0083, 0.9479, -0.0580, -1.0239],
        [0.0053, 0.0617, 0.9010, 3.1883],
        [0.0, 0.0, 0.0, 1.0],
    ]),
}


def _brett_matrix(z_zoom: float) -> np.ndarray:
    """Brett's ``spm_matrix([0 0 0 0.05 0 0 0.99 0.97 z_zoom])`` (rotation then zoom), 3 x 3."""
    c, s = np.cos(0.05), np.sin(0.05)
    rot = np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]])
    return rot @ np.diag([0.99, 0.97, z_zoom])


#: Brett's mni2tal: ``upT`` applies to MNI z >= 0, ``downT`` to MNI z < 0.
BRETT_UP = _brett_matrix(0.92)
BRETT_DOWN = _brett_matrix(0.84)


def _as_points(xyz) -> np.ndarray:
    arr = np.asarray(xyz, dtype=float)
    pts = np.atleast_2d(arr)
    if pts.shape[-1] != 3 or pts.ndim != 2:
        raise ValueError(f"coordinates must be (n, 3); got shape {arr.shape}")
    return pts


def mni2tal_lancaster(xyz, variant: str = "icbm_other") -> np.ndarray:
    """MNI → Talairach with a Lancaster et al. (2007) transform.

    Parameters
    ----------
    xyz : array-like, (n, 3)
        MNI coordinates in mm.
    variant : {"icbm_other", "icbm_spm", "icbm_fsl"}
        Which of Lancaster's transforms (by the software that normalised the images).

    Returns
    -------
    numpy.ndarray, (n, 3)
        Talairach coordinates.
    """
    pts = _as_points(xyz)
    mat = LANCASTER[variant]
    return pts @ mat[:3, :3].T + mat[:3, 3]


def tal2mni_lancaster(xyz, variant: str = "icbm_other") -> np.ndarray:
    """Talairach → MNI with the inverse of a Lancaster et al. (2007) transform.

    ``variant="icbm_other"`` equals NiMARE's ``nimare.utils.tal2mni`` (BrainMap
    ``tal2icbm_other.m``) and is what the compendium applies to native Talairach peaks.

    Parameters
    ----------
    xyz : array-like, (n, 3)
        Talairach coordinates in mm.
    variant : {"icbm_other", "icbm_spm", "icbm_fsl"}
        Which transform to invert.

    Returns
    -------
    numpy.ndarray, (n, 3)
        MNI coordinates.
    """
    pts = _as_points(xyz)
    inv = np.linalg.inv(LANCASTER[variant])
    return pts @ inv[:3, :3].T + inv[:3, 3]


def mni2tal_brett(xyz) -> np.ndarray:
    """MNI → Talairach with Brett's piecewise affine (``mni2tal.m``, M. Brett 1999).

    Parameters
    ----------
    xyz : array-like, (n, 3)
        MNI coordinates in mm.

    Returns
    -------
    numpy.ndarray, (n, 3)
        Talairach coordinates.
    """
    pts = _as_points(xyz)
    up = pts[:, 2] >= 0
    return np.where(up[:, None], pts @ BRETT_UP.T, pts @ BRETT_DOWN.T)


def tal2mni_brett(xyz) -> np.ndarray:
    """Talairach → MNI with the inverse of Brett's transform (``tal2mni.m``).

    As in Brett's ``tal2mni.m``, the inverse of ``upT`` is used where the Talairach z >= 0 and
    that of ``downT`` where it is negative (both matrices keep the sign of z for brain
    coordinates, so the piecewise inverse is consistent).

    Parameters
    ----------
    xyz : array-like, (n, 3)
        Talairach coordinates in mm (obtained from MNI with Brett's ``mni2tal``).

    Returns
    -------
    numpy.ndarray, (n, 3)
        MNI coordinates.
    """
    pts = _as_points(xyz)
    up = pts[:, 2] >= 0
    inv_up, inv_down = np.linalg.inv(BRETT_UP), np.linalg.inv(BRETT_DOWN)
    return np.where(up[:, None], pts @ inv_up.T, pts @ inv_down.T)


#: How each value of ``peaks.tsv``'s ``space`` column becomes MNI: (function, description).
SPACE_TO_MNI = {
    "MNI": (None, ""),
    "TAL": (tal2mni_lancaster, "TAL→MNI (Lancaster icbm_other2tal inverse)"),
    "TAL_BRETT": (tal2mni_brett, "TAL→MNI (Brett mni2tal inverse)"),
}


def to_mni(xyz, space: str) -> np.ndarray:
    """Convert coordinates of one ``space`` (``MNI``, ``TAL`` or ``TAL_BRETT``) to MNI."""
    if space not in SPACE_TO_MNI:
        raise ValueError(f"unknown space {space!r}; expected one of {sorted(SPACE_TO_MNI)}")
    func = SPACE_TO_MNI[space][0]
    pts = _as_points(xyz)
    return pts.copy() if func is None else func(pts)


def z_to_t(z, df) -> np.ndarray:
    """z → t with the same one-tailed probability: ``sign(z) · T⁻¹_df(Φ(|z|))``.

    Parameters
    ----------
    z : array-like
        z statistics (signed).
    df : array-like
        Degrees of freedom of the t distribution (n1 + n2 − 2, or n − 1).

    Returns
    -------
    numpy.ndarray
        t statistics with the sign of ``z``.
    """
    z = np.asarray(z, dtype=float)
    return np.sign(z) * stats.t.isf(stats.norm.sf(np.abs(z)), np.asarray(df, dtype=float))


def p_to_t(p, df) -> np.ndarray:
    """One-tailed p → positive t: ``T⁻¹_df(1 − p)`` (SPM convention).

    Parameters
    ----------
    p : array-like
        One-tailed p values in (0, 1).
    df : array-like
        Degrees of freedom.

    Returns
    -------
    numpy.ndarray
        Positive t statistics; multiply by the sign of the effect.
    """
    p = np.asarray(p, dtype=float)
    if np.any((p <= 0) | (p >= 1)):
        raise ValueError("p values must lie in (0, 1)")
    return stats.t.isf(p, np.asarray(df, dtype=float))


def t_threshold(p, df) -> np.ndarray:
    """Voxel-level t threshold of a one-tailed p threshold: ``|T⁻¹_df(p)|``."""
    return p_to_t(p, df)
