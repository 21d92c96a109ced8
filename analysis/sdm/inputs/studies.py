"""The text study table: validation and derived columns.

One row per study. :func:`check_studies` validates every cell of a table read as text (all
problems reported at once) and adds the columns the engine needs:

``n1``, ``n2``
    Patients and controls (``n2`` NaN for a one-sample study, ``design == "one-sample"``).
``df``
    ``n1 + n2 - 2`` (two-sample) or ``n1 - 1`` (one-sample).
``p_threshold``, ``threshold_kind``
    The voxel p threshold and ``"corrected"`` / ``"uncorrected"``, parsed from ``correction``
    (e.g. ``p<0.001 uncorrected``).
``t_thr``
    The voxel-level t threshold SDM-PSI needs: one-tailed ``T⁻¹_df(1 - p)`` for an
    uncorrected p; for a corrected threshold the voxel-level t actually applied is unknown and
    the rule of Enge et al. (2021) is used: t for p = ``corrected_voxel_p`` (0.05).
    An explicit ``t_thr`` column (SDM projects, :mod:`analysis.sdm.inputs.project`) takes
    precedence.
``age``
    Sample-size-weighted mean of the two groups' mean ages (NaN when either is not reported).
``female_pct``, ``treated``
    Percentage of women (0-100) and whether patients were treated (``Y``/``N`` → 1/0).
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd

from analysis.sdm.errors import DataError
from analysis.sdm.inputs.coords import MAX_ABS_T, t_threshold

LGR = logging.getLogger(__name__)

#: how a study table is named in errors when the caller names no file
STUDY_TABLE = "study table"
#: "p<0.05 corrected" studies: t_thr = one-tailed t for this p (as Enge et al. 2021)
CORRECTED_VOXEL_P = 0.05

#: Columns every study table has.
REQUIRED = ["study", "n_patients"]
#: Allowed values of the ``contrasts_reported`` items.
CONTRASTS = {"Patients>HC": 1, "HC>Patients": -1}
#: ``space`` column of studies.tsv → allowed ``space`` values of the study's peaks.
STUDY_SPACES = {"MNI": {"MNI"}, "Talairach": {"TAL", "TAL_BRETT"}}
DESIGNS = ("two-sample", "one-sample")
STUDY_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
#: Longest study identifier accepted (it names files of an SDM project folder).
MAX_STUDY_ID = 64
#: Largest group size accepted: no fMRI case-control study comes near it, so a larger value is
#: a typing or unit error (it would dominate every weighted estimate).
MAX_N = 100_000
CORRECTION = re.compile(r"^\s*p\s*<\s*([0-9]*\.?[0-9]+(?:[eE]-?[0-9]+)?)\s+(corrected|uncorrected)\s*$",
                        re.IGNORECASE)


def _num(cell: str) -> float | None:
    """Float of a cell; NaN for blank or NA; None when not numeric."""
    s = cell.strip()
    if s == "" or s.upper() == "NA":
        return float("nan")
    try:
        v = float(s)
    except ValueError:
        return None
    return v if np.isfinite(v) else None


def parse_correction(text: str) -> tuple[float, str] | None:
    """``"p<0.001 uncorrected"`` → ``(0.001, "uncorrected")``; None if not recognised."""
    m = CORRECTION.match(text or "")
    if not m:
        return None
    return float(m.group(1)), m.group(2).lower()


def check_studies(raw: pd.DataFrame, file: str = STUDY_TABLE,
                  corrected_voxel_p: float = CORRECTED_VOXEL_P
                  ) -> tuple[pd.DataFrame, list[DataError]]:
    """Validate a study table read as text and compute the derived columns.

    Parameters
    ----------
    raw : pandas.DataFrame
        Output of :func:`analysis.sdm.inputs.io.read_tsv_text` (index = data row number).
    file : str
        File name used in error messages.
    corrected_voxel_p : float
        Voxel p of "p<... corrected" studies (module docstring).

    Returns
    -------
    studies : pandas.DataFrame
        Typed table with the derived columns (rows with errors are kept, with NaN where a value
        could not be read).
    errors : list of DataError
        Every problem found.
    """
    corrected_p = float(corrected_voxel_p)
    errors: list[DataError] = []

    def err(row, field, msg):
        errors.append(DataError(file, msg, row=row, field=field))

    for col in REQUIRED:
        if col not in raw.columns:
            err(0, col, "required column is missing")
    if errors:
        return pd.DataFrame(), errors
    cols = set(raw.columns)
    has_explicit = {"t_thr", "threshold"} <= cols
    if "correction" not in cols and not has_explicit:
        err(0, "correction", "need a 'correction' column (e.g. 'p<0.001 uncorrected') or both "
            "'t_thr' and 'threshold' columns")
    if "n_controls" not in cols and "design" not in cols:
        err(0, "n_controls", "need an 'n_controls' column (or 'design' = one-sample)")

    if len(raw) == 0:
        err(None, "study", "the table has a header but no study rows")
        return pd.DataFrame(), errors
    out = raw.copy()
    n = len(raw)
    n1 = np.full(n, np.nan)
    n2 = np.full(n, np.nan)
    design = []
    seen: dict[str, tuple[int, str]] = {}
    for k, (row, rec) in enumerate(raw.iterrows()):
        name = rec["study"].strip()
        if len(name) > MAX_STUDY_ID:
            err(row, "study", f"study identifier of {len(name)} characters (at most "
                f"{MAX_STUDY_ID}; it names the SDM peak file): {name[:20]!r}...")
        elif not STUDY_NAME.match(name):
            err(row, "study", f"study identifier {name!r} must be non-empty letters, digits, '_' "
                "or '-' (it names the SDM peak file)")
        elif name.lower() in seen:
            other = seen[name.lower()]
            err(row, "study", f"duplicate study {name!r} (also row {other[0]}, {other[1]!r}; "
                "identifiers are compared ignoring case, as file names are on some systems)")
        else:
            seen[name.lower()] = (row, name)
        des = rec.get("design", "").strip() or "two-sample"
        if des not in DESIGNS:
            err(row, "design", f"{des!r} is not one of {list(DESIGNS)}")
            des = "two-sample"
        design.append(des)
        v = _num(rec["n_patients"])
        if v is None or not np.isfinite(v) or v < 2 or not float(v).is_integer():
            err(row, "n_patients", f"sample size {rec['n_patients']!r} is missing or not an "
                "integer >= 2")
        elif v > MAX_N:
            err(row, "n_patients", f"sample size {rec['n_patients']!r} exceeds {MAX_N:,} (no "
                "study of this kind is that large; check the value)")
        else:
            n1[k] = v
        c = rec.get("n_controls", "")
        v = _num(c)
        if des == "one-sample":
            if v is None or np.isfinite(v):
                err(row, "n_controls", f"{c!r} given for a one-sample study (leave it blank)")
        elif v is None or not np.isfinite(v) or v < 2 or not float(v).is_integer():
            err(row, "n_controls", f"sample size {c!r} is missing or not an integer >= 2")
        elif v > MAX_N:
            err(row, "n_controls", f"sample size {c!r} exceeds {MAX_N:,} (no study of this "
                "kind is that large; check the value)")
        else:
            n2[k] = v
        if "n_total" in cols and np.isfinite(n1[k]):
            tot = _num(rec["n_total"])
            expect = n1[k] + (n2[k] if np.isfinite(n2[k]) else 0)
            if tot is None or (np.isfinite(tot) and tot != expect):
                err(row, "n_total", f"{rec['n_total']!r} differs from n_patients + n_controls = "
                    f"{expect:g}")
    out["design"] = design
    out["n1"] = n1
    out["n2"] = n2
    out["df"] = np.where(np.isfinite(n2), n1 + n2 - 2, n1 - 1)

    # thresholds
    p_thr = np.full(n, np.nan)
    kind = [""] * n
    t_thr = np.full(n, np.nan)
    for k, (row, rec) in enumerate(raw.iterrows()):
        explicit = _num(rec["t_thr"]) if "t_thr" in cols else float("nan")
        if explicit is None or (np.isfinite(explicit) and explicit <= 0):
            err(row, "t_thr", f"{rec['t_thr']!r} is not a positive number")
            explicit = float("nan")
        elif np.isfinite(explicit) and explicit > MAX_ABS_T:
            err(row, "t_thr", f"{rec['t_thr']!r} exceeds the largest plausible |t| ({MAX_ABS_T:g})")
            explicit = float("nan")
        if "correction" in cols and rec["correction"].strip():
            parsed = parse_correction(rec["correction"])
            if parsed is None:
                err(row, "correction", f"{rec['correction']!r} not understood; expected "
                    "'p<P corrected' or 'p<P uncorrected'")
            elif not 0 < parsed[0] < 1:
                err(row, "correction", f"p threshold {parsed[0]} outside (0, 1)")
            else:
                p_thr[k], kind[k] = parsed
        if "threshold" in cols and rec["threshold"].strip():
            th = rec["threshold"].strip().lower()
            if th not in ("corrected", "uncorrected"):
                err(row, "threshold", f"{rec['threshold']!r} is not 'corrected' or 'uncorrected'")
            elif kind[k] and th != kind[k]:
                err(row, "threshold", f"{th!r} contradicts correction {rec['correction']!r}")
            else:
                kind[k] = th
        if np.isfinite(explicit):
            t_thr[k] = explicit
        elif kind[k] == "uncorrected" and not np.isfinite(p_thr[k]):
            err(row, "t_thr", "blank for an uncorrected threshold: give the study's voxel t "
                "threshold (or its p in 'correction')")
        elif kind[k] and np.isfinite(out["df"].iat[k]) and out["df"].iat[k] > 0:
            p_use = p_thr[k] if kind[k] == "uncorrected" else corrected_p
            t_thr[k] = float(t_threshold(p_use, out["df"].iat[k]))
        elif not any(e.row == row for e in errors):
            err(row, "correction", "no voxel threshold: give 'correction' or 't_thr' and "
                "'threshold'")
    out["p_threshold"] = p_thr
    out["threshold_kind"] = kind
    out["t_thr"] = t_thr

    # optional descriptive columns
    for col, lo, hi in [("age_patients_mean", 0, 120), ("age_controls_mean", 0, 120),
                        ("age_patients_sd", 0, 120), ("age_controls_sd", 0, 120),
                        ("female_pct", 0, 100), ("year", 1900, 2100)]:
        if col not in cols:
            out[col] = np.nan
            continue
        vals = np.full(n, np.nan)
        for k, (row, cell) in enumerate(raw[col].items()):
            v = _num(cell)
            if v is None or (np.isfinite(v) and not lo <= v <= hi):
                err(row, col, f"{cell!r} is not a number in [{lo}, {hi}]")
            else:
                vals[k] = v
        out[col] = vals
    m1, m2 = out["age_patients_mean"].to_numpy(float), out["age_controls_mean"].to_numpy(float)
    two = np.isfinite(n2)
    with np.errstate(invalid="ignore"):
        age = np.where(two, (m1 * n1 + m2 * np.where(two, n2, 0)) / (n1 + np.where(two, n2, 0)),
                       m1)
    if "age" in cols:  # an explicit covariate (e.g. an imported SDM table) is kept
        age = np.full(n, np.nan)
        for k, (row, cell) in enumerate(raw["age"].items()):
            v = _num(cell)
            if v is None:
                err(row, "age", f"{cell!r} is not a number")
            else:
                age[k] = v
    out["age"] = age
    if "treated" in cols:
        tr = np.full(n, np.nan)
        for k, (row, cell) in enumerate(raw["treated"].items()):
            s = cell.strip().upper()
            if s in ("Y", "1"):
                tr[k] = 1.0
            elif s in ("N", "0"):
                tr[k] = 0.0
            elif s not in ("", "NA"):
                err(row, "treated", f"{cell!r} is not Y or N")
        out["treated"] = tr
    else:
        out["treated"] = np.nan
    if "space" in cols:
        for row, cell in raw["space"].items():
            if cell.strip() not in STUDY_SPACES:
                err(row, "space", f"{cell!r} is not one of {sorted(STUDY_SPACES)}")
    if "contrasts_reported" in cols:
        for row, cell in raw["contrasts_reported"].items():
            items = [c.strip() for c in cell.split(";") if c.strip()]
            bad = [c for c in items if c not in CONTRASTS]
            if not items or bad:
                err(row, "contrasts_reported", f"{cell!r}: expected items of {sorted(CONTRASTS)} "
                    "separated by ';'")
    out["study"] = out["study"].str.strip()
    return out.reset_index(drop=True), errors


def study_design(studies: pd.DataFrame) -> str:
    """``"two-sample"``, ``"one-sample"`` or ``"mixed"``: the designs of a study table's rows.

    Parameters
    ----------
    studies : pandas.DataFrame
        A checked study table (``n2`` NaN for a one-sample study).
    """
    two = np.isfinite(np.asarray(studies["n2"], dtype=float))
    return "two-sample" if two.all() else "one-sample" if not two.any() else "mixed"


def reported_signs(studies: pd.DataFrame) -> dict[str, set[int]]:
    """Peak signs each study may have: from ``contrasts_reported`` (both when absent)."""
    out = {}
    for rec in studies.to_dict("records"):
        cell = rec.get("contrasts_reported", "")
        items = [c.strip() for c in str(cell or "").split(";") if c.strip() in CONTRASTS]
        out[rec["study"]] = {CONTRASTS[c] for c in items} or {1, -1}
    return out
