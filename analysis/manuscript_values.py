"""What the manuscript may cite, and where each cited thing comes from.

The manuscript (``manuscript/index.qmd``) is a thin consumer: it loads only ``results/values.json``
and the files the pipeline stages wrote. This module is the single place that says

* which pipeline stage produces each figure and table the manuscript shows
  (:data:`ARTEFACTS`, label -> (stage, path under ``results/``)),
* which stage value each number in the prose is (:data:`VALUES`, name -> ``"stage.key"``; names
  starting with ``config.`` are parameters of ``analysis/config.yaml``),
* how many studies' peaks are real and how many are simulated stand-ins
  (:func:`provenance`, computed from ``data/peaks.tsv``), so that results computed on stand-ins
  are never presented as the paper's findings.

Tests (``tests/test_manuscript.py``) check that every label and value the manuscript uses is
declared here, that each declared file is written by exactly one stage and that each value
resolves in a real ``values.json``. Set ``PAINEMP_ALLOW_MISSING=1`` to render with visible
placeholders while a stage is still being developed (never for a release).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import paths

LGR = logging.getLogger(__name__)

#: Cross-reference label (or resource name) -> (producing stage, path under results/).
ARTEFACTS: dict[str, tuple[str, str]] = {
    "fig-prisma": ("figure1", "figures/figure1.png"),
    "fig-meta": ("meta", "figures/figure2.png"),
    "fig-network": ("characterisation", "figures/figure3.png"),
    "fig-behaviour": ("characterisation", "figures/figure4.png"),
    "tbl-demographics": ("tables", "tables/table1.tsv"),
    "tbl-data": ("tables", "tables/table2.tsv"),
    "tbl-results": ("meta", "tables/table3.tsv"),
    "tbl-reproduction": ("meta", "tables/table3_vs_published.tsv"),
    "tbl-jackknife": ("robustness", "tables/jackknife_summary.tsv"),
    "tbl-metaregression": ("robustness", "tables/metaregression.tsv"),
    "tbl-networks": ("characterisation", "tables/network_overlap.tsv"),
    "tbl-terms": ("characterisation", "tables/top_terms.tsv"),
    "map-z": ("meta", "maps/z.nii.gz"),
    # interactive viewer (HTML only): the clusters of Table 3, thresholded as Figure 2
    "map-z-thresholded": ("meta", "maps/z_thresholded.nii.gz"),
    "fig-funnels": ("meta", "figures/funnels.png"),  # supplementary figure
    "fig-forests": ("meta", "figures/forests.png"),  # supplementary figure
    # What can be checked without the coordinates (stage design, analysis/stages/design.py)
    "tbl-table3-checks": ("design", "tables/table3_checks.tsv"),
    "tbl-design-fwe": ("design", "tables/design_published_peaks.tsv"),
    "tbl-design-sensitivity": ("design", "tables/design_sensitivity.tsv"),
    "fig-design-sensitivity": ("design", "figures/design_sensitivity.png"),
}

#: Name used in the manuscript -> "stage.key" in values.json (stages record the parameters they used).
#: The test ``test_every_value_resolves`` lists any name that does not resolve.
VALUES: dict[str, str] = {
    # Figure 1 (stage figure1, analysis/stages/figure1.py)
    "prisma_included": "figure1.n_included",
    "prisma_databases": "figure1.databases",
    "prisma_search_end": "figure1.search_end",
    "prisma_counts_not_reported": "figure1.n_counts_not_reported",
    # Tables 1-2 and the sample (stage tables, analysis/stages/tables.py)
    "n_studies": "tables.n_studies",
    "n_patients": "tables.n_patients",
    "n_controls": "tables.n_controls",
    "n_total": "tables.n_total",
    "age_mean": "tables.age_mean",
    "age_sd": "tables.age_sd",
    "n_peaks": "tables.n_peaks",
    "n_peaks_published": "tables.n_peaks_published",
    "n_patients_published": "tables.n_patients_published",
    "n_controls_published": "tables.n_controls_published",
    "age_mean_published": "tables.age_mean_published",
    "age_sd_published": "tables.age_sd_published",
    "agesd_t": "tables.age_sd_ttest_t",
    "agesd_df": "tables.age_sd_ttest_df",
    "agesd_p": "tables.age_sd_ttest_p",
    "agesd_t_published": "tables.age_sd_ttest_t_published",
    "agesd_df_published": "tables.age_sd_ttest_df_published",
    "agesd_p_published": "tables.age_sd_ttest_p_published",
    "agesd_p_from_published_t": "tables.age_sd_ttest_p_from_published_t",
    "agesd_zero_t": "tables.age_sd_ttest_missing_as_zero.t",
    "agesd_zero_df": "tables.age_sd_ttest_missing_as_zero.df",
    "agesd_zero_levene_f": "tables.age_sd_ttest_missing_as_zero.levene_F",
    "agesd_zero_levene_p": "tables.age_sd_ttest_missing_as_zero.levene_p",
    "n_peaks_real": "tables.n_peaks_real",
    "n_peaks_simulated": "tables.n_peaks_simulated",
    "age_definition": "tables.age_definition",
    # SDM-PSI mean analysis (stage meta, analysis/stages/meta.py)
    "n_clusters_increase": "meta.n_clusters_increase",
    "n_clusters_decrease": "meta.n_clusters_decrease",
    "n_published_recovered": "meta.published_matched_within_10mm",
    "imputations": "meta.imputations",
    "heterogeneity_estimator": "meta.heterogeneity_estimator",
    "analysis_mask": "meta.analysis_mask",
    "n_voxels": "meta.n_voxels",
    # Robustness (stage robustness, analysis/stages/robustness.py)
    "permutations": "robustness.permutations",
    "metaregression_any_significant": "robustness.metaregression_any_p_below_0_05",
    "metaregression_min_p": "robustness.metaregression_min_p",
    "n_clusters_fwe_voxel": "robustness.n_clusters_fwe_voxel",
    "n_clusters_fwe_tfce": "robustness.n_clusters_fwe_tfce",
    # Characterisation (stage characterisation, published peaks)
    "dmn_share_increase": "characterisation.published.overlap_increase.dmn_share",
    "dmn_share_decrease": "characterisation.published.overlap_decrease.dmn_share",
    "macm_studies_acc": "characterisation.published.seeds.P1.n_studies_6mm",
    "macm_studies_mtg": "characterisation.published.seeds.P2.n_studies_6mm",
    "n_top_terms": "characterisation.parameters.top_terms",
    # Checks without the coordinates (stage design, analysis/stages/design.py)
    "design_t3_n_checks": "design.table3_checks.n_checks",
    "design_t3_consistent": "design.table3_checks.consistent",
    "design_t3_inconsistent": "design.table3_checks.inconsistent",
    "design_t3_not_checkable": "design.table3_checks.not_checkable",
    "design_null_replicates": "design.null.replicates",
    "design_null_imputations": "design.null.imputations",
    "design_null_smallest_p": "design.null.smallest_p",
    "design_null_decidable": "design.null.decidable",
    "design_null_replicates_to_decide": "design.null.replicates_to_decide",
    "design_gumbel_min_maxima": "design.null.gumbel_min_maxima",
    "design_null_voxels": "design.null.n_voxels",
    "design_null_whole_mask": "design.null.whole_mask",
    "design_alpha": "design.null.alpha",
    "design_confidence": "design.null.confidence",
    "design_fwe_increase": "design.null.increase",
    "design_fwe_decrease": "design.null.decrease",
    "design_paper_fwer": "design.paper_threshold_fwer.either",
    "design_published": "design.published",
    "design_psi_permutations": "design.psi_standin_permutations",
    "design_sens_replicates": "design.sensitivity.replicates",
    "design_sens_decidable": "design.sensitivity.decidable",
    "design_sens_replicates_to_decide": "design.sensitivity.replicates_to_decide",
    "design_sens_radius": "design.sensitivity.roi_radius_mm",
    "design_sens_voxels": "design.sensitivity.n_voxels",
    "design_match_mm": "design.sensitivity.match_distance_mm",
    "design_sens_locations": "design.sensitivity.locations",
    # Parameters (analysis/config.yaml)
    "fwhm_mm": "meta.parameters.fwhm_mm",
    "voxel_mm": "meta.parameters.voxel_mm",
    "p_threshold": "meta.parameters.p_uncorrected",
    "min_cluster_voxels": "meta.parameters.min_cluster_voxels",
    "peak_z": "meta.parameters.peak_z",
    "imputations_config": "meta.imputations_configured",
    "permutations_config": "robustness.permutations_configured",
    "rsfc_r_threshold": "characterisation.parameters.rsfc_r_threshold",
    "macm_radius_mm": "characterisation.parameters.macm_radius_mm",
    "seed": "meta.parameters.seed",
}



class MissingArtefact(LookupError):
    """A figure, table or value the manuscript needs was not produced."""


def allow_missing() -> bool:
    """Whether missing artefacts render as visible placeholders (development only)."""
    return os.environ.get("PAINEMP_ALLOW_MISSING", "") not in ("", "0", "false")


def _dig(tree: Any, dotted: str) -> Any:
    node = tree
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(dotted)
    return node


class Values:
    """Read-only access to ``values.json`` by manuscript name.

    ``v["n_studies"]`` looks up :data:`VALUES`; a dotted ``"stage.key"`` works too.

    Parameters
    ----------
    results_dir : path-like, optional
        Defaults to :func:`analysis.paths.results_dir`.
    """

    def __init__(self, results_dir: str | Path | None = None):
        self.results_dir = Path(results_dir or paths.results_dir())
        path = self.results_dir / "values.json"
        self.raw: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        self.missing: list[str] = []

    def path_of(self, name: str) -> str:
        """The ``stage.key`` a manuscript name stands for."""
        return VALUES.get(name, name)

    def get(self, name: str) -> Any:
        """The value, or raise :class:`MissingArtefact` naming the stage to run."""
        dotted = self.path_of(name)
        try:
            return _dig(self.raw, dotted)
        except KeyError:
            stage = dotted.split(".")[0]
            raise MissingArtefact(
                f"value {name!r} ({dotted}) is not in {self.results_dir / 'values.json'}; "
                f"run `python -m analysis run` (stage {stage!r})") from None

    def __getitem__(self, name: str) -> Any:
        try:
            return self.get(name)
        except MissingArtefact:
            if not allow_missing():
                raise
            self.missing.append(name)
            return f"[missing: {self.path_of(name)}]"

    def fmt(self, name: str, spec: str = "") -> str:
        """The value formatted with ``spec`` (placeholders pass through unformatted)."""
        value = self[name]
        if isinstance(value, str) or spec == "":
            return str(value)
        return format(value, spec)

    def has(self, name: str) -> bool:
        try:
            self.get(name)
        except MissingArtefact:
            return False
        return True


def fmt_p(p: float) -> str:
    """A p-value as text, in the prose and in every table: three significant digits
    (``0.0462``, ``0.500``), in powers of ten below 0.001 (``2.24 × 10⁻⁴``).
    """
    if isinstance(p, str):
        return p  # a placeholder or text already formatted
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "NA"
    p = float(p)
    if p <= 0:
        return "0"
    if p < 0.001:
        exponent = math.floor(math.log10(p))
        mantissa = p / 10**exponent
        if round(mantissa, 2) >= 10:
            mantissa, exponent = mantissa / 10, exponent + 1
        return f"{mantissa:.2f} × 10{str(exponent).translate(_SUPERSCRIPT)}"
    return f"{p:#.3g}".rstrip(".")


def run_mode(imputations: Any, permutations: Any, imputations_config: Any,
             permutations_config: Any) -> str:
    """Whether the results come from a full or a quick run of the pipeline.

    Parameters
    ----------
    imputations, permutations : int
        What the run used (``meta.imputations``, ``robustness.permutations`` of values.json).
    imputations_config, permutations_config : int
        What the configuration asks of a full run (``sdm.imputations``, ``sdm.permutations``).

    Returns
    -------
    str
        ``"quick"`` when the run used fewer imputations or permutations than configured (as
        ``python -m analysis run --quick`` does), ``"full"`` otherwise, ``"unknown"`` when a
        value is a placeholder of a missing stage.
    """
    values = (imputations, permutations, imputations_config, permutations_config)
    if any(isinstance(x, str) or x is None for x in values):
        return "unknown"
    quick = imputations < imputations_config or permutations < permutations_config
    return "quick" if quick else "full"


def peaks_limitation(prov: Provenance, v: Values | None = None) -> str:
    """The limitation that the provenance of the peaks sets on the voxel-wise results."""
    sources = import_sources(v) if v is not None else []
    if prov.all_real and sources:
        return (f"Every study's peak coordinates were imported from {'; '.join(sources)}, so "
                "the voxel-wise results re-analyse those data, within the limits of the open "
                "engine described next.")
    if prov.all_real:
        return ("Every study's peak coordinates are the authors' own, so the voxel-wise "
                "results re-analyse the original data, within the limits of the open engine "
                "described next.")
    return (f"Only {prov.n_studies_real} of the {prov.n_studies} studies' peak coordinates are "
            "real in the current data; every voxel-wise result is conditional on that.")


#: The limitation of the checks without the coordinates (stage ``design``).
DESIGN_LIMITATION = (
    "The checks without the coordinates rest on a model of the unpublished study maps (smooth "
    "Gaussian noise, Gaussian effects, peaks listed as SPM lists them, each study with as many "
    "peaks as the stand-in table gives it) and on a finite number of simulated meta-analyses "
    "with fewer imputations than the paper; their intervals state the resulting precision and "
    "`python -m analysis bench --only design` runs more. The sensitivity analyses are "
    "restricted to the grey matter around the published peaks.")


def design_limitation(v: Values):
    """The limitation of the stage ``design``, or that it was not computed (Markdown)."""
    from IPython.display import Markdown

    reason = (v.raw.get("design") or {}).get("not_applicable") if isinstance(
        v.raw.get("design"), dict) else None
    if reason:
        return Markdown(f"The checks without the coordinates (stage `design`) were not computed "
                        f"for the data of this run: {reason}.")
    return Markdown(DESIGN_LIMITATION)


def table1_limitation(v: Values):
    """Where the study table's numbers come from (Markdown)."""
    from IPython.display import Markdown

    if paper_sample(v) or not isinstance(v.raw.get("tables"), dict):
        return Markdown("Discrepancies between the paper's Table 1 and the original reports "
                        "(group sizes, pooled samples) are documented in `data/README.md`; the "
                        "analysis uses the numbers of the paper's Table 1.")
    return Markdown("The study table of this run is not the paper's Table 1: every sample number "
                    "above is that of `data/studies.tsv`, and where it lacks a column of the "
                    "paper's table the number is not computed.")


