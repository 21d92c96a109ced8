"""Stage ``tables``: Tables 1-2 cell for cell against the paper; the sample values."""

from __future__ import annotations

import json
import re

import pytest

from analysis.stages.tables import compute

# Transcription of He et al. (2024) Table 1 (data rows, printed text; header flattened).
PAPER_TABLE1 = """\
Bird et al, 2010|Alexithymia|36|0%|18|34.6(13.3)|N|18|35(12.8)
Decety et al, 2009|Conduct Disorder (CD)|38|0%|30|17(NA)|N|8|17(NA)
Fan et al, 2013|Autism Spectrum Disorder (ASD)|45|0%|24|18.4(2.8)|N|21|19.3(3.4)
Fujino et al, 2014|Major Depressive Disorder (MDD)|22|77%|11|37.2(9.5)|Y|11|32.3(10.5)
Gu et al, 2015|Autism Spectrum Disorder (ASD)|29|0%|15|26.2(6.4)|N|14|26.8(7.8)
Hadjikhani et al, 2014|Autism Spectrum Disorder (ASD)|67|8%|36|23.5(8.7)|N|31|22.5(7.5)
Horan et al, 2016|Schizophrenia|42|31%|21|48.2(10.4)|Y|21|46.5(7.1)
Moriguchi et al, 2007|Alexithymia|30|83%|16|20.2(1)|N|14|20.4(0.94)
Ruetgen et al, 2021|Major Depressive Disorder (MDD)|96|70%|61|27.34(1.35)|Y|35|27.41(1.3)
Vistoli et al, 2017|Schizophrenia|48|17%|27|29.7(8.6)|N|21|29.2(7.9)
Xu et al, 2020|Major Depressive Disorder (MDD)|72|0%|37|NA|N|35|NA"""

# Transcription of Table 2 (Vistoli's correction is printed with spaces, "p < 0.001").
PAPER_TABLE2 = """\
Bird et al, 2010|p<0.001 uncorrected|MNI|HC > Alexithymia|Physical Pain
Decety et al, 2009|p<0.005 uncorrected|MNI|CD > HC|Physical Pain
Fan et al, 2013|p<0.05 corrected|MNI|HC > ASD|Physical Pain
Fujino et al, 2014|p<0.001 uncorrected|Talairach|MDD > HC & HC > MDD|Physical Pain
Gu et al, 2015|p<0.05 uncorrected|MNI|ASD > HC & HC > ASD|Physical Pain
Hadjikhani et al, 2014|p<0.01 uncorrected|MNI|ASD > HC & HC > ASD|Expression Pain
Horan et al, 2016|p<0.05 corrected|MNI|SCH > HC & HC > SCH|Expression Pain
Moriguchi et al, 2007|p<0.005 uncorrected|MNI|Alexithymia > HC & HC > Alexithymia|Physical Pain
Ruetgen et al, 2021|p<0.05 corrected|MNI|MDD > HC & HC > MDD|Expression Pain
Vistoli et al, 2017|p < 0.001 uncorrected|MNI|HC > SCH|Physical Pain
Xu et al, 2020|p<0.05 corrected|MNI|HC > MDD|Physical Pain"""


def _rows(text):
    return [line.split("|") for line in text.splitlines()]


@pytest.fixture
def stable_data(data_copy):
    """data/ with only the real (Moriguchi 2007) peaks, so the golden values do not change
    whenever the simulated stand-ins are regenerated."""
    p = data_copy / "peaks.tsv"
    lines = p.read_text(encoding="utf-8").splitlines()
    p.write_text("\n".join([lines[0]] + [ln for ln in lines[1:] if "\toriginal:" in ln]) + "\n",
                 encoding="utf-8")
    return data_copy


def test_table1_matches_paper(stable_data):
    t1, _, _ = compute(stable_data)
    assert t1.values.tolist() == _rows(PAPER_TABLE1)


def test_table2_matches_paper(stable_data):
    _, t2, _ = compute(stable_data)
    ours, paper = t2.values.tolist(), _rows(PAPER_TABLE2)
    # the only difference allowed: white space around '<' in the Correction column (Vistoli)
    for row in (*ours, *paper):
        row[1] = re.sub(r"\s*<\s*", "<", row[1])
    assert ours == paper


