"""Stage "meta": report of a fitted model (Table 3, comparison, Figure 2, funnels)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from analysis.data_tables import load_dataset
from analysis.grid import gm_mask
from analysis.paths import REPO_ROOT
from analysis.sdm.errors import DataError
from analysis.sdm.inference.clusters import DECREASE, INCREASE
from analysis.sdm.inputs.dataset import SDMDataset
from analysis.sdm.inputs.io import sha256_file
from analysis.sdm.maps.space import MaskSpace
from analysis.stages import meta as stage

PUBLISHED_PEAKS = [((0, 48, 0), 4.0), ((60, -14, -12), 3.7), ((-22, -48, -28), -3.8),
                   ((-52, -70, 2), -4.2)]


@pytest.fixture(scope="module")
def space(mirror):
    return MaskSpace(gm_mask())


def _synthetic_result(space, k, m=4, shift=(0, 0, 0), seed=0):
    """A MetaResult-like object with four SIMULATED Gaussian blobs (test input only)."""
    rng = np.random.default_rng(seed)
    x = space.xyz
    z = np.zeros(space.n_voxels)
    for c, a in PUBLISHED_PEAKS:
        z += a * np.exp(-np.sum((x - np.array(c) - np.array(shift)) ** 2, axis=1) / 120.0)
    se = 0.12
    g = z * se
    imputed = (g[None, None, :] + rng.normal(0, 0.3, (m, k, 1))).astype(np.float32)
    imputed[:, 0, :] = g  # study 0 "known" everywhere
    maps = {"g": g, "var": np.full_like(g, se * se), "z": z, "tau2": np.zeros_like(g),
            "i2": np.full_like(g, 1.0), "p": norm.sf(np.abs(z))}
    return SimpleNamespace(maps=maps, space=space, imputations=imputed)


def _run_report(tmp_path, data_dir, space, result, egger=None, figures=True):
    ds = load_dataset(data_dir)
    published = stage.load_published_table3(data_dir)
    prov = stage.input_provenance(ds)

    def out(rel):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    from analysis.config import load_config

    values = stage.report(result, ds, published, out, config=load_config(), provenance=prov,
                          imputations=result.imputations.shape[0],
                          egger=egger or (lambda r, d, v: np.full(len(v), 0.5)),
                          figures=figures)
    return values, ds


@pytest.fixture(scope="module")
def synthetic_report(space, tmp_path_factory):
    """One report, figures included, of the SIMULATED four-blob result on a copy of data/
    (read only by the report), shared by the tests of its tables and its figures:
    ``(output folder, data folder, values, dataset)``."""
    import shutil

    root = tmp_path_factory.mktemp("synthetic-report")
    data = root / "data"
    shutil.copytree(REPO_ROOT / "data", data)
    out = root / "out"
    res = _synthetic_result(space, len(load_dataset(data).studies))
    values, ds = _run_report(out, data, space, res)
    return out, data, values, ds


def test_report_outputs(synthetic_report):
    out, data_copy, values, ds = synthetic_report
    for name in stage.MAP_NAMES + ("z_thresholded", "clusters"):
        assert (out / "maps" / f"{name}.nii.gz").exists()
    t3 = pd.read_csv(out / "tables/table3.tsv", sep="\t")
    pub = pd.read_csv(data_copy / "published_table3.tsv", sep="\t")
    assert list(t3.columns) == list(pub.columns) == stage.TABLE3_COLUMNS
    assert t3["direction"].tolist().count(INCREASE) == 2
    assert t3["direction"].tolist().count(DECREASE) == 2
    # the blobs were planted at the published peaks: same coordinates, same order convention
    assert sorted(map(tuple, t3[["x", "y", "z"]].to_numpy())) == sorted(
        c for c, _ in PUBLISHED_PEAKS)
    assert np.allclose(t3["i2"], 1.0)  # percent, as given
    assert np.allclose(t3["hedges_g"], t3["sdm_z"] * 0.12, atol=1e-6)
    assert np.allclose(t3["egger_p"], 0.5)
    cmp_ = pd.read_csv(out / "tables/table3_vs_published.tsv", sep="\t")
    assert len(cmp_) == 4
    assert np.allclose(cmp_["distance_mm"], 0)
    assert cmp_["inputs"].str.contains("1 of 11 studies' inputs real").all()
    assert np.allclose(cmp_["published_sdm_z"], pub["sdm_z"])
    assert np.allclose(cmp_["reproduced_z_at_published_peak"],
                       [a for _, a in PUBLISHED_PEAKS], atol=1e-6)
    bd = pd.read_csv(out / "tables/table3_breakdown.tsv", sep="\t")
    sizes = bd.groupby("cluster")["voxels"].sum().to_numpy()
    assert np.array_equal(sizes, t3["cluster_voxels"].to_numpy())
    assert np.allclose(cmp_["reproduced_egger_p_at_published_peak"], 0.5)
    assert np.allclose(cmp_["reproduced_i2_at_published_peak"], 1.0)
    for f in ("figure2.png", "figure2.svg", "funnels.png", "funnels.svg", "funnel_1.png",
              "funnel_4.png",
              "funnel_published_1.png", "funnel_published_4.png"):
        assert (out / "figures" / f).stat().st_size > 1000
    assert not (out / "figures/funnel_5.png").exists()
    svg = (out / "figures/figure2.svg").read_text()
    assert "Simulated stand-in data" in svg
    assert values["n_clusters_increase"] == 2 and values["n_clusters_decrease"] == 2
    assert values["inputs_real"] == 1 and values["inputs_simulated"] == 10
    assert values["real_studies"] == ["Moriguchi2007"]
    assert values["published_matched_within_10mm"] == 4
    assert len(values["clusters"]) == 4 and values["imputations"] == 4
    assert [v["egger_p"] for v in values["at_published_peaks"]] == [0.5] * 4


def test_comparison_with_shifted_and_missing_clusters(tmp_path, data_copy, space):
    ds = load_dataset(data_copy)
    res = _synthetic_result(space, len(ds.studies), shift=(0, 4, 0))
    res.maps["z"] = np.where(res.maps["z"] < 0, 0.0, res.maps["z"])  # no decreases
    _run_report(tmp_path, data_copy, space, res, figures=False)
    assert not (tmp_path / "figures").exists()
    cmp_ = pd.read_csv(tmp_path / "tables/table3_vs_published.tsv", sep="\t")
    inc = cmp_[cmp_["direction"] == INCREASE]
    dec = cmp_[cmp_["direction"] == DECREASE]
    assert np.allclose(inc["distance_mm"], 4.0)
    assert dec["distance_mm"].isna().all()
    assert (dec["reproduced_aal_label"] == "no cluster").all()


def test_egger_at_uses_imputations(data_copy, space):
    ds = load_dataset(data_copy)
    res = _synthetic_result(space, len(ds.studies), m=3)
    vox = space.voxel_index([(0, 48, 0), (60, -14, -12)])
    p = stage.egger_at(res, ds, vox)
    assert p.shape == (2,) and np.all((p >= 0) & (p <= 1))
    assert stage.egger_at(res, ds, np.zeros(0, int)).shape == (0,)


def test_input_provenance_and_errors(data_copy):
    ds = load_dataset(data_copy)
    prov = stage.input_provenance(ds)
    assert prov["real"] == ["Moriguchi2007"] and len(prov["simulated"]) == 10
    assert prov["generator_versions"] == ["3"]  # the constructed stand-ins
    v2 = ds.peaks.assign(provenance=ds.peaks["provenance"].str.replace(
        "simulated:v3:", "simulated:v2:", regex=False))
    assert stage.input_provenance(SDMDataset(ds.studies, v2))["generator_versions"] == ["2"]
    mixed = v2.copy()
    mixed.loc[mixed["study"] == "Xu2020", "provenance"] = "simulated:v3:seed=1"
    assert stage.input_provenance(SDMDataset(ds.studies, mixed))["generator_versions"] == [
        "2", "3"]
    bad = ds.peaks.copy()
    bad.loc[3, "provenance"] = "invented"
    with pytest.raises(DataError, match="row 4, field 'provenance'"):
        stage.input_provenance(SDMDataset(ds.studies, bad))


def test_published_table_errors(data_copy):
    path = data_copy / "published_table3.tsv"
    df = pd.read_csv(path, sep="\t")
    df.loc[1, "direction"] = "Patients=Controls"
    df.to_csv(path, sep="\t", index=False)
    with pytest.raises(DataError, match="row 2, field 'direction'"):
        stage.load_published_table3(data_copy)
    df.drop(columns="egger_p").to_csv(path, sep="\t", index=False)
    with pytest.raises(DataError, match="egger_p"):
        stage.load_published_table3(data_copy)


# --------------------------------------------------------------------------------------------
# the stage through the pipeline runner


def test_produce_through_pipeline(tmp_path, data_copy, space, monkeypatch):
    """produce(ctx) wiring: dataset, imputation count, ctx.out, values.json (engine replaced by
    a SIMULATED result so that the test stays fast)."""
    from analysis.pipeline import run_stages

    seen = {}

    def fake_fit(dataset, config, imputations, seed):
        seen["k"], seen["m"] = len(dataset.studies), imputations
        return _synthetic_result(space, len(dataset.studies), m=imputations)

    monkeypatch.setattr(stage, "fit_mean_model", fake_fit)
    monkeypatch.setattr(stage, "save_fit", lambda path, result, seed: seen.setdefault(
        "saved", path.name))
    monkeypatch.setattr(stage, "draw_figures", lambda *a, **k: seen.setdefault("drawn", True))
    monkeypatch.setattr(stage, "egger_at", lambda r, d, v: np.full(len(v), 0.25))
    results = tmp_path / "results"
    assert run_stages(["meta"], quick=True, data_dir=data_copy, results_dir=results) == {
        "meta": "ran"}
    assert seen == {"k": 11, "m": 10, "drawn": True, "saved": "meta_fit.npz"}
    values = json.loads((results / "values.json").read_text())["meta"]
    assert values["imputations"] == 10 and values["n_clusters_increase"] == 2
    assert values["standin_generator_versions"] == ["3"]
    assert values["standins_reproduce_table3_by_construction"] is True
    assert (results / "tables/table3.tsv").exists() and (results / "maps/z.nii.gz").exists()
    assert not (results / ".staging").exists()


# --------------------------------------------------------------------------------------------
# the real stage: the session's quick run of the pipeline (fixture ``quick_results`` of
# conftest.py: ``manuscript.test_overrides``, grey matter within 20 mm of the published peaks,
# 3 imputations), shared with the manuscript tests

# Tolerances of the golden files of the quick run: cluster counts, directions, labels and
# coordinates exact; floats to what the engine's numerics (BLAS, optimiser stopping) may move
# on another machine.
GOLDEN_TOLERANCES = {
    "sdm_z": {"atol": 1e-3},
    "p_voxel": {"rtol": 1e-2, "atol": 1e-9},
    "hedges_g": {"atol": 1e-4},
    "i2": {"atol": 1e-2},  # percent
    "egger_p": {"atol": 1e-3},
    "reproduced_z_at_published_peak": {"atol": 1e-3},
    "reproduced_g_at_published_peak": {"atol": 1e-4},
    "reproduced_i2_at_published_peak": {"atol": 1e-2},
    "reproduced_egger_p_at_published_peak": {"atol": 1e-3},
}


@pytest.fixture(scope="module")
def quick_run(quick_results):
    """The results folder of the session's quick run, which ran stage ``meta``."""
    results, ready, _ = quick_results
    assert "meta" in ready
    return results


