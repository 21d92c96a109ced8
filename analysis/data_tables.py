"""The compendium's data tables ``data/studies.tsv`` and ``data/peaks.tsv``: reading, writing,
and the provenance of their peaks.

The tables follow the engine's text formats and go through its one rule set
(:func:`analysis.sdm.inputs.studies.check_studies`, :func:`analysis.sdm.inputs.peaks.check_peaks`);
the column dictionary is ``data/README.md``. What is the compendium's, not the engine's: the two
files and their names, :func:`load_dataset` (the engine's input from a data folder), the one
canonical writer of each (:func:`write_peaks`, :func:`write_data_tables` for ``import-sdm``) and
the provenance of every peak row (``original:``, ``sdm-import:``, ``simulated:`` stand-ins of
:mod:`analysis.simulate`, ``unknown:``), classified once (:func:`classify_provenance`) for
``validate-data``, the meta-analysis stage and the manuscript's provenance notice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.sdm.errors import DataError, DataErrors
from analysis.sdm.inputs.dataset import SDMDataset
from analysis.sdm.inputs.io import atomic_path, read_tsv_text
from analysis.sdm.inputs.peaks import (
    PEAK_COLUMNS,
    PROVENANCE_KINDS,
    UNKNOWN_PREFIX,
    check_peaks,
    format_peaks,
)
from analysis.sdm.inputs.studies import CORRECTED_VOXEL_P, REQUIRED, check_studies

LGR = logging.getLogger(__name__)

STUDIES_FILE = "studies.tsv"
PEAKS_FILE = "peaks.tsv"
#: Provenance prefixes of real peaks (transcribed from a publication, or the authors' SDM project).
REAL_PREFIXES = ("original:", "sdm-import:")
#: Provenance prefix of the simulated stand-ins (:mod:`analysis.simulate`).
SIMULATED_PREFIX = "simulated:"
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


def load_studies(data_dir: str | Path, corrected_voxel_p: float = CORRECTED_VOXEL_P
                 ) -> pd.DataFrame:
    """Read and validate ``studies.tsv``, adding n1, n2, df, thresholds and covariates.

    Parameters
    ----------
    data_dir : path-like, optional
        Folder holding ``studies.tsv``.
    corrected_voxel_p : float
        See :func:`check_studies`.

    Returns
    -------
    pandas.DataFrame
        The study table in file order (original text columns kept, numeric ones typed) plus
        ``design, n1, n2, df, p_threshold, threshold_kind, t_thr, age, female_pct, treated``.

    Raises
    ------
    DataError, DataErrors
        Any invalid cell (all of them are listed).
    """
    path = Path(data_dir) / STUDIES_FILE
    raw = read_tsv_text(path, required=REQUIRED)
    studies, errors = check_studies(raw, file=STUDIES_FILE, corrected_voxel_p=corrected_voxel_p)
    if errors:
        raise errors[0] if len(errors) == 1 else DataErrors(errors)
    studies["n1"] = studies["n1"].astype(np.int64)
    return studies


def load_peaks(data_dir: str | Path, studies: pd.DataFrame | None = None, *,
               check_mask: bool = True, **checks) -> pd.DataFrame:
    """Read and validate ``peaks.tsv``; add MNI coordinates, signed t, df and conversions.

    Parameters
    ----------
    data_dir : path-like, optional
        Folder holding ``peaks.tsv`` (and ``studies.tsv`` when ``studies`` is not given).
    studies : pandas.DataFrame, optional
        Validated study table (default :func:`analysis.data_tables.load_studies` of ``data_dir``).
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
    ddir = Path(data_dir)
    study_kw, peak_kw = split_checks(checks)
    if studies is None:
        studies = load_studies(ddir, **study_kw)
    raw = read_tsv_text(ddir / PEAKS_FILE, required=PEAK_COLUMNS)
    peaks, errors = check_peaks(raw, studies, PEAKS_FILE, check_mask=check_mask, **peak_kw)
    if errors:
        raise errors[0] if len(errors) == 1 else DataErrors(errors)
    return peaks.sort_values(["study", "peak_id"], kind="stable").reset_index(drop=True)