def artefact_path(label: str, results_dir: str | Path | None = None) -> Path:
    """Path of the file behind a label of :data:`ARTEFACTS`."""
    if label not in ARTEFACTS:
        raise KeyError(f"{label!r} is not declared in analysis.manuscript_values.ARTEFACTS")
    return Path(results_dir or paths.results_dir()) / ARTEFACTS[label][1]


def _missing_note(label: str, path: Path):
    from IPython.display import Markdown

    stage = ARTEFACTS[label][0]
    msg = f"{path} (label {label}, stage {stage!r}) does not exist; run `python -m analysis run`"
    if not allow_missing():
        raise MissingArtefact(msg)
    LGR.warning("missing artefact: %s", msg)
    return Markdown(f"**[missing artefact: {ARTEFACTS[label][1]} from stage {stage}]**")


def skipped(v: Values, stage: str) -> dict[str, str]:
    """What a stage left out for the data of the run, with the reason of each (its values'
    ``skipped``: an artefact path under ``results/`` or an analysis name -> reason).
    """
    rec = v.raw.get(stage)
    out = rec.get("skipped") if isinstance(rec, dict) else None
    return {str(k): str(r) for k, r in out.items()} if isinstance(out, dict) else {}


def skipped_reason(label: str, results_dir: str | Path | None = None) -> str | None:
    """Why the stage of ``label`` did not write its file for these data, or None."""
    stage, rel = ARTEFACTS[label]
    return skipped(Values(results_dir), stage).get(rel)


#: Caption of a figure or table that its stage did not compute for the data of the run.
NOT_COMPUTED = "Not computed for the data of this run."


def _skipped_note(reason: str):
    """What stands in place of a figure or table that its stage left out, and why."""
    from IPython.display import Markdown

    return Markdown(f"*Not computed for the data of this run: {reason}.*",
                    metadata={"painemp": {"caption": NOT_COMPUTED}})


def figure(label: str, results_dir: str | Path | None = None, caption: str | None = None,
           alt: str | None = None):
    """The figure file of ``label`` for display in a code cell (an IPython ``Image``).

    Parameters
    ----------
    label : str
        A figure of :data:`ARTEFACTS`.
    caption, alt : str, optional
        Caption and alternative text computed from the results; they replace the cell's
        ``fig-cap`` and ``fig-alt`` (:func:`analysis.render.computed_caption`).
    """
    from IPython.display import Image

    path = artefact_path(label, results_dir)
    if not path.exists():
        reason = skipped_reason(label, results_dir)
        return _skipped_note(reason) if reason else _missing_note(label, path)
    meta = {"painemp": {"caption": caption, "alt": alt}} if caption or alt else None
    return Image(filename=str(path), metadata=meta)


def read_table(label: str, results_dir: str | Path | None = None) -> pd.DataFrame | None:
    """The TSV of ``label`` as a DataFrame (``None`` when missing and placeholders allowed)."""
    path = artefact_path(label, results_dir)
    if not path.exists():
        _missing_note(label, path)
        return None
    return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[""])


# --- tables --------------------------------------------------------------------------------------
#
# The stages write their tables as TSV files for machines (snake_case columns, full precision,
# empty cells). The manuscript shows them through the specifications of TABLES below: human
# column headers with units, rounding per quantity, no column that is empty throughout (a note
# says which were left out and why) and a note under the table for every kind of missing cell.

#: Shown in a cell whose value is missing; a note under the table says why.
MISSING = "–"
MINUS = "−"


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and v.strip() in ("", "NA", "NaN", "nan")


def _minus(text: str) -> str:
    """A typographic minus sign for negative numbers."""
    return MINUS + text[1:] if text.startswith("-") else text


def fmt_num(digits: int) -> Callable[[Any], str]:
    """Formatter of a number with ``digits`` decimals (typographic minus, no ``-0.0``)."""

    def fmt(v: Any) -> str:
        x = float(v)
        text = f"{x:.{digits}f}"
        if float(text) == 0:
            text = text.lstrip("-")
        return _minus(text)

    return fmt


def fmt_int(v: Any) -> str:
    """An integer with thousands separators (``12,174``)."""
    return _minus(f"{int(round(float(v))):,}")


def fmt_pct(digits: int = 1) -> Callable[[Any], str]:
    """Formatter of a share (0-1) as a percentage with ``digits`` decimals."""
    num = fmt_num(digits)
    return lambda v: num(100 * float(v))


def fmt_p_table(p: Any) -> str:
    """A p-value in a table: :func:`fmt_p` (one rule for p in prose and tables)."""
    return fmt_p(float(p))


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def fmt_p_sci(p: Any) -> str:
    """A p-value in scientific notation below 0.001 (``9.9 × 10⁻¹⁴``), else three decimals."""
    p = float(p)
    if p >= 0.001:
        return f"{p:.3f}"
    if p <= 0:
        return "0"
    exponent = math.floor(math.log10(p))
    mantissa = p / 10**exponent
    if round(mantissa, 1) >= 10:
        mantissa, exponent = mantissa / 10, exponent + 1
    return f"{mantissa:.1f} × 10{str(exponent).translate(_SUPERSCRIPT)}"


def _xyz(prefix: str = "") -> Callable[[pd.Series], Any]:
    """Row -> "x, y, z" of the columns ``{prefix}x``, ``{prefix}y``, ``{prefix}z`` (missing
    when any of them is).
    """

    def get(row: pd.Series) -> Any:
        vals = [row.get(f"{prefix}{a}") for a in "xyz"]
        if any(_is_missing(v) for v in vals):
            return None
        return ",\u00a0".join(fmt_int(v) for v in vals)  # a coordinate is never split

    return get


@dataclass(frozen=True)
class Column:
    """One column of a manuscript table.

    Parameters
    ----------
    header : str
        Header shown, with the unit.
    value : str or callable
        The TSV column, or a function of the row returning the value.
    fmt : callable
        Value -> text (not called for missing values).
    missing_note : str, optional
        Note under the table for a missing value of this column (what the dash means).
    align : {"left", "right"}
        Alignment of the column.
    """

    header: str
    value: str | Callable[[pd.Series], Any]
    fmt: Callable[[Any], str] = str
    missing_note: str | None = None
    align: str = "left"


@dataclass(frozen=True)
class TableSpec:
    """How a manuscript table is shown.

    Parameters
    ----------
    columns : list of Column
        In order.
    rows : callable, optional
        DataFrame -> the rows to show (selection, order).
    notes : callable, optional
        Rows shown -> notes printed under the table whatever the content.
    dropped_note : str, optional
        Why columns can be empty throughout (printed with their headers when they are left
        out).
    empty : str
        Text instead of a table without rows.
    """

    columns: list[Column]
    rows: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    notes: Callable[[pd.DataFrame], list[str]] | None = None
    dropped_note: str | None = None
    empty: str = "No rows in this run."


