"""Stage ``tables``: Tables 1-2 of He et al. (2024) and the sample numbers of the text.

Writes ``tables/table1.tsv`` (demographics) and ``tables/table2.tsv`` (data characteristics),
cell for cell as printed in the paper, from ``data/studies.tsv``; returns the numbers the
Results and Methods quote, each beside the value the paper printed
(``data/published_values.tsv``):

* sample: studies, patients, controls, total; disorder and paradigm counts; female %;
* mean age ± SD: several plausible definitions are computed (:func:`age_candidates`); the one
  reproducing the printed 28.2 ± 9.1 is reported as ``age_mean`` / ``age_sd``;
* peaks: total, real (``original:``), simulated, imported, per study (paper: 143);
* the Methods' test of the age SDs (:func:`age_sd_tests`): an independent-samples t-test of
  the patients' vs the controls' reported age SDs, recomputed, with a check of whether the
  printed p follows from the printed t and df.

A study table without some of He et al.'s columns (e.g. an SDM-PSI project imported with
``python -m analysis import-sdm``, such as the one-sample studies of Enge et al. 2021) gives
``NA`` cells in the tables; every value that needs a missing column (or a control group) is
``None``, and ``skipped`` says why (value name -> reason).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from analysis.data_tables import (
    REAL_PREFIXES,
    SIMULATED_PREFIX,
    load_peaks,
    load_studies,
)
from analysis.sdm.inputs.io import read_tsv_text, write_tsv
from analysis.sdm.inputs.peaks import UNKNOWN_PREFIX
from analysis.sdm.inputs.studies import CONTRASTS, study_design

LGR = logging.getLogger(__name__)

PUBLISHED_FILE = "published_values.tsv"
TABLE1_COLUMNS = ["Study ID", "Disease type", "Num.", "Female (%)", "Patient n1",
                  "Patient mean age (SD)", "Treatment (Y/N)", "Control n2",
                  "Control mean age (SD)"]
TABLE2_COLUMNS = ["Study ID", "Correction", "Space", "Coordinates (Pain > No Pain)", "Paradigm"]


def _g(v: float) -> str:
    """Number as printed in the paper's tables (shortest form, no trailing zeros)."""
    return f"{v:g}"


def _age_cell(mean: float, sd: float) -> str:
    if not np.isfinite(mean):
        return "NA"
    return f"{_g(mean)}({_g(sd) if np.isfinite(sd) else 'NA'})"


def _text(r: dict, *columns: str) -> str:
    """The first non-blank cell of ``columns`` in a study row, else ``NA`` (column absent from
    the study table).
    """
    for col in columns:
        v = r.get(col)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return "NA"


def _n(v: float) -> str:
    return _g(v) if np.isfinite(v) else "NA"


def table1(studies: pd.DataFrame) -> pd.DataFrame:
    """Table 1 (demographics), one row per study in file order, cells as printed.

    A one-sample study has no patient and control groups: its size is in ``Num.`` only.
    """
    rows = []
    for r in studies.to_dict("records"):
        two = np.isfinite(r["n2"])
        rows.append([
            _text(r, "citation", "study"), _text(r, "disorder_label", "disorder"),
            _g(r["n1"] + r["n2"]) if two else _g(r["n1"]),
            f"{_g(r['female_pct'])}%" if np.isfinite(r["female_pct"]) else "NA",
            _g(r["n1"]) if two else "NA",
            _age_cell(r["age_patients_mean"], r["age_patients_sd"]),
            {1.0: "Y", 0.0: "N"}.get(r["treated"], "NA"), _n(r["n2"]),
            _age_cell(r["age_controls_mean"], r["age_controls_sd"]),
        ])
    return pd.DataFrame(rows, columns=TABLE1_COLUMNS)


def _contrast_text(cell: str, abbrev: str) -> str:
    parts = []
    for item in (c.strip() for c in cell.split(";") if c.strip()):
        parts.append(f"{abbrev} > HC" if CONTRASTS[item] > 0 else f"HC > {abbrev}")
    return " & ".join(parts) or "NA"


def _threshold_text(r: dict) -> str:
    """The study's voxel threshold: its ``correction`` as printed, else the explicit ``t_thr``
    and ``threshold`` of an SDM project.
    """
    if _text(r, "correction") != "NA":
        return _text(r, "correction")
    if np.isfinite(r["t_thr"]):
        return f"t>{r['t_thr']:.2f} {r['threshold_kind']}".strip()
    return "NA"


