"""Stage "design" and its library (analysis.checks.design_simulation): what can be checked without the
authors' coordinates. Every map and peak here is SIMULATED."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import simulate as S
from analysis.checks import design_simulation as D
from analysis.config import load_config
from analysis.errors import ConfigError
from analysis.sdm.errors import DataError
from analysis.sdm.inference.clusters import DECREASE, INCREASE
from analysis.sdm.rng import derive_rng

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"


@pytest.fixture(scope="module")
def cfg():
    return load_config()


@pytest.fixture(scope="module")
def dataset(cfg):
    from analysis.stages import params

    return params.compendium_dataset(DATA, cfg)


# ------------------------------------------------------------------------- simulated studies


def test_keep_highest_keeps_the_quota_of_each_direction_in_table_order():
    peaks = pd.DataFrame({"sign": [1, 1, 1, -1, -1], "x": [0, 10, 20, 30, 40], "y": 0, "z": 0,
                          "stat_value": [3.0, 5.0, 4.0, -6.0, -2.0],
                          "cluster": [1, 1, 2, 3, 4], "cluster_voxels": [50, 50, 20, 30, 12]})
    out = S.keep_highest(peaks, {1: 2, -1: 5})
    assert out["stat_value"].tolist() == [5.0, 4.0, -6.0, -2.0]  # 3.0 dropped, all negatives
    assert out["cluster"].tolist() == [1, 2, 3, 4]
    assert S.keep_highest(peaks, {-1: 1})["stat_value"].tolist() == [-6.0]


def test_family_at_scale_one_is_the_stand_in_model(cfg, data_copy):
    """One noise realisation per study: scale 1 gives exactly simulate_tmap's map and peaks; the
    null short cut (thresholding the Gaussian noise) lists the same peaks as the t-map."""
    eff = S.published_effects(data_copy)
    quotas = {1: 8, -1: 7}
    fam, tg = S.simulate_study_family(24, 21, 1.68, quotas, derive_rng(1, "t/a"), cfg,
                                      effects=eff, scales=[0.5, 1.0])
    tmap, true_g = S.simulate_tmap(24, 21, eff, derive_rng(1, "t/a"), cfg)
    ref = S.keep_highest(S.find_peaks(tmap, 1.68, [1, -1], cfg, max_peaks=0), quotas)
    pd.testing.assert_frame_equal(fam[1], ref)
    assert np.array_equal(tg[1], true_g)
    # the study's deviation from the mean effect is shared by the scales
    assert np.allclose(tg[1] - tg[0], 0.5 * eff["g"].to_numpy())
    null, _ = S.simulate_study_family(18, 18, 3.35, {-1: 3}, derive_rng(1, "t/b"), cfg)
    tmap0, _ = S.simulate_tmap(18, 18, None, derive_rng(1, "t/b"), cfg)
    ref0 = S.keep_highest(S.find_peaks(tmap0, 3.35, [-1], cfg, max_peaks=0), {-1: 3})
    cols = ["sign", "x", "y", "z", "cluster", "cluster_voxels"]
    assert null[0][cols].equals(ref0[cols])
    assert np.allclose(null[0]["stat_value"], ref0["stat_value"], atol=1e-9)
    assert (null[0]["sign"] == -1).all() and len(null[0]) <= 3


def test_design_quotas_are_the_peak_table_counts(dataset):
    q = D.design_quotas(dataset.studies, dataset.peaks)
    assert sum(sum(d.values()) for d in q.values()) == len(dataset.peaks) == 143
    assert q["Bird2010"] == {-1: 3} and q["Decety2009"] == {1: 9}
    assert q["Moriguchi2007"] == {1: 10, -1: 17}
    bad = dataset.peaks.copy()
    row = int(np.flatnonzero(bad["study"] == "Bird2010")[0])
    bad.loc[bad.index[row], "sign"] = 1
    with pytest.raises(DataError, match=f"row {row + 1}, field 'sign'"):
        D.design_quotas(dataset.studies, bad)


def test_simulate_design_gives_engine_ready_tables(cfg, dataset):
    q = D.design_quotas(dataset.studies, dataset.peaks)
    studies = dataset.studies.iloc[:3]
    peaks, tg = D.simulate_design(studies, q, 7, "test/design", cfg)
    assert len(peaks) == 1 and tg.shape == (1, 3, 0)
    p = peaks[0]
    assert list(p.columns) == ["study", "x", "y", "z", "t", "sign"]
    assert set(p["study"]) <= set(studies["study"])
    for s, grp in p.groupby("study"):
        for sign, n in grp["sign"].value_counts().items():
            assert n <= q[s][sign]
    assert (np.sign(p["t"]) == p["sign"]).all()
    assert np.allclose(p["t"], p["t"].round(2))
    again, _ = D.simulate_design(studies, q, 7, "test/design", cfg)
    pd.testing.assert_frame_equal(p, again[0])
    # studies simulated in threads: the same tables (each study has its own stream)
    threaded, _ = D.simulate_design(studies, q, 7, "test/design", cfg, n_jobs=2)
    pd.testing.assert_frame_equal(p, threaded[0])


# ------------------------------------------------------------------------ null maximum


def test_quantile_ci_covers_the_quantile_at_its_stated_rate():
    rng = np.random.default_rng(0)
    q, n, true = 0.95, 100, stats.norm.ppf(0.95)
    hits = []
    for _ in range(400):
        r = D.quantile_ci(rng.standard_normal(n), q, 0.95)
        hits.append(r["lower"] <= true <= r["upper"])
    r = D.quantile_ci(rng.standard_normal(n), q, 0.95)
    assert r["coverage"] >= 0.95 and r["n"] == n
    assert abs(np.mean(hits) - r["coverage"]) < 0.04
    small = D.quantile_ci([1.0, 2.0, 3.0, 4.0], 0.95, 0.95)
    assert small["upper"] == np.inf and small["lower"] == 3.0 and np.isnan(small["coverage"])
    assert D.quantile_ci([], 0.95)["n"] == 0


def test_gumbel_quantile_recovers_a_known_quantile():
    loc, scale, q = 2.0, 0.3, 0.95
    x = stats.gumbel_r.rvs(loc, scale, size=400, random_state=1)
    r = D.gumbel_quantile(x, q, 0.95, 200, np.random.default_rng(2))
    true = stats.gumbel_r.ppf(q, loc, scale)
    assert r["lower"] < true < r["upper"] and abs(r["estimate"] - true) < 0.1
    assert np.isnan(D.gumbel_quantile([1.0, 2.0], q)["estimate"])
    assert np.isnan(D.gumbel_quantile(np.ones(30), q)["estimate"])


def test_gumbel_is_not_fitted_to_fewer_than_20_maxima():
    x = stats.gumbel_r.rvs(2.0, 0.3, size=40, random_state=3)
    for n in (3, 4, 19):
        r = D.gumbel_quantile(x[:n], 0.95, 0.95, 50, np.random.default_rng(0))
        assert not r["fitted"] and np.isnan(r["estimate"]) and np.isnan(r["upper"])
        assert r["reason"] == "not fitted: fewer than 20 null maxima" == D.GUMBEL_REFUSAL
        assert np.isnan(D.exceedance(x[:n], 2.5, gumbel=r)["p_gumbel"])
    r = D.gumbel_quantile(x[:20], 0.95, 0.95, 50, np.random.default_rng(0))
    assert r["fitted"] and r["lower"] < r["estimate"] < r["upper"]


@pytest.mark.parametrize("n, decidable", [(1, False), (4, False), (18, False), (19, True),
                                          (39, True)])
def test_smallest_attainable_p_decides_whether_a_verdict_is_printed(n, decidable):
    assert D.smallest_monte_carlo_p(n) == pytest.approx(1 / (n + 1))
    assert D.decidable(n, 0.05) is decidable
    # a value above every null maximum: the best outcome the replicates can give
    ex = D.exceedance(np.linspace(1.0, 3.0, n), 10.0)
    assert ex["p_monte_carlo"] == pytest.approx(1 / (n + 1))
    assert D.monte_carlo_verdict(ex, 0.05) == ("passes" if decidable else "undecided")
    # a value below every null maximum: fails only where a pass was reachable
    ex = D.exceedance(np.linspace(1.0, 3.0, n), 0.0)
    assert D.monte_carlo_verdict(ex, 0.05) == ("fails" if decidable else "undecided")
    assert D.verdict_text("undecided", n) == f"undecided at {n} replicates"
    assert D.verdict_text("passes", n) == "passes"


def test_monte_carlo_verdict_boundaries_at_39_replicates():
    """r of 39 null maxima reach the value: p = (r + 1)/40 passes for r <= 1; fails once the
    Clopper-Pearson lower end of r/39 exceeds 0.05 (r >= 6); undecided between."""
    maxima = np.arange(1, 40, dtype=float)          # 1 .. 39
    got = {}
    for r in range(0, 10):
        ex = D.exceedance(maxima, 40.0 - r)          # exactly r maxima >= value
        assert ex["n_exceed"] == r
        got[r] = D.monte_carlo_verdict(ex, 0.05)
    assert [got[r] for r in range(10)] == (["passes"] * 2 + ["undecided"] * 4
                                           + ["fails"] * 4)
    assert D.exceedance(maxima, 39.0)["p_lower"] < 0.05 < D.exceedance(maxima, 34.0)["p_lower"]


def test_exceedance_and_the_monte_carlo_verdict():
    maxima = np.linspace(1.0, 3.0, 19)
    ex = D.exceedance(maxima, 3.5)
    assert ex["n_exceed"] == 0 and ex["p_monte_carlo"] == pytest.approx(0.05)
    assert D.monte_carlo_verdict(ex, 0.05) == "passes"
    assert D.monte_carlo_verdict(D.exceedance(maxima[:10], 3.5), 0.05) == "undecided"
    ex = D.exceedance(maxima, 1.5)
    assert ex["n_exceed"] == 14 and ex["p_lower"] > 0.05
    assert D.monte_carlo_verdict(ex, 0.05) == "fails"
    g = D.gumbel_quantile(np.linspace(1.0, 3.0, 20), 0.95)
    assert 0 < D.exceedance(maxima, 3.5, gumbel=g)["p_gumbel"] < 0.05
    assert D.fwe_verdict(4.0, 2.0, 3.0) == "passes" and D.fwe_verdict(1.0, 2.0, 3.0) == "fails"
    assert D.fwe_verdict(2.5, 2.0, np.inf) == "undecided"


# ---------------------------------------------------------------------------- sensitivity


@pytest.fixture(scope="module")
def roi_space(cfg, mirror):
    from analysis.stages.design import sensitivity_space

    return sensitivity_space(cfg, 20)


def test_match_locations_on_a_simulated_map(cfg, roi_space):
    from analysis.sdm.inference.clusters import threshold_clusters

    locs = pd.DataFrame({"direction": [INCREASE, INCREASE, DECREASE, DECREASE],
                         "x": [0, 60, -22, -52], "y": [48, -14, -48, -70],
                         "z": [0, -12, -28, 2]})
    xyz = roi_space.xyz
    z = np.zeros(roi_space.n_voxels)
    for centre, a in (((0, 52, 0), 5.0), ((60, -14, -12), -4.0), ((-22, -48, -28), -6.0)):
        z += a * np.exp(-np.sum((xyz - np.array(centre)) ** 2, axis=1) / 60.0)
    cl = threshold_clusters(z, roi_space, local_peaks=False)
    maps = {"g": 0.1 * z}
    m = D.match_locations(cl, roi_space, locs, 8.0, maps,
                          {INCREASE: 4.5, DECREASE: 6.5})
    assert m["detected"].tolist() == [True, False, True, False]
    assert m["covered"].tolist() == [True, False, True, False]
    assert m["distance_mm"].iloc[0] == pytest.approx(4.0)
    assert m["detected_fwe"].tolist() == [True, False, False, False]
    assert m["hedges_g"].iloc[0] == pytest.approx(0.5, abs=1e-6)
    far = D.match_locations(cl, roi_space, locs, 2.0)
    assert not far["detected"].iloc[0] and far["covered"].iloc[0]


def _rows():
    rows = []
    for rep in range(1, 5):
        for eff in (0.2, 1.0):
            det = eff == 1.0 or rep == 1
            rows.append({"replicate": rep, "effect_size": eff, "location": 1,
                         "direction": INCREASE, "x": 0, "y": 48, "z": 0, "true_g_mean": eff,
                         "detected": det, "detected_fwe": det and eff == 1.0, "covered": det,
                         "distance_mm": 2.0 if det else 20.0,
                         "sdm_z": 3.5 + rep / 10 if det else np.nan,
                         "hedges_g": 0.4 + rep / 100 if det else np.nan,
                         "cluster_voxels": 40 if det else np.nan, "n_peaks": 140})
    return pd.DataFrame(rows, columns=D.SENSITIVITY_COLUMNS)


def test_summarise_and_compatible_effects():
    s = D.summarise_sensitivity(_rows(), 0.95)
    assert s["effect_size"].tolist() == [0.2, 1.0]
    assert s["p_detect"].tolist() == [0.25, 1.0] and s["p_detect_fwe"].tolist() == [0.0, 1.0]
    lo, hi = stats.binomtest(1, 4).proportion_ci(0.95, method="exact")
    assert s["p_detect_lower"].iloc[0] == pytest.approx(lo)
    assert s["g_mean"].iloc[1] == pytest.approx(0.425)
    published = pd.DataFrame({"hedges_g": [0.42], "sdm_z": [3.7]})
    c = D.compatible_effects(s, published)
    assert c["compatible"].tolist() == [False, True]  # one detection at 0.2: g 0.41 only


def test_read_permutation_maxima_names_file_row_and_field(tmp_path):
    path = tmp_path / "permutation_maxima.tsv"
    path.write_text("permutation\tmax_z\tmax_neg_z\tmax_tfce\tmax_neg_tfce\n"
                    "1\t3.1\t2.9\t100\t90\n2\tx\t2.0\t80\t70\n")
    with pytest.raises(DataError, match="row 2, field 'max_z'"):
        D.read_permutation_maxima(path)
    path.write_text("permutation\tmax_z\n1\t3.0\n")
    with pytest.raises(DataError, match="field 'max_neg_z'"):
        D.read_permutation_maxima(path)
    with pytest.raises(DataError, match="not found"):
        D.read_permutation_maxima(tmp_path / "none.tsv")


def test_sensitivity_figure(tmp_path):
    from analysis.figures.design_sensitivity import plot_sensitivity

    s = D.summarise_sensitivity(_rows(), 0.95)
    pub = pd.DataFrame({"aal_label": ["Cingulate_Ant_L"], "hedges_g": [0.39], "sdm_z": [3.5]})
    fig = plot_sensitivity(s, pub, title="t", note="simulated")
    assert len(fig.axes) == 4  # A, B, C and the legend with the note
    assert [ax.get_title(loc="left")[0] for ax in fig.axes[:3]] == ["A", "B", "C"]
    fig.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_design_configuration_is_validated():
    with pytest.raises(ConfigError, match="design.null_replicates"):
        load_config({"design": {"null_replicates": 0}})
    with pytest.raises(ConfigError, match="design.imputations"):
        load_config({"design": {"imputations": 1}})
    with pytest.raises(ConfigError, match="design.null_replicate"):
        load_config({"design": {"null_replicate": 3}})


# ---------------------------------------------------------------- the stage (quick pipeline)


@pytest.fixture(scope="module")
def quick_design(quick_results):
    """The stage in quick mode with ``manuscript.test_overrides``: the session's quick run of
    the pipeline (fixture ``quick_results`` of conftest.py), shared with the manuscript tests."""
    from conftest import quick_config

    results, ready, _ = quick_results
    assert "design" in ready
    return results, quick_config()


def test_stage_outputs(quick_design):
    results, config = quick_design
    for rel in ("tables/table3_checks.tsv", "tables/design_null_maxima.tsv",
                "tables/design_fwe_threshold.tsv", "tables/design_published_peaks.tsv",
                "tables/design_sensitivity_replicates.tsv", "tables/design_sensitivity.tsv",
                "figures/design_sensitivity.png", "figures/design_sensitivity.svg"):
        assert (results / rel).exists(), rel
    manifest = json.loads((results / ".stages/design.json").read_text())
    assert "tables/design_null_maxima.tsv" in manifest["outputs"]
    assert "null_seconds" in manifest["timings"]
    d = config["design"]
    null = pd.read_csv(results / "tables/design_null_maxima.tsv", sep="\t")
    assert list(null.columns) == D.NULL_COLUMNS and len(null) == d["null_replicates_quick"]
    assert (null["max_z"] > 0).all() and (null["max_neg_z"] > 0).all()
    sens = pd.read_csv(results / "tables/design_sensitivity_replicates.tsv", sep="\t")
    assert list(sens.columns) == D.SENSITIVITY_COLUMNS
    assert len(sens) == 4 * len(d["effect_sizes_quick"]) * d["sensitivity_replicates_quick"]
    checks = pd.read_csv(results / "tables/table3_checks.tsv", sep="\t")
    values = json.loads((results / "values.json").read_text())["design"]
    assert values["table3_checks"]["n_checks"] == len(checks) == 44
    assert values["table3_checks"]["inconsistent"] == int((checks["verdict"]
                                                           == "inconsistent").sum())
    assert values["null"]["replicates"] == len(null)
    assert values["null"]["whole_mask"] is False  # the test overrides analyse a region
    peaks = pd.read_csv(results / "tables/design_published_peaks.tsv", sep="\t")
    assert peaks["verdict"].tolist() == [p["verdict"] for p in values["published"]]
    # too few replicates for the exact test to pass anything
    assert set(peaks["verdict"]) <= {"undecided", "fails"}
    assert "seconds" not in json.dumps(values)


#: tolerances of the golden values of the quick run: counts and verdicts exact; SDM-Z maxima,
#: thresholds and p to what BLAS and optimiser stopping may move on another machine
GOLDEN_DIGITS = 3


def test_stage_quick_golden(quick_design, data_regression):
    """Golden values of the quick stage (SIMULATED null and sensitivity meta-analyses of the
    design; 3 imputations, 20 mm region). Regenerate on purpose only (``make regen``)."""
    results, _ = quick_design
    v = json.loads((results / "values.json").read_text())["design"]
    keep = {k: v[k] for k in ("table3_checks", "null", "published", "published_verdicts",
                              "paper_threshold_fwer", "sensitivity")}
    keep["null"] = {k: x for k, x in keep["null"].items()
                    if k not in ("tfce_increase", "tfce_decrease")}  # TFCE: float sums
    data_regression.check(keep, round_digits=GOLDEN_DIGITS)


# ---------------------------------------------------------------- heavier version (slow)


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_published_peaks_against_the_design_null():
    """The exact Monte-Carlo test of the published peaks with 20 whole-brain null meta-analyses
    of the design (about 15 CPU-minutes) and the sensitivity with 3 replicates.

    Observed when written (the same streams, 30 null replicates; README, "Checks without the
    coordinates"): the largest null SDM-Z of increases was 2.70, so both published increases
    (3.510, 3.699) pass with p = 1/(n + 1); decreases reached 4.63 and 3.86 (replicates 8 and
    17), so the published decreases (-3.797, -4.246) cannot pass the exact test with these
    replicates. The design is asymmetric: the decrease threshold is the higher one.
    """
    from analysis.bench.design_replicates import run_design

    out = run_design(null_replicates=20, sensitivity_replicates=3)
    v = out["values"]
    assert v["null"]["whole_mask"] and v["null"]["replicates"] == 20
    null = out["tables"]["design_null_maxima"]
    assert len(null) == 20 and np.isfinite(null[["max_z", "max_neg_z"]].to_numpy()).all()
    verdicts = [pk["verdict"] for pk in v["published"]]
    assert verdicts[:2] == ["passes", "passes"]
    assert v["published"][0]["p_fwe"] == pytest.approx(1 / 21, abs=1e-4)
    assert "passes" not in verdicts[2:]
    inc, dec = v["null"]["increase"], v["null"]["decrease"]
    assert inc["estimate"] < 3.51 < dec["null_max"]
    assert inc["estimate"] < dec["estimate"]
    for t in (inc, dec):
        assert t["lower"] <= t["estimate"] and t["gumbel_lower"] < t["gumbel"] < t["gumbel_upper"]
    for loc in v["sensitivity"]["locations"]:
        assert loc["p_covered"][-1] >= loc["p_covered"][0]


@pytest.mark.parametrize("x", [2.62549, 3.2155, 0.000939, 1.0049999, -2.6254])
def test_text_and_tables_round_the_same_value(x, tmp_path):
    """values.json keeps each number as the stage's tables write it (%.6g), so the text's
    rounding and the table's rounding of it agree (a value like 2.62549 once printed as 2.62 in
    the text and 2.63 in its table)."""
    from analysis.sdm.inputs.io import write_tsv
    from analysis.stages.design import _tab

    write_tsv(tmp_path / "t.tsv", pd.DataFrame({"v": [x]}), float_format="%.6g")
    table = float(pd.read_csv(tmp_path / "t.tsv", sep="\t")["v"].iloc[0])
    assert _tab(x) == table
    for spec in (".2f", ".3g"):
        assert format(_tab(x), spec) == format(table, spec)
    assert _tab(float("nan")) is None and _tab(float("inf")) is None