def test_stage_quick_golden(quick_run, data_regression, dataframe_regression):
    """Golden Table 3 of the quick run on data/ (SIMULATED stand-ins for 10 of 11 studies):
    clusters (exact) and the reproduced values at the published peaks (toleranced).

    Regenerate with ``--force-regen`` when data/peaks.tsv, the engine or the quick run's
    settings change on purpose.
    """
    results = quick_run
    t3 = pd.read_csv(results / "tables/table3.tsv", sep="\t")
    assert list(t3.columns) == stage.TABLE3_COLUMNS
    exact = {
        "n_increase": int((t3["direction"] == INCREASE).sum()),
        "n_decrease": int((t3["direction"] == DECREASE).sum()),
        "clusters": [[r.direction, r.aal_label, int(r.cluster_voxels), int(r.x), int(r.y),
                      int(r.z)] for r in t3.itertuples()],
    }
    data_regression.check(exact)
    cmp_ = pd.read_csv(results / "tables/table3_vs_published.tsv", sep="\t")
    golden = cmp_[["published_x", "published_y", "published_z",
                   "reproduced_z_at_published_peak", "reproduced_g_at_published_peak",
                   "reproduced_i2_at_published_peak", "reproduced_egger_p_at_published_peak"]]
    if len(t3):
        floats = t3[["sdm_z", "p_voxel", "hedges_g", "i2", "egger_p"]]
        golden = pd.concat([golden, floats.add_prefix("t3_")], axis=1)
    tol = dict(GOLDEN_TOLERANCES)
    tol.update({f"t3_{k}": v for k, v in GOLDEN_TOLERANCES.items()})
    dataframe_regression.check(golden.reset_index(drop=True), default_tolerance={"atol": 0},
                               tolerances=tol)