def table2(studies: pd.DataFrame, peaks: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table 2 (data characteristics), one row per study in file order, cells as printed.

    Without a ``space`` column the space is that of the study's peaks (``peaks``).
    """
    spaces = ({} if peaks is None or "space" not in peaks else
              peaks.groupby("study")["space"].agg(lambda x: " & ".join(dict.fromkeys(x))))
    rows = []
    for r in studies.to_dict("records"):
        contrasts = (_contrast_text(r["contrasts_reported"], _text(r, "disorder_abbrev",
                                                                   "disorder"))
                     if _text(r, "contrasts_reported") != "NA" else "NA")
        rows.append([_text(r, "citation", "study"), _threshold_text(r),
                     _text(r, "space") if _text(r, "space") != "NA"
                     else spaces.get(r["study"], "NA"),
                     contrasts, _text(r, "paradigm")])
    return pd.DataFrame(rows, columns=TABLE2_COLUMNS)


def age_candidates(studies: pd.DataFrame) -> dict[str, dict]:
    """Mean ± SD of age under several plausible definitions (NaN groups left out; a definition
    with fewer than two values is not computed, so an empty dict when no age is reported).

    Definitions (``ddof`` of the SD in the name where it matters):

    ``patient_means_sd_pop``
        Mean and population SD (ddof = 0, e.g. Excel STDEV.P) of the patient groups' mean ages.
    ``patient_means_sd_sample``
        Same with the sample SD (ddof = 1).
    ``all_group_means``
        Mean and sample SD of all group mean ages (patients and controls).
    ``study_weighted_means``
        Mean and sample SD of each study's sample-size-weighted mean age (the ``age`` covariate).
    ``pooled_subjects``
        Grand mean over subjects and the SD of all subjects, reconstructed from group n, means
        and SDs (groups with both mean and SD).
    """
    n1, n2 = studies["n1"].to_numpy(float), studies["n2"].to_numpy(float)
    m1, m2 = studies["age_patients_mean"].to_numpy(float), studies["age_controls_mean"].to_numpy(float)
    s1, s2 = studies["age_patients_sd"].to_numpy(float), studies["age_controls_sd"].to_numpy(float)
    out = {}
    pm = m1[np.isfinite(m1)]
    if len(pm) >= 2:
        out["patient_means_sd_pop"] = (pm.mean(), pm.std(ddof=0), len(pm))
        out["patient_means_sd_sample"] = (pm.mean(), pm.std(ddof=1), len(pm))
    allm = np.r_[m1, m2]
    allm = allm[np.isfinite(allm)]
    if len(allm) >= 2:
        out["all_group_means"] = (allm.mean(), allm.std(ddof=1), len(allm))
    age = studies["age"].to_numpy(float)
    age = age[np.isfinite(age)]
    if len(age) >= 2:
        out["study_weighted_means"] = (age.mean(), age.std(ddof=1), len(age))
    m, s, n = np.r_[m1, m2], np.r_[s1, s2], np.r_[n1, n2]
    ok = np.isfinite(m) & np.isfinite(s) & np.isfinite(n)
    if ok.sum() >= 2:
        grand = (m[ok] * n[ok]).sum() / n[ok].sum()
        ss = ((n[ok] - 1) * s[ok] ** 2 + n[ok] * (m[ok] - grand) ** 2).sum()
        out["pooled_subjects"] = (grand, math.sqrt(ss / (n[ok].sum() - 1)), int(ok.sum()))
    return {k: {"mean": float(a), "sd": float(b), "n_values": int(c)}
            for k, (a, b, c) in out.items()}


def age_sd_tests(studies: pd.DataFrame, t_published: float, df_published: float) -> dict:
    """The Methods' independent-samples t-test of the reported age SDs, recomputed.

    Returns the Student t-test (equal variances, as SPSS's first line) on the SDs actually
    reported (missing SDs left out), the same with missing SDs entered as 0 (what reproduces
    the printed t and df), Levene's test (mean-centred, SPSS) for both, and the two-sided p
    that the printed t and df imply.
    """
    a = studies["age_patients_sd"].to_numpy(float)
    b = studies["age_controls_sd"].to_numpy(float)
    out = {}
    for name, (x, y) in {"reported_only": (a[np.isfinite(a)], b[np.isfinite(b)]),
                         "missing_as_zero": (np.nan_to_num(a), np.nan_to_num(b))}.items():
        t = stats.ttest_ind(x, y, equal_var=True)
        lev = stats.levene(x, y, center="mean")
        out[name] = {"t": float(t.statistic), "df": int(len(x) + len(y) - 2),
                     "p": float(t.pvalue), "n_patients": int(len(x)), "n_controls": int(len(y)),
                     "levene_F": float(lev.statistic), "levene_p": float(lev.pvalue)}
    miss = ~(np.isfinite(a) & np.isfinite(b))
    out["missing_sd_studies"] = studies.loc[miss, "study"].tolist()
    out["p_from_published_t_two_sided"] = float(2 * stats.t.sf(abs(t_published), df_published))
    out["p_from_published_t_one_sided"] = float(stats.t.sf(abs(t_published), df_published))
    return out


def load_published(data_dir: Path) -> dict[str, float]:
    """The paper's printed numbers (``data/published_values.tsv``: key, value, source)."""
    raw = read_tsv_text(data_dir / PUBLISHED_FILE, required=["key", "value", "source"])
    return {k: float(v) for k, v in zip(raw["key"], raw["value"])}


def _r(v: float, nd: int) -> float:
    return round(float(v), nd)


def compute(data_dir: Path | None = None, checks: dict | None = None
            ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Tables 1-2 and the values of the stage (no files written); ``checks``: the data checks
    (:func:`analysis.stages.params.data_checks`; the engine's defaults when None).
    """
    from analysis import paths
    from analysis.data_tables import split_checks

    ddir = Path(data_dir or paths.data_dir())
    study_kw, _ = split_checks(checks or {})
    studies = load_studies(ddir, **study_kw)
    peaks = load_peaks(ddir, studies=studies, **(checks or {}))
    pub = load_published(ddir)
    v: dict = {}
    skipped: dict[str, str] = {}
    n1, n2 = studies["n1"].to_numpy(float), studies["n2"].to_numpy(float)
    two = np.isfinite(n2)
    v["design"] = study_design(studies)
    v["n_studies"] = int(len(studies))
    if two.any():
        v["n_patients"] = int(n1[two].sum())
        v["n_controls"] = int(n2[two].sum())
    else:
        v["n_patients"] = v["n_controls"] = None
        skipped["n_patients"] = skipped["n_controls"] = (
            "one-sample studies only: no patient and control groups")
    v["n_total"] = int(n1.sum() + n2[two].sum())
    for k in ("n_studies", "n_patients", "n_controls", "n_total", "n_peaks"):
        v[f"{k}_published"] = int(pub[k])

    cands = age_candidates(studies)
    match = [k for k, c in cands.items()
             if _r(c["mean"], 1) == pub["age_mean"] and _r(c["sd"], 1) == pub["age_sd"]]
    chosen = (match[0] if match else "study_weighted_means" if "study_weighted_means" in cands
              else next(iter(cands), None))
    v["age_candidates"] = {k: {**c, "mean": _r(c["mean"], 4), "sd": _r(c["sd"], 4),
                               "reproduces_published": k in match} for k, c in cands.items()}
    v["age_definition"] = chosen
    v["age_mean"] = _r(cands[chosen]["mean"], 4) if chosen else None
    v["age_sd"] = _r(cands[chosen]["sd"], 4) if chosen else None
    if chosen is None:
        skipped["age_mean"] = skipped["age_sd"] = (
            "the study table reports the mean age of fewer than two groups")
    v["age_mean_published"] = pub["age_mean"]
    v["age_sd_published"] = pub["age_sd"]

    n_tot = studies["n1"] + studies["n2"].fillna(0)
    female = studies["female_pct"].notna()
    if female.any():
        f, w = studies.loc[female, "female_pct"], n_tot[female]
        v["female_pct_weighted"] = _r((f * w).sum() / w.sum(), 2)
        v["female_pct_mean_of_studies"] = _r(f.mean(), 2)
    else:
        v["female_pct_weighted"] = v["female_pct_mean_of_studies"] = None
        skipped["female_pct"] = "no study of the study table gives 'female_pct'"
    treated = studies["treated"].notna()
    v["n_treated_studies"] = int(studies["treated"].sum()) if treated.any() else None
    if not treated.any():
        skipped["n_treated_studies"] = "no study of the study table gives 'treated'"

    for col, key in (("disorder", "disorder_counts"), ("paradigm", "paradigm_counts")):
        if col in studies.columns and studies[col].astype(str).str.strip().ne("").any():
            counts = studies[col].value_counts().sort_index()
            v[key] = {k: int(c) for k, c in counts.items()}
        else:
            v[key] = None
            skipped[key] = f"the study table has no {col!r} column"
        v[f"{key}_published"] = {k.split(":", 1)[1]: int(c) for k, c in pub.items()
                                 if k.startswith(f"{col}_count:")}

    prov = peaks["provenance"].astype(str)
    v["n_peaks"] = int(len(peaks))
    v["n_peaks_real"] = int(prov.str.startswith(REAL_PREFIXES).sum())
    v["n_peaks_simulated"] = int(prov.str.startswith(SIMULATED_PREFIX).sum())
    v["n_peaks_imported"] = int(prov.str.startswith("sdm-import:").sum())
    v["n_peaks_provenance_unknown"] = int(prov.str.startswith(UNKNOWN_PREFIX).sum())
    per = peaks.groupby("study")
    v["peaks_per_study"] = {
        s: {"total": int(len(g)), "real": int(g["provenance"].str.startswith(REAL_PREFIXES).sum()),
            "simulated": int(g["provenance"].str.startswith(SIMULATED_PREFIX).sum())}
        for s, g in per}
    for s in studies["study"]:
        v["peaks_per_study"].setdefault(s, {"total": 0, "real": 0, "simulated": 0})
    v["n_studies_real_peaks"] = sum(1 for d in v["peaks_per_study"].values() if d["real"])

    t_pub, df_pub, p_pub = pub["age_sd_ttest_t"], pub["age_sd_ttest_df"], pub["age_sd_ttest_p"]
    v["age_sd_ttest_t_published"] = t_pub
    v["age_sd_ttest_df_published"] = int(df_pub)
    v["age_sd_ttest_p_published"] = p_pub
    v["age_sd_ttest_p_from_published_t"] = _r(2 * stats.t.sf(abs(t_pub), df_pub), 4)
    v["age_sd_ttest_p_from_published_t_one_sided"] = _r(stats.t.sf(abs(t_pub), df_pub), 4)
    consistent = _r(2 * stats.t.sf(abs(t_pub), df_pub), 3) == p_pub
    v["age_sd_ttest_p_consistent_with_t_df"] = bool(consistent)
    sds = [np.isfinite(studies[c].to_numpy(float)).sum()
           for c in ("age_patients_sd", "age_controls_sd")]
    if min(sds) < 2:
        for k in ("age_sd_ttest_t", "age_sd_ttest_df", "age_sd_ttest_p",
                  "age_sd_ttest_missing_as_zero", "age_sd_ttest_reported_only",
                  "age_sd_ttest_verdict"):
            v[k] = None
        skipped["age_sd_ttest"] = ("the study table reports the age SD of fewer than two "
                                   "patient or control groups")
        v["skipped"] = skipped
        return table1(studies), table2(studies, peaks), v
    tests = age_sd_tests(studies, t_pub, df_pub)
    rep, zero = tests["reported_only"], tests["missing_as_zero"]
    v["age_sd_ttest_t"] = _r(rep["t"], 4)
    v["age_sd_ttest_df"] = rep["df"]
    v["age_sd_ttest_p"] = _r(rep["p"], 4)
    v["age_sd_ttest_missing_as_zero"] = {k: (_r(x, 4) if isinstance(x, float) else x)
                                         for k, x in zero.items()}
    v["age_sd_ttest_reported_only"] = {k: (_r(x, 4) if isinstance(x, float) else x)
                                       for k, x in rep.items()}
    reproduces_t = _r(zero["t"], 2) == t_pub and zero["df"] == int(df_pub)
    reproduces_p = _r(zero["levene_p"], 3) == p_pub
    v["age_sd_ttest_verdict"] = (
        f"The printed p = {p_pub:g} does {'' if consistent else 'not '}follow from t = "
        f"{t_pub:g}, df = {df_pub:g} (two-sided p = {tests['p_from_published_t_two_sided']:.3f}). "
        + (f"t and df are reproduced (t = {zero['t']:.3f}, df = {zero['df']}) only when the "
           f"missing SDs ({', '.join(tests['missing_sd_studies'])}) are entered as 0; "
           if reproduces_t else "")
        + (f"p = {p_pub:g} equals Levene's test of that same input (F = {zero['levene_F']:.3f}, "
           f"p = {zero['levene_p']:.3f}), which SPSS prints beside the t-test. "
           if reproduces_p else "")
        + f"On the {rep['n_patients']} + {rep['n_controls']} SDs actually reported: "
        f"t = {rep['t']:.3f}, df = {rep['df']}, p = {rep['p']:.3f}.")
    v["skipped"] = skipped
    return table1(studies), table2(studies, peaks), v


def produce(ctx) -> dict:
    """Pipeline stage ``tables``: write Tables 1-2 and return the sample values."""
    from analysis.stages.params import data_checks

    t1, t2, values = compute(ctx.data_dir, data_checks(ctx.config))
    write_tsv(ctx.out("tables/table1.tsv"), t1)
    write_tsv(ctx.out("tables/table2.tsv"), t2)
    LGR.info("Tables 1-2: %d studies (%s), %d participants, %d peaks", values["n_studies"],
             values["design"], values["n_total"], values["n_peaks"])
    for name, reason in values["skipped"].items():
        LGR.info("tables: %s not computed: %s", name, reason)
    return values
