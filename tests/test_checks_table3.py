"""Internal consistency of the published Table 3 (analysis.checks.table3)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.checks import table3 as T
from analysis.config import load_config
from analysis.sdm.errors import DataError
from analysis.stages import params

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def cfg():
    """The configuration's threshold, extent and kernel, as the pipeline passes them."""
    return params.table3_check_params(load_config())


@pytest.fixture(scope="module")
def published():
    return T.load_published_table3(DATA)


@pytest.fixture(scope="module")
def studies():
    from analysis.data_tables import load_studies

    return load_studies(DATA)


@pytest.fixture(scope="module")
def checks(published, studies, cfg):
    return T.table3_consistency(published, studies, **cfg)


def _verdict(checks, cluster, quantity) -> str:
    sel = checks[(checks["cluster"] == cluster) & (checks["quantity"] == quantity)]
    assert len(sel) == 1, (cluster, quantity)
    return sel["verdict"].iloc[0]


QUANTITIES = ["p_voxel", "significance", "sign", "peak_coordinates", "hedges_g",
              "standard_error", "standard_error_complete_data", "i2", "egger_p",
              "cluster_voxels", "cluster_extent_single_peak"]


# ------------------------------------------------------------------ the published Table 3


def test_shape_and_vocabulary(checks):
    assert list(checks.columns) == T.CHECK_COLUMNS
    assert len(checks) == 4 * len(QUANTITIES)
    assert checks.groupby("cluster")["quantity"].apply(list).tolist() == [QUANTITIES] * 4
    assert set(checks["verdict"]) <= set(T.VERDICTS)
    assert checks["reason"].str.len().gt(0).all() and not checks["reason"].str.contains("\n").any()
    assert T.verdict_counts(checks) == {"consistent": 40, "inconsistent": 0,
                                        "not checkable": 4}


def test_sample_arithmetic(studies):
    # 11 studies, 296 patients, 229 controls (Results l. 215-218). Each study's smallest
    # variance of g is 1/n1 + 1/n2, its weight n1 n2 / (n1 + n2): Bird 9, Decety 6.316,
    # Fan 11.2, Fujino 5.5, Gu 7.241, Hadjikhani 16.657, Horan 10.5, Moriguchi 7.467,
    # Ruetgen 22.240, Vistoli 11.813, Xu 17.986 -> sum 125.919; SE_FE = 1/sqrt(125.919) = 0.0891.
    s = T.study_samples(studies)
    assert (len(s), s["n1"].sum(), s["n2"].sum()) == (11, 296, 229)
    v = T.within_variances(s)
    assert np.sum(1 / v) == pytest.approx(125.9187, abs=1e-4)
    assert T.fixed_effect_se(v) == pytest.approx(0.089116, abs=1e-6)
    # the smallest |g| significant at p < 0.0025: 2.807 x 0.0891 = 0.2502
    assert T.z_threshold(0.0025) == pytest.approx(2.80703, abs=1e-5)
    assert T.z_threshold(0.0025) * T.fixed_effect_se(v) == pytest.approx(0.25015, abs=1e-5)
    # Higgins & Thompson's typical variance; tau2 = 0 for I2 = 0 leaves the FE SE
    assert T.typical_within_variance(v) == pytest.approx(0.089143, abs=1e-6)
    assert T.random_effects_se(v, T.tau2_from_i2(0.0, v)) == T.fixed_effect_se(v)
    with pytest.raises(ValueError, match="I²"):
        T.tau2_from_i2(100.0, v)


