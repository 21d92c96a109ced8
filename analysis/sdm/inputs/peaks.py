"""The peak table ``data/peaks.tsv``: one row per reported (or simulated) peak.

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

:func:`load_peaks` validates and adds MNI coordinates, the signed t, df and a record of every
conversion; :func:`write_peaks` is the one canonical (atomic, sorted, formatted) writer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.sdm.errors import DataError, DataErrors
from analysis.sdm.inputs.coords import MAX_ABS_T, MAX_ABS_Z, SPACE_TO_MNI, p_to_t, to_mni, z_to_t
from analysis.sdm.inputs.io import atomic_path, format_number, read_tsv_text
from analysis.sdm.inputs.studies import STUDY_SPACES, reported_signs

LGR = logging.getLogger(__name__)

PEAKS_FILE = "peaks.tsv"
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
#: Provenance prefixes of real peaks (transcribed from a publication, or the authors' SDM project).
REAL_PREFIXES = ("original:", "sdm-import:")
#: Provenance prefix of the simulated stand-ins (:mod:`analysis.simulate`).
SIMULATED_PREFIX = "simulated:"
#: Provenance prefix of peaks whose origin is not known (an SDM project imported without the
#: provenance record of ``export-sdm`` and without a declared source): neither real nor a
#: stand-in, and never counted as real.
UNKNOWN_PREFIX = "unknown:"
#: How :data:`UNKNOWN_PREFIX` reads in summaries.
UNKNOWN_LABEL = "imported, provenance unknown"


@dataclass(frozen=True)
class ProvenanceVerdict:
    """Which studies of the study table have real peaks, simulated ones, or none at all.

    Attributes
    ----------
    studies : list of str
        Every study of the study table, in table order.
    real, simulated, no_peaks, unknown : list of str
        A partition of ``studies``: every peak row real; at least one simulated row; no peak
        row at all; no simulated row but at least one of unknown provenance
        (:data:`UNKNOWN_LABEL`).
    n_peaks_real, n_peaks_simulated, n_peaks_unknown : int
        Peak rows of the table's studies by kind.
    """

    studies: list[str]
    real: list[str]
    simulated: list[str]
    no_peaks: list[str]
    n_peaks_real: int = 0
    n_peaks_simulated: int = 0
    unknown: list[str] = field(default_factory=list)
    n_peaks_unknown: int = 0

    @property
    def n_studies(self) -> int:
        """All studies of the study table."""
        return len(self.studies)

    @property
    def all_real(self) -> bool:
        """True only when every study of the table has peaks and all of them are real."""
        return bool(self.studies) and len(self.real) == len(self.studies)

    @property
    def statement(self) -> str:
        """One sentence: real studies (named), simulated stand-ins, studies without peaks."""
        text = (f"{len(self.real)} of {self.n_studies} studies' inputs real "
                f"({', '.join(self.real) or 'none'}); {len(self.simulated)} simulated stand-ins")
        if self.unknown:
            text += (f"; {len(self.unknown)} {UNKNOWN_LABEL} ({', '.join(self.unknown)})")
        if self.no_peaks:
            text += f"; {len(self.no_peaks)} without peaks ({', '.join(self.no_peaks)})"
        return text


def classify_provenance(study_ids, peak_studies, peak_provenance,
                        file: str = PEAKS_FILE) -> ProvenanceVerdict:
    """Classify every study of the study table by the provenance of its peak rows.

    This is the one implementation behind ``validate-data``, the meta-analysis stage and the
    manuscript's provenance notice. The verdict is taken over **all** studies of the study
    table: a study without any peak row is neither real nor simulated but listed apart (and
    the inputs are then not "all real"); so is a study with a peak of unknown provenance
    (``unknown:``, e.g. an SDM project imported without its provenance record).

    Parameters
    ----------
    study_ids : sequence of str
        The study table's identifiers.
    peak_studies, peak_provenance : sequence of str
        The ``study`` and ``provenance`` columns of the peak table (row order = data rows).
    file : str
        Peak file named in errors.

    Returns
    -------
    ProvenanceVerdict

    Raises
    ------
    DataError
        A provenance that starts with none of the known prefixes (row and field named).
    """
    studies = list(dict.fromkeys(str(s) for s in study_ids))
    known = set(studies)
    rank = {"real": 0, "unknown": 1, "simulated": 2}  # a study takes its worst row's kind
    kind_of: dict[str, str] = {}
    counts = dict.fromkeys(rank, 0)
    for i, (study, tag) in enumerate(zip(peak_studies, peak_provenance, strict=True), start=1):
        tag = str(tag)
        if tag.startswith(SIMULATED_PREFIX):
            kind = "simulated"
        elif tag.startswith(UNKNOWN_PREFIX):
            kind = "unknown"
        elif tag.startswith(REAL_PREFIXES):
            kind = "real"
        else:
            raise DataError(file, f"unknown provenance {tag!r}: expected a value starting with "
                            f"one of {list(PROVENANCE_KINDS)}", row=i, field="provenance")
        if str(study) not in known:
            continue
        counts[kind] += 1
        old = kind_of.get(str(study), "real")
        kind_of[str(study)] = kind if rank[kind] > rank[old] else old
    return ProvenanceVerdict(
        studies=studies,
        real=[s for s in studies if kind_of.get(s) == "real"],
        simulated=[s for s in studies if kind_of.get(s) == "simulated"],
        no_peaks=[s for s in studies if s not in kind_of],
        unknown=[s for s in studies if kind_of.get(s) == "unknown"],
        n_peaks_real=counts["real"], n_peaks_simulated=counts["simulated"],
        n_peaks_unknown=counts["unknown"])


def generator_versions(peak_provenance) -> list[str]:
    """Stand-in generator versions named by ``simulated:v<version>:...`` provenance strings.

    Parameters
    ----------
    peak_provenance : iterable of str
        The ``provenance`` column of a peak table.

    Returns
    -------
    list of str
        The distinct versions (``"2"``, ``"3"``, ...), sorted; empty without simulated rows.
    """
    found = set()
    for tag in peak_provenance:
        tag = str(tag).strip()
        if tag.startswith(SIMULATED_PREFIX):
            head = tag[len(SIMULATED_PREFIX):].split(":", 1)[0]
            if head.startswith("v") and len(head) > 1:
                found.add(head[1:])
    return sorted(found)


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


def check_peaks(raw: pd.DataFrame, studies: pd.DataFrame, file: str = PEAKS_FILE, *,
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
        Validated study table (:func:`analysis.sdm.inputs.studies.load_studies`); gives df, the study's
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


def load_peaks(data_dir: str | Path, studies: pd.DataFrame | None = None, *,
               check_mask: bool = True, **checks) -> pd.DataFrame:
    """Read and validate ``peaks.tsv``; add MNI coordinates, signed t, df and conversions.

    Parameters
    ----------
    data_dir : path-like, optional
        Folder holding ``peaks.tsv`` (and ``studies.tsv`` when ``studies`` is not given).
    studies : pandas.DataFrame, optional
        Validated study table (default :func:`analysis.sdm.inputs.studies.load_studies` of ``data_dir``).
    check_mask : bool
        Reject peaks outside the brain mask (see :func:`check_peaks`).
    **checks
        ``mask_tolerance_mm``, ``t_tolerance`` of :func:`check_peaks` and
        ``corrected_voxel_p`` of :func:`analysis.sdm.inputs.studies.check_studies`.

    Returns
    -------
    pandas.DataFrame
        :data:`PEAK_COLUMNS` plus ``x_mni, y_mni, z_mni`` (mm), ``t`` (signed; NaN where the
        statistic is unknown, ``stat_type == "none"``), ``df`` and ``conversion`` (e.g.
        ``"z→t (df=28); TAL→MNI (Lancaster icbm_other2tal inverse)"``, empty if none), sorted by
        study and peak_id.

    Raises
    ------
    DataError, DataErrors
        Any invalid cell (all of them are listed).
    """
    from analysis.sdm.inputs.studies import load_studies

    ddir = Path(data_dir)
    study_kw, peak_kw = _split_checks(checks)
    if studies is None:
        studies = load_studies(ddir, **study_kw)
    raw = read_tsv_text(ddir / PEAKS_FILE, required=PEAK_COLUMNS)
    peaks, errors = check_peaks(raw, studies, check_mask=check_mask, **peak_kw)
    if errors:
        raise errors[0] if len(errors) == 1 else DataErrors(errors)
    return peaks.sort_values(["study", "peak_id"], kind="stable").reset_index(drop=True)


def _split_checks(checks: dict) -> tuple[dict, dict]:
    """Keyword arguments of the study checks and of the peak checks."""
    unknown = set(checks) - {"corrected_voxel_p", "mask_tolerance_mm", "t_tolerance"}
    if unknown:
        raise TypeError(f"unknown check parameters {sorted(unknown)}")
    study = {k: v for k, v in checks.items() if k == "corrected_voxel_p"}
    return study, {k: v for k, v in checks.items() if k != "corrected_voxel_p"}


def format_peaks(df: pd.DataFrame) -> pd.DataFrame:
    """Canonical text form of a peak table: :data:`PEAK_COLUMNS`, sorted, numbers normalised."""
    missing = [c for c in PEAK_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(PEAKS_FILE, f"cannot write peaks: missing columns {missing}", row=0,
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
            raise DataError(PEAKS_FILE, "cells may not contain tabs or line breaks", field=col)
    return text.reset_index(drop=True)


def write_peaks(df: pd.DataFrame, data_dir: str | Path, studies: pd.DataFrame | None = None,
                *, check_mask: bool = True, **checks) -> Path:
    """Validate and atomically write ``peaks.tsv`` in canonical form.

    The whole table is checked first (as :func:`load_peaks` would read it back); on any error
    nothing is written. Rows are sorted by study and peak_id; numbers are written in their
    shortest exact form. The simulator uses this to replace the simulated rows while keeping
    the ``original:`` rows untouched.

    Parameters
    ----------
    df : pandas.DataFrame
        Peaks with (at least) :data:`PEAK_COLUMNS`; extra columns are dropped.
    data_dir : path-like, optional
        Destination folder.
    studies : pandas.DataFrame, optional
        Study table to validate against (default: ``studies.tsv`` of ``data_dir``).
    check_mask : bool
        Check coordinates against the brain mask.
    **checks
        As :func:`load_peaks`.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    from analysis.sdm.inputs.studies import load_studies

    ddir = Path(data_dir)
    study_kw, peak_kw = _split_checks(checks)
    if studies is None:
        studies = load_studies(ddir, **study_kw)
    text = format_peaks(df)
    raw = text.copy()
    raw.index = pd.RangeIndex(1, len(raw) + 1)
    _, errors = check_peaks(raw, studies, check_mask=check_mask, **peak_kw)
    if errors:
        raise errors[0] if len(errors) == 1 else DataErrors(errors)
    dest = ddir / PEAKS_FILE
    with atomic_path(dest) as tmp:
        lines = ["\t".join(PEAK_COLUMNS)] + ["\t".join(r) for r in text.itertuples(index=False)]
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    LGR.info("wrote %d peaks to %s", len(text), dest)
    return dest
