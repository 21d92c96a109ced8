"""Whole-pipeline null calibration of the FWE correction.

Simulated null peaks -> SDM pre-processing -> MetaNSUE imputation -> PSI permutation test ->
family-wise error hit or not (:mod:`analysis.bench.calibration`; the full-size run is
``python -m analysis bench --only null-calibration``). The permutation step alone is
calibrated in ``tests/test_permutation.py``.
"""

from __future__ import annotations

import pytest

from analysis.bench.calibration import expected_fwe_rate, null_calibration


def test_expected_fwe_rate_counts_the_identity():
    """p = rank / N with the identity among the N maxima: p < 0.05 needs rank <= ceil(0.05N)-1."""
    assert expected_fwe_rate(100) == pytest.approx((0.04, 1 - 0.96**2))
    assert expected_fwe_rate(50)[0] == pytest.approx(0.04)   # ceil(2.5) - 1 = 2 ranks of 50
    assert expected_fwe_rate(20) == (0.0, 0.0)                # smallest p is 1/20 = 0.05
    assert expected_fwe_rate(1000)[0] == pytest.approx(0.049)


@pytest.fixture(scope="module")
def null_run():
    """100 whole-pipeline null meta-analyses (3 imputations, 50 permutations, 20 mm ROI; about
    11 s each on 2 shared cores, a third of it the two sets of subject images) with a separate TFCE
    null from 20 mm subject images (``sdm.psi.tfce_subject_fwhm_mm: 20``, the kernel FWHM);
    the max-z null is SDM-PSI's default (6 mm images), bit for bit. Fewer
    simulations lack the power to tell 20 % from 8 % (40 did not). With SDM-PSI's shared 6 mm
    null (the default) the same simulations give voxel-FWE 15 % (95 % CI 8.6-23.5 %) and
    TFCE-FWE 22 % (14.3-31.4 %): anti-conservative, because the observed maps, recreated from
    peaks with 20 mm kernels and imputed with 20 mm noise, are smoother than the permuted maps
    and TFCE rewards extent (:mod:`analysis.sdm.inference.permutation`). With the separate 20 mm TFCE
    null: voxel-FWE 15 % (unchanged; 99 % CI 7.2-26.3 %), TFCE-FWE 6 % (99 % CI 1.6-14.9 %).
    Expected 7.8 %."""
    return null_calibration(simulations=100, permutations=50, imputations=3, roi_radius_mm=20,
                            psi_overrides={"tfce_subject_fwhm_mm": 20.0}, n_jobs=2,
                            progress=False)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the fixture: 19 minutes measured on 2 shared cores
@pytest.mark.parametrize("stat", ["voxel", "tfce"])
def test_whole_pipeline_fwe_false_positive_rate_under_the_null(null_run, stat):
    """With no planted effect, P(any voxel with p_FWE < 0.05, either direction) over simulated
    meta-analyses of 11 studies must be compatible (99 % Clopper-Pearson interval) with the rate
    expected under exchangeability; an anti-conservative (or overly conservative) pipeline
    fails."""
    from scipy.stats import binomtest

    m, table = null_run["metrics"], null_run["per_simulation"]
    assert len(table) == m["simulations"] == 100
    assert m["subject_fwhm_mm"] == 6.0 and m["tfce_subject_fwhm_mm"] == 20.0
    expected = m["expected_rate"]
    hits = int(table[f"hit_{stat}"].sum())
    ci = binomtest(hits, len(table)).proportion_ci(0.99, method="exact")
    pos, neg = int(table[f"hit_{stat}_pos"].sum()), int(table[f"hit_{stat}_neg"].sum())
    msg = (f"{stat}-FWE false-positive rate {hits / len(table):.3f} (99% CI {ci.low:.3f}-"
           f"{ci.high:.3f}; increases {pos}, decreases {neg} of {len(table)}), expected "
           f"{expected:.3f}")
    print(msg)
    assert ci.low <= expected <= ci.high, msg
