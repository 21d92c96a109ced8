"""SDM pre-processing: lower and upper Hedges-g bound maps of every study.

For a study with sample size ``n1`` (``n2`` NaN for one-sample studies), voxel threshold
``t_thr`` and peaks ``p`` with effect ``g_p`` (Hedges g from the peak t, as in the ``metansue``
R package of Radua) and kernel weights ``K_p(v)`` (:mod:`analysis.sdm.maps.kernel`), SDM-PSI's bounds
are (Albajes-Eizagirre et al. 2019, NeuroImage 186:174-184; the formula reproduces the SDM-PSI
v6.21 bound maps of Enge et al. 2021, NeuroImage 241:118436, exactly)::

    g_thr      = J t_thr sqrt(1/n1 [+ 1/n2])
    lower_p(v) = -g_thr + K_p(v) (g_p + g_thr)
    upper_p(v) =  g_thr + K_p(v) (g_p - g_thr)

Far from every peak the effect is only known to lie between the two significance thresholds
(``[-g_thr, g_thr]``); at a peak with known t it is known (``lower = upper = g_p``). A study
without peaks has ``[-g_thr, g_thr]`` everywhere (an "NSUE" study, Radua et al. 2015).

A study with a statistical map (``dataset.images``, :mod:`analysis.sdm.inputs.statmaps`) has
``lower = upper = g`` of its resampled map at every voxel the map covers (effect-size SDM,
Radua et al. 2012); elsewhere it keeps the bounds above (its peaks', or ``[-g_thr, g_thr]``).

Several peaks (SDM-PSI's documentation does not state the rule; chosen by ``combine``, default
config ``sdm.combine``):

- ``"weighted"`` (default; fits SDM-PSI v6.21 best, see below): one kernel value
  ``K(v) = max_p K_p(v)`` and one effect ``g(v) = sum_p w_p g_p / sum_p w_p`` over all peaks
  of both signs with weights ``w_p = K_p / (1 - K_p)`` (the odds of the kernel: about
  ``2 sigma^2 / vd_p^2``, inverse squared distance weighting as in ES-SDM, near a peak, and
  ``K_p`` far from it; a voxel with ``K_p = 1`` takes that peak's g exactly); then
  ``lower = -g_thr + K (g + g_thr)``, ``upper = g_thr + K (g - g_thr)``;
- ``"maxmin"`` (the most literal reading of per-peak bounds): ``lower = max_p lower_p`` and
  ``upper = max_p upper_p`` over positive peaks, ``min_p`` over negative peaks; where both
  signs reach a voxel the sign whose strongest kernel weight is larger wins;
- ``"maxk"``: both bounds from the single peak with the largest ``K_p(v)``.

Which rule SDM-PSI v6.21 uses was measured on the Enge et al. (2021) bound maps with the
following statistic: the share of voxels whose (lower, upper) pair implies a reported peak
g (``g_thr (R + 1) / (R - 1)``, ``R = (lower + g_thr) / (upper - g_thr)``, within 0.002).
SDM: bauer2017 0.77, backes2002 0.89, mooreparks2010 0.69, schafer2009 0.82, balsamo2006
0.50, krishnan2021 0.38. With our anisotropic kernel, "weighted" gives 0.77, 0.88, 0.74,
0.79, 0.49, 0.58; "maxmin" gives 0.98, 1.00, 0.98, 1.00, 0.99, 0.94 ("maxk" 1.00 by
construction). Every implied g of SDM's mixed voxels lies inside the range of the study's
peak g (bauer2017), as an average gives, and in the mixed-sign study schafer2009 986 voxels
have both bounds strictly inside (-g_thr, g_thr), impossible under the side-picking rules. The
voxelwise correlation with SDM's maps barely depends on the rule (within 0.003).

Peaks without a statistic (``t`` NaN, direction in ``sign``), ``unknown_peak_mode``:

- ``"corrected"`` (default): ``t = sign * t_thr`` converted to g, i.e. ``g_p = sign * g_thr``,
  the smallest effect consistent with the peak being significant;
- ``"sdm621"``: ``g_p = sign * t_thr`` numerically, reproducing SDM-PSI v6.21, which places the
  threshold t value itself (not its g) at such peaks (its pre-processing log and bound maps
  for Enge et al. 2021 show this; likely a bug in v6.21).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.sdm.errors import DataError
from analysis.sdm.maps.space import MaskSpace
from analysis.sdm.progress import progress as progress_bar
from analysis.sdm.statistics.effect_sizes import g_from_t

LGR = logging.getLogger(__name__)

UNKNOWN_PEAK_MODES = ("corrected", "sdm621")
COMBINE_RULES = ("weighted", "maxmin", "maxk")


@dataclass
class Bounds:
    """Lower and upper Hedges-g bound maps of k studies over the V voxels of ``space``.

    Attributes
    ----------
    studies : list of str
        Study ids (row order of the arrays).
    lower, upper : numpy.ndarray, float32, shape (k, V)
        Bound maps; ``lower == upper`` where the effect is known (at peaks with known t).
    g_thr : numpy.ndarray, shape (k,)
        Threshold effect size of each study.
    n1, n2 : numpy.ndarray, shape (k,)
        Sample sizes (``n2`` NaN for one-sample studies).
    space : MaskSpace
        The voxel space of the maps.
    """

    studies: list
    lower: np.ndarray
    upper: np.ndarray
    g_thr: np.ndarray
    n1: np.ndarray
    n2: np.ndarray
    space: MaskSpace

    @property
    def known(self) -> np.ndarray:
        """Boolean (k, V): voxels whose effect is known (``|upper - lower| < 1e-6``)."""
        return np.abs(self.upper - self.lower) < 1e-6

    def subset(self, studies) -> Bounds:
        """The bound maps of some of the studies, in the order given.

        Parameters
        ----------
        studies : list of str
            Study ids of this object.

        Returns
        -------
        Bounds
            Rows copied; the same space.
        """
        pos = {s: i for i, s in enumerate(self.studies)}
        unknown = [s for s in studies if s not in pos]
        if unknown:
            raise ValueError(f"no bound maps for the studies {unknown}")
        idx = np.array([pos[s] for s in studies], dtype=np.int64)
        return Bounds(list(studies), self.lower[idx], self.upper[idx],
                      np.asarray(self.g_thr)[idx], np.asarray(self.n1)[idx],
                      np.asarray(self.n2)[idx], self.space)

    def save(self, out_dir) -> list:
        """Write ``<study>_lower.nii.gz`` / ``<study>_upper.nii.gz`` (SDM's ``pp/`` layout)."""
        from pathlib import Path

        from analysis.sdm.inputs.io import save_nifti

        out_dir = Path(out_dir)
        paths = []
        for i, s in enumerate(self.studies):
            for name, arr in (("lower", self.lower), ("upper", self.upper)):
                p = out_dir / f"{s}_{name}.nii.gz"
                save_nifti(p, self.space.to_img(arr[i]))
                paths.append(p)
        return paths


def read_bound_maps(folder, studies, space: MaskSpace) -> tuple[np.ndarray, np.ndarray]:
    """Read ``<study>_lower.nii.gz`` / ``_upper.nii.gz`` (SDM's ``pp/`` layout, as
    :meth:`Bounds.save` writes it) of ``studies`` from ``folder``, as vectors over ``space``.

    Returns
    -------
    lower, upper : numpy.ndarray, float32, shape (k, V)

    Raises
    ------
    FileNotFoundError
        Naming the studies whose maps are missing.
    """
    from pathlib import Path

    import nibabel as nib

    folder = Path(folder)
    missing = [s for s in studies if not (folder / f"{s}_lower.nii.gz").exists()
               or not (folder / f"{s}_upper.nii.gz").exists()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks the bound maps of {missing}")
    lower, upper = (np.stack([space.from_img(nib.load(str(folder / f"{s}_{name}.nii.gz")))
                              for s in studies]).astype(np.float32)
                    for name in ("lower", "upper"))
    return lower, upper


def peak_effects(peaks: pd.DataFrame, n1, n2, t_thr,
                 unknown_peak_mode: str = "corrected") -> np.ndarray:
    """Hedges g of each peak (unknown statistics handled by ``unknown_peak_mode``).

    Parameters
    ----------
    peaks : pandas.DataFrame
        Peaks of one study with columns ``t`` (NaN = unknown) and ``sign``.
    n1, n2 : float
        Sample sizes (``n2`` NaN or None for one-sample).
    t_thr : float
        The study's t threshold.
    unknown_peak_mode : {"corrected", "sdm621"}
        See the module docstring.

    Returns
    -------
    numpy.ndarray
        g of each peak.
    """
    if unknown_peak_mode not in UNKNOWN_PEAK_MODES:
        raise ValueError(f"unknown_peak_mode must be one of {UNKNOWN_PEAK_MODES}, "
                         f"got {unknown_peak_mode!r}")
    t = peaks["t"].to_numpy(dtype=float)
    sign = np.sign(peaks["sign"].to_numpy(dtype=float))
    g = g_from_t(t, n1, n2)
    unknown = ~np.isfinite(t)
    if unknown_peak_mode == "corrected":
        g_unknown = sign * g_from_t(t_thr, n1, n2)
    else:
        g_unknown = sign * float(t_thr)
    return np.where(unknown, g_unknown, g)


def _check_study(study, n1, n2, t_thr, peaks: pd.DataFrame, row: int) -> None:
    src = "study table"
    if not (np.isfinite(n1) and n1 >= 2):
        raise DataError(src, f"study {study!r}: n1 must be >= 2, got {n1}", row, "n1")
    if n2 is not None and np.isfinite(n2) and n2 < 2:
        raise DataError(src, f"study {study!r}: n2 must be >= 2 or empty, got {n2}", row, "n2")
    if not (np.isfinite(t_thr) and t_thr > 0):
        raise DataError(src, f"study {study!r}: t_thr must be a positive number, got {t_thr}",
                        row, "t_thr")
    if peaks.empty:
        return
    for col in ("x", "y", "z"):
        bad = ~np.isfinite(peaks[col].to_numpy(dtype=float))
        if bad.any():
            raise DataError("peak table", f"study {study!r}: non-finite coordinate",
                            int(peaks.index[bad][0]) + 1, col)
    t = peaks["t"].to_numpy(dtype=float)
    sign = peaks["sign"].to_numpy(dtype=float)
    unknown = ~np.isfinite(t)
    bad = unknown & ~np.isin(sign, (-1.0, 1.0))
    if bad.any():
        raise DataError("peak table", f"study {study!r}: peak without t needs sign +1 or -1",
                        int(peaks.index[bad][0]) + 1, "sign")
    bad = ~unknown & (t == 0)
    if bad.any():
        raise DataError("peak table", f"study {study!r}: peak t must not be 0",
                        int(peaks.index[bad][0]) + 1, "t")
    bad = ~unknown & np.isin(sign, (-1.0, 1.0)) & (np.sign(t) != sign)
    if bad.any():
        raise DataError("peak table", f"study {study!r}: sign disagrees with the sign of t",
                        int(peaks.index[bad][0]) + 1, "sign")


def study_bounds(peaks_df: pd.DataFrame, n1, n2, t_thr, space: MaskSpace, kernel,
                 unknown_peak_mode: str = "corrected", combine: str = "weighted"):
    """Lower and upper bound maps of one study.

    Parameters
    ----------
    peaks_df : pandas.DataFrame
        Peaks of the study: ``x, y, z`` (MNI mm), ``t`` (signed, NaN unknown), ``sign``.
    n1, n2 : float
        Sample sizes (``n2`` NaN/None for one-sample studies).
    t_thr : float
        Voxel-level t threshold of the study.
    space : MaskSpace
        Voxel space.
    kernel : object
        Has ``weights(xyz) -> (indices, K)`` (:mod:`analysis.sdm.maps.kernel`).
    unknown_peak_mode : {"corrected", "sdm621"}
        Effect given to peaks without a statistic.
    combine : {"weighted", "maxmin", "maxk"}
        Rule for several peaks (module docstring).

    Returns
    -------
    lower, upper : numpy.ndarray, float32, shape (V,)
    """
    if combine not in COMBINE_RULES:
        raise ValueError(f"combine must be one of {COMBINE_RULES}, got {combine!r}")
    n2v = None if n2 is None or not np.isfinite(n2) else float(n2)
    g_thr = float(g_from_t(t_thr, n1, n2v))
    nv = space.n_voxels
    lower = np.full(nv, -g_thr)
    upper = np.full(nv, g_thr)
    if peaks_df is None or len(peaks_df) == 0:
        return lower.astype(np.float32), upper.astype(np.float32)
    g = peak_effects(peaks_df, n1, n2v, t_thr, unknown_peak_mode)
    xyz = peaks_df[["x", "y", "z"]].to_numpy(dtype=float)
    if combine == "weighted":
        return _weighted(kernel, xyz, g, g_thr, nv)
    if combine == "maxk":
        kbest = np.zeros(nv)
        for p in range(len(g)):
            idx, k = kernel.weights(xyz[p])
            win = k > kbest[idx]
            i = idx[win]
            kbest[i] = k[win]
            lower[i] = -g_thr + k[win] * (g[p] + g_thr)
            upper[i] = g_thr + k[win] * (g[p] - g_thr)
        return lower.astype(np.float32), upper.astype(np.float32)
    sides = {}
    for sgn in (1.0, -1.0):
        sel = np.nonzero(np.sign(g) == sgn)[0]
        if sel.size == 0:
            continue
        lo = np.full(nv, -g_thr)
        up = np.full(nv, g_thr)
        kmax = np.zeros(nv)
        op = np.maximum if sgn > 0 else np.minimum
        for p in sel:
            idx, k = kernel.weights(xyz[p])
            lo[idx] = op(lo[idx], -g_thr + k * (g[p] + g_thr))
            up[idx] = op(up[idx], g_thr + k * (g[p] - g_thr))
            kmax[idx] = np.maximum(kmax[idx], k)
        sides[sgn] = (lo, up, kmax)
    if len(sides) == 1:
        lo, up, _ = next(iter(sides.values()))
        return lo.astype(np.float32), up.astype(np.float32)
    (lp, up_p, kp), (ln, un, kn) = sides[1.0], sides[-1.0]
    pos = kp >= kn
    lower = np.where(pos, lp, ln)
    upper = np.where(pos, up_p, un)
    return lower.astype(np.float32), upper.astype(np.float32)


def _weighted(kernel, xyz, g, g_thr, nv):
    """``combine="weighted"``: K = max_p K_p, g = odds-weighted mean of the peak g."""
    k_max = np.zeros(nv)
    sum_w = np.zeros(nv)
    sum_wg = np.zeros(nv)
    n_one = np.zeros(nv)
    sum_one = np.zeros(nv)
    for p in range(len(g)):
        idx, k = kernel.weights(xyz[p])
        k = np.asarray(k, dtype=float)
        one = k >= 1.0 - 1e-7
        k_max[idx] = np.maximum(k_max[idx], k)
        n_one[idx[one]] += 1.0
        sum_one[idx[one]] += g[p]
        w = k[~one] / (1.0 - k[~one])
        sum_w[idx[~one]] += w
        sum_wg[idx[~one]] += w * g[p]
    with np.errstate(invalid="ignore", divide="ignore"):
        g_eff = np.where(n_one > 0, sum_one / n_one,
                         np.where(sum_w > 0, sum_wg / sum_w, 0.0))
    lower = -g_thr + k_max * (g_eff + g_thr)
    upper = g_thr + k_max * (g_eff - g_thr)
    return lower.astype(np.float32), upper.astype(np.float32)


def recreation_space(space: MaskSpace, recreation_mask=None) -> tuple[MaskSpace, np.ndarray | None]:
    """Where study maps are recreated for an analysis on ``space``.

    Peaks outside the recreation mask keep their position; their kernel reaches the mask's
    voxels around them (SDM-PSI v6.21, :mod:`analysis.sdm.maps.kernel`). When ``space`` is a proper
    sub-region of the recreation mask (a region of interest), the maps must still be recreated
    on the whole mask and then restricted: recreated on the region itself, every peak elsewhere
    in the brain would be moved onto the region's edge as a full-strength known effect (found by
    a whole-pipeline null calibration: 95 % of the peaks moved a median 29 mm, 66 % voxel-FWE
    false positives instead of about 8 %).

    Parameters
    ----------
    space : MaskSpace
        The analysis space.
    recreation_mask : nibabel image, optional
        The whole mask of the analysis (e.g. SDM-PSI's grey-matter mask); default: ``space``.

    Returns
    -------
    full : MaskSpace
        The recreation space (``space`` itself unless it is a proper sub-region of
        ``recreation_mask``).
    index : ndarray or None
        Positions of ``space``'s voxels in ``full`` (None when ``full`` is ``space``).
    """
    if recreation_mask is None:
        return space, None
    gmask = np.asarray(recreation_mask.dataobj) > 0
    same_grid = space.shape == gmask.shape and np.allclose(space.affine, recreation_mask.affine)
    if not same_grid or (space.mask & ~gmask).any() or space.n_voxels == int(gmask.sum()):
        return space, None
    full = MaskSpace(recreation_mask)
    return full, full.voxel_index(space.xyz)


def preprocess(dataset, space: MaskSpace, *, fwhm: float = 20.0, anisotropy: float = 1.0,
               unknown_peak_mode: str = "corrected", template="enge_fit",
               path_model: str = "gaussian", combine: str = "weighted",
               outside_stretch: float = 1.5, outside_radius: float = 16.0,
               recreation_mask=None, kernel=None, progress: bool = True) -> Bounds:
    """Bound maps of every study of an :class:`~analysis.sdm.inputs.dataset.SDMDataset`.

    Parameters
    ----------
    dataset : SDMDataset
        Studies (``study, n1, n2, t_thr``), MNI peaks (``study, x, y, z, t, sign``) and the
        studies' statistical maps (``images``; exact effects where they have a value).
    space : MaskSpace
        Voxel space (any mask on the 2 mm grid).
    fwhm : float
        Kernel FWHM in mm (20, as SDM-PSI).
    anisotropy : float
        Degree of anisotropy in [0, 1] (1, as SDM-PSI).
    unknown_peak_mode : {"corrected", "sdm621"}
        Effect of peaks without a statistic (module docstring).
    template : str or numpy.ndarray
        Stretch template of the anisotropic kernel (:func:`analysis.sdm.maps.kernel.make_kernel`):
        a name of :mod:`analysis.sdm.maps.templates` (default ``"enge_fit"``, the template fitted on
        SDM-PSI's own maps and shipped with the engine) or an array fitted by
        :mod:`analysis.kernel_template`.
    path_model : {"gaussian", "product"}
        See :class:`analysis.sdm.maps.kernel.AnisotropicKernel`.
    combine : {"weighted", "maxmin", "maxk"}
        Rule for several peaks of a study.
    outside_stretch, outside_radius : float
        Peaks outside the mask (:func:`analysis.sdm.maps.kernel.make_kernel`).
    recreation_mask : nibabel image, optional
        The mask the maps are recreated on when ``space`` is a region of it
        (:func:`recreation_space`); default ``space`` itself.
    kernel : object, optional
        A prepared kernel (overrides fwhm/anisotropy/template), e.g. to reuse its peak cache;
        maps are recreated on its space and restricted to ``space``.
    progress : bool
        Report progress (a bar in a terminal, log lines otherwise).

    Returns
    -------
    Bounds

    References
    ----------
    Radua J et al. (2012) Eur Psychiatry 27:605-611; Radua J et al. (2014) Front Psychiatry 5:13;
    Albajes-Eizagirre A et al. (2019) NeuroImage 186:174-184.
    """
    from analysis.sdm.inputs.statmaps import exact_bounds, sample_map
    from analysis.sdm.maps.kernel import make_kernel

    if combine not in COMBINE_RULES:
        raise ValueError(f"combine must be one of {COMBINE_RULES}, got {combine!r}")
    if unknown_peak_mode not in UNKNOWN_PEAK_MODES:
        raise ValueError(f"unknown_peak_mode must be one of {UNKNOWN_PEAK_MODES}, "
                         f"got {unknown_peak_mode!r}")
    t0 = time.perf_counter()
    if kernel is None:
        rec, index = recreation_space(space, recreation_mask)
        kernel = make_kernel(rec, fwhm=fwhm, anisotropy=anisotropy, template=template,
                             path_model=path_model, outside_stretch=outside_stretch,
                             outside_radius=outside_radius)
    else:  # a prepared kernel brings its own recreation space: locate the analysis voxels in it
        rec = kernel.space
        index = None if rec is space else rec.voxel_index(space.xyz)
    if index is not None and (index < 0).any():
        raise ValueError("the analysis space is not inside the recreation space of the kernel")
    studies = dataset.studies.reset_index(drop=True)
    k = len(studies)
    lower = np.empty((k, space.n_voxels), dtype=np.float32)
    upper = np.empty((k, space.n_voxels), dtype=np.float32)
    n1 = studies["n1"].to_numpy(dtype=float)
    n2 = studies["n2"].to_numpy(dtype=float)
    t_thr = studies["t_thr"].to_numpy(dtype=float)
    for i in range(k):
        _check_study(studies.at[i, "study"], n1[i], n2[i], t_thr[i],
                     dataset.study_peaks(studies.at[i, "study"]), i + 1)
    images = getattr(dataset, "images", None) or {}
    n_exact: dict = {}
    for i in progress_bar(range(k), desc="SDM pre-processing", disable=not progress,
                          unit="study", logger=LGR):
        sid = studies.at[i, "study"]
        if hasattr(kernel, "prefetch"):  # the kernels of the study's peaks, in parallel
            kernel.prefetch(dataset.study_peaks(sid)[["x", "y", "z"]].to_numpy(dtype=float))
        lo, up = study_bounds(dataset.study_peaks(sid), n1[i], n2[i], t_thr[i], rec, kernel,
                              unknown_peak_mode, combine)
        lower[i], upper[i] = (lo, up) if index is None else (lo[index], up[index])
        if sid in images:  # exact wherever its statistical map has a value
            n_exact[sid] = exact_bounds(lower[i], upper[i],
                                        sample_map(images[sid], space, f"map of study {sid!r}"),
                                        n1[i], n2[i])
    if n_exact:
        LGR.info("statistical maps of %d studies: %s exact voxels", len(n_exact),
                 ", ".join(f"{s} {v}" for s, v in n_exact.items()))
    g_thr = g_from_t(t_thr, n1, n2)
    LGR.info("pre-processed %d studies on %d voxels%s in %.1f s", k, space.n_voxels,
             "" if index is None else f" (recreated on {rec.n_voxels} voxels)",
             time.perf_counter() - t0)
    return Bounds(list(studies["study"]), lower, upper, np.asarray(g_thr, dtype=float),
                  n1, n2, space)