def load_dataset(data_dir: str | Path, **checks) -> SDMDataset:
    """The engine's input from ``studies.tsv`` and ``peaks.tsv`` of a folder, validated
    (:func:`load_studies`, :func:`load_peaks`; ``checks`` are their check parameters,
    :func:`split_checks`).
    """
    study_kw, _ = split_checks(checks)
    studies = load_studies(data_dir, **study_kw)
    return SDMDataset.from_tables(studies, load_peaks(data_dir, studies=studies, **checks),
                                  checked=True)


def split_checks(checks: dict) -> tuple[dict, dict]:
    """Keyword arguments of the study checks and of the peak checks: ``corrected_voxel_p`` of
    :func:`~analysis.sdm.inputs.studies.check_studies`, the others of
    :func:`~analysis.sdm.inputs.peaks.check_peaks` (an unknown name is an error).
    """
    unknown = set(checks) - {"corrected_voxel_p", "mask_tolerance_mm", "t_tolerance"}
    if unknown:
        raise TypeError(f"unknown check parameters {sorted(unknown)}")
    study = {k: v for k, v in checks.items() if k == "corrected_voxel_p"}
    return study, {k: v for k, v in checks.items() if k != "corrected_voxel_p"}


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
    ddir = Path(data_dir)
    study_kw, peak_kw = split_checks(checks)
    if studies is None:
        studies = load_studies(ddir, **study_kw)
    text = format_peaks(df, PEAKS_FILE)
    raw = text.copy()
    raw.index = pd.RangeIndex(1, len(raw) + 1)
    _, errors = check_peaks(raw, studies, PEAKS_FILE, check_mask=check_mask, **peak_kw)
    if errors:
        raise errors[0] if len(errors) == 1 else DataErrors(errors)
    dest = ddir / PEAKS_FILE
    with atomic_path(dest) as tmp:
        lines = ["\t".join(PEAK_COLUMNS)] + ["\t".join(r) for r in text.itertuples(index=False)]
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    LGR.info("wrote %d peaks to %s", len(text), dest)
    return dest


def write_data_tables(studies: pd.DataFrame, peaks: pd.DataFrame, data_dir: str | Path,
                      corrected_voxel_p: float = CORRECTED_VOXEL_P,
                      warnings: list[str] | None = None, **peak_checks) -> tuple[Path, Path]:
    """Validate and atomically write ``studies.tsv`` + ``peaks.tsv`` (text tables) together.

    Used by ``import-sdm``: the tables pass the rule set of ``validate-data``
    (:func:`analysis.sdm.inputs.peaks.check_peaks`, brain mask included), so that what is imported is
    what the pipeline accepts; its warnings (peaks outside the mask but near the brain,
    repeated peaks, t below t_thr: a published project may have them) go to ``warnings`` and
    are named against the ``peaks.tsv`` written. ``peak_checks`` are ``mask_tolerance_mm`` and
    ``t_tolerance`` of :func:`~analysis.sdm.inputs.peaks.check_peaks`.
    """
    s = studies.astype(object).where(studies.notna(), "").astype(str)
    s.index = pd.RangeIndex(1, len(s) + 1)
    typed, errors = check_studies(s, STUDIES_FILE, corrected_voxel_p)
    text = format_peaks(peaks, PEAKS_FILE)
    raw = text.copy()
    raw.index = pd.RangeIndex(1, len(raw) + 1)
    if not errors:
        errors += check_peaks(raw, typed, PEAKS_FILE, warnings=warnings, **peak_checks)[1]
    if errors:
        raise DataErrors(errors)
    for col in s.columns:
        if s[col].str.contains("[\t\n\r]", regex=True).any():
            raise DataError(STUDIES_FILE, "cells may not contain tabs or line breaks", field=col)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    sp, pp = data_dir / STUDIES_FILE, data_dir / PEAKS_FILE
    with atomic_path(sp) as ts, atomic_path(pp) as tp:
        ts.write_text("\n".join("\t".join(r) for r in [list(s.columns), *s.values.tolist()])
                      + "\n", encoding="utf-8")
        tp.write_text("\n".join("\t".join(r) for r in [PEAK_COLUMNS, *text.values.tolist()])
                      + "\n", encoding="utf-8")
    return sp, pp
