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
from analysis.sdm.peaks import REAL_PREFIXES, SIMULATED_PREFIX  # noqa: F401 (provenance prefixes)

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
    "map-z": ("meta", "maps/z.nii.gz"),  # interactive viewer (HTML only)
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
    """A p-value as text: three significant digits, or ``< 0.001``."""
    if isinstance(p, str):
        return p  # a placeholder or text already formatted
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "NA"
    return "< 0.001" if p < 0.001 else f"{p:.3g}"


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


def peaks_limitation(prov: Provenance) -> str:
    """The limitation that the provenance of the peaks sets on the voxel-wise results."""
    if prov.all_real:
        return ("Every study's peak coordinates are the authors' own, so the voxel-wise "
                "results re-analyse the original data, within the limits of the open engine "
                "described next.")
    return (f"Only {prov.n_studies_real} of the {prov.n_studies} studies' peak coordinates are "
            "real in the current data; every voxel-wise result is conditional on that.")


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


def figure(label: str, results_dir: str | Path | None = None):
    """The figure file of ``label`` for display in a code cell (an IPython ``Image``)."""
    from IPython.display import Image

    path = artefact_path(label, results_dir)
    if not path.exists():
        return _missing_note(label, path)
    return Image(filename=str(path))


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
    """A p-value in a table: three decimals, ``< 0.001`` below that."""
    p = float(p)
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


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
        return ", ".join(fmt_int(v) for v in vals)

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
    shown: dict[str, list[str]] = {}
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
        shown[col.header] = [MISSING if m else col.fmt(v) for v, m in zip(raw, missing)]
        aligns.append(col.align)
    if dropped:
        why = f" {spec.dropped_note}" if spec.dropped_note else ""
        notes.append(f"Not shown, because no value exists in this run: {', '.join(dropped)}."
                     f"{why}")
    out = pd.DataFrame(shown)
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
        rules.append(dashes[:-1] + ":" if align[j] == "right" else dashes)
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
          empty: str | None = None, floatfmt: str = ".3g", columns: dict | None = None):
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
        in this order, numbers formatted with ``floatfmt``.
    """
    from IPython.display import Markdown

    df = read_table(label, results_dir)
    if df is None:
        return _missing_note(label, artefact_path(label, results_dir))
    if query:
        df = df.query(query)
    spec = TABLES.get(label)
    if spec is None and columns:
        def number(v, f=floatfmt):
            return format(v, f) if isinstance(v, float) else str(v)

        spec = TableSpec(columns=[Column(h, c, number, align="right" if pd.api.types
                                         .is_numeric_dtype(df[c]) else "left")
                                  for c, h in columns.items() if c in df.columns],
                         empty=empty or "No rows in this run.")
    if empty is not None and spec is not None:
        spec = TableSpec(**{**spec.__dict__, "empty": empty})
    if df.empty and spec is None:
        return Markdown(f"*{empty or 'No rows in this run.'}*")
    return Markdown(format_table(label, df, spec, floatfmt=floatfmt))


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
              "decrease": "Patients < controls"}
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


def _demographics_notes(df: pd.DataFrame) -> list[str]:
    notes = ["Age: mean (SD) of each group as reported by the study."]
    ages = [str(v) for c in ("Patient mean age (SD)", "Control mean age (SD)") if c in df
            for v in df[c]]
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
            Column("Study", lambda r: str(r["Study ID"]).replace(" et al,", " et al.,")),
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
        notes=lambda df: [*_demographics_notes(df),
                          *_abbreviation_notes(["Disease type"])(df)],
    ),
    "tbl-data": TableSpec(
        columns=[
            Column("Study", lambda r: str(r["Study ID"]).replace(" et al,", " et al.,")),
            Column("Voxel threshold", "Correction", _threshold),
            Column("Space", "Space"),
            Column("Contrast (pain > no pain)", "Coordinates (Pain > No Pain)",
                   lambda v: str(v).replace(" & ", "; ")),
            Column("Paradigm", "Paradigm", lambda v: str(v).capitalize()),
        ],
        notes=_abbreviation_notes(["Coordinates (Pain > No Pain)"]),
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
            Column("Published region", "published_region"),
            Column("Published peak x, y, z (mm)", _xyz("published_")),
            Column("SDM-Z (paper)", "published_sdm_z", fmt_num(2), align="right"),
            Column("SDM-Z here at that peak", "reproduced_z_at_published_peak", fmt_num(2),
                   "the peak lies outside the analysis mask.", align="right"),
            Column("g (paper)", "published_hedges_g", fmt_num(2), align="right"),
            Column("g here at that peak", "reproduced_g_at_published_peak", fmt_num(2),
                   "the peak lies outside the analysis mask.", align="right"),
            Column("Nearest cluster here, x, y, z (mm)", _xyz("reproduced_"),
                   missing_note="no reproduced cluster of that direction."),
            Column("Distance (mm)", "distance_mm", fmt_num(1),
                   "no reproduced cluster of that direction.", align="right"),
        ],
        notes=lambda df: ([f"Inputs of this run: {df['inputs'].iloc[0]}."]
                          if "inputs" in df and len(df) else []),
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

    @property
    def all_real(self) -> bool:
        return (not self.simulated_studies and not self.no_peak_studies
                and self.n_peaks_simulated == 0 and bool(self.real_studies))

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
    def n_studies(self) -> int:
        """All studies of the study table."""
        return self.n_studies_real + self.n_studies_simulated + self.n_studies_no_peaks


def provenance(data_dir: str | Path | None = None) -> Provenance:
    """Classify every study of ``data/studies.tsv`` by the provenance of its ``peaks.tsv`` rows.

    :func:`analysis.sdm.peaks.classify_provenance`: a study counts as simulated when any of its
    peak rows is a simulated stand-in (``provenance`` starting with ``simulated:``), as real
    when all its rows start with ``original:`` (transcribed from a publication) or
    ``sdm-import:`` (imported from the authors' SDM project), and as without peaks when it has
    no peak row at all.

    Raises
    ------
    analysis.errors.DataError
        When a file or its ``study`` / ``provenance`` column is missing, or a row has another
        prefix.
    """
    from analysis.sdm.io import read_tsv_text
    from analysis.sdm.peaks import PEAKS_FILE, classify_provenance
    from analysis.sdm.studies import STUDIES_FILE

    ddir = Path(data_dir or paths.data_dir())
    studies = read_tsv_text(ddir / STUDIES_FILE, required=["study"])
    peaks = read_tsv_text(ddir / PEAKS_FILE, required=["study", "provenance"])
    v = classify_provenance(studies["study"], peaks["study"], peaks["provenance"], PEAKS_FILE)
    return Provenance(real_studies=sorted(v.real), simulated_studies=sorted(v.simulated),
                      n_peaks_real=v.n_peaks_real, n_peaks_simulated=v.n_peaks_simulated,
                      no_peak_studies=sorted(v.no_peaks))


def provenance_banner(prov: Provenance) -> str:
    """Markdown callout stating the data provenance; empty when every study's peaks are real.

    Names the simulated stand-ins and every study of the study table without any peak row.
    """
    if prov.all_real:
        return ""
    real = ", ".join(prov.real_studies) if prov.real_studies else "none"
    if prov.simulated_studies:
        title = "Data provenance: simulated stand-ins"
        head = (f"The peak coordinates of {prov.n_studies_simulated} of {prov.n_studies} "
                f"studies are **simulated stand-ins** ({prov.n_peaks_simulated} simulated peaks), "
                "generated by `analysis.simulate` because the original coordinates are not "
                "available to this compendium. ")
    else:
        title = "Data provenance: studies without peaks"
        head = ""
    missing = ""
    if prov.no_peak_studies:
        missing = (f"{prov.n_studies_no_peaks} of {prov.n_studies} studies have **no peak "
                   f"coordinates at all** ({', '.join(prov.no_peak_studies)}) and enter the "
                   "analysis as null studies. ")
    return (
        f'::: {{.callout-warning title="{title}"}}\n'
        f"{head}{missing}Real peaks: {prov.n_peaks_real} (studies: {real}; "
        f"{prov.n_studies_real} of {prov.n_studies}). Every map, table and number computed from "
        "the peaks below demonstrates the pipeline and is **not** a finding of the paper. "
        "Substitute the authors' data (`python -m analysis import-sdm DIR`, or edit "
        "`data/peaks.tsv`) and run `make paper`; this notice then disappears.\n"
        ":::\n"
    )


def viewer(label: str = "map-z", results_dir: str | Path | None = None, threshold=None):
    """Interactive slice viewer of a result map (nilearn ``view_img``) as embeddable HTML.

    Parameters
    ----------
    label : str
        A map of :data:`ARTEFACTS`.
    threshold : float, optional
        Display threshold; defaults to the z of the voxel threshold the meta stage used.
    """
    from IPython.display import HTML
    from nilearn.plotting import view_img
    from scipy.stats import norm

    path = artefact_path(label, results_dir)
    if not path.exists():
        return _missing_note(label, path)
    if threshold is None:
        p_thr = Values(results_dir).raw.get("meta", {}).get("threshold", {}).get("p_threshold")
        threshold = float(norm.isf(p_thr)) if p_thr else 3.0
    view = view_img(str(path), threshold=threshold, cmap="cold_hot", symmetric_cmap=True,
                    title=f"SDM-Z, |z| > {threshold:.2f}",
                    black_bg=False, colorbar=True)
    return HTML(view.get_iframe(width=760, height=320))


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