def test_p_from_z_needs_the_float32_output_for_one_row(published, studies, cfg):
    # statcheck on the printed z (3 decimals, |z| +/- 0.0005) and p (9 decimals):
    #   ACC  3.510: [2.2363e-4, 2.2448e-4] holds 2.24233e-4
    #   MTG  3.699: [1.0801e-4, 1.0844e-4] holds 1.08063e-4
    #   CE   3.797: [7.3081e-5, 7.3377e-5] holds 7.3254e-5
    #   MOG  4.246: [1.08568e-5, 1.09053e-5] does NOT hold 1.0848e-5 (it needs |z| = 4.24668)
    plain = T.table3_consistency(published, studies, **cfg, float32_output=False)
    assert [_verdict(plain, c, "p_voxel") for c in (1, 2, 3, 4)] == [
        "consistent", "consistent", "consistent", "inconsistent"]
    assert "same significance at p < 0.0025" in plain["reason"].iloc[3 * len(QUANTITIES)]
    # SDM-PSI writes 1 - p as float32 (uncorrp maps); near 1 its step is 2^-24, so p is a multiple
    # of 2^-24: 1 - float32(1 - 1.08568e-5) = 182 x 2^-24 = 1.0848e-5, the printed value.
    assert (1 - float(np.float32(1 - stats.norm.sf(4.2465)))) == pytest.approx(1.0848e-5,
                                                                              abs=5e-10)
    full = T.table3_consistency(published, studies, **cfg)
    assert [_verdict(full, c, "p_voxel") for c in (1, 2, 3, 4)] == ["consistent"] * 4


def test_the_printed_p_values_are_float32_steps(published):
    # p / 2^-24 = 3762.005, 1812.996, 1228.998, 181.999: within the +/- 0.0084 that 9 printed
    # decimals allow (0.5e-9 / 2^-24). For continuous p the chance of four such values is
    # (2 x 0.0084)^4 ~ 8e-8.
    k = T.float32_steps(pd.to_numeric(published["p_voxel"]).to_numpy())
    np.testing.assert_allclose(k, [3762, 1813, 1229, 182], atol=0.0084)


def test_the_other_checks_pass_on_the_published_rows(checks):
    for c in (1, 2, 3, 4):
        # p < 0.0025 and |z| >= 2.807 (3.510 ... 4.246); signs + + - -; coordinates even mm
        for q in ("significance", "sign", "peak_coordinates"):
            assert _verdict(checks, c, q) == "consistent", (c, q)
        # |g| = 0.39 ... 0.49 >= 0.2502; SE = g/z = 0.1118, 0.1120, 0.1228, 0.1155 >= 0.0891
        assert _verdict(checks, c, "hedges_g") == "consistent"
        assert _verdict(checks, c, "standard_error") == "consistent"
        # I2 in %: 0.355, 0.276, 2.348, 0 < 25 (Results l. 231); Egger p 0.931 ... 0.996 > 0.05
        assert _verdict(checks, c, "i2") == "consistent"
        assert _verdict(checks, c, "egger_p") == "consistent"
        # 69, 17, 108, 52 voxels >= 11 (k > 10)
        assert _verdict(checks, c, "cluster_voxels") == "consistent"
        # no upper bound on the SE: imputation variance unknown
        assert _verdict(checks, c, "standard_error_complete_data") == "not checkable"
    se = checks[checks["quantity"] == "standard_error"]["recomputed"].to_numpy()
    np.testing.assert_allclose(se, [0.392553 / 3.510, 0.414338 / 3.699, 0.466374 / 3.797,
                                    0.490509 / 4.246])
    # complete-data random-effects SE at the printed I2 is ~0.089-0.090; the implied variances
    # are 1.57-1.85 times larger (Rubin's between-imputation variance, size unknown)
    cd = checks[checks["quantity"] == "standard_error_complete_data"]["lower"].to_numpy()
    np.testing.assert_allclose(cd, [0.08931, 0.08927, 0.09041, 0.08912], atol=1e-5)
    assert ((se / cd) ** 2 > 1.5).all() and ((se / cd) ** 2 < 1.9).all()


def test_extents_are_within_what_one_isotropic_peak_gives(checks):
    # sigma = 20 / sqrt(8 ln 2) = 8.493 mm; radius where |z| exp(-d²/2 sigma²) = 2.807:
    #   ACC 3.510 -> 5.68 mm, MTG 3.699 -> 6.31, CE 3.797 -> 6.60, MOG 4.246 -> 7.73 mm,
    # i.e. about 4/3 pi r³ / 8 = 96, 132, 150, 242 voxels (grid counts 93, 123, 147, 251),
    # all above the printed 69, 17, 108, 52.
    sel = checks[checks["quantity"] == "cluster_extent_single_peak"]
    assert sel["upper"].tolist() == [93, 123, 147, 251]
    assert (sel["verdict"] == "consistent").all()


