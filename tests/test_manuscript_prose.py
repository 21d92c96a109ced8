"""Prose that follows the numbers: the manuscript's result-dependent sentences and captions
(``analysis.manuscript_values``) on three result sets, with no contradiction a reader could see.

The result sets are small synthetic ``results/`` folders (values.json and the two TSV files the
prose reads) for the main analysis without any cluster, with the four published clusters and
with more clusters than the paper, each with the stand-ins of the simulation generator
(not built to reproduce Table 3) and with stand-ins constructed to reproduce it. A slow test
renders the whole manuscript on perturbed copies of the quick pipeline run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from analysis import manuscript_values as mv

PUBLISHED = [  # direction, x, y, z, SDM-Z of the paper's Table 3
    ("Patients>Controls", 0, 48, 0, 3.51),
    ("Patients>Controls", 60, -14, -12, 3.699),
    ("Patients<Controls", -22, -48, -28, -3.797),
    ("Patients<Controls", -52, -70, 2, -4.246),
]

PROV = mv.Provenance(real_studies=["Moriguchi2007"],
                     simulated_studies=[f"S{i}" for i in range(10)],
                     n_peaks_real=27, n_peaks_simulated=116)
REAL = mv.Provenance(real_studies=[f"S{i}" for i in range(11)], n_peaks_real=143)


def _results(tmp: Path, n_inc: int, n_dec: int, z_at_pub: list[float], matched: int,
             standin_keys: dict | None = None) -> Path:
    """A results folder with what the prose reads: meta values, Table 3, the comparison."""
    (tmp / "tables").mkdir(parents=True)
    clusters = ([("Patients>Controls", 1, 47, 1, 3.4 + 0.1 * i) for i in range(n_inc)]
                + [("Patients<Controls", -22, -47, -27, -3.6 - 0.1 * i) for i in range(n_dec)])
    pd.DataFrame([{"direction": d, "region": "r", "aal_label": "a", "cluster_voxels": 50,
                   "x": x, "y": y, "z": z, "sdm_z": sz, "p_voxel": 1e-4, "hedges_g": 0.4,
                   "i2": 3.0, "egger_p": 0.5} for d, x, y, z, sz in clusters],
                 columns=["direction", "region", "aal_label", "cluster_voxels", "x", "y", "z",
                          "sdm_z", "p_voxel", "hedges_g", "i2", "egger_p"]).to_csv(
        tmp / "tables" / "table3.tsv", sep="\t", index=False)
    rows = []
    for (d, x, y, z, sz), zp in zip(PUBLISHED, z_at_pub):
        rows.append({"direction": d, "published_region": "r", "published_x": x,
                     "published_y": y, "published_z": z, "published_sdm_z": sz,
                     "published_hedges_g": 0.4, "reproduced_z_at_published_peak": zp,
                     "reproduced_g_at_published_peak": zp / 8})
    pd.DataFrame(rows).to_csv(tmp / "tables" / "table3_vs_published.tsv", sep="\t",
                              index=False)
    meta = {"n_clusters_increase": n_inc, "n_clusters_decrease": n_dec,
            "published_matched_within_10mm": matched,
            "at_published_peaks": [{"sdm_z": zp} for zp in z_at_pub],
            "parameters": {"p_uncorrected": 0.0025, "peak_z": 1.0, "min_cluster_voxels": 11},
            **(standin_keys or {})}
    tables = {"n_studies": 11, "n_patients": 296, "n_controls": 229, "age_sd_ttest_p": 0.4}
    (tmp / "values.json").write_text(json.dumps({"meta": meta, "tables": tables}))
    return tmp


V3 = {"standin_generator_versions": ["3"], "standins_reproduce_table3_by_construction": True}
V2 = {"standin_generator_versions": ["2"], "standins_reproduce_table3_by_construction": False}

SCENARIOS = {
    # name: (increases, decreases, SDM-Z at the published peaks, matched)
    "none": (0, 0, [0.25, 1.06, -1.55, -0.43], 0),
    "published": (2, 2, [3.51, 3.7, -3.8, -4.25], 4),
    "extra": (4, 3, [3.4, 3.6, -3.7, -4.1], 4),
}


def _texts(v: mv.Values, prov: mv.Provenance) -> dict[str, str]:
    caption, alt = mv.figure2_caption(v, prov)
    texts = {"banner": mv.provenance_banner(prov, v), "abstract": mv.abstract_results(v, prov),
             "methods": mv.standin_methods(v, prov), "results": mv.results_text(v, prov),
             "fig-meta": caption, "fig-meta-alt": alt,
             "discussion": mv.discussion_data(v, prov), "conclusion": mv.conclusion(v, prov),
             "agreement": mv.agreement_sentence(v, prov)}
    for label in mv.RESULT_CAPTIONS:
        texts[label] = mv.caption(label, v, prov)
    return texts


@pytest.fixture(params=[(s, k) for s in SCENARIOS for k in ("v2", "v3", "absent")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def scenario(request, tmp_path):
    name, keys = request.param
    n_inc, n_dec, z, matched = SCENARIOS[name]
    extra = {"v2": V2, "v3": V3, "absent": None}[keys]
    v = mv.Values(_results(tmp_path, n_inc, n_dec, z, matched, extra))
    return name, keys, v


def test_no_contradiction_on_three_result_sets(scenario):
    name, keys, v = scenario
    n_inc, n_dec, z_at_pub, matched = SCENARIOS[name]
    texts = _texts(v, PROV)
    everything = " ".join(texts.values())
    # no "cluster(s)", no "0 clusters"
    assert "(s)" not in everything
    assert not re.search(r"\b0 clusters?\b", everything)
    cap, alt = texts["fig-meta"], texts["fig-meta-alt"]
    if n_inc + n_dec == 0:
        # a caption naming clusters when there are none is a contradiction
        assert "through the cluster peaks" not in cap and "their peaks" not in cap
        assert "No cluster survived" in cap and "coloured cluster" not in alt
        assert "unthresholded" in cap  # the figure code draws such directions unthresholded
        assert "none survived" in texts["tbl-results"]
        assert "no cluster in either direction" in texts["results"]
        assert "confirm only that the engine" not in texts["discussion"]
        assert "recovers what was built" not in texts["abstract"]
    else:
        assert f"{n_inc} clusters on slices through their peaks" in cap
        assert f"{n_dec} coloured clusters of decreased activation" in alt
        assert (f"{n_inc} clusters of increased and {n_dec} clusters of decreased"
                in texts["results"])
        assert "none survived" not in texts["tbl-results"]
    # the agreement with the paper is stated from the numbers
    assert f"{matched} of the 4 published clusters" in texts["agreement"]
    # the SDM-Z printed at the published peaks is the table's, after its rounding
    table = mv.format_table("tbl-reproduction",
                            pd.read_csv(v.results_dir / "tables" / "table3_vs_published.tsv",
                                        sep="\t"))
    rows = [ln for ln in table.splitlines() if ln.startswith("| Patients")]
    shown = [[c.strip() for c in ln.strip("|").split("|")][4] for ln in rows]
    printed = re.search(r"SDM-\*Z\* at the published peaks is ([^(]+) \(", texts["agreement"])
    assert printed and printed.group(1).split(", ") == shown


def test_standin_wording_follows_the_values(scenario):
    name, keys, v = scenario
    n_inc, n_dec, z_at_pub, matched = SCENARIOS[name]
    texts = _texts(v, PROV)
    labels = ["banner", "methods", "fig-meta", *mv.RESULT_CAPTIONS]
    if keys == "v3":
        for label in labels:
            assert mv.BY_CONSTRUCTION in texts[label], label
        assert "not expected to reproduce" not in " ".join(texts.values())
    else:  # v2 wording, also when the meta stage does not say (keys absent)
        for label in labels:
            assert mv.BY_CONSTRUCTION not in texts[label], label
            assert "not expected to reproduce" in texts[label], label
        if matched < 4:
            assert "and they do not" in texts["agreement"]
        else:
            assert "which the generator does not aim at" in texts["agreement"]
    assert 'title-suffix="(simulated stand-in data)"' in texts["banner"]
    assert "painemp-provenance" in texts["banner"]
    # every study has peaks here: the abstract does not say that some have none
    assert "have no peaks" not in texts["abstract"]


def test_real_data_have_no_standin_wording(tmp_path):
    v = mv.Values(_results(tmp_path, 2, 2, [3.5, 3.7, -3.8, -4.2], 4, V3))
    texts = _texts(v, REAL)
    assert texts["banner"] == "" and texts["methods"] == ""
    everything = " ".join(texts.values())
    assert mv.BY_CONSTRUCTION not in everything and "stand-in" not in everything
    assert "4 of the 4 published clusters" in texts["agreement"]


def _one_sample_results(tmp: Path, n_pos: int, n_neg: int) -> Path:
    """Results of a one-sample project imported with a declared source (as Enge et al. 2021):
    directions positive/negative, no comparison with the published Table 3, no patient or
    control numbers, no meta-regression and no disorder jackknife, stage design skipped."""
    (tmp / "tables").mkdir(parents=True)
    rows = ([("Positive", -52, -46, 4, 4.2)] * n_pos + [("Negative", 40, 20, 30, -3.9)] * n_neg)
    pd.DataFrame([{"direction": d, "region": "r", "aal_label": "a", "cluster_voxels": 50,
                   "x": x, "y": y, "z": z, "sdm_z": sz, "p_voxel": 1e-4, "hedges_g": 0.4,
                   "i2": 3.0, "egger_p": 0.5} for d, x, y, z, sz in rows]).to_csv(
        tmp / "tables" / "table3.tsv", sep="\t", index=False)
    reason = "the study table holds one-sample studies"
    values = {
        "meta": {"n_clusters_increase": n_pos, "n_clusters_decrease": n_neg,
                 "published_matched_within_10mm": None, "at_published_peaks": [],
                 "directions": {"increase": "Positive", "decrease": "Negative"},
                 "design": "one-sample", "import_sources": ["Enge et al. (2021)"],
                 "skipped": {"tables/table3_vs_published.tsv": reason},
                 "parameters": {"p_uncorrected": 0.0025, "peak_z": 1.0,
                                "min_cluster_voxels": 11}},
        "tables": {"n_studies": 50, "n_patients": None, "n_controls": None, "n_total": 687,
                   "n_studies_published": 11, "n_patients_published": 296,
                   "n_controls_published": 229, "age_sd_ttest_p": None,
                   "skipped": {"n_patients": "one-sample studies only"}},
        "robustness": {"metaregression_covariates": [],
                       "skipped": {"leave-one-disorder-out": "no 'disorder' column",
                                   "metaregression age": "no study gives 'age'"}},
        "design": {"not_applicable": reason,
                   "skipped": {"tables/table3_checks.tsv": reason}},
    }
    (tmp / "values.json").write_text(json.dumps(values))
    return tmp


@pytest.mark.parametrize("n_pos,n_neg", [(0, 0), (3, 1)])
def test_one_sample_data_are_not_worded_as_patients_or_compared(tmp_path, n_pos, n_neg):
    """Another design than the paper's (one-sample studies): the prose names the directions
    of the data, no patients or controls, no comparison with the published clusters, no
    disorder jackknife or meta-regression that did not run, and the declared source."""
    v = mv.Values(_one_sample_results(tmp_path, n_pos, n_neg))
    texts = _texts(v, REAL)
    texts["limitation"] = mv.peaks_limitation(REAL, v)
    texts["design-limitation"] = mv.design_limitation(v).data
    texts["table1-limitation"] = mv.table1_limitation(v).data
    texts["methods-regressions"] = mv.metaregression_methods(v)
    everything = " ".join(texts.values())
    false_claims = (r"\d[\d,]* (patients|controls)|in patients|patients [<>]|patients differ|"
                    r"published clusters|disorder")
    assert not [k for k, t in texts.items() if re.search(false_claims, t, flags=re.I)]
    assert "the authors'" not in everything and "Enge et al. (2021)" in texts["abstract"]
    assert "not compared with the paper's Table 3" in texts["agreement"]
    assert texts["tbl-reproduction"] == mv.NOT_COMPUTED
    assert "one study at a time" in texts["tbl-jackknife"]
    assert "none computed" in texts["tbl-metaregression"]
    assert texts["methods-regressions"].startswith("no meta-regression is computed")
    assert "not computed for the data of this run" in texts["design-limitation"]
    assert "is not the paper's Table 1" in texts["table1-limitation"]
    assert "50 one-sample studies with 687 participants" in texts["conclusion"]
    if n_pos:
        assert "3 clusters of positive and 1 cluster of negative pooled effects" in texts[
            "results"]
        assert "A: positive effects, 3 clusters" in texts["fig-meta"]
        assert "coloured cluster of negative effects" in texts["fig-meta-alt"]
    else:
        assert "published peaks" not in texts["fig-meta"]
    assert mv.sample_text(50, None, None, 687) == (
        "50 one-sample studies with 687 participants (no patient or control groups)")
    assert mv.sample_text(11, 296, 229, 525) == "11 studies with 296 patients and 229 controls"
    assert mv.prisma_note(11, 50).startswith(" The study table of this run holds 50 studies")
    assert mv.prisma_note(11, 11) == ""


def test_figure2_caption_follows_the_thresholding_flag(tmp_path):
    """With meta.figure2_thresholded, a direction without clusters shows no unthresholded map."""
    root = _results(tmp_path, 0, 2, [0.2, 0.3, -3.8, -4.2], 2)
    values = json.loads((root / "values.json").read_text())
    values["meta"]["figure2_thresholded"] = True
    (root / "values.json").write_text(json.dumps(values))
    cap, alt = mv.figure2_caption(mv.Values(root), PROV)
    assert "unthresholded" not in cap and "unthresholded" not in alt
    assert "A: increases, no cluster" in cap and "B: decreases, 2 clusters" in cap


def test_characterisation_discussion_names_the_top_terms(tmp_path):
    seeds = {"P1": {"aal2_region": "Cingulate_Ant_L", "top_terms": ["pain", "empathy", "x"]},
             "P4": {"aal2_region": "Temporal_Mid_L", "top_terms": ["language", "speech"]}}
    (tmp_path / "values.json").write_text(json.dumps({"characterisation": {"published": {
        "seeds": seeds, "overlap_increase": {"dmn_share": 0.6},
        "overlap_decrease": {"dmn_share": 0.1}}}}))
    text = mv.characterisation_discussion(mv.Values(tmp_path))
    assert "P1 (Anterior Cingulate, Left): *pain*, *empathy*, *x*" in text
    assert "P4 (Middle Temporal Gyrus, Left): *language*, *speech*" in text
    assert "visual" not in text  # no fixed functional reading
    assert "60 %" in text and "10 %" in text


def test_plural_and_p_rule():
    assert mv.plural(0, "cluster") == "no cluster"
    assert mv.plural(1, "cluster") == "1 cluster" and mv.plural(3, "cluster") == "3 clusters"
    assert mv.fmt_p(0.5) == "0.500" and mv.fmt_p(0.0462) == "0.0462"
    assert mv.fmt_p(0.000224233) == "2.24 × 10⁻⁴"
    assert mv.fmt_p_table(0.931) == mv.fmt_p(0.931)


def test_auto_format_is_human():
    df = pd.DataFrame({"region": ["a"], "fwe_z_upper": [float("inf")], "compatible": [True],
                       "verdict": ["not_checkable"], "p_fwe": [0.2], "p_detect": [0.5],
                       "sdm_z": [3.5123], "location": [4]})
    spec = mv.auto_spec(df, {c: c.replace("_", " ") for c in df.columns},
                        location_names={4: "Middle Temporal Gyrus, Left"})
    text = mv.format_table("tbl-x", df, spec)
    assert "unbounded" in text and "inf" not in text.replace("unbounded", "")
    assert "| yes |" in text and "True" not in text
    assert "not checkable" in text and "not_checkable" not in text
    assert "0.200" in text and "0.50" in text and "3.51" in text
    assert "Middle Temporal Gyrus, Left" in text
    assert "does not bound" in text  # the note explaining "unbounded"


# --- the whole manuscript, rendered on three result sets -----------------------------------------

def _perturbed(src: Path, dest: Path, published: pd.DataFrame, n_extra: int | None) -> Path:
    """A copy of a quick run whose main analysis found no cluster (``n_extra=None``), exactly
    the published clusters (``0``) or the published clusters and ``n_extra`` more."""
    import shutil

    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("intermediate", ".staging"))
    values = json.loads((dest / "values.json").read_text())
    meta = values["meta"]
    t3 = dest / "tables" / "table3.tsv"
    cols = list(pd.read_csv(t3, sep="\t", nrows=0).columns)
    if n_extra is None:
        rows = pd.DataFrame(columns=cols)
        z_at = [0.25, 1.06, -1.55, -0.43]
    else:
        extra = published.iloc[[0] * n_extra].assign(x=lambda d: d["x"] + 30)
        rows = pd.concat([published, extra], ignore_index=True)[cols]
        z_at = published["sdm_z"].tolist()
    rows.to_csv(t3, sep="\t", index=False)
    inc = int((rows["direction"] == "Patients>Controls").sum())
    meta.update({"n_clusters_increase": inc, "n_clusters_decrease": len(rows) - inc,
                 "published_matched_within_10mm": 0 if n_extra is None else len(published),
                 "at_published_peaks": [{"sdm_z": z} for z in z_at]})
    rep = dest / "tables" / "table3_vs_published.tsv"
    df = pd.read_csv(rep, sep="\t")
    df["reproduced_z_at_published_peak"] = z_at
    df.to_csv(rep, sep="\t", index=False)
    (dest / "values.json").write_text(json.dumps(values))
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("n_extra", [None, 0, 2], ids=["no-cluster", "published", "extra"])
def test_manuscript_on_three_result_sets(quick_results, tmp_path, monkeypatch, n_extra):
    """The rendered HTML on three result sets: counts, captions, title and box agree."""
    from test_manuscript import QMD, REPO, _Html

    from analysis import render as rd

    results, _, skip = quick_results
    published = pd.read_csv(REPO / "data" / "published_table3.tsv", sep="\t")
    root = _perturbed(results, tmp_path / "results", published, n_extra)
    monkeypatch.setenv("PAINEMP_RESULTS_DIR", str(root))
    if skip:  # stages left out of the quick run render as placeholders
        monkeypatch.setenv("PAINEMP_ALLOW_MISSING", "1")
    out = rd.render_pandoc(QMD, tmp_path / "out", timeout=600, pdf=False)
    html = out["html"].read_text()
    text = re.sub(r"\s+", " ", " ".join(_Html(html).text))
    n = 0 if n_extra is None else len(published) + n_extra
    assert "(s)" not in text and not re.search(r"\b0 clusters?\b", text)
    prov = mv.provenance(REPO / "data")
    if not prov.all_real:
        assert "(simulated stand-in data)" in re.search(r"<title>(.*?)</title>", html, re.S).group(1)
        assert html.index('class="provenance-box"') < html.index('id="TOC"')
    fig2 = re.search(r"Figure 2: (.*?)(?:Figure 3:|$)", text).group(1)
    if n == 0:
        assert "No cluster survived" in fig2 and "through their peaks" not in fig2
        assert "No cluster survived the thresholds in this run." in text
    else:
        inc = int((published["direction"] == "Patients>Controls").sum()) + (n_extra or 0)
        assert f"A: increases, {inc} clusters on slices through their peaks" in fig2
        table3 = re.search(r'<table[^>]*id="tbl-results".*?</table>', html, flags=re.S).group(0)
        assert table3.count("<tr") - 1 == n  # header row + one row per cluster
    # the SDM-Z printed at the published peaks is the one Table 9 shows
    printed = re.search(r"SDM- ?Z at the published peaks is ([^(]+) \(paper", text).group(1)
    table9 = re.search(r'<table[^>]*id="tbl-reproduction".*?</table>', html, flags=re.S).group(0)
    cells = [re.sub(r"<[^>]+>", "", c).strip() for c in
             re.findall(r"<td[^>]*>(.*?)</td>", table9, flags=re.S)]
    assert all(z in cells for z in printed.strip().split(", ")), (printed, cells)


@pytest.mark.slow
@pytest.mark.browser
def test_provenance_box_on_the_first_screen(quick_results, tmp_path, monkeypatch):
    """At 1280 x 800 the data-provenance box starts on the first screen, above the contents."""
    from test_manuscript import QMD, REPO

    from analysis import browser
    from analysis import render as rd

    if browser.find_chromium() is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    if mv.provenance(REPO / "data").all_real:
        pytest.skip("every study's peaks are real: no provenance box")
    results, _, skip = quick_results
    monkeypatch.setenv("PAINEMP_RESULTS_DIR", str(results))
    if skip:
        monkeypatch.setenv("PAINEMP_ALLOW_MISSING", "1")
    out = rd.render_pandoc(QMD, tmp_path / "out", timeout=600, pdf=False)
    box = browser.check_page(out["html"], selector=".provenance-box", settle=0.5,
                             window=(1280, 800))
    toc = browser.check_page(out["html"], selector="nav#TOC", settle=0.5, window=(1280, 800))
    assert box.element_top is not None and box.element_top < 800, box.element_top
    assert toc.element_top is not None and box.element_top < toc.element_top
    assert "(simulated stand-in data)" in box.title
