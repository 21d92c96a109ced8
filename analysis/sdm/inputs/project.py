"""Reading and writing SDM-PSI project folders (format of the SDM manual and its protocol paper).

An SDM project folder holds

``sdm_table.txt``
    tab-separated: ``study``, ``n1``, optional ``n2`` (absent or blank = one-sample study),
    ``t_thr``, ``threshold`` (``corrected``/``uncorrected``), then covariate columns.
``<study>.<software>_<space>.txt``
    one peak per line, ``x,y,z,t``; ``t`` signed, or ``p`` / ``n`` for a positive / negative peak
    whose statistic is unknown. Suffixes: ``spm_mni``, ``fsl_mni``, ``other_mni`` (MNI),
    ``other_tal`` (native Talairach), ``spm_brett``, ``fsl_brett`` (Talairach from Brett's
    mni2tal); ``<study>.no_peaks.txt`` (empty) for a study without peaks.

Reading is strict, every problem located by file, line and field: a peak file with no peak (use
``no_peaks``), a ``no_peaks`` file holding peaks, a ``<name>.<suffix>.txt`` file with an unknown
suffix, a study listed twice in ``sdm_table.txt``, |t| above :data:`analysis.sdm.inputs.coords.MAX_ABS_T`,
peaks more than :data:`OUTSIDE_BRAIN_MM` from the MNI152 brain mask, and every study-table
problem (``n1 = 0``, ``t_thr = "high"``...) reported against ``sdm_table.txt`` and its own column
names (:func:`check_sdm_table`).

:func:`read_sdm_project` gives the compendium's tables: a ``studies.tsv``-compatible table (text
cells kept as written, so nothing is lost; columns ``study, design, n_patients, n_controls,
t_thr, threshold, peak_file`` then the covariates) and a ``peaks.tsv`` table
(:data:`analysis.sdm.inputs.peaks.PEAK_COLUMNS`).

Provenance survives the round trip. :func:`write_sdm_project` also writes
:data:`PROVENANCE_FILE`, a tab-separated record of every peak line (peak file, line, the peak
file's SHA-256, ``provenance``, ``note``); SDM-PSI reads only ``sdm_table.txt`` and the files
named after its studies, so it ignores this file. :func:`read_sdm_project` gives each peak the
provenance recorded for its line when the peak file is unchanged (same SHA-256); any other peak
gets the source the importer declares (``sdm-import:<source>``, counted as real) or, without
one, ``unknown:`` (imported, provenance unknown), which is never counted as real.
Exported simulated stand-ins therefore come back as stand-ins, never as real data.
:func:`write_sdm_project` writes such a folder from either those tables or the validated ones of
:func:`analysis.sdm.inputs.studies.check_studies` / :func:`analysis.sdm.inputs.peaks.check_peaks`. Numbers are written in
their shortest exact form, so read → write → read returns identical values.
"""

from __future__ import annotations

import hashlib
import logging
import re
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.sdm.errors import DataError, DataErrors
from analysis.sdm.inputs.coords import MAX_ABS_T, to_mni
from analysis.sdm.inputs.io import atomic_path, format_number, read_tsv_text, sha256_file
from analysis.sdm.inputs.peaks import (
    OUTSIDE_BRAIN_MM,
    PEAK_COLUMNS,
    UNKNOWN_PREFIX,
    brain_distance_mm,
    check_peaks,
    format_peaks,
)
from analysis.sdm.inputs.statmaps import project_map_file
from analysis.sdm.inputs.studies import CORRECTED_VOXEL_P, check_studies

LGR = logging.getLogger(__name__)

TABLE_FILE = "sdm_table.txt"
#: Provenance record written beside the SDM files (ignored by SDM-PSI; read back on import).
PROVENANCE_FILE = "painemp_provenance.tsv"
PROVENANCE_COLUMNS = ["file", "line", "sha256", "provenance", "note"]
#: Peak-file suffix → ``space`` of peaks.tsv.
SUFFIX_SPACE = {
    "spm_mni": "MNI", "fsl_mni": "MNI", "other_mni": "MNI",
    "other_tal": "TAL", "spm_brett": "TAL_BRETT", "fsl_brett": "TAL_BRETT",
}
#: ``space`` → suffix used when a study has no recorded ``peak_file``.
DEFAULT_SUFFIX = {"MNI": "other_mni", "TAL": "other_tal", "TAL_BRETT": "spm_brett"}
NO_PEAKS = "no_peaks"
PEAK_FILE = re.compile(r"^(?P<study>.+)\.(?P<suffix>" + "|".join([*SUFFIX_SPACE, NO_PEAKS])
                       + r")\.txt$")
