"""SDM-PSI's extract: per-study values and the pooled model at one voxel.

Two references: SDM-PSI's own extract file of Li et al. (2023) (mirrored dataset
``validation/li2023_sdm_extract``: 135 one-sample studies x 50 imputations at MNI (34, 4, 52), a
meta-regression "intercept + Adult_minus_ChildOlder" with the hypothesis on the slope; the
covariate is +1 for study labels containing ``_adults``, -1 otherwise), and the engine's own
maps on a small simulated fit (simulated peaks, labelled so; they test the machinery only).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from analysis.sdm.diagnostics.voxel import (
    CENSORED,
    EXACT,
    FRAME_COLUMNS,
    pool_voxel,
    read_sdm_extract,
)
from analysis.sdm.errors import DataError
from analysis.sdm.estimator import SDMPSI
from analysis.sdm.statistics.random_effects import q_to_z

LI_FILE = "validation/li2023_sdm_extract/extract_34_4_52.txt"


@pytest.fixture(scope="module")
def li(mirror):
    from analysis.fetch import fetch_file

    return read_sdm_extract(fetch_file(LI_FILE, download=False))


def _li_design(studies):
    x = np.array([1.0 if "_adults" in s else -1.0 for s in studies])
    return np.c_[np.ones(len(x)), x - x.mean()]  # centred, as SDMPSI's design_matrix


def test_reader_reads_li_header_and_studies(li):
    assert li.model_name == "MyLinearModel"
    assert li.y.shape == (50, 135) and li.v.shape == li.y.shape
    assert li.studies[0] == "Andrews-Hanna2011_children"
    assert li.header["g"] == -0.003211 and li.header["q"] == 114.167793
    assert li.header["corrp_voxel_neg"] == -0.077
    assert int((_li_design(li.studies)[:, 1] > 0).sum()) == 89


def test_pooled_numbers_from_li_imputations_match_its_header(li):
    """Every pooled number of SDM-PSI's header, recomputed from its own per-imputation values.

    Tolerances: the file prints 6 decimals, so a number we compute exactly is within 5e-7 of
    it. z and Q are computed by SDM-PSI from its unrounded effects and variances: z to 1e-4
    (measured 9e-7), Q to 1e-4 relative (measured 4.5e-5), and Q's z, whose slope in Q is
    about 0.07 here, to 1e-3 (measured 3.5e-4).
    """
    p = pool_voxel(li.y, li.v, _li_design(li.studies), [0, 1], heterogeneity="dl")
    h = li.header
    for key in ("beta0", "g", "var", "tau2", "h2"):
        assert p[key] == pytest.approx(h[key], abs=5e-7), key
    assert p["i2"] == pytest.approx(h["i2"], abs=5e-6)  # percent, 6 decimals
    assert p["z"] == pytest.approx(h["z"], abs=1e-4)
    assert p["q"] == pytest.approx(h["q"], rel=1e-4)
    assert p["q_z"] == pytest.approx(h["q_z"], abs=1e-3)
    # the layout's p conventions: uncorrp = 1 - p of the positive tail = Phi(z)
    assert 1 - p["p_pos"] == pytest.approx(h["uncorrp"], abs=1e-5)
    assert 1 - p["p_neg"] == pytest.approx(h["uncorrp_neg"], abs=1e-5)
    # and SDM-PSI's Q z is the normal quantile of Q's chi-square p (df = k - 2), exactly
    assert q_to_z(h["q"], 133) == pytest.approx(h["q_z"], abs=5e-6)
    # REML (SDM-PSI's AccurateHeterogeneity) gives other numbers: the comparison can fail
    r = pool_voxel(li.y, li.v, _li_design(li.studies), [0, 1], heterogeneity="reml")
    assert abs(r["tau2"] - h["tau2"]) > 1e-4


def test_li_weights_and_rows(li):
    p = pool_voxel(li.y, li.v, _li_design(li.studies), [0, 1])
    assert p["weight_percent"].shape == (135,)
    assert p["weight_percent"].sum() == pytest.approx(100.0)
    # larger variance, smaller weight (same tau2 for all studies of an imputation)
    from scipy.stats import spearmanr

    assert spearmanr(li.v.mean(0), p["weight_percent"]).statistic < -0.99


# --------------------------------------------------------------------------------------------
# the engine's result


@pytest.fixture(scope="module")
def fitted():
    from test_sdm_estimator import _box_mask, _simulated_dataset

    est = SDMPSI(anisotropy=0.0, imputations=8, seed=11)
    return est.fit(_simulated_dataset(), mask_img=_box_mask())


def test_extract_equals_the_result_maps(fitted):
    """At the peak and at other voxels, extract's pooled model is the result's maps."""
    res = fitted
    peak = int(np.argmax(res.maps["z"]))
    far = int(np.argmin(res.maps["z"]))
    for v in (peak, far, res.space.n_voxels // 3):
        ex = res.extract(res.space.xyz[v])
        assert ex.voxel == v
        for key in ("z", "g", "tau2", "var", "h2"):
            assert ex.pooled[key] == pytest.approx(float(res.maps[key][v]), rel=1e-5,
                                                   abs=1e-6), key
        assert ex.pooled["i2"] == pytest.approx(float(res.maps["i2"][v]), abs=1e-4)
        assert ex.pooled["q"] == pytest.approx(float(res.maps["q"][v]), rel=1e-4, abs=1e-5)
        assert ex.pooled["p"] == pytest.approx(float(res.maps["p"][v]), rel=1e-4, abs=1e-7)
        assert ex.studies["weight_percent"].sum() == pytest.approx(100.0)
    # the peak is driven by the studies reporting a peak there: some exact, some censored
    ex = res.extract(res.space.xyz[peak])
    assert set(ex.studies["status"]) <= {EXACT, CENSORED}
    exact = ex.studies["status"] == EXACT
    assert np.all(ex.studies.loc[exact, "g_sd"] == 0)
    assert np.all(ex.studies.loc[~exact, "g_sd"] > 0)
    lo, up = res.bounds.lower[:, peak], res.bounds.upper[:, peak]
    assert np.array_equal(exact.to_numpy(), np.abs(up - lo) < 1e-6)
    g = ex.studies["g"].to_numpy()
    assert np.all((g >= lo - 1e-6) & (g <= up + 1e-6))


def test_extract_rounds_to_the_nearest_voxel_and_refuses_outside(fitted):
    res = fitted
    x, y, z = res.space.xyz[10]
    assert res.extract((x + 0.6, y - 0.4, z + 0.9)).voxel == 10
    with pytest.raises(ValueError, match=r"outside the analysis mask; the nearest voxel"):
        res.extract((60, -90, 60))


def test_extract_recreates_imputations_from_the_seed(fitted):
    """Without kept imputations the fit is re-run from its bounds and seed: same numbers."""
    from test_sdm_estimator import _box_mask, _simulated_dataset

    lean = SDMPSI(anisotropy=0.0, imputations=8, seed=11, keep_imputations=False).fit(
        _simulated_dataset(), mask_img=_box_mask())
    assert lean.imputations is None
    v = int(np.argmax(fitted.maps["z"]))
    a, b = fitted.extract(fitted.space.xyz[v]), lean.extract(lean.space.xyz[v])
    np.testing.assert_array_equal(a.imputations, b.imputations)
    assert a.pooled == b.pooled
    other = SDMPSI(anisotropy=0.0, imputations=8, seed=12).fit(_simulated_dataset(),
                                                                mask_img=_box_mask())
    assert not np.array_equal(other.extract(other.space.xyz[v]).imputations, a.imputations)


def test_sdm_text_round_trip(fitted, tmp_path):
    res = fitted
    v = int(np.argmax(res.maps["z"]))
    ex = res.extract(res.space.xyz[v])
    path = tmp_path / "extract.txt"
    path.write_text(ex.to_sdm_text())
    back = read_sdm_extract(path)
    assert back.model_name == "MyLinearModel"
    assert back.studies == list(res.studies)
    np.testing.assert_allclose(back.y, ex.imputations, atol=5e-7)
    np.testing.assert_allclose(back.v, ex.variances, atol=5e-7)
    for key in ("g", "var", "z", "tau2", "h2", "i2", "q", "q_z"):
        assert back.header[key] == pytest.approx(ex.pooled[key], abs=5e-7), key
    assert back.header["uncorrp"] == pytest.approx(norm.cdf(ex.pooled["z"]), abs=5e-7)
    lines = path.read_text().splitlines()
    assert lines[0] == "map\testimate\tvariance\tsdm_z"
    assert lines[9].startswith(f"{res.studies[0]}_I00000\t")
    assert len(lines) == 9 + len(res.studies) * 8
    # corrected values, when present, follow SDM-PSI's sign of the negative tail
    ex.corrected = {"corrp_voxel": 0.25, "corrp_voxel_neg": 0.9}
    back = read_sdm_extract(_write(tmp_path / "c.txt", ex.to_sdm_text()))
    assert back.header["corrp_voxel"] == 0.25 and back.header["corrp_voxel_neg"] == -0.9


def _write(path, text):
    path.write_text(text)
    return path


def test_tidy_table(fitted):
    res = fitted
    ex = res.extract(res.space.xyz[int(np.argmax(res.maps["z"]))])
    df = ex.to_frame()
    assert list(df.columns) == FRAME_COLUMNS
    assert list(df["row"]) == ["study"] * len(res.studies) + ["pooled"]
    pooled = df.iloc[-1]
    assert pooled["z"] == pytest.approx(ex.pooled["z"]) and pooled["k"] == len(res.studies)
    assert pooled["ci_low"] < pooled["g"] < pooled["ci_high"]
    studies = df.iloc[:-1]
    assert (studies["ci_low"] <= studies["g"]).all() and (studies["g"] <= studies["ci_high"]).all()


@pytest.mark.parametrize("text, message", [
    ("nonsense\n", "not an SDM-PSI extract file"),
    ("map\testimate\tvariance\tsdm_z\nHedges' <i>g</i>\t0.1\t0.01\n", "row 1: expected 4"),
    ("map\testimate\tvariance\tsdm_z\nwhat\t0.1\tNA\tNA\n", "row 1, field 'map': unknown row"),
    ("map\testimate\tvariance\tsdm_z\nHedges' <i>g</i>\t0.1\t0.01\t1\n", "header rows missing"),
])
def test_reader_errors_name_the_row(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        read_sdm_extract(_write(tmp_path / "bad.txt", text))


# --------------------------------------------------------------------------------------------
# the command line, on the quick pipeline run (stand-in peaks: machinery, not findings)


def test_command_reproduces_the_stage_s_extract_at_a_cluster_peak(quick_results, tmp_path):
    """``python -m analysis extract`` re-creates the meta stage's fit: at a Table 3 peak its
    numbers are the stage's (Table 3, tables/forest_peaks.tsv)."""
    import pandas as pd

    from analysis.cli import main

    results, ready, _ = quick_results
    if "meta" not in ready:
        pytest.skip("stage meta not in this run")
    t3 = pd.read_csv(results / "tables/table3.tsv", sep="\t")
    if t3.empty:
        pytest.skip("no cluster in this run")
    pk = t3.iloc[0]
    out = tmp_path / "peak.tsv"
    assert main(["extract", str(pk["x"]), str(pk["y"]), str(pk["z"]), "--results",
                 str(results), "--format", "tsv", "--out", str(out)]) == 0
    got = pd.read_csv(out, sep="\t")
    pooled = got[got["row"] == "pooled"].iloc[0]
    assert pooled["z"] == pytest.approx(pk["sdm_z"], abs=1e-5)
    assert pooled["g"] == pytest.approx(pk["hedges_g"], abs=1e-5)
    assert pooled["i2_percent"] == pytest.approx(pk["i2"], abs=1e-3)
    stage = pd.read_csv(results / "tables/forest_peaks.tsv", sep="\t")
    stage = stage[stage["cluster"] == 1].drop(columns="cluster").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, stage, check_exact=False, rtol=1e-5, atol=1e-6)
    sdm = tmp_path / "peak.txt"
    assert main(["extract", str(pk["x"]), str(pk["y"]), str(pk["z"]), "--results",
                 str(results), "--out", str(sdm)]) == 0
    back = read_sdm_extract(sdm)
    assert back.header["z"] == pytest.approx(pk["sdm_z"], abs=1e-5)
    assert back.y.shape[1] == len(stage) - 1


def test_command_errors_are_one_line(quick_results, tmp_path, capsys):
    from analysis.cli import main

    results, ready, _ = quick_results
    if "meta" not in ready:
        pytest.skip("stage meta not in this run")
    assert main(["extract", "90", "90", "90", "--results", str(results)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "outside the analysis mask" in err[0]
    assert main(["extract", "0", "48", "0", "--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "meta.json: not found" in err[0]