def test_stage_quick_outputs_and_values(quick_run):
    from conftest import quick_config

    results = quick_run
    values = json.loads((results / "values.json").read_text())["meta"]
    t3 = pd.read_csv(results / "tables/table3.tsv", sep="\t")
    assert values["n_clusters_increase"] == int((t3["direction"] == INCREASE).sum())
    assert values["n_clusters_decrease"] == int((t3["direction"] == DECREASE).sum())
    assert values["imputations"] == quick_config()["sdm"]["imputations_quick"]
    assert values["inputs_real"] == 1
    for name in stage.MAP_NAMES + ("z_thresholded", "clusters"):
        assert (results / "maps" / f"{name}.nii.gz").exists()
    assert (results / "figures/figure2.png").exists() and (results / "figures/figure2.svg").exists()
    for c in range(1, len(t3) + 1):
        assert (results / f"figures/funnel_{c}.png").exists()


def test_stage_is_deterministic(quick_run, tmp_path):
    """A second run of the stage, from scratch into another folder, gives the session's quick
    run's tables, maps, figures and intermediate files byte for byte, and the same values."""
    from conftest import quick_config

    from analysis.pipeline import run_stages

    first, second = quick_run, tmp_path / "results"
    assert run_stages(["meta"], quick=True, force=True, config=quick_config(),
                      data_dir=REPO_ROOT / "data", results_dir=second) == {"meta": "ran"}
    files = sorted(json.loads((first / ".stages/meta.json").read_text())["outputs"])
    assert files == sorted(json.loads((second / ".stages/meta.json").read_text())["outputs"])
    assert any(f.endswith(".tsv") for f in files) and any(f.endswith(".png") for f in files)
    assert any(f.endswith(".nii.gz") for f in files)
    assert [rel for rel in files if sha256_file(first / rel) != sha256_file(second / rel)] == []
    meta_values = [json.loads((r / "values.json").read_text())["meta"] for r in (first, second)]
    assert meta_values[0] == meta_values[1]


