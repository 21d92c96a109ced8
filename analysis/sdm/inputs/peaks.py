"""The text peak table: one row per reported (or simulated) peak, and its one rule set.

Columns, exactly and in this order (:data:`PEAK_COLUMNS`)::

    study  peak_id  sign  x  y  z  space  stat_type  stat_value  provenance  note

``sign``
    ``1`` = patients > controls, ``-1`` = controls > patients.
``space``
    ``MNI``, ``TAL`` (native Talairach; converted with the inverse of Lancaster et al. 2007
    icbm_other2tal) or ``TAL_BRETT`` (Talairach obtained with Brett's mni2tal; Brett inverse).
``stat_type`` / ``stat_value``
    ``t`` or ``z`` (signed: negative on a ``-1`` row), ``p`` (one-tailed, in (0, 1), unsigned) or
    ``none`` (blank value; the statistic was not reported).
``provenance``
    ``original:<citation; table>``, ``simulated:v<generator_version>:seed=<seed>``,
    ``sdm-import:<source>`` (imported from an SDM project declared to be the authors' data) or
    ``unknown:<what>`` (imported, provenance unknown: never counted as real).

:func:`check_peaks` validates a table read as text and adds MNI coordinates, the signed t, df
and a record of every conversion; :func:`format_peaks` is its canonical text form. Every entry
point of the engine (an SDM-PSI project folder, NiMARE, Python tables) goes through them; the
compendium reads and writes its ``data/peaks.tsv`` with them.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
import pandas as pd

from analysis.sdm.errors import DataError
from analysis.sdm.inputs.coords import MAX_ABS_T, MAX_ABS_Z, SPACE_TO_MNI, p_to_t, to_mni, z_to_t
from analysis.sdm.inputs.io import format_number
from analysis.sdm.inputs.studies import STUDY_SPACES, reported_signs

LGR = logging.getLogger(__name__)

#: how a peak table is named in errors when the caller names no file
PEAK_TABLE = "peak table"
#: a peak may lie up to 4 mm (2 voxels) outside the MNI152 2 mm brain mask without a warning
MASK_TOLERANCE_MM = 4.0
#: A peak farther than this from every voxel of the MNI152 2 mm brain mask is outside the brain
#: (an error). SDM-PSI accepts peaks outside its mask and centres the kernel at the peak's own
#: position (Enge et al. 2021's project: 49 of 687 peaks outside the grey-matter mask, 6 of them
#: 4-12 mm outside the brain, all used by SDM-PSI v6.21, as its bound maps show); only gross
#: coordinate errors (a sign or axis swapped, a value in voxels) lie this far out.
OUTSIDE_BRAIN_MM = 20.0
#: a known |t| may be below the study's t_thr by rounding only (beyond it: a warning)
T_BELOW_THRESHOLD_TOLERANCE = 0.01
PEAK_COLUMNS = ["study", "peak_id", "sign", "x", "y", "z", "space", "stat_type", "stat_value",
                "provenance", "note"]
STAT_TYPES = ("t", "z", "p", "none")
PROVENANCE_KINDS = ("original:", "simulated:", "sdm-import:", "unknown:")
#: Provenance prefix of peaks whose origin is not known (an SDM project imported without the
#: provenance record of ``export-sdm`` and without a declared source): neither real nor a
#: stand-in, and never counted as real.
UNKNOWN_PREFIX = "unknown:"


def _float(cell) -> float | None:
    s = str(cell).strip()
    try:
        v = float(s)
    except ValueError:
        return None
    return v if np.isfinite(v) else None


def _int(cell) -> int | None:
    v = _float(cell)
    return int(v) if v is not None and float(v).is_integer() else None


def check_peaks(raw: pd.DataFrame, studies: pd.DataFrame, file: str = PEAK_TABLE, *,
                check_mask: bool = True, check_duplicates: bool = True,
                mask_tolerance_mm: float = MASK_TOLERANCE_MM,
                t_tolerance: float = T_BELOW_THRESHOLD_TOLERANCE,
                check_provenance: bool = True, warnings: list[str] | None = None
                ) -> tuple[pd.DataFrame, list[DataError]]:
    """Validate a peak table read as text and convert every peak to MNI and t.

    This is the one rule set of every entry point (``peaks.tsv``, an SDM-PSI project folder, a
    NiMARE Dataset, the engine's Python tables: :class:`analysis.sdm.inputs.dataset.SDMDataset`). What
    SDM-PSI itself refuses or cannot compute with is an error; what it accepts although a real
    project is merely untidy is a warning. Sources of each rule:

    - errors: a coordinate or statistic that is not a finite number, a zero t or a t whose sign
      contradicts the peak's sign, p outside (0, 1) (SDM-PSI's peak format: ``x,y,z,t`` with a
      signed non-zero t, or ``p``/``n``; SDM-PSI manual and Albajes-Eizagirre et al. 2019);
      |t| above :data:`analysis.sdm.inputs.coords.MAX_ABS_T` or |z| above
      :data:`analysis.sdm.inputs.coords.MAX_ABS_Z` (plausibility; Enge et al. 2021 truncated t > 50 to
      50 before entering them in SDM-PSI); a peak more than :data:`OUTSIDE_BRAIN_MM` outside the
      MNI152 brain (a gross coordinate error); unknown studies and spaces (SDM-PSI matches peak
      files to ``sdm_table.txt`` rows and reads only its six suffixes);
    - warnings: a peak outside the brain mask by more than ``mask_tolerance_mm`` but within
      :data:`OUTSIDE_BRAIN_MM` (SDM-PSI keeps it where it is; Enge et al.'s project has six
      4-12 mm out); two peaks of one study with the same sign and coordinates (Enge et al.'s
      lee2011vis reports -42,27,0 twice; SDM-PSI reads both); a known |t| below the study's
      ``t_thr`` (Enge et al.'s booth2007 and xue2004; SDM-PSI uses the t as given).

    Parameters
    ----------
    raw : pandas.DataFrame
        Output of :func:`analysis.sdm.inputs.io.read_tsv_text` (index = data row number).
    studies : pandas.DataFrame
        Validated study table (:func:`analysis.sdm.inputs.studies.check_studies`); gives df, the study's
        space and its reported contrasts.
    file : str
        File name used in error messages.
    check_mask : bool
        Check coordinates against the 2 mm MNI152 brain mask after conversion to MNI (error
        beyond :data:`OUTSIDE_BRAIN_MM`, warning beyond ``mask_tolerance_mm``).
    check_duplicates : bool
        Look for repeated peaks and for known t values below the study's ``t_thr`` (by more
        than ``t_tolerance``, the rounding of printed statistics); both are warnings.
    mask_tolerance_mm : float
        A peak may lie this far outside the brain mask without a warning (4 mm: 2 voxels).
    t_tolerance : float
        A known |t| may be below the study's t_thr by this much (rounding only).
    check_provenance : bool
        Check the ``provenance`` column (off for tables that never had one, e.g. a NiMARE
        Dataset or the engine's Python tables).
    warnings : list of str, optional
        Receives one line per warning (``file: row N, field F: message``); when None, the
        warnings are logged.

    Returns
    -------
    peaks : pandas.DataFrame
        Typed table: the columns of :data:`PEAK_COLUMNS` plus ``x_mni, y_mni, z_mni, t, df,
        conversion``.
    errors : list of DataError
        Every problem found.
    """
    errors: list[DataError] = []
    warned: list[tuple[int, str]] = []

    def err(row, field, msg):
        errors.append(DataError(file, msg, row=row, field=field))

    def warn(row, field, msg):
        warned.append((row or 0, str(DataError(file, msg, row=row, field=field))))

    missing = [c for c in PEAK_COLUMNS if c not in raw.columns]
    extra = [c for c in raw.columns if c not in PEAK_COLUMNS]
    if missing or extra or list(raw.columns) != PEAK_COLUMNS:
        err(0, (missing or extra or [None])[0],
            f"columns must be exactly {PEAK_COLUMNS}; got {list(raw.columns)}")
        return pd.DataFrame(columns=PEAK_COLUMNS), errors

    # a duplicated study id is reported by check_studies; look up the first row only here
    st = studies.drop_duplicates("study").set_index("study")
    allowed = reported_signs(studies)
    n = len(raw)
    rec = {c: [] for c in ["sign", "x", "y", "z", "stat_value", "peak_id"]}
    seen_id: dict[tuple, int] = {}
    seen_xyz: dict[tuple, int] = {}
    first_space: dict[str, tuple[str, int]] = {}
    for row, r in raw.iterrows():
        study = r["study"].strip()
        known = study in st.index
        if not known:
            err(row, "study", f"unknown study {study!r} (not in studies.tsv)")
        pid = _int(r["peak_id"])
        if pid is None or pid < 1:
            err(row, "peak_id", f"{r['peak_id']!r} is not a positive integer")
        elif (study, pid) in seen_id:
            err(row, "peak_id", f"duplicate peak_id {pid} for {study} (also row "
                f"{seen_id[(study, pid)]})")
        else:
            seen_id[(study, pid)] = row
        rec["peak_id"].append(pid if pid is not None else -1)
        sign = _int(r["sign"])
        if sign not in (1, -1):
            err(row, "sign", f"{r['sign']!r} is not 1 (patients > controls) or -1 "
                "(controls > patients)")
            sign = 0
        elif known and sign not in allowed[study]:
            rep = st.loc[study].get("contrasts_reported", "")
            err(row, "sign", f"sign {sign:+d} contradicts the contrasts the study reported "
                f"({rep!r})")
        rec["sign"].append(sign)
        xyz = []
        for ax in ("x", "y", "z"):
            v = _float(r[ax])
            if v is None:
                err(row, ax, f"coordinate {r[ax]!r} is not a number")
                v = np.nan
            xyz.append(v)
            rec[ax].append(v)
        space = r["space"].strip()
        if space not in SPACE_TO_MNI:
            err(row, "space", f"unknown space {space!r}; expected one of {sorted(SPACE_TO_MNI)}")
        elif known:
            sspace = str(st.loc[study].get("space", "") or "").strip()
            if sspace in STUDY_SPACES and space not in STUDY_SPACES[sspace]:
                err(row, "space", f"{space!r} contradicts the study's space {sspace!r} in "
                    "studies.tsv")
            if study in first_space and first_space[study][0] != space:
                err(row, "space", f"{space!r} differs from the study's other peaks "
                    f"({first_space[study][0]!r}, row {first_space[study][1]}); one space per "
                    "study")
            first_space.setdefault(study, (space, row))
        key = (study, sign, *xyz)
        if check_duplicates and all(np.isfinite(xyz)) and key in seen_xyz:
            warn(row, "x", f"duplicate peak: same study, sign and coordinates as row "
                 f"{seen_xyz[key]} (SDM-PSI uses both)")
        else:
            seen_xyz[key] = row
        stype = r["stat_type"].strip()
        cell = r["stat_value"].strip()
        val = np.nan
        if stype not in STAT_TYPES:
            err(row, "stat_type", f"{stype!r} is not one of {list(STAT_TYPES)}")
        elif stype == "none":
            if cell:
                err(row, "stat_value", f"{cell!r} given with stat_type 'none' (leave it blank)")
        else:
            v = _float(cell)
            if v is None:
                err(row, "stat_value", f"{cell!r} is not a number (stat_type {stype!r})")
            elif stype == "p":
                if not 0 < v < 1:
                    err(row, "stat_value", f"p value {cell} outside (0, 1)")
                else:
                    val = v
            elif v == 0 or (sign and np.sign(v) != sign):
                err(row, "stat_value", f"{stype} = {cell} contradicts sign {sign:+d} "
                    f"({stype} must be {'positive' if sign > 0 else 'negative'} and non-zero)")
            elif abs(v) > (bound := MAX_ABS_T if stype == "t" else MAX_ABS_Z):
                err(row, "stat_value", f"|{stype}| = {abs(v):g} exceeds {bound:g}, more than any "
                    "real study reports (a typing or unit error?)")
            else:
                val = v
        rec["stat_value"].append(val)
        prov = r["provenance"].strip()
        if check_provenance and not prov.startswith(PROVENANCE_KINDS) or prov.endswith(":"):
            err(row, "provenance", f"{prov!r} must start with one of {list(PROVENANCE_KINDS)} "
                "followed by the source")

    out = pd.DataFrame({
        "study": raw["study"].str.strip().to_numpy(),
        "peak_id": np.asarray(rec["peak_id"], dtype=np.int64),
        "sign": np.asarray(rec["sign"], dtype=np.int64),
        "x": np.asarray(rec["x"], float), "y": np.asarray(rec["y"], float),
        "z": np.asarray(rec["z"], float),
        "space": raw["space"].str.strip().to_numpy(),
        "stat_type": raw["stat_type"].str.strip().to_numpy(),
        "stat_value": np.asarray(rec["stat_value"], float),
        "provenance": raw["provenance"].str.strip().to_numpy(),
        "note": raw["note"].to_numpy(),
    }, index=raw.index)
    _convert(out, st)
    converted = out["stat_type"].isin(["z", "p"]).to_numpy() & (np.abs(out["t"]) > MAX_ABS_T)
    for row, tv, stype in zip(out.index[converted], out["t"][converted],
                              out["stat_type"][converted]):
        err(row, "stat_value", f"converts to |t| = {abs(tv):g} (from {stype} with the study's df), "
            f"above {MAX_ABS_T:g}: more than any real study reports")
    if check_duplicates and "t_thr" in st:  # a reported peak cannot be below its threshold
        tol = float(t_tolerance)
        thr = out["study"].map(st["t_thr"]).to_numpy(float)
        tv = out["t"].to_numpy(float)
        with np.errstate(invalid="ignore"):
            low = np.isfinite(tv) & np.isfinite(thr) & (np.abs(tv) < thr - tol)
        for row, a, b in zip(out.index[low], tv[low], thr[low]):
            warn(row, "stat_value", f"|t| = {abs(a):.3f} is below the study's voxel threshold "
                 f"t_thr = {b:.3f} (a reported peak should pass it; SDM-PSI uses the t as given: "
                 "check the value or the study's correction)")
    if check_mask and n:
        tol = float(mask_tolerance_mm)
        xyz = out[["x_mni", "y_mni", "z_mni"]].to_numpy()
        dist = np.zeros(n)
        ok = np.isfinite(xyz).all(axis=1)
        if ok.any():
            dist[ok] = brain_distance_mm(xyz[ok])
        for row, d, (a, b, c) in zip(out.index, dist, xyz):
            if d > OUTSIDE_BRAIN_MM:
                err(row, "x", f"coordinate ({a:.1f}, {b:.1f}, {c:.1f}) MNI lies {d:.1f} mm "
                    f"outside the MNI152 brain (more than {OUTSIDE_BRAIN_MM:g} mm: check the "
                    "coordinates and their space)")
            elif d > tol:
                warn(row, "x", f"coordinate ({a:.1f}, {b:.1f}, {c:.1f}) MNI lies {d:.1f} mm "
                     f"outside the 2 mm MNI152 brain mask (tolerance {tol:g} mm; SDM-PSI keeps "
                     "it where it is)")
    errors.sort(key=lambda e: (e.row or 0))
    warned.sort(key=lambda w: w[0])
    if warnings is None:
        for _, line in warned:
            LGR.warning("%s", line)
    else:
        warnings.extend(line for _, line in warned)
    return out.reset_index(drop=True), errors


@lru_cache(maxsize=1)
def _brain_distance() -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) of every grid voxel to the MNI152 2 mm brain mask, and the mask's affine."""
    from scipy.ndimage import distance_transform_edt

    from analysis.sdm.maps.space import brain_mask

    mask = brain_mask()
    data = np.asarray(mask.dataobj) > 0
    return distance_transform_edt(~data) * abs(float(mask.affine[0, 0])), mask.affine


def brain_distance_mm(xyz_mni) -> np.ndarray:
    """Distance (mm) of each MNI point from the MNI152 2 mm brain mask (0 inside; inf off the
    grid or for a non-finite coordinate); the nearest grid voxel is used.
    """
    from analysis.sdm.maps.space import mni_to_ijk

    xyz = np.atleast_2d(np.asarray(xyz_mni, dtype=float))
    dist, affine = _brain_distance()
    out = np.full(len(xyz), np.inf)
    finite = np.isfinite(xyz).all(axis=1)
    if finite.any():
        with np.errstate(invalid="ignore", over="ignore"):
            ijk = np.clip(np.rint(mni_to_ijk(xyz[finite], affine)), -1, max(dist.shape))
        ijk = ijk.astype(np.int64)
        on_grid = np.all((ijk >= 0) & (ijk < np.array(dist.shape)), axis=1)
        sub = np.full(len(ijk), np.inf)
        sub[on_grid] = dist[tuple(ijk[on_grid].T)]
        out[finite] = sub
    return out


def _convert(peaks: pd.DataFrame, st: pd.DataFrame) -> None:
    """Add ``x_mni, y_mni, z_mni, t, df, conversion`` in place (vectorised by group)."""
    n = len(peaks)
    mni = np.full((n, 3), np.nan)
    t = np.full(n, np.nan)
    df = peaks["study"].map(st["df"]).to_numpy(dtype=float) if "df" in st else np.full(n, np.nan)
    conv = [[] for _ in range(n)]
    xyz = peaks[["x", "y", "z"]].to_numpy(float)
    for space, (_, text) in SPACE_TO_MNI.items():
        idx = np.flatnonzero(peaks["space"].to_numpy() == space)
        if len(idx):
            mni[idx] = to_mni(xyz[idx], space)
            if text:
                for i in idx:
                    conv[i].append(text)
    stype = peaks["stat_type"].to_numpy()
    val = peaks["stat_value"].to_numpy(float)
    sign = peaks["sign"].to_numpy(float)
    ok = np.isfinite(df) & (df > 0)
    is_t = stype == "t"
    t[is_t] = val[is_t]
    with np.errstate(invalid="ignore"):
        is_z = (stype == "z") & ok & np.isfinite(val)
        t[is_z] = z_to_t(val[is_z], df[is_z])
        is_p = (stype == "p") & ok & np.isfinite(val) & (val > 0) & (val < 1)
        t[is_p] = sign[is_p] * p_to_t(val[is_p], df[is_p])
    for i in np.flatnonzero(is_z):
        conv[i].insert(0, f"z→t (df={df[i]:g})")
    for i in np.flatnonzero(is_p):
        conv[i].insert(0, f"one-tailed p→t (df={df[i]:g})")
    peaks["x_mni"], peaks["y_mni"], peaks["z_mni"] = mni[:, 0], mni[:, 1], mni[:, 2]
    peaks["t"] = t
    peaks["df"] = df
    peaks["conversion"] = ["; ".join(c) for c in conv]


def format_peaks(df: pd.DataFrame, file: str = PEAK_TABLE) -> pd.DataFrame:
    """Canonical text form of a peak table: :data:`PEAK_COLUMNS`, sorted, numbers normalised
    (``file`` names the table in errors).
    """
    missing = [c for c in PEAK_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(file, f"cannot write peaks: missing columns {missing}", row=0,
                        field=missing[0])
    out = df[PEAK_COLUMNS].copy()
    out["_pid"] = pd.to_numeric(out["peak_id"], errors="coerce")
    out = out.sort_values(["study", "_pid"], kind="stable").drop(columns="_pid")
    text = pd.DataFrame(index=out.index)
    for col in PEAK_COLUMNS:
        vals = out[col]
        if col in ("peak_id", "sign", "x", "y", "z", "stat_value"):
            text[col] = [format_number(v) if not isinstance(v, str) else v.strip() for v in vals]
        else:
            text[col] = ["" if (v is None or (isinstance(v, float) and np.isnan(v))) else str(v)
                         for v in vals]
        if text[col].str.contains("[\t\n\r]", regex=True).any():
            raise DataError(file, "cells may not contain tabs or line breaks", field=col)
    return text.reset_index(drop=True)