#: Any ``<name>.<suffix>.txt`` file: a peak file when the suffix is known, else an error.
SUFFIXED_TXT = re.compile(r"^(?P<study>[^.]+)\.(?P<suffix>[^.]+)\.txt$")

#: Column of the imported study table -> column of sdm_table.txt (for error messages).
TABLE_FIELD = {"n_patients": "n1", "n_controls": "n2", "study": "study", "t_thr": "t_thr",
               "threshold": "threshold", "design": "n2"}
#: Columns of the imported study table that are not covariates.
CORE = ["study", "design", "n_patients", "n_controls", "t_thr", "threshold", "peak_file"]
#: Columns of the compendium's studies.tsv and of load_studies() that are never covariates.
NOT_COVARIATES = set(CORE) | {
    "year", "disorder", "n_total", "n_patients", "age_patients_mean", "age_patients_sd",
    "n_controls", "age_controls_mean", "age_controls_sd", "correction", "space",
    "contrasts_reported", "paradigm", "citation", "disorder_label", "disorder_abbrev",
    "n1", "n2", "df", "p_threshold", "threshold_kind", "treated", "female_pct", "age",
}


def read_sdm_project(folder: str | Path,
                     source: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read an SDM-PSI project folder.

    Parameters
    ----------
    folder : path-like
        Folder with ``sdm_table.txt`` and, per study, a peak file, a statistical map
        ``<study>.nii[.gz]`` (:mod:`analysis.sdm.inputs.statmaps`; read by
        :meth:`~analysis.sdm.inputs.dataset.SDMDataset.from_sdm_project`) or both.
    source : str, optional
        Where peaks without a valid record in :data:`PROVENANCE_FILE` come from, as declared
        by the importer (e.g. "authors' SDM-PSI project of He et al. 2024"): their provenance
        is ``sdm-import:<source>`` and they count as real. Without it they are
        ``unknown:sdm-import:<folder name>`` (imported, provenance unknown).

    Returns
    -------
    studies : pandas.DataFrame
        Text cells: ``study, design`` (``one-sample`` where ``n2`` is absent or blank, else
        ``two-sample``), ``n_patients`` (= n1), ``n_controls`` (= n2, blank for one-sample),
        ``t_thr``, ``threshold``, ``peak_file`` (the suffix, e.g. ``other_mni``), then the
        covariate columns of ``sdm_table.txt`` in their order. Valid input for
        :func:`analysis.sdm.inputs.studies.check_studies`.
    peaks : pandas.DataFrame
        :data:`analysis.sdm.inputs.peaks.PEAK_COLUMNS` as text; ``peak_id`` = line order in the peak file,
        ``stat_type`` ``t`` (value signed) or ``none`` (``p``/``n`` lines), ``provenance``
        and ``note`` from :data:`PROVENANCE_FILE` where it records the unchanged peak file's
        line, else as ``source`` says.

    Raises
    ------
    DataErrors
        Every problem found (unreadable table, missing or duplicated peak file, bad line).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(folder.name, f"is a file, not an SDM project folder: {folder}")
    if not folder.exists():
        raise DataError(folder.name, f"folder not found: {folder}")
    errors: list[DataError] = []
    table = read_tsv_text(folder / TABLE_FILE, required=["study", "n1", "t_thr"])
    has_n2 = "n2" in table.columns
    covariates = [c for c in table.columns if c not in ("study", "n1", "n2", "t_thr", "threshold")]
    clash = [c for c in covariates if c in CORE]
    if clash:
        errors.append(DataError(TABLE_FILE, "covariate name clashes with a reserved column",
                                row=0, field=clash[0]))
    files: dict[str, tuple[str, Path]] = {}
    for f in sorted(folder.iterdir()):
        m = PEAK_FILE.match(f.name)
        if not f.is_file():
            continue
        if not m:
            u = SUFFIXED_TXT.match(f.name)
            if u:
                errors.append(DataError(f.name, f"unknown peak-file suffix {u.group('suffix')!r}; "
                                        f"expected one of {[*SUFFIX_SPACE, NO_PEAKS]}",
                                        field="suffix"))
            continue
        study = m.group("study")
        if study in files:
            errors.append(DataError(f.name, f"second peak file for study {study!r} (also "
                                    f"{files[study][1].name})"))
            continue
        files[study] = (m.group("suffix"), f)
    studies = []
    peaks = []
    if source is not None and not str(source).strip():
        errors.append(DataError("source", "the declared source of the peaks is empty"))
    provenance = (f"sdm-import:{str(source).strip()}" if source
                  else f"{UNKNOWN_PREFIX}sdm-import:{folder.name}")
    records = _read_provenance_record(folder, errors)
    table_rows: dict[str, int] = {}
    for row, rec in table.iterrows():
        study = rec["study"].strip()
        n2 = rec["n2"].strip() if has_n2 else ""
        if study.lower() in table_rows:
            errors.append(DataError(TABLE_FILE, f"duplicate row of study {study!r} (also row "
                                    f"{table_rows[study.lower()]})", row=row, field="study"))
            continue
        table_rows[study.lower()] = row
        if study not in files:
            try:
                has_map = project_map_file(folder, study) is not None
            except DataError as exc:
                errors.append(exc)
                has_map = True
            if not has_map:
                errors.append(DataError(TABLE_FILE, f"no peak file <study>.<suffix>.txt (suffixes: "
                                        f"{[*SUFFIX_SPACE, NO_PEAKS]}) and no statistical map "
                                        f"<study>.nii[.gz] for {study!r}", row=row,
                                        field="study"))
            suffix, path = "", None
        else:
            suffix, path = files.pop(study)
        studies.append({
            "study": study, "design": "two-sample" if n2 else "one-sample",
            "n_patients": rec["n1"].strip(), "n_controls": n2, "t_thr": rec["t_thr"].strip(),
            "threshold": rec["threshold"].strip() if "threshold" in table.columns else "",
            "peak_file": suffix, **{c: rec[c] for c in covariates},
        })
        if path is not None and suffix == NO_PEAKS:
            _check_no_peaks_file(path, errors)
        elif path is not None:
            found = _read_peak_file(path, study, SUFFIX_SPACE[suffix], provenance, errors,
                                    records)
            if not found and not any(e.file == path.name for e in errors):
                errors.append(DataError(path.name, f"no peak in the file; a study without peaks "
                                        f"has an empty {study}.{NO_PEAKS}.txt instead"))
            peaks.extend(found)
    for study, (_, path) in files.items():
        errors.append(DataError(path.name, f"peak file of study {study!r}, which is not in "
                                f"{TABLE_FILE}"))
    sdf = pd.DataFrame(studies, columns=CORE + covariates, dtype=object)
    if not errors:
        errors.extend(check_sdm_table(sdf))
    if errors:
        raise DataErrors(errors)
    pdf = pd.DataFrame(peaks, columns=PEAK_COLUMNS, dtype=object)
    LGR.info("read %d studies and %d peaks from %s", len(sdf), len(pdf), folder)
    return sdf, pdf


def check_sdm_table(studies: pd.DataFrame,
                    corrected_voxel_p: float = CORRECTED_VOXEL_P) -> list[DataError]:
    """Problems of an imported study table, located in ``sdm_table.txt`` by its own names.

    Runs :func:`analysis.sdm.inputs.studies.check_studies` (sample sizes, thresholds, bounds, identifiers)
    on the table of :func:`read_sdm_project` and reports each problem against
    ``sdm_table.txt``, its data row and its column (``n1``, ``n2``, ``t_thr``...), not against
    the ``studies.tsv`` it would become.
    """
    raw = studies.astype(object).where(studies.notna(), "").astype(str)
    raw.index = pd.RangeIndex(1, len(raw) + 1)
    _, errs = check_studies(raw, TABLE_FILE, corrected_voxel_p)
    out = []
    if "t_thr" in raw.columns:  # SDM-PSI computes each study's effect-size threshold from it
        have = {e.row for e in errs if e.field == "t_thr"}
        errs += [DataError(TABLE_FILE, "blank: SDM-PSI needs every study's voxel t threshold",
                           row=row, field="t_thr")
                 for row, cell in raw["t_thr"].items() if not cell.strip() and row not in have]
        errs.sort(key=lambda e: (e.row or 0))
    for e in errs:
        field = TABLE_FIELD.get(e.field, e.field)
        msg = e.message.replace("n_patients", "n1").replace("n_controls", "n2")
        out.append(DataError(TABLE_FILE, msg, row=e.row, field=field))
    return out


def _check_no_peaks_file(path: Path, errors: list[DataError]) -> None:
    """A ``<study>.no_peaks.txt`` file must be empty (its peaks would be dropped silently)."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # BOM read as in sdm_table.txt
    except UnicodeDecodeError as exc:
        errors.append(DataError(path.name, f"not valid UTF-8 ({exc.reason})"))
        return
    for i, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            errors.append(DataError(path.name, f"a {NO_PEAKS} file holds {line.strip()!r}; "
                                    "rename it <study>.<software>_<space>.txt if the study has "
                                    "peaks, or empty it", row=i))
            return


def _read_provenance_record(folder: Path, errors: list[DataError]) -> dict:
    """``(peak file, sha256) -> {line: (provenance, note)}`` of :data:`PROVENANCE_FILE`."""
    path = folder / PROVENANCE_FILE
    if not path.is_file():
        return {}
    rec = read_tsv_text(path, required=PROVENANCE_COLUMNS)
    out: dict[tuple[str, str], dict[int, tuple[str, str]]] = {}
    for row, r in rec.iterrows():
        line = r["line"].strip()
        if not line.isdigit():
            errors.append(DataError(PROVENANCE_FILE, f"{line!r} is not a line number", row=row,
                                    field="line"))
            continue
        out.setdefault((r["file"].strip(), r["sha256"].strip().lower()), {})[int(line)] = (
            r["provenance"].strip(), r["note"])
    return out


def _read_peak_file(path: Path, study: str, space: str, provenance: str,
                    errors: list[DataError], records: dict | None = None) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # BOM read as in sdm_table.txt
    except UnicodeDecodeError as exc:
        errors.append(DataError(path.name, f"not valid UTF-8 ({exc.reason})"))
        return []
    # provenance per line, when the record names this very file (same checksum)
    known = (records or {}).get((path.name, sha256_file(path)), {})
    out = []
    lines: list[int] = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        cells = [c for c in re.split(r"[,\s]+", line.strip()) if c]
        if len(cells) != 4:
            errors.append(DataError(path.name, f"expected 'x,y,z,t' (4 values), got {line!r}",
                                    row=i, field="t" if len(cells) < 4 else None))
            continue
        bad = False
        for ax, cell in zip(("x", "y", "z"), cells[:3]):
            try:
                if not np.isfinite(float(cell)):
                    raise ValueError
            except ValueError:
                errors.append(DataError(path.name, f"{cell!r} is not a number", row=i, field=ax))
                bad = True
        tcell = cells[3]
        if tcell.lower() in ("p", "n"):
            sign, stype, val = (1 if tcell.lower() == "p" else -1), "none", ""
        else:
            try:
                t = float(tcell)
                if not np.isfinite(t) or t == 0:
                    raise ValueError
            except ValueError:
                errors.append(DataError(path.name, f"t {tcell!r} is not a non-zero number, 'p' "
                                        "or 'n'", row=i, field="t"))
                continue
            if abs(t) > MAX_ABS_T:
                errors.append(DataError(path.name, f"|t| = {abs(t):g} exceeds {MAX_ABS_T:g}, more "
                                        "than any real study reports", row=i, field="t"))
                continue
            sign, stype, val = (1 if t > 0 else -1), "t", tcell
        if bad:
            continue
        prov, note = known.get(i, (provenance, ""))
        out.append({"study": study, "peak_id": str(len(out) + 1), "sign": str(sign),
                    "x": cells[0], "y": cells[1], "z": cells[2], "space": space,
                    "stat_type": stype, "stat_value": val, "provenance": prov,
                    "note": note})
        lines.append(i)
    if out:
        xyz = to_mni(np.array([[float(p[a]) for a in "xyz"] for p in out]), space)
        for line, d, (a, b, c) in zip(lines, brain_distance_mm(xyz), xyz):
            if d > OUTSIDE_BRAIN_MM:  # the rule of analysis.sdm.inputs.peaks.check_peaks
                errors.append(DataError(path.name, f"peak ({a:.1f}, {b:.1f}, {c:.1f}) MNI lies "
                                        f"more than {OUTSIDE_BRAIN_MM:g} mm outside the brain",
                                        row=line, field="x"))
    return out


def _typed_studies(studies: pd.DataFrame,
                   corrected_voxel_p: float = CORRECTED_VOXEL_P) -> pd.DataFrame:
    if {"n1", "n2", "t_thr", "threshold_kind"} <= set(studies.columns):
        return studies.reset_index(drop=True)
    raw = studies.astype(object).where(studies.notna(), "").astype(str)
    raw.index = pd.RangeIndex(1, len(raw) + 1)
    typed, errors = check_studies(raw, "studies", corrected_voxel_p)
    if errors:
        raise DataErrors(errors)
    return typed


def sdm_covariates(columns, default_covariates=("age", "female_pct", "treated")) -> list[str]:
    """Columns of a text study table written as covariates of ``sdm_table.txt``.

    A table imported from an SDM project (it has the ``peak_file`` column of
    :func:`read_sdm_project`) keeps every covariate column it was imported with, whatever its
    name (``age``, ``year``, ``disorder``...). The compendium's own ``studies.tsv`` gives
    ``default_covariates`` followed by its columns that are neither core nor descriptive.

    Parameters
    ----------
    columns : sequence of str
        Header of the text study table.
    default_covariates : sequence of str
        The compendium's meta-regression covariates.

    Returns
    -------
    list of str
    """
    columns = list(columns)
    if "peak_file" in columns:
        return [c for c in columns if c not in CORE]
    extra = [c for c in columns if c not in NOT_COVARIATES]
    return [c for c in default_covariates if c not in extra] + extra


def write_sdm_project(studies: pd.DataFrame, peaks: pd.DataFrame, folder: str | Path,
                      covariates: list[str] | None = None,
                      default_covariates=("age", "female_pct", "treated"),
                      corrected_voxel_p: float = CORRECTED_VOXEL_P,
                      overwrite: bool = False) -> Path:
    """Write an SDM-PSI project folder (``sdm_table.txt`` and one peak file per study).

    Parameters
    ----------
    studies : pandas.DataFrame
        :func:`analysis.sdm.inputs.studies.check_studies` output, or a table as returned by
        :func:`read_sdm_project` / read from a compatible ``studies.tsv`` (validated here).
    peaks : pandas.DataFrame
        Peaks with :data:`analysis.sdm.inputs.peaks.PEAK_COLUMNS` (typed or text); z and p statistics are
        converted to t (:mod:`analysis.sdm.inputs.coords`), unknown ones written as ``p`` / ``n``.
        Coordinates are written in their own space, with the suffix recorded in the studies'
        ``peak_file`` column or else ``other_mni`` / ``other_tal`` / ``spm_brett``.
    folder : path-like
        Destination (created). A folder that is not empty is refused unless ``overwrite``.
    covariates : list of str, optional
        Columns written after ``threshold``. Default: :func:`sdm_covariates` of the table's
        columns (every covariate of an imported table; else ``default_covariates`` and the
        columns that are neither core nor descriptive). NaN is written blank; a text table's
        cells are written as they are.
    default_covariates : sequence of str
        See ``covariates`` (the compendium passes its meta-regression covariates).
    corrected_voxel_p : float
        See :func:`analysis.sdm.inputs.studies.check_studies`.
    overwrite : bool
        Replace the project in a non-empty ``folder``: the files of the new project are
        replaced atomically, and peak files of studies that are no longer in the table are
        removed (they would make ``sdm_table.txt`` and the peak files disagree).

    Returns
    -------
    pathlib.Path
        The folder.

    Raises
    ------
    DataError
        ``folder`` is not empty and ``overwrite`` is false (nothing written), or the tables are
        invalid.
    """
    folder = Path(folder)
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise DataError(str(folder), "the destination folder is not empty; choose an empty or "
                        "new folder, or replace its SDM project with --force")
    if folder.exists() and not folder.is_dir():
        raise DataError(str(folder), "the destination is a file, not a folder")
    is_text = not {"n1", "n2", "t_thr", "threshold_kind"} <= set(studies.columns)
    st = _typed_studies(studies, corrected_voxel_p)
    text_cells = (studies.astype(object).where(studies.notna(), "").astype(str)
                  .reset_index(drop=True) if is_text and "peak_file" in studies.columns
                  else None)
    if covariates is None:
        covariates = (sdm_covariates(studies.columns, default_covariates) if is_text else
                      [c for c in studies.columns if c not in NOT_COVARIATES])
        if not is_text:
            covariates = [c for c in default_covariates if c in st.columns
                          and c not in covariates] + covariates
    text = format_peaks(peaks)
    raw = text.copy()
    raw.index = pd.RangeIndex(1, len(raw) + 1)
    typed, errors = check_peaks(raw, st, "peaks", check_mask=False, check_duplicates=False)
    if errors:
        raise DataErrors(errors)
    two = np.isfinite(st["n2"].to_numpy(float))
    cols = ["study", "n1"] + (["n2"] if two.any() else []) + ["t_thr", "threshold"] + covariates
    rows = []
    for k, rec in enumerate(st.to_dict("records")):
        row = [rec["study"], format_number(rec["n1"])]
        if two.any():
            row.append(format_number(rec["n2"]) if two[k] else "")
        row += [format_number(rec["t_thr"]), rec["threshold_kind"]]
        row += [text_cells[c].iat[k].strip() if text_cells is not None and c in text_cells
                else format_number(rec.get(c, np.nan)) for c in covariates]
        rows.append(row)
    contents: dict[str, str] = {TABLE_FILE: "\n".join("\t".join(r) for r in [cols, *rows]) + "\n"}
    record: list[list[str]] = []
    for rec in st.to_dict("records"):
        sp = typed[typed["study"] == rec["study"]]
        suffix = str(rec.get("peak_file", "") or "")
        if sp.empty:
            contents[f"{rec['study']}.{NO_PEAKS}.txt"] = ""
            continue
        spaces = set(sp["space"])
        if len(spaces) != 1:
            raise DataError("peaks", f"study {rec['study']} mixes spaces {sorted(spaces)}; SDM "
                            "needs one peak file (one space) per study", field="space")
        space = spaces.pop()
        if not suffix or suffix == NO_PEAKS:
            suffix = DEFAULT_SUFFIX[space]
        elif SUFFIX_SPACE.get(suffix) != space:
            raise DataError("studies", f"peak_file {suffix!r} of {rec['study']} contradicts the "
                            f"space {space!r} of its peaks", field="peak_file")
        lines, marks = [], []
        for p in sp.to_dict("records"):
            t = p["t"]
            tt = format_number(t) if np.isfinite(t) else ("p" if p["sign"] > 0 else "n")
            lines.append(",".join([format_number(p["x"]), format_number(p["y"]),
                                   format_number(p["z"]), tt]))
            marks.append((str(p["provenance"]), _note(p.get("note"))))
        name = f"{rec['study']}.{suffix}.txt"
        contents[name] = "\n".join(lines) + "\n"
        digest = hashlib.sha256(contents[name].encode("utf-8")).hexdigest()
        record += [[name, str(i), digest, prov, note]
                   for i, (prov, note) in enumerate(marks, start=1)]
    contents[PROVENANCE_FILE] = "\n".join("\t".join(r) for r in [PROVENANCE_COLUMNS, *record]) + "\n"
    stale = [f for f in (folder.iterdir() if folder.is_dir() else [])
             if f.is_file() and f.name not in contents and PEAK_FILE.match(f.name)]
    folder.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:  # all files replaced together, or none
        for name, body in contents.items():
            tmp = stack.enter_context(atomic_path(folder / name))
            tmp.write_text(body, encoding="utf-8")
    for f in stale:  # peak files of studies no longer in the table
        f.unlink()
        LGR.info("removed %s (its study is not in the new %s)", f, TABLE_FILE)
    LGR.info("wrote SDM project (%d studies, %d peaks) to %s", len(st), len(typed), folder)
    return folder


def _note(value) -> str:
    """A note cell as text (blank for a missing value)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value)