# ---------------------------------------------------------------- single-peak extent counts


def test_single_peak_extent_geometry(cfg):
    from analysis.sdm.maps.space import grid_affine

    aff = grid_affine()
    sigma = 20 / math.sqrt(8 * math.log(2))
    zc = 2.807
    # radius exactly 2 mm (one voxel): the centre and its 6 face neighbours
    z_peak = zc * math.exp(4 / (2 * sigma ** 2))
    assert T.single_peak_extent(z_peak, zc, (0, 48, 0), 20, aff) == 7
    assert T.single_peak_extent(zc, zc, (0, 48, 0), 20, aff) == 1
    assert T.single_peak_extent(2.0, zc, (0, 48, 0), 20, aff) == 0
    # the count approaches the sphere's volume
    big = T.single_peak_extent(10.0, zc, (0, 0, 0), 20, aff)
    r = sigma * math.sqrt(2 * math.log(10 / zc))
    assert big == pytest.approx(4 / 3 * math.pi * r ** 3 / 8, rel=0.03)


def test_kernel_extent_matches_the_closed_form_on_an_unmasked_box(cfg):
    import nibabel as nib

    from analysis.sdm.maps.kernel import IsotropicKernel
    from analysis.sdm.maps.space import MaskSpace, grid_affine, grid_shape

    aff = grid_affine()
    box = np.zeros(grid_shape(), dtype=np.uint8)
    box[30:62, 60:100, 20:50] = 1  # holds every voxel within 20 mm of (0, 48, 0)
    kern = IsotropicKernel(MaskSpace(nib.Nifti1Image(box, aff)), 20.0)
    for z in (3.510, 3.699, 4.246):
        assert T.kernel_single_peak_extent(z, 2.807, (0, 48, 0), kern) == \
            T.single_peak_extent(z, 2.807, (0, 48, 0), 20, aff)
    assert T.kernel_single_peak_extent(2.0, 2.807, (0, 48, 0), kern) == 0


def test_anisotropic_kernel_in_the_grey_matter_mask(published, studies, cfg, mirror):
    # The engine's anisotropic kernel (SDM-PSI's is wider than the isotropic Gaussian in grey
    # matter, as its bound maps of Enge et al. 2021 show) gives larger single-peak blobs; the
    # printed extents stay within them.
    from analysis.grid import gm_mask
    from analysis.sdm.maps.kernel import make_kernel
    from analysis.sdm.maps.space import MaskSpace

    kern = make_kernel(MaskSpace(gm_mask()), fwhm=20.0, anisotropy=1.0)
    res = T.table3_consistency(published, studies, **cfg, kernel=kern)
    sel = res[res["quantity"] == "cluster_extent_single_peak"]
    assert (sel["verdict"] == "consistent").all()
    assert (sel["upper"].to_numpy() > [69, 17, 108, 52]).all()
    assert sel["reason"].str.contains("given kernel").all()


# ------------------------------------------------------------- synthetic inconsistent rows


def _table(**changes) -> pd.DataFrame:
    """One printed row (the ACC cluster) with some cells replaced (as printed text)."""
    row = {"direction": "Patients>Controls", "region": "synthetic", "aal_label": "x",
           "cluster_voxels": "69", "x": "0", "y": "48", "z": "0", "sdm_z": "3.510",
           "p_voxel": "0.000224233", "hedges_g": "0.392553", "i2": "0.355083", "egger_p": "0.931"}
    row.update(changes)
    return pd.DataFrame([row], index=pd.RangeIndex(1, 2), dtype=object)