def _cells(spec: TableSpec, df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Formatted cells (text) and the notes about missing values."""
    shown: list[tuple[str, list[str]]] = []  # (header, cells); headers may repeat
    aligns: list[str] = []
    notes: list[str] = []
    dropped: list[str] = []
    for col in spec.columns:
        if callable(col.value):
            raw = [col.value(row) for _, row in df.iterrows()]
        else:
            raw = list(df[col.value]) if col.value in df.columns else [None] * len(df)
        missing = [_is_missing(v) for v in raw]
        if all(missing):
            dropped.append(col.header)
            continue
        if any(missing) and col.missing_note:
            notes.append(f"{MISSING} {col.missing_note}")
        shown.append((col.header, [MISSING if m else col.fmt(v) for v, m in zip(raw, missing)]))
        aligns.append(col.align)
    if dropped:
        why = f" {spec.dropped_note}" if spec.dropped_note else ""
        notes.append(f"Not shown, because no value exists in this run: {', '.join(dropped)}."
                     f"{why}")
    out = pd.DataFrame({i: cells for i, (_, cells) in enumerate(shown)}, index=range(len(df)))
    out.columns = [header for header, _ in shown]
    out.attrs["align"] = aligns
    return out, list(dict.fromkeys(notes))


def md_table(df: pd.DataFrame, floatfmt: str = ".3g", index: bool = False,
             align: list[str] | None = None) -> str:
    """A pipe table in Markdown (for Quarto's HTML and Typst and for pandoc).

    Column widths follow the longest cell of each column (pandoc reads them from the dashes of
    the separator line when the table is wider than the text).

    Parameters
    ----------
    df : DataFrame
        The table; missing cells are left empty, floats formatted with ``floatfmt``.
    floatfmt : str
        Format of floating-point cells.
    index : bool
        Show the index as the first column.
    align : list of {"left", "right"}, optional
        Alignment of each column (default: left).
    """
    if index:
        df = df.reset_index()

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = [str(c).replace("|", "\\|") for c in df.columns]
    rows = [[cell(v) for v in row] for row in df.itertuples(index=False)]
    align = align or ["left"] * len(head)
    rules = []
    for j, h in enumerate(head):
        longest_word = max((len(w) for w in h.split()), default=1)
        width = max([longest_word, *(len(r[j]) for r in rows)], default=3)
        dashes = "-" * max(3, min(width, 40))
        rules.append(dashes[:-1] + ":" if align[j] == "right" else ":" + dashes[1:])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(rules) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def notes_markdown(notes: list[str]) -> str:
    """Notes under a table (a ``table-note`` div, styled by both renderers)."""
    if not notes:
        return ""
    return "\n::: {.table-note}\n*Note.* " + " ".join(notes) + "\n:::\n"


def format_table(label: str, df: pd.DataFrame, spec: TableSpec | None = None,
                 floatfmt: str = ".3g") -> str:
    """Markdown of a table (and its notes) formatted by its :class:`TableSpec`.

    Parameters
    ----------
    label : str
        A ``tbl-`` label (its spec is ``TABLES[label]`` unless ``spec`` is given).
    df : DataFrame
        The rows as the stage wrote them.
    spec : TableSpec, optional
        Overrides :data:`TABLES`.
    floatfmt : str
        Format of floats for a table without a spec.
    """
    spec = spec or TABLES.get(label)
    if spec is None:
        return md_table(df, floatfmt=floatfmt)
    if spec.rows is not None:
        df = spec.rows(df)
    if df.empty:
        return f"*{spec.empty}*\n"
    cells, notes = _cells(spec, df.reset_index(drop=True))
    static = spec.notes(df) if spec.notes else []
    return md_table(cells, align=cells.attrs["align"]) + notes_markdown([*static, *notes])


def table(label: str, results_dir: str | Path | None = None, query: str | None = None,
          empty: str | None = None, floatfmt: str = ".3g", columns: dict | None = None,
          caption: str | None = None):
    """The table of ``label`` as Markdown for display in a code cell.

    Parameters
    ----------
    label : str
        A ``tbl-`` label of :data:`ARTEFACTS`; formatted by its entry of :data:`TABLES`.
    query : str, optional
        A :meth:`pandas.DataFrame.query` selecting the rows to show.
    empty : str, optional
        Text shown instead of a table without rows (default: the spec's).
    floatfmt : str
        Format of floating-point cells of a table without a spec.
    columns : dict, optional
        ``{TSV column: header}`` of a table without an entry in :data:`TABLES`: these columns,
        in this order, numbers formatted by :func:`auto_format`.
    caption : str, optional
        Caption computed from the results; replaces the cell's ``tbl-cap``
        (:func:`analysis.render.computed_caption`).
    """
    from IPython.display import Markdown as _Markdown

    def Markdown(text):  # noqa: N802 (IPython's name)
        return _Markdown(text, metadata={"painemp": {"caption": caption}} if caption else None)

    reason = skipped_reason(label, results_dir)
    if reason and not artefact_path(label, results_dir).exists():
        return _skipped_note(reason)
    df = read_table(label, results_dir)
    if df is None:
        return _missing_note(label, artefact_path(label, results_dir))
    if query:
        df = df.query(query)
    spec = TABLES.get(label)
    if spec is None and columns:
        spec = auto_spec(df, columns, empty=empty or "No rows in this run.",
                         location_names=_location_names(results_dir))
    if empty is not None and spec is not None:
        spec = TableSpec(**{**spec.__dict__, "empty": empty})
    if df.empty and spec is None:
        return Markdown(f"*{empty or 'No rows in this run.'}*")
    return Markdown(format_table(label, df, spec, floatfmt=floatfmt))


# --- tables without a specification: one rule per quantity ---------------------------------------

#: Quantities whose TSV column names say what they are, and how many decimals they get.
TWO_DECIMALS = re.compile(r"(^|_)(z|sdm_z|g|hedges_g|effect_size|gumbel|fwe_z|tau2?)(_|$)")
P_VALUE = re.compile(r"(^|_)p(_|$)|(^|_)pvalue(_|$)")
PROBABILITY = re.compile(r"^(p_detect|p_covered|prob|rate|power)")
ONE_DECIMAL = re.compile(r"(distance|mm|i2|percent|pct)")
UNBOUNDED = "unbounded"
UNBOUNDED_NOTE = (f"{UNBOUNDED}: the number of simulated meta-analyses run does not bound "
                  "this end of the interval.")


def _is_bool_column(values: list) -> bool:
    texts = {str(v).strip().lower() for v in values if not _is_missing(v)}
    return bool(texts) and texts <= {"true", "false"}


def _humanise(text: Any) -> str:
    """``snake_case`` words of a stage (``macm_only``, ``not_checkable``) as words."""
    t = str(text)
    if re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)+", t):
        return t.replace("_", " ")
    return re.sub(r"(?<![\w.])-(?=\d)", MINUS, t)  # typographic minus of numbers in text


def auto_format(column: str, values: list) -> tuple[Callable[[Any], str], str]:
    """Formatter and alignment of a TSV column from its name and values.

    One rounding rule per quantity, whatever the table: SDM-Z, Hedges' g and thresholds on the
    z scale 2 decimals; p-values :func:`fmt_p`; probabilities 2 decimals; distances, I² and
    percentages 1 decimal; counts as integers; ``inf`` as "unbounded"; booleans yes/no;
    ``snake_case`` words as words. Text columns are left-aligned, numbers right-aligned.
    """
    name = column.lower()
    if _is_bool_column(values):
        return (lambda v: "yes" if str(v).strip().lower() == "true" else "no"), "left"
    numeric = all(_is_missing(v) or isinstance(v, (int, float)) and not isinstance(v, bool)
                  for v in values)
    if not numeric:
        return _humanise, "left"
    finite = [float(v) for v in values if not _is_missing(v) and math.isfinite(float(v))]
    if PROBABILITY.search(name):
        num = fmt_num(2)
    elif P_VALUE.search(name):
        num = fmt_p_table
    elif TWO_DECIMALS.search(name):
        num = fmt_num(2)
    elif ONE_DECIMAL.search(name):
        num = fmt_num(1)
    elif finite and all(float(x).is_integer() for x in finite):
        num = fmt_int
    else:
        num = fmt_num(2)

    def fmt(v: Any) -> str:
        x = float(v)
        if math.isinf(x):
            return UNBOUNDED if x > 0 else f"{MINUS}{UNBOUNDED}"
        return num(x)

    return fmt, "right"


def _location_names(results_dir: str | Path | None = None) -> dict[int, str]:
    """Published location number -> region name (the one atlas label of its coordinate)."""
    path = artefact_path("tbl-reproduction", results_dir)
    if not path.exists():
        return {}
    df = pd.read_csv(path, sep="\t")
    if not {"published_x", "published_y", "published_z"} <= set(df.columns):
        return {}
    from analysis.labels import peak_regions

    xyz = df[["published_x", "published_y", "published_z"]].to_numpy(float)
    return {i + 1: name for i, name in enumerate(peak_regions(xyz))}


def auto_spec(df: pd.DataFrame, columns: dict[str, str], empty: str = "No rows in this run.",
              location_names: dict[int, str] | None = None) -> TableSpec:
    """A :class:`TableSpec` for ``{TSV column: header}`` by :func:`auto_format`.

    A column ``location`` holding the published locations' numbers shows their region names;
    a column ``region`` or ``aal_label`` of coordinates is left as the stage wrote it.
    """
    cols = []
    notes: list[str] = []
    for c, header in columns.items():
        if c not in df.columns:
            continue
        values = list(df[c])
        if c == "location" and location_names:
            cols.append(Column(header, c, lambda v, m=location_names: m.get(int(v), str(v))))
            continue
        fmt, align = auto_format(c, values)
        if any(not _is_missing(v) and isinstance(v, float) and math.isinf(v) for v in values):
            notes.append(UNBOUNDED_NOTE)
        cols.append(Column(header, c, fmt, align=align))
    unique = list(dict.fromkeys(notes))
    return TableSpec(columns=cols, notes=lambda _df: list(unique), empty=empty)


def terms_table(label: str = "tbl-terms", seed_set: str = "published", n: int | None = None,
                results_dir: str | Path | None = None):
    """Top terms per seed side by side (rank x seed, "term (p)"), from the characterisation.

    Parameters
    ----------
    label : str
        The label of the top-terms table in :data:`ARTEFACTS`.
    seed_set : str
        Which seeds: ``"published"`` (the paper's peaks) or ``"meta"`` (our clusters).
    n : int, optional
        Number of ranks shown (default: every rank the stage wrote).
    """
    from IPython.display import Markdown

    df = read_table(label, results_dir)
    if df is None:
        return _missing_note(label, artefact_path(label, results_dir))
    if "set" in df.columns:
        df = df[df["set"] == seed_set]
    if "source" in df.columns and len(df):
        df = df[df["source"] == df["source"].iloc[0]]
    if df.empty:
        return Markdown(f"*No terms for the {seed_set} seeds.*")
    if n is not None:
        df = df[df["rank"] <= n]
    cells = df["term"].astype(str) + " (" + df["p"].map(fmt_p_sci) + ")"
    wide = df.assign(cell=cells).pivot(index="rank", columns="seed", values="cell")
    wide = wide.fillna(MISSING).reset_index().rename(columns={"rank": "Rank"})
    if "aal2_region" in df.columns:
        regions = df.groupby("seed")["aal2_region"].first()
        wide = wide.rename(columns={s: f"{s}: {_region(regions[s])}" for s in regions.index})
    source = str(df["source"].iloc[0]) if "source" in df.columns else ""
    corpus = {"neuroquery": "NeuroQuery", "neurosynth": "Neurosynth"}.get(
        source.split("_")[0], source)
    notes = [f"Terms ranked by the one-sided p of Fisher's exact test of their association "
             f"with activation of the seed's region{f' in the {corpus} corpus' if corpus else ''}"
             "; seeds named by the AAL region of their peak."]
    if (wide == MISSING).any().any():
        notes.append(f"{MISSING} fewer associated terms than ranks shown.")
    return Markdown(md_table(wide, align=["right"] + ["left"] * (wide.shape[1] - 1))
                    + notes_markdown(notes))


def _region(aal_label: Any) -> str:
    """Readable AAL region name (``Cingulate_Ant_L`` -> ``Anterior Cingulate, Left``)."""
    from analysis.labels import describe_aal

    return describe_aal(str(aal_label)) if not _is_missing(aal_label) else MISSING


# --- specifications of the manuscript's tables ---------------------------------------------------

DIRECTIONS = {"Patients>Controls": "Patients > controls", "Patients<Controls":
              "Patients < controls", "increase": "Patients > controls",
              "decrease": "Patients < controls", "Positive": "Positive effect",
              "Negative": "Negative effect"}
COVARIATES = {"age": "Mean age (years)", "female_pct": "Women (%)",
              "treated": "Treatment (treated vs untreated)"}
COVARIATE_NAMES = {"age": "mean age", "female_pct": "percentage of women",
                   "treated": "treatment status"}
COVARIATE_UNITS = {"age": "per year of mean age", "female_pct": "per percentage point of women",
                   "treated": "treated minus untreated studies"}
NETWORKS = [("Visual", "Visual"), ("Somatomotor", "Somatomotor"),
            ("DorsalAttention", "Dorsal attention"), ("VentralAttention", "Ventral attention"),
            ("Limbic", "Limbic"), ("Frontoparietal", "Frontoparietal"),
            ("Default", "Default mode"), ("outside", "Outside")]
ABBREVIATIONS = {"HC": "healthy controls", "ASD": "autism spectrum disorder",
                 "CD": "conduct disorder", "MDD": "major depressive disorder",
                 "SCH": "schizophrenia"}


def _direction(v: Any) -> str:
    return DIRECTIONS.get(str(v), str(v))


def _age_sd(v: Any) -> Any:
    """``34.6(13.3)`` -> ``34.6 (13.3)``; a missing SD as a dash; all missing -> missing."""
    if _is_missing(v):
        return None
    m = re.fullmatch(r"\s*([^()]*?)\s*\(([^()]*)\)\s*", str(v))
    if not m:
        return str(v)
    mean, sd = m.groups()
    return f"{mean} ({MISSING if _is_missing(sd) else sd})"


def _disorder(v: Any) -> str:
    """``Major Depressive Disorder (MDD)`` -> ``MDD`` (spelled out in the notes)."""
    m = re.search(r"\(([A-Z]{2,})\)\s*$", str(v))
    return m.group(1) if m else str(v)


#: Marks the studies whose peak coordinates are real in Tables 1-2 while others are stand-ins.
REAL_MARK = "†"


def _study_key(study_id: Any) -> str:
    """``Moriguchi et al, 2007`` -> ``Moriguchi2007`` (the study key of data/peaks.tsv)."""
    text = str(study_id)
    m = re.match(r"\s*([^\W\d_][\w'-]*).*?(\d{4})", text)
    return f"{m.group(1)}{m.group(2)}" if m else text


def _real_studies() -> tuple[set[str], bool]:
    """Keys of the studies with real peaks, and whether any study is a stand-in."""
    try:
        prov = provenance()
    except Exception:  # noqa: BLE001 (a table of another data folder: no marks)
        return set(), False
    return set(prov.real_studies), not prov.all_real


def _study_name(row: pd.Series) -> str:
    name = str(row["Study ID"]).replace(" et al,", " et al.,")
    real, mixed = _real_studies()
    return f"{name}{REAL_MARK}" if mixed and _study_key(row["Study ID"]) in real else name


def _real_study_notes(df: pd.DataFrame) -> list[str]:
    real, mixed = _real_studies()
    if not mixed or "Study ID" not in df:
        return []
    if not any(_study_key(s) in real for s in df["Study ID"]):
        return []
    return [f"{REAL_MARK} Peak coordinates real (the authors' own); the peaks "
            "of every other study are simulated stand-ins."]


def _demographics_notes(df: pd.DataFrame) -> list[str]:
    ages = [str(v) for c in ("Patient mean age (SD)", "Control mean age (SD)") if c in df
            for v in df[c]]
    if all(_is_missing(a) for a in ages):
        return []  # no age column shown
    notes = ["Age: mean (SD) of each group as reported by the study."]
    if any(re.search(r"\(\s*NA\s*\)", a) for a in ages):
        notes.append(f"({MISSING}): SD of age not reported by the study.")
    return notes


def _abbreviation_notes(columns: list[str]) -> Callable[[pd.DataFrame], list[str]]:
    def notes(df: pd.DataFrame) -> list[str]:
        text = " ".join(str(v) for c in columns if c in df for v in df[c])
        used = [f"{k}, {v}" for k, v in ABBREVIATIONS.items() if re.search(rf"\b{k}\b", text)]
        return [f"Abbreviations: {'; '.join(used)}."] if used else []

    return notes


def _threshold(v: Any) -> str:
    """``p<0.001 uncorrected`` -> ``p < 0.001, uncorrected``."""
    return re.sub(r"^p\s*([<>=]+)\s*([\d.]+)\s*", r"p \1 \2, ", str(v)).rstrip(", ")


def _network_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The map of each seed that the paper reads (conjunction, or co-activation where no
    connectivity exists) and the overlaps of the seeds of each direction.
    """
    keep = df["kind"].isin(["conjunction", "macm_only"]) | df["kind"].str.startswith("overlap")
    return df[keep]


def _network_map(row: pd.Series) -> str:
    kind = str(row["kind"])
    if kind.startswith("overlap"):
        return "Overlap"
    return {"conjunction": "Conjunction", "macm_only": "Co-activation"}.get(kind, kind)


def _network_seed(row: pd.Series) -> str:
    if str(row["kind"]).startswith("overlap"):
        return f"{str(row['map']).capitalize()} peaks"
    return str(row["map"])


def _network_notes(df: pd.DataFrame) -> list[str]:
    notes = ["Shares (%) of the map's voxels in each network of the seven-network "
             "parcellation; Outside: voxels in none of them. Conjunction: voxels both "
             "co-activated with the seed (meta-analytic co-activation) and connected with it "
             "at rest. Overlap: voxels shared by the maps of the peaks of one direction "
             "(increase: patients > controls; decrease: patients < controls)."]
    seeds = sorted(s for s in df["map"].astype(str) if re.fullmatch(r"P\d+", s))
    if seeds:
        span = seeds[0] if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
        notes.append(f"Seeds {span}: the peaks of the paper's Table 3 in its order "
                     "(@tbl-reproduction).")
    only = sorted(df.loc[df["kind"] == "macm_only", "map"].astype(str))
    if only:
        notes.append(f"{', '.join(only)}: no resting-state connectivity substitute covers this "
                     "region, so its co-activation map stands in for the conjunction.")
    return notes


def _printed_name_notes(df: pd.DataFrame) -> list[str]:
    """Where the paper names a published peak differently from the atlas used throughout."""
    if "published_printed_region" not in df:
        return []
    notes = []
    for _, r in df.iterrows():
        printed = re.sub(r"\s*\([^()]*\)\s*$", "", str(r["published_printed_region"]))
        if not _is_missing(r["published_printed_region"]) and printed != str(r["published_region"]):
            notes.append(f"The paper names the peak at ({_xyz('published_')(r)}) "
                         f"{printed}; the AAL atlas used for every region name of this document "
                         f"places it in the {r['published_region']}.")
    return notes


def _jackknife_analysis(v: Any) -> str:
    text = str(v)
    if text == "leave-one-out":
        return "Leave one study out"
    m = re.fullmatch(r"leave-one-(.+)-out", text)
    return f"Leave one {m.group(1).replace('_', ' ')} out" if m else text


def _of(count: str, total: str = "n_analyses") -> Callable[[pd.Series], Any]:
    def get(row: pd.Series) -> Any:
        if _is_missing(row.get(count)) or _is_missing(row.get(total)):
            return None
        return f"{int(row[count])} of {int(row[total])}"

    return get


def _failed_without(v: Any) -> Any:
    return None if _is_missing(v) else ", ".join(s for s in str(v).split(";") if s)


def _slope_se(row: pd.Series) -> Any:
    if _is_missing(row.get("slope")) or _is_missing(row.get("slope_se")):
        return None
    return f"{fmt_num(3)(row['slope'])} ({fmt_num(3)(row['slope_se'])})"


def _metaregression_notes(df: pd.DataFrame) -> list[str]:
    notes = []
    if "slope" in df and df["slope"].notna().any():
        units = "; ".join(f"{COVARIATE_NAMES.get(c, c)}: {u}"
                          for c, u in COVARIATE_UNITS.items() if c in set(df["covariate"]))
        notes.append(f"Slope: change of Hedges' g at the cluster peak ({units}); p two-tailed; "
                     "p FWE: family-wise error corrected by Freedman–Lane permutation of "
                     "studies.")
    missing = df.groupby("covariate")["n_missing"].first() if "n_missing" in df else {}
    for cov, n in getattr(missing, "items", lambda: [])():
        if not _is_missing(n) and int(n) > 0:
            studies = "study does" if int(n) == 1 else "studies do"
            notes.append(f"{int(n)} {studies} not report the {COVARIATE_NAMES.get(cov, cov)} "
                         f"and {'is' if int(n) == 1 else 'are'} left out of that "
                         "meta-regression.")
    notes.append("Whole-brain columns: clusters of the slope map at the thresholds of the main "
                 "analysis, and voxels whose slope has p FWE < 0.05 in either direction.")
    return notes


TABLES: dict[str, TableSpec] = {
    "tbl-demographics": TableSpec(
        columns=[
            Column("Study", _study_name),
            Column("Disorder", "Disease type", _disorder),
            Column("N", "Num.", fmt_int, align="right"),
            Column("Women (%)", "Female (%)", lambda v: str(v).rstrip("%").strip(),
                   "percentage of women not reported.", align="right"),
            Column("Patients (n)", "Patient n1", fmt_int, align="right"),
            Column("Patients' age (years)", lambda r: _age_sd(r["Patient mean age (SD)"]),
                   missing_note="age of the group not reported by the study."),
            Column("Treated", "Treatment (Y/N)",
                   lambda v: {"Y": "Yes", "N": "No"}.get(str(v), str(v))),
            Column("Controls (n)", "Control n2", fmt_int, align="right"),
            Column("Controls' age (years)", lambda r: _age_sd(r["Control mean age (SD)"]),
                   missing_note="age of the group not reported by the study."),
        ],
        notes=lambda df: [*_real_study_notes(df), *_demographics_notes(df),
                          *_abbreviation_notes(["Disease type"])(df)],
    ),
    "tbl-data": TableSpec(
        columns=[
            Column("Study", _study_name),
            Column("Voxel threshold", "Correction", _threshold),
            Column("Space", "Space"),
            Column("Contrast (pain > no pain)", "Coordinates (Pain > No Pain)",
                   lambda v: str(v).replace(" & ", "; ")),
            Column("Paradigm", "Paradigm", lambda v: str(v).capitalize()),
        ],
        notes=lambda df: [*_real_study_notes(df),
                          *_abbreviation_notes(["Coordinates (Pain > No Pain)"])(df)],
    ),
    "tbl-results": TableSpec(
        columns=[
            Column("Direction", "direction", _direction),
            Column("Region of the peak", "region"),
            Column("Voxels", "cluster_voxels", fmt_int, align="right"),
            Column("Peak MNI x, y, z (mm)", _xyz()),
            Column("SDM-Z", "sdm_z", fmt_num(2), align="right"),
            Column("p (voxel)", "p_voxel", fmt_p_table, align="right"),
            Column("Hedges' g", "hedges_g", fmt_num(2), align="right"),
            Column("I² (%)", "i2", fmt_num(1), "I² not estimable at the peak.", align="right"),
            Column("Egger p", "egger_p", fmt_p_table, "Egger's test not estimable at the peak.",
                   align="right"),
        ],
        notes=lambda df: ["p (voxel): one-tailed, uncorrected, at the peak; Egger p: test of "
                          "small-study effects at the peak."],
        empty="No cluster survived the thresholds in this run.",
    ),
    "tbl-reproduction": TableSpec(
        columns=[
            Column("Direction", "direction", _direction),
            Column("Region of the published peak", "published_region"),
            Column("Published peak x, y, z (mm)", _xyz("published_")),
            Column("SDM-Z (paper)", "published_sdm_z", fmt_num(2), align="right"),
            Column("SDM-Z here at that peak", "reproduced_z_at_published_peak", fmt_num(2),
                   "the peak lies outside the analysis mask.", align="right"),
            Column("g (paper)", "published_hedges_g", fmt_num(2), align="right"),
            Column("g here at that peak", "reproduced_g_at_published_peak", fmt_num(2),
                   "the peak lies outside the analysis mask.", align="right"),
            Column("I² % (paper)", "published_i2", fmt_num(1), "I² not printed in the paper.",
                   align="right"),
            Column("I² % here at that peak", "reproduced_i2_at_published_peak", fmt_num(1),
                   "the peak lies outside the analysis mask.", align="right"),
            Column("Egger p (paper)", "published_egger_p", fmt_p_table,
                   "Egger p not printed in the paper.", align="right"),
            Column("Egger p here at that peak", "reproduced_egger_p_at_published_peak",
                   fmt_p_table, "the peak lies outside the analysis mask.", align="right"),
            Column("Nearest cluster here, x, y, z (mm)", _xyz("reproduced_"),
                   missing_note="no reproduced cluster of that direction."),
            Column("Distance (mm)", "distance_mm", fmt_num(1),
                   "no reproduced cluster of that direction.", align="right"),
        ],
        notes=lambda df: [*_printed_name_notes(df),
                          *([f"Inputs of this run: {df['inputs'].iloc[0]}."]
                            if "inputs" in df and len(df) else [])],
        dropped_note="No cluster of either direction survived in this run.",
    ),
    "tbl-jackknife": TableSpec(
        columns=[
            Column("Re-analysis", "analysis", _jackknife_analysis),
            Column("Cluster", "cluster", fmt_int, align="right"),
            Column("Direction", "direction", _direction),
            Column("Peak MNI x, y, z (mm)", _xyz()),
            Column("Cluster survives", _of("n_survive"), align="right"),
            Column("Peak survives", _of("n_peak_survive"), align="right"),
            Column("Fails without", "failed_without", _failed_without,
                   "the cluster survives every re-analysis."),
        ],
        empty="No cluster to test in this run.",
    ),
    "tbl-metaregression": TableSpec(
        columns=[
            Column("Covariate", "covariate", lambda v: COVARIATES.get(str(v), str(v))),
            Column("Studies", "n_studies", fmt_int, align="right"),
            Column("Cluster", "cluster", fmt_int, align="right"),
            Column("Peak MNI x, y, z (mm)", _xyz()),
            Column("Slope (SE)", _slope_se, align="right"),
            Column("z", "slope_z", fmt_num(2), align="right"),
            Column("p", "p_two_tailed", fmt_p_table, align="right"),
            Column("p FWE", "p_fwe_freedman_lane", fmt_p_table,
                   "no permutation test of the slope in this run.", align="right"),
            Column("Slope clusters, whole brain", "n_slope_clusters", fmt_int, align="right"),
            Column("Voxels with p FWE < 0.05, whole brain", "n_fwe_voxels", fmt_int,
                   "no permutation test of the slope in this run.", align="right"),
        ],
        notes=_metaregression_notes,
        dropped_note="With no cluster in the main analysis there is no peak at which to test "
                     "the slopes; the whole-brain columns remain.",
        empty="No meta-regression result in this run.",
    ),
    "tbl-networks": TableSpec(
        columns=[
            Column("Seed", _network_seed),
            Column("Map", _network_map),
            Column("Voxels", "voxels", fmt_int, align="right"),
            *[Column(f"{name} (%)", col, fmt_pct(1), align="right") for col, name in NETWORKS],
        ],
        rows=_network_rows,
        notes=_network_notes,
    ),
}


@dataclass
class Provenance:
    """Which studies' peaks are the authors' real coordinates, stand-ins, or missing.

    Every study of ``data/studies.tsv`` is in exactly one of ``real_studies``,
    ``simulated_studies`` and ``no_peak_studies``.
    """

    real_studies: list[str] = field(default_factory=list)
    simulated_studies: list[str] = field(default_factory=list)
    n_peaks_real: int = 0
    n_peaks_simulated: int = 0
    no_peak_studies: list[str] = field(default_factory=list)
    unknown_studies: list[str] = field(default_factory=list)
    n_peaks_unknown: int = 0

    @property
    def all_real(self) -> bool:
        return (not self.simulated_studies and not self.no_peak_studies
                and not self.unknown_studies and self.n_peaks_simulated == 0
                and self.n_peaks_unknown == 0 and bool(self.real_studies))

    @property
    def n_studies_real(self) -> int:
        return len(self.real_studies)

    @property
    def n_studies_simulated(self) -> int:
        return len(self.simulated_studies)

    @property
    def n_studies_no_peaks(self) -> int:
        return len(self.no_peak_studies)

    @property
    def n_studies_unknown(self) -> int:
        return len(self.unknown_studies)

    @property
    def n_studies(self) -> int:
        """All studies of the study table."""
        return (self.n_studies_real + self.n_studies_simulated + self.n_studies_no_peaks
                + self.n_studies_unknown)


def provenance(data_dir: str | Path | None = None,
               results_dir: str | Path | None = None) -> Provenance:
    """The provenance of the peaks behind the results, or of a data folder's peaks.

    Without ``data_dir`` this is the record of the results themselves (stage ``meta``'s values
    in ``results/values.json``: the studies whose peaks were real, stand-ins, of unknown
    provenance or missing when the maps were computed), never the current ``data/``, which
    may have changed since. Only where the results hold no such record (a render with
    ``--allow-missing``) is ``data/`` classified instead.

    With ``data_dir``: classifies every study of ``studies.tsv`` by the provenance of its
    ``peaks.tsv`` rows.

    :func:`analysis.data_tables.classify_provenance`: a study counts as simulated when any of its
    peak rows is a simulated stand-in (``provenance`` starting with ``simulated:``), as real
    when all its rows start with ``original:`` (transcribed from a publication) or
    ``sdm-import:`` (imported from the authors' SDM project), and as without peaks when it has
    no peak row at all.

    Raises
    ------
    analysis.sdm.errors.DataError
        When a file or its ``study`` / ``provenance`` column is missing, or a row has another
        prefix.
    """
    from analysis.data_tables import PEAKS_FILE, STUDIES_FILE, classify_provenance
    from analysis.sdm.inputs.io import read_tsv_text

    if data_dir is None:
        rec = Values(results_dir).raw.get("meta", {})
        if "real_studies" in rec:
            return Provenance(
                real_studies=list(rec["real_studies"]),
                simulated_studies=list(rec.get("simulated_studies", [])),
                n_peaks_real=int(rec.get("n_peaks_real", 0)),
                n_peaks_simulated=int(rec.get("n_peaks_simulated", 0)),
                no_peak_studies=list(rec.get("studies_without_peaks", [])),
                unknown_studies=list(rec.get("studies_provenance_unknown", [])),
                n_peaks_unknown=int(rec.get("n_peaks_provenance_unknown", 0)))
    ddir = Path(data_dir or paths.data_dir())
    studies = read_tsv_text(ddir / STUDIES_FILE, required=["study"])
    peaks = read_tsv_text(ddir / PEAKS_FILE, required=["study", "provenance"])
    v = classify_provenance(studies["study"], peaks["study"], peaks["provenance"], PEAKS_FILE)
    return Provenance(real_studies=sorted(v.real), simulated_studies=sorted(v.simulated),
                      n_peaks_real=v.n_peaks_real, n_peaks_simulated=v.n_peaks_simulated,
                      no_peak_studies=sorted(v.no_peaks), unknown_studies=sorted(v.unknown),
                      n_peaks_unknown=v.n_peaks_unknown)


def provenance_banner(prov: Provenance, v: Values | None = None) -> str:
    """Markdown callout stating the data provenance; empty when every study's peaks are real.

    Names the simulated stand-ins and every study of the study table without any peak row, and
    says how the stand-ins relate to the published Table 3 (:func:`standins`). The callout has
    the class ``painemp-provenance``: the renderer places it before the table of contents and
    appends :data:`TITLE_SUFFIX` to the title (``analysis/templates/front-matter.lua``).

    Parameters
    ----------
    prov : Provenance
        From :func:`provenance`.
    v : Values, optional
        The run's values (default: read from the results folder when it has any).
    """
    if prov.all_real:
        return ""
    if v is None:
        v = Values()
    s = standins(v, prov)
    real = ", ".join(prov.real_studies) if prov.real_studies else "none"
    if prov.simulated_studies:
        title = "Data provenance: simulated stand-ins"
        if s.by_construction:
            how = f"They are {BY_CONSTRUCTION}. "
        else:
            how = ("They are simulated study maps with the published effects planted in them; "
                   "they are not expected to reproduce the paper's Table 3. ")
        head = (f"The peak coordinates of {prov.n_studies_simulated} of {prov.n_studies} "
                f"studies are **simulated stand-ins** ({prov.n_peaks_simulated} simulated peaks), "
                f"generated by `{'analysis.standins' if s.by_construction else 'analysis.simulate'}` "
                "because the original coordinates are not "
                f"available to this compendium. {how}")
    elif prov.unknown_studies:
        title = "Data provenance: unknown"
        head = ""
    else:
        title = "Data provenance: studies without peaks"
        head = ""
    if prov.unknown_studies:
        head += (f"The peaks of {prov.n_studies_unknown} of {prov.n_studies} studies were "
                 f"**imported, provenance unknown** ({prov.n_peaks_unknown} peaks: "
                 f"{', '.join(prov.unknown_studies)}); they are not counted as real. ")
    missing = ""
    if prov.no_peak_studies:
        missing = (f"{prov.n_studies_no_peaks} of {prov.n_studies} studies have **no peak "
                   f"coordinates at all** ({', '.join(prov.no_peak_studies)}) and enter the "
                   "analysis as null studies. ")
    suffix = f' title-suffix="{TITLE_SUFFIX}"' if prov.simulated_studies else ""
    return (
        f'::: {{.callout-warning .painemp-provenance title="{title}"{suffix}}}\n'
        f"{head}{missing}Real peaks: {prov.n_peaks_real} (studies: {real}; "
        f"{prov.n_studies_real} of {prov.n_studies}). Every map, table and number computed from "
        "the peaks below demonstrates the pipeline and is **not** a finding of the paper. "
        "Substitute the authors' data (`python -m analysis import-sdm DIR`, or edit "
        "`data/peaks.tsv`) and run `make paper`; this notice then disappears.\n"
        ":::\n"
    )


def viewer(label: str = "map-z-thresholded", results_dir: str | Path | None = None,
           threshold=None):
    """Interactive slice viewer of a result map (nilearn ``view_img``) as embeddable HTML.

    The default map is the thresholded SDM-Z of the clusters (as Figure 2); its colour bar
    runs from the voxel threshold to the largest |SDM-Z|. A map without any non-zero voxel
    (no cluster survived) gives a sentence saying so instead of an empty viewer.

    Parameters
    ----------
    label : str
        A map of :data:`ARTEFACTS`.
    threshold : float, optional
        Display threshold; defaults to the z of the voxel threshold the meta stage used.
    """
    import nibabel as nib
    import numpy as np
    from IPython.display import HTML, Markdown
    from nilearn.plotting import view_img
    from scipy.stats import norm

    path = artefact_path(label, results_dir)
    if not path.exists():
        return _missing_note(label, path)
    meta = Values(results_dir).raw.get("meta", {})
    p_thr = meta.get("threshold", {}).get("p_threshold")
    if threshold is None:
        threshold = float(norm.isf(p_thr)) if p_thr else 3.0
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=float)
    vmax = float(np.nanmax(np.abs(data))) if data.size else 0.0
    if not np.isfinite(vmax) or vmax < threshold:
        return Markdown(f"*No voxel reaches |SDM-Z| > {threshold:.2f} in the thresholded map (no "
                        "cluster survived the thresholds), so there is no interactive map to "
                        "explore.*")
    view = view_img(img, threshold=threshold, vmax=vmax, cmap="cold_hot",
                    symmetric_cmap=True, title=f"SDM-Z, |SDM-Z| > {threshold:.2f}",
                    black_bg=False, colorbar=True)
    return HTML("<p>The thresholded SDM-Z map (the clusters of Figure 2, same thresholds) can "
                "be explored below.</p>" + view.get_iframe(width=760, height=320))


def renderer() -> str:
    """Which renderer is running the manuscript: ``quarto`` or ``pandoc``."""
    return os.environ.get("PAINEMP_RENDERER", "quarto")


def renderer_name() -> str:
    """Human-readable name of the renderer running the manuscript."""
    if renderer() == "pandoc":
        version = os.environ.get("PAINEMP_PANDOC_VERSION", "")
        return (f"pandoc {version} and Typst through analysis/render.py (Quarto is not "
                "installed here)").replace("pandoc  ", "pandoc ")
    return "Quarto"


# --- prose that follows the numbers --------------------------------------------------------------
#
# Every sentence and caption of the manuscript whose truth depends on a result is written here
# from values.json (and the provenance of data/peaks.tsv), so that the text cannot contradict
# the tables: the number of clusters, whether Figure 2 is thresholded, the agreement with the
# published Table 3, the kind of stand-in data. tests/test_manuscript_prose.py renders these
# texts on result sets without clusters, with the four published clusters and with more.

#: Title suffix while any stand-in data are in use.
TITLE_SUFFIX = "(simulated stand-in data)"
#: How generator-v3 stand-ins are described in the banner, the Methods and every result caption.
BY_CONSTRUCTION = ("constructed so that the main analysis reproduces the published Table 3; "
                   "agreement is by construction")
#: Distance (mm) within which a reproduced cluster counts as matching a published one
#: (``meta.published_matched_within_10mm``).
MATCH_MM = 10


def plural(n: int, word: str, words: str | None = None, zero: str = "no") -> str:
    """``0 -> "no cluster"``, ``1 -> "1 cluster"``, ``3 -> "3 clusters"``."""
    if n == 0:
        return f"{zero} {word}"
    return f"{n} {word if n == 1 else (words or word + 's')}"


@dataclass(frozen=True)
class StandIns:
    """What kind of stand-in data the results were computed from.

    Attributes
    ----------
    in_use : bool
        Some study's peaks are simulated stand-ins.
    versions : tuple of str
        Generator versions of the stand-in rows (``meta.standin_generator_versions``).
    by_construction : bool
        The stand-ins were constructed so that the main analysis reproduces the published
        Table 3 (``meta.standins_reproduce_table3_by_construction``; false when absent).
    """

    in_use: bool
    versions: tuple[str, ...] = ()
    by_construction: bool = False


def standins(v: Values, prov: Provenance) -> StandIns:
    """The stand-in data of this run, from the meta stage's values and ``data/peaks.tsv``."""
    meta = v.raw.get("meta") if isinstance(v.raw.get("meta"), dict) else {}
    in_use = bool(prov.simulated_studies) or prov.n_peaks_simulated > 0
    versions = tuple(str(x) for x in (meta.get("standin_generator_versions") or ()))
    by = in_use and meta.get("standins_reproduce_table3_by_construction") is True
    return StandIns(in_use=in_use, versions=versions, by_construction=by)


@dataclass(frozen=True)
class Outcome:
    """The main analysis in numbers, as the prose needs them.

    ``known`` is false when the meta stage's values are missing (placeholders allowed); the
    prose then names the missing values instead of stating a result.
    """

    known: bool
    n_increase: int = 0
    n_decrease: int = 0
    n_published: int = 0
    n_recovered: int = 0
    z_at_published: tuple[float | None, ...] = ()
    z_published: tuple[float | None, ...] = ()
    figure_thresholded: tuple[bool, bool] = (True, True)
    #: labels of the positive and negative direction (``meta.directions``)
    directions: tuple[str, str] = ("Patients>Controls", "Patients<Controls")
    #: why the results are not set beside the published Table 3 (None: they are)
    not_compared: str | None = None

    @property
    def n_clusters(self) -> int:
        return self.n_increase + self.n_decrease

    @property
    def group_contrast(self) -> bool:
        """The directions are patient-control differences (a two-sample meta-analysis)."""
        return self.directions == ("Patients>Controls", "Patients<Controls")

    @property
    def compared(self) -> bool:
        """The results are set beside the published Table 3."""
        return self.not_compared is None

    def direction_names(self) -> tuple[str, str]:
        """Plural names of the two directions in the prose (``increases``, ``decreases``)."""
        if self.group_contrast:
            return "increases", "decreases"
        return tuple(f"{d.lower()} effects" for d in self.directions)


def _float_or_none(x: Any) -> float | None:
    return None if _is_missing(x) else float(x)


def outcome(v: Values) -> Outcome:
    """Cluster counts, agreement with the published Table 3 and how Figure 2 is drawn.

    Figure 2 draws a direction thresholded when the meta stage says so
    (``meta.figure2_thresholded``, true or false for both directions); without that value, as
    the figure code of ``analysis.stages.meta`` draws it, a direction with a cluster is
    thresholded and a direction without one shows the unthresholded map at the published peaks.
    """
    meta = v.raw.get("meta")
    if not isinstance(meta, dict) or "n_clusters_increase" not in meta:
        return Outcome(known=False)
    n_inc, n_dec = int(meta["n_clusters_increase"]), int(meta["n_clusters_decrease"])
    at_pub = meta.get("at_published_peaks") or []
    z_pub: tuple[float | None, ...] = ()
    rep = artefact_path("tbl-reproduction", v.results_dir)
    if rep.exists():
        df = pd.read_csv(rep, sep="\t")
        if "published_sdm_z" in df:
            z_pub = tuple(_float_or_none(x) for x in df["published_sdm_z"])
    flag = meta.get("figure2_thresholded")
    thresholded = (bool(flag), bool(flag)) if isinstance(flag, bool) else (n_inc > 0, n_dec > 0)
    dirs = meta.get("directions") if isinstance(meta.get("directions"), dict) else {}
    directions = (str(dirs.get("increase", "Patients>Controls")),
                  str(dirs.get("decrease", "Patients<Controls")))
    not_compared = skipped(v, "meta").get(ARTEFACTS["tbl-reproduction"][1])
    if not_compared:  # no published peak to draw an unthresholded map at
        thresholded = (True, True)
    return Outcome(known=True, n_increase=n_inc, n_decrease=n_dec,
                   n_published=len(at_pub) or len(z_pub),
                   n_recovered=int(meta.get("published_matched_within_10mm") or 0),
                   z_at_published=tuple(_float_or_none(p.get("sdm_z")) for p in at_pub),
                   z_published=z_pub, figure_thresholded=thresholded, directions=directions,
                   not_compared=not_compared)


def _nums(xs, digits: int = 2) -> str:
    """Numbers as the tables print them (:func:`fmt_num`), joined by commas."""
    f = fmt_num(digits)
    return ", ".join(MISSING if x is None else f(x) for x in xs)


def _clusters_found(o: Outcome) -> str:
    if o.n_clusters == 0:
        return "no cluster in either direction"
    if not o.group_contrast:
        inc, dec = (d.lower() for d in o.directions)
        return (f"{plural(o.n_increase, 'cluster')} of {inc} and "
                f"{plural(o.n_decrease, 'cluster')} of {dec} pooled effects")
    return (f"{plural(o.n_increase, 'cluster')} of increased and "
            f"{plural(o.n_decrease, 'cluster')} of decreased activation in patients")


def import_sources(v: Values) -> list[str]:
    """The sources declared when the peaks were imported (``import-sdm --source``), from the
    meta stage's record (``meta.import_sources``).
    """
    meta = v.raw.get("meta") if isinstance(v.raw.get("meta"), dict) else {}
    return [str(x) for x in meta.get("import_sources") or []]


def real_peaks_name(v: Values) -> str:
    """How the prose names peaks that are all real: the authors' own, or those of the
    declared import sources.
    """
    sources = import_sources(v)
    if sources:
        return f"the peak coordinates imported from {'; '.join(sources)}"
    return "the authors' peak coordinates"


def paper_sample(v: Values) -> bool:
    """Whether the study table of the run is the paper's sample: false when the stage
    ``tables`` recorded a number of studies, patients or controls that differs from the printed
    one or that it could not compute (a study table without control groups).
    """
    t = v.raw.get("tables") if isinstance(v.raw.get("tables"), dict) else {}
    for k in ("n_studies", "n_patients", "n_controls"):
        if k in t and (t[k] is None or (f"{k}_published" in t
                                        and t[k] != t[f"{k}_published"])):
            return False
    return True


def sample_text(n_studies: Any, n_patients: Any, n_controls: Any, n_total: Any) -> str:
    """``"11 studies with 296 patients and 229 controls"``; without patient and control
    groups (one-sample studies), the participants.
    """
    if isinstance(n_patients, int) and isinstance(n_controls, int):
        text = f"{n_studies} studies with {n_patients} patients and {n_controls} controls"
        if isinstance(n_total, int) and n_total != n_patients + n_controls:
            text += f" ({n_total - n_patients - n_controls} more in one-sample studies)"
        return text
    if n_patients is None and n_controls is None and isinstance(n_total, int):
        return (f"{n_studies} one-sample studies with {n_total} participants (no patient or "
                "control groups)")
    return f"{n_studies} studies with {n_patients} patients and {n_controls} controls"


def prisma_note(included: Any, n_studies: Any) -> str:
    """A sentence when the study table is not the flowchart's set of included studies."""
    if isinstance(included, int) and isinstance(n_studies, int) and included != n_studies:
        return (f" The study table of this run holds {n_studies} studies, not the "
                f"{included} of the flowchart, which describes the paper's search and not "
                "these data.")
    return ""


def metaregression_methods(v: Values) -> str:
    """What the meta-regressions of the run test (Methods), from the robustness stage."""
    rob = v.raw.get("robustness") if isinstance(v.raw.get("robustness"), dict) else {}
    covs = rob.get("metaregression_covariates")
    left = {k.split(" ", 1)[1]: r for k, r in skipped(v, "robustness").items()
            if k.startswith("metaregression ")}
    if covs is None:  # values of a run without this record: the configured analysis
        return ("meta-regressions test age, the percentage of women and treatment status, "
                "the covariates of the paper")
    if not covs:
        why = "; ".join(f"{COVARIATE_NAMES.get(c, c)}: {r}" for c, r in left.items())
        return f"no meta-regression is computed for these data ({why})" if why else (
            "no meta-regression is computed")
    names = [COVARIATE_NAMES.get(c, c) for c in covs]
    text = "meta-regressions test " + (names[0] if len(names) == 1 else
                                       ", ".join(names[:-1]) + " and " + names[-1])
    if not left:
        return text + ", the covariates of the paper"
    return text + " (not " + "; ".join(f"{COVARIATE_NAMES.get(c, c)}: {r}"
                                       for c, r in left.items()) + ")"


def not_compared_sentence(o: Outcome) -> str:
    """Why the results are not set beside the published Table 3."""
    return (f"The results are not compared with the paper's Table 3 (@tbl-reproduction): "
            f"{o.not_compared}.")


def agreement_sentence(v: Values, prov: Provenance) -> str:
    """How the main analysis compares with the published Table 3, from the numbers."""
    o, s = outcome(v), standins(v, prov)
    if not o.known:
        return "The comparison with the published Table 3 needs the meta stage's values."
    if not o.compared:
        return not_compared_sentence(o)
    matched = (f"{o.n_recovered} of the {o.n_published} published clusters "
               f"{'has' if o.n_recovered == 1 else 'have'} a reproduced cluster of the same "
               f"direction within {MATCH_MM} mm")
    at_peaks = ""
    if o.z_at_published and any(z is not None for z in o.z_at_published):
        at_peaks = (f"; the SDM-*Z* at the published peaks is {_nums(o.z_at_published)}"
                    + (f" (paper: {_nums(o.z_published)})" if o.z_published else ""))
    if not s.in_use:
        return f"{matched[0].upper()}{matched[1:]}{at_peaks} (@tbl-reproduction)."
    if s.by_construction:
        status = ("as built in" if o.n_recovered == o.n_published and o.n_clusters
                  == o.n_published else "although the stand-ins were built to reproduce all of "
                  "them, so the construction did not hold in this run")
        return (f"The stand-ins were {BY_CONSTRUCTION}: {matched}{at_peaks}, {status} "
                "(@tbl-reproduction). This agreement says that the pipeline recovers what was "
                "built into its input, not that the paper's findings replicate.")
    verdict = ("and they do not" if o.n_recovered < o.n_published else
               "yet here every published cluster has one, which the generator does not aim at")
    return (f"The stand-ins are simulated study maps with the published effects planted in "
            f"them; they are not expected to reproduce the paper's Table 3, {verdict}: "
            f"{matched}{at_peaks} (@tbl-reproduction).")


def standin_caption(v: Values, prov: Provenance) -> str:
    """The sentence that every result caption carries while stand-ins are in use."""
    s = standins(v, prov)
    if not s.in_use:
        return ""
    if s.by_construction:
        return (f" Computed on simulated stand-in data, {BY_CONSTRUCTION}; not a finding of "
                "the paper.")
    return (" Computed on simulated stand-in data, which are not expected to reproduce the "
            "paper's Table 3; not a finding of the paper.")


def abstract_results(v: Values, prov: Provenance) -> str:
    """The results paragraph of the Abstract."""
    o, s = outcome(v), standins(v, prov)
    found = _clusters_found(o) if o.known else "results that need the meta stage's values"
    if not s.in_use and prov.all_real:
        if o.known and not o.compared:
            return (f"On {real_peaks_name(v)} the re-analysis finds {found}. "
                    + not_compared_sentence(o).replace(" (@tbl-reproduction)", ""))
        return (f"On {real_peaks_name(v)} the re-analysis finds {found}; "
                f"{o.n_recovered} of the {o.n_published} published clusters have a reproduced "
                f"cluster of the same direction within {MATCH_MM} mm (see the Reproduction "
                "section).")
    others = []
    if prov.n_studies_simulated:
        others.append(f"{prov.n_studies_simulated} are simulated stand-ins")
    if prov.n_studies_no_peaks:
        others.append(f"{prov.n_studies_no_peaks} have no peaks")
    if prov.n_studies_unknown:
        others.append(f"{prov.n_studies_unknown} were imported without a record of their "
                      "provenance")
    head = (f"Only {prov.n_studies_real} of the {prov.n_studies} studies' peak coordinates "
            f"are available to this compendium; {' and '.join(others)}.")
    held = o.known and o.n_recovered == o.n_published and o.n_clusters == o.n_published
    if s.by_construction and held:
        body = (f" The stand-ins were {BY_CONSTRUCTION}, and the main analysis finds {found}. "
                "The voxel-wise results therefore show that the pipeline runs and recovers "
                "what was built into its input, not what the original data contain.")
    elif s.by_construction:
        body = (f" The stand-ins were {BY_CONSTRUCTION}, yet the main analysis finds {found}: "
                "the construction did not hold in this run, and the voxel-wise results show "
                "neither a working reproduction nor what the original data contain.")
    elif s.in_use:
        body = (" The stand-ins are not expected to reproduce the paper's Table 3, and the "
                f"main analysis on them finds {found}"
                + (f" ({o.n_recovered} of the {o.n_published} published clusters matched)"
                   if o.known and o.n_published else "")
                + ". The voxel-wise results therefore show that the pipeline runs, not what "
                "the original data contain.")
    else:
        body = f" On the available peaks the main analysis finds {found}."
    if not paper_sample(v):
        return head + body
    return (head + body + " Checks that need no peak data (the reported sample statistics, "
            "the internal consistency of the paper's Table 3 and the characterisation of the "
            "published peaks) are genuine reproductions.")


def standin_methods(v: Values, prov: Provenance) -> str:
    """How the stand-in peaks were made (Methods), or nothing when every study is real."""
    s = standins(v, prov)
    if not s.in_use:
        return ""
    gen = (f" (generator version{'s' if len(s.versions) > 1 else ''} "
           f"{', '.join(s.versions)})" if s.versions else "")
    head = (f"The peak coordinates of {prov.n_studies_simulated} of the {prov.n_studies} "
            f"studies are not public; `{'analysis.standins' if s.by_construction else 'analysis.simulate'}`"
            f" writes simulated stand-ins for them{gen}, with each study's sample sizes, statistical threshold, reported directions "
            "and number of peaks, and a provenance tag on every row. ")
    if s.by_construction:
        return head + (f"The stand-ins are {BY_CONSTRUCTION}. They test the pipeline end to "
                       "end; they carry no evidence about the paper's findings.")
    return head + ("They are study maps simulated with the published effects planted at the "
                   "published peaks and thresholded as each study was; they are not expected "
                   "to reproduce the paper's Table 3, and whether they do is reported, not "
                   "assumed (@tbl-reproduction).")


def results_text(v: Values, prov: Provenance) -> str:
    """The first paragraph of the results of the main analysis (§ Shared alterations)."""
    o, s = outcome(v), standins(v, prov)
    if not o.known:
        return "The main analysis has not been run (meta stage missing)."
    found = _clusters_found(o)
    if not s.in_use and prov.all_real:
        sources = import_sources(v)
        data = (f"the coordinates imported from {'; '.join(sources)}" if sources
                else "the authors' coordinates")
        return (f"The meta-analysis of {data} finds {found} (@tbl-results, @fig-meta). "
                + agreement_sentence(v, prov))
    data = (f"On the data available here ({prov.n_studies_real} real and "
            f"{prov.n_studies_simulated} simulated studies"
            + (f", {prov.n_studies_no_peaks} without peaks" if prov.n_studies_no_peaks else "")
            + (f", {prov.n_studies_unknown} of unknown provenance" if prov.n_studies_unknown
               else "")
            + f") the main analysis finds {found} (@tbl-results, @fig-meta). ")
    return data + agreement_sentence(v, prov)


def _thresholds(v: Values) -> str:
    return (f"voxel *p* < {v.fmt('p_threshold')}, peak SDM-*Z* > {v.fmt('peak_z')}, at least "
            f"{v.fmt('min_cluster_voxels')} voxels")


def figure2_caption(v: Values, prov: Provenance) -> tuple[str, str]:
    """Caption and alternative text of Figure 2, from the cluster counts and whether each
    direction is drawn thresholded.
    """
    o = outcome(v)
    tail = standin_caption(v, prov)
    if not o.known:
        return ("Main analysis (meta stage values missing)." + tail,
                "Brain slices of the main analysis.")
    thr = _thresholds(v)
    parts, alt = [], []
    names = o.direction_names()
    kinds = (("increased activation", "decreased activation") if o.group_contrast
             else tuple(f"{d.lower()} effects" for d in o.directions))
    for letter, n, name, kind, drawn in (
            ("A", o.n_increase, names[0], kinds[0], o.figure_thresholded[0]),
            ("B", o.n_decrease, names[1], kinds[1], o.figure_thresholded[1])):
        if n and drawn:
            parts.append(f"{letter}: {name}, {plural(n, 'cluster')} on slices through "
                         f"{'its peak' if n == 1 else 'their peaks'}")
            alt.append(f"{plural(n, 'coloured cluster')} of {kind}")
        elif drawn:
            parts.append(f"{letter}: {name}, no cluster survives (the row says so)")
            alt.append(f"no cluster of {kind}")
        else:
            parts.append(f"{letter}: {name}, no cluster; the slices through the published "
                         "peaks show the unthresholded |SDM-*Z*| map for orientation, not a "
                         "result")
            alt.append(f"the unthresholded map of {name} at the published peaks, where no "
                       "cluster survived")
    if o.n_clusters and o.group_contrast:
        head = ("Regions where patients differ from controls during pain-empathic processing "
                f"({thr}). ")
    elif o.n_clusters:
        head = f"Clusters of {' and '.join(kinds)} pooled over the studies ({thr}). "
    else:
        head = f"No cluster survived the thresholds of the main analysis ({thr}). "
        if all(o.figure_thresholded) and not o.compared:
            parts = ["A glass brain without any coloured cluster: there is no thresholded map "
                     "to show"]
            alt = ["a glass brain with no coloured cluster"]
        elif all(o.figure_thresholded):
            parts = ["A glass brain shows only the published peaks (dots and squares); there is no "
                     "thresholded map to show"]
            alt = ["a glass brain with the published peaks marked and no coloured cluster"]
        elif not any(o.figure_thresholded):
            parts = ["The slices through the published peaks (A: increases, B: decreases) "
                     "show the unthresholded |SDM-*Z*| map for orientation, not a result"]
            alt = ["the unthresholded map at the published peaks, where no cluster survived"]
    caption = head + "; ".join(parts) + "." + tail
    return caption, "Brain slices showing " + " and ".join(alt) + "."


#: Captions of the result tables; each ends with the stand-in sentence while stand-ins are used.
RESULT_CAPTIONS: dict[str, str] = {
    "tbl-results": "Clusters of the voxel-wise meta-analysis (as the paper's Table 3): peak MNI "
                   "coordinates, SDM-Z, voxel p, Hedges' g, I² and Egger's test at the peak.",
    "tbl-jackknife": "Jackknife re-analyses (leaving out one study, or one disorder, at a "
                     "time): in how many of them each cluster survives the same thresholds, and "
                     "without which studies it fails.",
    "tbl-metaregression": "Meta-regressions on age, percentage of women and treatment: slopes "
                          "at the cluster peaks and across the whole brain.",
    "fig-forests": "Forest plots at the cluster peaks of the main analysis: each study's Hedges' g "
                   "at the peak (mean over the imputations) with its 95% interval (Rubin's "
                   "rules: within- plus between-imputation variance), ordered by effect{group}; filled squares are effects known at the peak (lower "
                   "= upper bound), open squares the mean of a censored study's imputations, "
                   "square size its random-effects weight; the diamond is the pooled "
                   "random-effects estimate and its 95% interval.",
    "tbl-reproduction": "Each cluster of the paper's Table 3: its published peak and effect, "
                        "the effect that this re-analysis finds at that peak, and the nearest "
                        "reproduced cluster of the same direction (distance in mm).",
}


def caption(label: str, v: Values, prov: Provenance) -> str:
    """The caption of a result table or figure, with the stand-in sentence where it applies.

    Analyses a stage left out for the data of the run (``skipped``) are not named as done.
    """
    if label == "fig-meta":
        return figure2_caption(v, prov)[0]
    if label in ARTEFACTS and skipped(v, ARTEFACTS[label][0]).get(ARTEFACTS[label][1]):
        return NOT_COMPUTED
    text = RESULT_CAPTIONS[label]
    if label == "tbl-results":
        o = outcome(v)
        if o.known and o.n_clusters == 0:
            text = ("Clusters of the voxel-wise meta-analysis (as the paper's Table 3): none "
                    f"survived the thresholds ({_thresholds(v)}).")
    left = skipped(v, "robustness")
    if label == "tbl-jackknife" and any(k.startswith("leave-one-") for k in left):
        text = ("Jackknife re-analyses (leaving out one study at a time): in how many of them "
                "each cluster survives the same thresholds, and without which studies it fails.")
    if label == "tbl-metaregression" and any(k.startswith("metaregression ") for k in left):
        rob = v.raw.get("robustness") if isinstance(v.raw.get("robustness"), dict) else {}
        covs = [COVARIATE_NAMES.get(c, c) for c in rob.get("metaregression_covariates") or []]
        text = (f"Meta-regressions on {' and '.join(covs)}: slopes at the cluster peaks and "
                "across the whole brain." if covs else
                "Meta-regressions: none computed for the data of this run.")
    if label == "fig-forests":
        meta = v.raw.get("meta") if isinstance(v.raw.get("meta"), dict) else {}
        group = meta.get("forest_group_column")
        text = text.format(group=f" and coloured by {group}" if group else "")
    if label == "fig-forests" and standins(v, prov).in_use:
        text += (" Studies marked with a dagger (†) have simulated stand-in peaks "
                 "(provenance in the peak table), not the authors' coordinates; their effects, "
                 "and the pooled estimate, are those of the simulated data.")
    return text + standin_caption(v, prov)


def discussion_data(v: Values, prov: Provenance) -> str:
    """What the voxel-wise result can and cannot say, given the data (Discussion)."""
    o, s = outcome(v), standins(v, prov)
    if prov.all_real and import_sources(v):
        return (f"Every study's coordinates were imported from {'; '.join(import_sources(v))}, "
                "so the voxel-wise result is a re-analysis of those data: "
                + _clusters_found(o) + ".")
    if prov.all_real:
        return ("Every study's coordinates are the authors' own, so the voxel-wise result is a "
                "re-analysis of the original data: " + _clusters_found(o) + ".")
    held = o.known and o.n_recovered == o.n_published and o.n_clusters == o.n_published
    if s.by_construction and held:
        what = (f"the stand-ins were {BY_CONSTRUCTION}, so the reproduced clusters confirm "
                "only that the engine recovers what its input was built to contain")
    elif s.by_construction:
        what = (f"the stand-ins were {BY_CONSTRUCTION}, yet the main analysis finds "
                f"{_clusters_found(o)}, so the construction did not hold in this run and the "
                "voxel-wise result says nothing about the paper")
    elif o.known and o.n_clusters == 0:
        what = ("on the stand-ins the main analysis finds no cluster at all, which says "
                "nothing for or against the paper: the stand-ins are not its data")
    else:
        what = (f"on the stand-ins the main analysis finds {_clusters_found(o)}, which neither "
                "supports nor contradicts the paper: the stand-ins are not its data")
    return ("What can be said about the paper's claims depends on the data. The sample "
            "description, the reported test statistics and the network-level and behavioural "
            "characterisation of the published peaks need no access to the original peak "
            "tables and are reproduced here directly. The central voxel-wise result needs the "
            f"coordinates of all included studies; {what}. As soon as the authors' coordinates "
            "are placed in `data/peaks.tsv`, the same commands produce the actual re-analysis "
            "and the wording of this document changes accordingly.")


def _seed_profiles(v: Values) -> list[dict]:
    seeds = v.raw.get("characterisation", {}).get("published", {}).get("seeds", {})
    out = []
    for sid in sorted(seeds, key=lambda s: (len(s), s)):
        s = seeds[sid]
        out.append({"id": sid, "region": _region(s.get("aal2_region")),
                    "direction": s.get("direction"), "terms": list(s.get("top_terms") or []),
                    "dmn": s.get("dmn_share")})
    return out


def characterisation_discussion(v: Values, n_terms: int = 3) -> str:
    """How the characterisation reads each published peak, from its top terms (Discussion)."""
    profiles = _seed_profiles(v)
    if not profiles or not any(p["terms"] for p in profiles):
        return ("The behavioural characterisation of the published peaks is not available in "
                "this run.")
    parts = []
    for p in profiles:
        terms = ", ".join(f"*{t}*" for t in p["terms"][:n_terms]) or "no associated term"
        parts.append(f"{p['id']} ({p['region']}): {terms}")
    text = ("In the NeuroQuery corpus, the terms most associated with the region of each "
            "published peak are " + "; ".join(parts) + " (@tbl-terms).")
    inc, dec = v.raw.get("characterisation", {}).get("published", {}).get(
        "overlap_increase", {}), v.raw.get("characterisation", {}).get("published", {}).get(
        "overlap_decrease", {})
    si, sd = inc.get("dmn_share"), dec.get("dmn_share")
    if si is not None and sd is not None:
        text += (f" The co-activation and connectivity maps shared by the hyperactive peaks "
                 f"fall {100 * si:.0f} % in the default mode network, those of the hypoactive "
                 f"peaks {100 * sd:.0f} %"
                 + ("; this is the coupling with the default mode network that the paper "
                    "reads as excessive empathic distress." if si > 0.5 and si > sd else
                    "; the data do not single out the default mode network for the hyperactive "
                    "peaks, as the paper's reading would need."))
    return text + (" These associations are reverse inferences from a literature database; "
                   "they suggest functions, they do not establish them.")


def conclusion(v: Values, prov: Provenance) -> str:
    """The Conclusion, from the values."""
    o, s = outcome(v), standins(v, prov)
    if paper_sample(v):
        sample = (f"The compendium re-runs the pre-registered SDM-PSI meta-analysis of He et al. "
                  f"on {v.fmt('n_studies')} studies ({v.fmt('n_patients')} patients, "
                  f"{v.fmt('n_controls')} controls) with one command.")
    else:
        t = v.raw.get("tables") if isinstance(v.raw.get("tables"), dict) else {}
        sample = ("The compendium runs the pipeline of the pre-registered SDM-PSI "
                  "meta-analysis of He et al. on the "
                  + sample_text(t.get("n_studies"), t.get("n_patients"), t.get("n_controls"),
                                t.get("n_total"))
                  + " of its study table, with one command.")
    if prov.all_real and not o.compared:
        main = f" On {real_peaks_name(v)} it finds {_clusters_found(o)}."
    elif prov.all_real:
        data = ("the coordinates imported from " + "; ".join(import_sources(v))
                if import_sources(v) else "the authors' coordinates")
        main = (f" On {data} it finds {_clusters_found(o)}; "
                f"{o.n_recovered} of the {o.n_published} published clusters are matched.")
    elif s.by_construction:
        main = (f" Its voxel-wise results rest on stand-ins {BY_CONSTRUCTION}; they show a "
                "working pipeline, not a replication.")
    else:
        main = (f" On stand-ins that are not expected to reproduce the paper it finds "
                f"{_clusters_found(o)}; the voxel-wise claims of the paper remain untested "
                "until the authors' coordinates are available.")
    checks = ""
    n_inc = v.raw.get("design", {}).get("table3_checks", {}).get("inconsistent")
    if isinstance(n_inc, int):
        checks = (" The paper's Table 3 is consistent with itself and with the samples."
                  if n_inc == 0 else
                  f" {plural(n_inc, 'printed number')} of the paper's Table 3 "
                  f"{'is' if n_inc == 1 else 'are'} not consistent with the others or with the "
                  "samples (@tbl-table3-checks).")
    p = v.raw.get("tables", {}).get("age_sd_ttest_p")
    age = ""
    if isinstance(p, (int, float)):
        age = (" Recomputed from the study table, the comparison of age variability agrees "
               "with the paper's conclusion of no difference." if p >= 0.05 else
               " Recomputed, the age comparison contradicts the paper's conclusion.")
    return (sample + main + checks + age + " Every number above is regenerated from the "
            "study and peak tables whenever they change.")
