"""The README's "substitute the authors' data, then ``make paper``" path on a published
SDM-PSI project: Enge et al. (2021), 50 one-sample studies of semantic cognition (687 peaks).

``import-sdm --force --source ...`` into a copy of ``data/``, ``validate-data``, ``run --quick``
and ``render`` without Quarto, as a user would, with tiny settings (2 imputations, 3
permutations, grey matter within 10 mm of the published peaks): every stage runs, what the
study table cannot serve (no patients or controls, ages, disorders, paradigms, covariates, the
paper's design) is left out with its reason, and the rendered document names the contrast of
these data (positive and negative pooled effects) and makes none of the claims about He et
al.'s sample and Table 3 that would be false for them.
"""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest

from analysis import render as rd
from analysis.cli import main
from analysis.paths import REPO_ROOT

SOURCE = "Enge et al. (2021), NeuroImage 241:118436, public SDM-PSI project"
TINY = ["--set", "sdm.imputations_quick=2", "--set", "sdm.permutations_quick=3",
        "--set", "sdm.analysis_roi_radius_mm=10"]

#: sentences of the paper's manuscript that are false for a one-sample project
FALSE_CLAIMS = [
    r"\d+ patients", r"\d+ controls", r"activation in patients", r"patients differ from controls",
    r"Leave one disorder out", r"one disorder, at a time", r"or disorders\.",
    r"Meta-regressions on age", r"meta-regressions test age", r"published clusters have",
    r"of the \d+ published clusters", r"mean age \d", r"mean age and its standard deviation are reproduced",
    r"the authors' (peak )?coordinates", r"authors' own", r"uses the numbers of the paper's Table 1",
    r"Data provenance", r"simulated stand-in data", r"null meta-analyses of the design",
    r"Table 3 is consistent", r"printed numbers? of the paper's Table 3", r"test gives t =", r"conclusion — no significant difference",
]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_enge_project_imports_runs_and_renders(enge_dir, tmp_path, monkeypatch, capsys):
    data, results, out = tmp_path / "data", tmp_path / "results", tmp_path / "_manuscript"
    shutil.copytree(REPO_ROOT / "data", data)
    monkeypatch.setenv("PAINEMP_DATA_DIR", str(data))
    monkeypatch.setenv("PAINEMP_RESULTS_DIR", str(results))
    monkeypatch.delenv("PAINEMP_ALLOW_MISSING", raising=False)
    assert main(["import-sdm", str(enge_dir), "--force", "--source", SOURCE]) == 0
    assert main(["validate-data"]) == 0
    assert "studies: 50" in capsys.readouterr().out

    assert main(["run", "--quick", *TINY]) == 0
    values = json.loads((results / "values.json").read_text())
    assert set(values) == {"tables", "figure1", "meta", "robustness", "design",
                           "characterisation"}
    # the contrast of the data: the sign of the pooled effect of one-sample studies
    meta = values["meta"]
    assert meta["design"] == "one-sample" and meta["inputs_real"] == 50
    assert meta["directions"] == {"increase": "Positive", "decrease": "Negative"}
    assert meta["import_sources"] == [SOURCE]
    t3 = pd.read_csv(results / "tables" / "table3.tsv", sep="\t")
    assert len(t3) == meta["n_clusters_increase"] + meta["n_clusters_decrease"] > 0
    assert set(t3["direction"]) <= {"Positive", "Negative"}
    jk = pd.read_csv(results / "tables" / "jackknife_summary.tsv", sep="\t")
    assert set(jk["analysis"]) == {"leave-one-out"} and set(jk["direction"]) <= {
        "Positive", "Negative"}
    fwe = pd.read_csv(results / "tables" / "fwe_peaks.tsv", sep="\t")
    assert set(fwe["direction"]) == set(t3["direction"])
    # what the study table cannot serve is left out, each with its reason
    assert "tables/table3_vs_published.tsv" in meta["skipped"]
    assert meta["published_matched_within_10mm"] is None
    assert not (results / "tables" / "table3_vs_published.tsv").exists()
    tables = values["tables"]
    assert tables["design"] == "one-sample" and tables["n_total"] == 1018
    for key in ("n_patients", "n_controls", "age_mean", "female_pct_weighted",
                "disorder_counts", "paradigm_counts", "age_sd_ttest_t"):
        assert tables[key] is None, key
    left_out = values["robustness"]["skipped"]
    assert {"leave-one-disorder-out", "metaregression age", "metaregression female_pct",
            "metaregression treated", "subgroup paradigm"} <= set(left_out)
    assert values["robustness"]["metaregression_covariates"] == []
    assert values["design"]["not_applicable"].startswith("the study table holds one-sample")
    assert not (results / "tables" / "table3_checks.tsv").exists()

    # render, the second half of `make paper`, without Quarto
    monkeypatch.setattr(rd, "quarto_available", lambda: None)
    assert main(["render", *TINY, "--output-dir", str(out)]) == 0
    html = (out / "index.html").read_text()
    assert (out / "index.pdf").stat().st_size > 0
    from test_manuscript import _Html

    text = re.sub(r"\s+", " ", " ".join(_Html(html).text))
    table3 = re.search(r'<table[^>]*id="tbl-results".*?</table>', html, flags=re.S).group(0)
    assert "Positive effect" in table3 and "Patients" not in table3
    assert f"On the peak coordinates imported from {SOURCE} the re-analysis finds" in text
    assert "A: positive effects," in text  # Figure 2's caption
    assert "50 one-sample studies with 1018 participants" in text
    assert "The results are not compared with the paper's Table 3" in text.replace("’", "'")
    assert "Not computed for the data of this run: the study table holds one-sample" in text
    assert "[missing" not in text
    found = [p for p in FALSE_CLAIMS if re.search(p, text.replace("’", "'"), flags=re.I)]
    assert found == [], found