def test_forest_plots_at_the_cluster_peaks(synthetic_report):
    """One forest plot per cluster peak, the studies with simulated stand-in peaks marked, and
    the extract's table at every peak (SIMULATED result: the machinery, not a finding)."""
    from analysis.figures.forest import STANDIN_MARK
    from analysis.sdm.diagnostics.voxel import EXACT

    out, _, _, ds = synthetic_report
    for c in range(1, 5):
        assert (out / f"figures/forest_{c}.png").stat().st_size > 1000
    assert not (out / "figures/forest_5.png").exists()
    svg = (out / "figures/forests.svg").read_text()
    assert "Simulated stand-in inputs" in svg
    assert f"Bird2010{STANDIN_MARK}" in svg                 # a simulated study: marked
    assert f"Moriguchi2007{STANDIN_MARK}" not in svg        # the real one: not marked
    assert "Moriguchi2007" in svg
    fp = pd.read_csv(out / "tables/forest_peaks.tsv", sep="\t")
    assert list(fp.columns) == stage.FOREST_COLUMNS
    assert fp.groupby("cluster")["row"].apply(list).map(
        lambda r: r == ["study"] * len(ds.studies) + ["pooled"]).all()
    studies = fp[fp["row"] == "study"]
    # study 0 of the synthetic result is the same in every imputation: exact; the others vary
    first = studies[studies["study"] == ds.studies["study"].iloc[0]]
    assert (first["status"] == EXACT).all() and (first["g_sd"] == 0).all()
    assert (studies[studies["study"] != ds.studies["study"].iloc[0]]["status"] != EXACT).all()
    t3 = pd.read_csv(out / "tables/table3.tsv", sep="\t")
    pooled = fp[fp["row"] == "pooled"]
    assert np.array_equal(pooled[["x", "y", "z_mm"]].to_numpy(), t3[["x", "y", "z"]].to_numpy())