def test_values_against_paper(stable_data):
    _, _, v = compute(stable_data)
    for k in ("n_studies", "n_patients", "n_controls", "n_total"):
        assert v[k] == v[f"{k}_published"]
    assert v["disorder_counts"] == v["disorder_counts_published"]
    assert v["paradigm_counts"] == v["paradigm_counts_published"]
    assert round(v["age_mean"], 1) == 28.2 and round(v["age_sd"], 1) == 9.1
    assert v["age_definition"] == "patient_means_sd_pop"
    # the printed p does not follow from the printed t and df
    assert not v["age_sd_ttest_p_consistent_with_t_df"]
    assert v["age_sd_ttest_p_from_published_t"] == pytest.approx(0.898, abs=1e-3)
    zero = v["age_sd_ttest_missing_as_zero"]
    assert (round(zero["t"], 2), zero["df"], round(zero["levene_p"], 3)) == (0.13, 20, 0.686)
    assert v["n_peaks_real"] == 27 and v["n_peaks_simulated"] == 0
    json.dumps(v, allow_nan=False)  # values.json-ready


def test_golden(stable_data, data_regression):
    """Golden file of both tables and all values (floats rounded to 4 decimals in the stage,
    so the comparison tolerance is 5e-5)."""
    t1, t2, v = compute(stable_data)
    data_regression.check({"table1": t1.to_dict("records"), "table2": t2.to_dict("records"),
                           "values": v})


def test_stage_writes_tables(stable_data, results_tmp):
    from analysis.pipeline import run_stages

    assert run_stages(["tables"], data_dir=stable_data, results_dir=results_tmp) == {
        "tables": "ran"}
    assert (results_tmp / "tables" / "table1.tsv").read_text().splitlines()[1].startswith(
        "Bird et al, 2010\tAlexithymia\t36\t0%")
    values = json.loads((results_tmp / "values.json").read_text())
    assert values["tables"]["n_patients"] == 296


def test_one_sample_study_table(data_copy):
    """A study table of another design (one-sample studies, as an SDM-PSI project imported with
    ``import-sdm``, e.g. Enge et al. 2021): no patient or control numbers, no age, sex,
    treatment, disorder or paradigm values; each is None with its reason, never 0 or NaN."""
    (data_copy / "studies.tsv").write_text(
        "study\tdesign\tn_patients\tn_controls\tt_thr\tthreshold\n"
        "s1\tone-sample\t11\t\t3.17\tuncorrected\n"
        "s2\tone-sample\t23\t\t1.72\tcorrected\n"
        "s3\tone-sample\t14\t\t3.01\tuncorrected\n", encoding="utf-8")
    (data_copy / "peaks.tsv").write_text(
        "study\tpeak_id\tsign\tx\ty\tz\tspace\tstat_type\tstat_value\tprovenance\tnote\n"
        "s1\t1\t1\t-52\t-46\t4\tMNI\tt\t4.1\tsdm-import:a project\t\n"
        "s2\t1\t1\t-48\t-52\t8\tMNI\tnone\t\tsdm-import:a project\t\n", encoding="utf-8")
    t1, t2, v = compute(data_copy)
    assert v["design"] == "one-sample" and v["n_studies"] == 3 and v["n_total"] == 48
    for key in ("n_patients", "n_controls", "age_mean", "age_sd", "female_pct_weighted",
                "n_treated_studies", "disorder_counts", "paradigm_counts", "age_sd_ttest_t",
                "age_sd_ttest_p", "age_sd_ttest_missing_as_zero"):
        assert v[key] is None, key
    assert set(v["skipped"]) >= {"n_patients", "n_controls", "age_mean", "female_pct",
                                 "disorder_counts", "paradigm_counts", "age_sd_ttest"}
    assert all(reason for reason in v["skipped"].values())
    assert v["age_candidates"] == {} and v["age_definition"] is None
    assert v["n_peaks_real"] == 2 and v["n_peaks_imported"] == 2
    # the published numbers stay as printed
    assert v["n_patients_published"] == 296 and v["age_sd_ttest_t_published"] == 0.13
    json.dumps(v, allow_nan=False)
    assert t1["Num."].tolist() == ["11", "23", "14"]
    for col in ("Disease type", "Female (%)", "Patient n1", "Treatment (Y/N)", "Control n2",
                "Patient mean age (SD)"):
        assert set(t1[col]) == {"NA"}, col
    assert t2["Study ID"].tolist() == ["s1", "s2", "s3"]
    assert t2["Correction"].tolist() == ["t>3.17 uncorrected", "t>1.72 corrected",
                                         "t>3.01 uncorrected"]
    assert t2["Space"].tolist() == ["MNI", "MNI", "NA"]
    assert set(t2["Coordinates (Pain > No Pain)"]) == {"NA"} and set(t2["Paradigm"]) == {"NA"}
