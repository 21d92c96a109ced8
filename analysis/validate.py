"""Validation of the curated inputs ``studies.tsv`` and ``peaks.tsv`` (all errors at once).

:func:`validate_data` reads both files strictly (:mod:`analysis.sdm.inputs.io`), checks every cell
(:func:`analysis.sdm.inputs.studies.check_studies`, :func:`analysis.sdm.inputs.peaks.check_peaks`: encoding, columns,
numbers, unknown studies, duplicates, coordinates outside the 2 mm MNI brain mask after
conversion to MNI with ``data.mask_tolerance_mm`` tolerance, signs contradicting the reported
contrasts or the statistic, p outside (0, 1), |t|, |z| or n beyond plausibility bounds, unknown
spaces) and raises one :class:`analysis.sdm.errors.DataErrors` listing every problem, each naming
file, row and field; what SDM-PSI accepts although a real project is merely untidy (a peak
4-20 mm outside the brain mask, a repeated peak, a t below the study's threshold) is a warning,
the same rule set as ``import-sdm`` (:func:`analysis.sdm.inputs.peaks.check_peaks`). A study of the
study table without any peak row is not an error (a study
may report no significant difference) but a warning, and it keeps the provenance verdict
(:func:`analysis.data_tables.classify_provenance`) from "all real". It never writes anything.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from analysis import paths
from analysis.data_tables import PEAKS_FILE, STUDIES_FILE, UNKNOWN_LABEL, classify_provenance
from analysis.sdm.errors import DataError, DataErrors
from analysis.sdm.inputs.io import read_tsv_text
from analysis.sdm.inputs.peaks import PEAK_COLUMNS, UNKNOWN_PREFIX, check_peaks
from analysis.sdm.inputs.studies import REQUIRED, check_studies

LGR = logging.getLogger(__name__)


def validate_data(data_dir: str | Path | None = None, check_mask: bool = True,
                  **checks) -> dict:
    """Check ``studies.tsv`` and ``peaks.tsv`` of a data folder.

    Parameters
    ----------
    data_dir : path-like, optional
        Folder with the two files (default :func:`analysis.paths.data_dir`).
    check_mask : bool
        Check peaks against the brain mask.
    **checks
        ``corrected_voxel_p``, ``mask_tolerance_mm``, ``t_tolerance`` (the engine's defaults;
        the command passes the configuration's, :func:`analysis.stages.params.data_checks`).

    Returns
    -------
    dict
        Summary: ``n_studies, n_patients, n_controls, n_peaks, n_real, n_simulated,
        n_imported, peaks_per_study`` (study → count), ``studies_real``,
        ``studies_simulated``, ``studies_without_peaks`` (lists of study ids) and
        ``warnings`` (one line each).

    Raises
    ------
    DataErrors
        Every problem of both files (a single structural problem of a file, e.g. not UTF-8,
        stops the checks of that file only).
    """
    from analysis.data_tables import split_checks

    study_kw, peak_kw = split_checks(checks)
    ddir = Path(data_dir or paths.data_dir())
    errors: list[DataError] = []
    studies = None
    try:
        raw_s = read_tsv_text(ddir / STUDIES_FILE, required=REQUIRED)
        studies, errs = check_studies(raw_s, STUDIES_FILE, **study_kw)
        errors.extend(errs)
    except DataError as exc:
        errors.append(exc)
    peaks = None
    peak_warnings: list[str] = []
    try:
        raw_p = read_tsv_text(ddir / PEAKS_FILE, required=PEAK_COLUMNS)
        if studies is not None and len(studies) and "study" in studies.columns:
            peaks, errs = check_peaks(raw_p, studies, PEAKS_FILE, check_mask=check_mask,
                                      warnings=peak_warnings, **peak_kw)
            errors.extend(errs)
    except DataError as exc:
        errors.append(exc)
    if errors:
        raise DataErrors(errors)
    summary = summarise(studies, peaks)
    summary["warnings"] = peak_warnings + summary["warnings"]  # printed once, by the command
    return summary


def summarise(studies: pd.DataFrame, peaks: pd.DataFrame) -> dict:
    """Counts of a validated pair of tables (see :func:`validate_data`)."""
    prov = peaks["provenance"].astype(str)
    per = peaks.groupby("study").size()
    verdict = classify_provenance(studies["study"], peaks["study"], prov, PEAKS_FILE)
    warnings = []
    if verdict.no_peaks:
        warnings.append(f"{STUDIES_FILE}: {len(verdict.no_peaks)} of {verdict.n_studies} studies "
                        f"have no peak row in {PEAKS_FILE}: {', '.join(verdict.no_peaks)} "
                        "(they enter the analysis as null studies and the inputs do not count "
                        "as all real)")
    if verdict.unknown:
        warnings.append(f"{PEAKS_FILE}: the peaks of {len(verdict.unknown)} of "
                        f"{verdict.n_studies} studies are {UNKNOWN_LABEL}: "
                        f"{', '.join(verdict.unknown)} (not counted as real; re-import the "
                        "project with its provenance record or with --source)")
    return {
        "studies_real": verdict.real,
        "studies_simulated": verdict.simulated,
        "studies_without_peaks": verdict.no_peaks,
        "studies_unknown": verdict.unknown,
        "warnings": warnings,
        "n_studies": int(len(studies)),
        "n_patients": int(studies["n1"].sum()),
        "n_controls": int(studies["n2"].fillna(0).sum()),
        "n_peaks": int(len(peaks)),
        "n_real": int(prov.str.startswith("original:").sum()),
        "n_simulated": int(prov.str.startswith("simulated:").sum()),
        "n_imported": int(prov.str.startswith("sdm-import:").sum()),
        "n_unknown": int(prov.str.startswith(UNKNOWN_PREFIX).sum()),
        "peaks_per_study": {s: int(per.get(s, 0)) for s in studies["study"]},
    }


def format_summary(summary: dict) -> str:
    """Human-readable summary printed by ``python -m analysis validate-data``."""
    lines = [
        f"studies: {summary['n_studies']}  patients: {summary['n_patients']}  "
        f"controls: {summary['n_controls']}",
        f"peaks: {summary['n_peaks']}  (real {summary['n_real']}, simulated "
        f"{summary['n_simulated']}, imported {summary['n_imported']}, {UNKNOWN_LABEL} "
        f"{summary.get('n_unknown', 0)})",
    ]
    if "studies_real" in summary:
        n = summary["n_studies"]
        lines.append(f"studies with real peaks: {len(summary['studies_real'])} of {n}; with "
                     f"simulated stand-ins: {len(summary['studies_simulated'])}; "
                     f"{UNKNOWN_LABEL}: {len(summary.get('studies_unknown', []))}; without "
                     f"peaks: {len(summary['studies_without_peaks'])}")
    for study, k in summary["peaks_per_study"].items():
        lines.append(f"  {study:<20s} {k:4d}")
    lines += [f"warning: {w}" for w in summary.get("warnings", [])]
    return "\n".join(lines)