def test_funnel_study_points_and_plot():
    from analysis.figures.funnel import funnel_plot, study_points
    from analysis.sdm.statistics.hedges import g_variance

    rng = np.random.default_rng(1)
    g = rng.normal(0.3, 0.2, (5, 3))
    g[:, 1] = 0.7  # a study with a reported (known) effect
    n1, n2 = np.array([10, 20, 30]), np.array([12, np.nan, 25])
    pts = study_points(g, n1, n2)
    assert pts["known"].tolist() == [False, True, False]
    assert np.allclose(pts["se"], np.sqrt(g_variance(g, n1, n2)))
    assert np.allclose(pts["g_mean"], g.mean(0))
    with pytest.raises(ValueError, match="studies"):
        study_points(g, n1[:2], n2[:2])
    fig = funnel_plot(g, n1, n2, pooled_g=0.3, egger_p=0.42, title="peak")
    ax = fig.axes[0]
    assert "Egger test p = 0.420" in ax.get_title()
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # SE axis inverted


@pytest.mark.slow
def test_engine_and_report_recover_planted_effects(tmp_path, data_copy):
    """End to end on a SIMULATED meta-analysis with known truth: 20 studies with effects
    g = +/-0.8 planted at the four published peaks (analysis.simulate); engine (10
    imputations) + Table 3. Each planted effect must be the peak region of a cluster of the
    right direction within 10 mm (observed when written: 2.8, 4.9, 9.2 and 8.7 mm), and the two
    largest clusters of each direction must be the planted ones."""
    from analysis.config import load_config
    from analysis.sdm.rng import derive_rng
    from analysis.simulate import published_effects, simulate_meta_dataset

    cfg = load_config()
    eff = published_effects(data_copy)
    eff["g"] = np.sign(eff["g"]) * 0.8
    studies, peaks = simulate_meta_dataset(20, eff, derive_rng(cfg["seed"], "test/recovery"),
                                           cfg=cfg)
    ds = SDMDataset(studies, peaks)
    res = stage.fit_mean_model(ds, cfg, 10,
                               int(derive_rng(cfg["seed"], "test/fit").integers(2**31 - 1)))

    def out(rel):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    stage.report(res, ds, stage.load_published_table3(data_copy), out, config=cfg,
                 provenance=stage.input_provenance(ds), imputations=10, figures=False)
    cmp_ = pd.read_csv(tmp_path / "tables/table3_vs_published.tsv", sep="\t")
    assert (cmp_["distance_mm"] <= 10).all(), cmp_["distance_mm"].tolist()
    t3 = pd.read_csv(tmp_path / "tables/table3.tsv", sep="\t")
    for d in (INCREASE, DECREASE):
        top2 = t3[t3["direction"] == d].head(2)[["x", "y", "z"]].to_numpy(float)
        pub = cmp_.loc[cmp_["direction"] == d, ["published_x", "published_y", "published_z"]]
        dist = np.linalg.norm(top2[:, None, :] - pub.to_numpy(float)[None], axis=2)
        assert (dist.min(axis=1) <= 10).all()