@pytest.mark.parametrize("changes, quantity, verdict", [
    # p from z: 1 - Phi(3.5095) = 2.2448e-4 < 3.0e-4
    ({"p_voxel": "0.000300000"}, "p_voxel", "inconsistent"),
    # p = 0.003 >= 0.0025 and |z| = 2.75 < 2.807 (p itself matches z: 1 - Phi(2.75) = 0.00298)
    ({"p_voxel": "0.002979763", "sdm_z": "2.750"}, "significance", "inconsistent"),
    # Patients>Controls with a negative z and g
    ({"sdm_z": "-3.510", "hedges_g": "-0.392553"}, "sign", "inconsistent"),
    # odd millimetres are no voxel centre of the 2 mm grid
    ({"x": "1"}, "peak_coordinates", "inconsistent"),
    # |g| = 0.2 < 0.2502 cannot reach p < 0.0025 with 296 + 229 subjects
    ({"hedges_g": "0.200000"}, "hedges_g", "inconsistent"),
    # SE = 0.3 / 4.0 = 0.075 < 0.0891 (|z| may be at most 0.3 / 0.0891 = 3.37); g itself is fine
    ({"hedges_g": "0.300000", "sdm_z": "4.000", "p_voxel": "0.000031671"}, "standard_error",
     "inconsistent"),
    # I2 30 % contradicts "all below 25%"; 120 % is impossible
    ({"i2": "30"}, "i2", "inconsistent"),
    ({"i2": "120"}, "i2", "inconsistent"),
    # Egger p 0.03 contradicts "greater than 0.05"; 1.2 is no probability
    ({"egger_p": "0.030"}, "egger_p", "inconsistent"),
    ({"egger_p": "1.2"}, "egger_p", "inconsistent"),
    # 8 voxels contradict k > 10
    ({"cluster_voxels": "8"}, "cluster_voxels", "inconsistent"),
    # a peak below 2.807 cannot head any supra-threshold voxel
    ({"sdm_z": "2.500", "p_voxel": "0.006209665"}, "cluster_extent_single_peak", "inconsistent"),
    # 500 voxels > the 93 of one peak: several peaks must contribute -> not checkable
    ({"cluster_voxels": "500"}, "cluster_extent_single_peak", "not checkable"),
    # blanks are not checkable
    ({"i2": ""}, "i2", "not checkable"),
    ({"egger_p": ""}, "egger_p", "not checkable"),
])
def test_each_check_can_fail(changes, quantity, verdict, studies, cfg):
    res = T.table3_consistency(_table(**changes), studies, **cfg)
    assert _verdict(res, 1, quantity) == verdict
    base = T.table3_consistency(_table(), studies, **cfg)
    assert _verdict(base, 1, quantity) == "consistent"


def test_numeric_input_uses_table3_decimals(published, studies, cfg):
    num = published.copy()
    for c in T.TABLE3_COLUMNS[3:]:
        num[c] = pd.to_numeric(num[c])
    a = T.table3_consistency(num, studies, **cfg)
    b = T.table3_consistency(published, studies, **cfg)
    assert a["verdict"].tolist() == b["verdict"].tolist()
    assert a.loc[0, "printed"] == "0.000224233"


def test_raw_studies_table_is_accepted(published, cfg):
    from analysis.sdm.inputs.io import read_tsv_text

    raw = read_tsv_text(DATA / "studies.tsv")
    res = T.table3_consistency(published, raw, **cfg)
    assert T.verdict_counts(res)["inconsistent"] == 0


# ------------------------------------------------------------------------------- errors


def test_errors_name_file_row_and_field(published, studies, cfg, tmp_path):
    bad = published.copy()
    bad.loc[2, "direction"] = "Patients=Controls"
    with pytest.raises(DataError, match=r"published_table3.tsv, row 2, field 'direction'"):
        T.table3_consistency(bad, studies, **cfg)
    bad = published.copy()
    bad.loc[3, "sdm_z"] = "n/a"
    with pytest.raises(DataError, match=r"published_table3.tsv, row 3, field 'sdm_z'"):
        T.table3_consistency(bad, studies, **cfg)
    with pytest.raises(DataError, match=r"field 'i2'"):
        T.table3_consistency(published.drop(columns="i2"), studies, **cfg)
    s = studies.copy()
    s["n2"] = s["n2"].astype(object)
    s.loc[s.index[4], "n2"] = "x"
    with pytest.raises(DataError, match=r"studies.tsv, row 5, field 'n2'.*Gu2015"):
        T.table3_consistency(published, s, **cfg)
    (tmp_path / "published_table3.tsv").write_text(
        (DATA / "published_table3.tsv").read_text().replace("0.931", "high"))
    with pytest.raises(DataError, match=r"row 1, field 'egger_p'"):
        T.load_published_table3(tmp_path)
