"""Constructed stand-ins (generator v3, analysis.standins): the committed rows and the analysis.

The default tests check the committed ``data/peaks.tsv`` row by row against what is known of
the studies (Table 2 directions, thresholds, sample sizes, Moriguchi et al. 2007's real peaks,
the paper's 143 peaks) and against the construction. The slow test runs the meta stage's
whole-brain analysis (configured seed, ``sdm.imputations`` imputations, the paper's
thresholds) and checks that it reproduces the published Table 3 within the stated tolerances.
Agreement is by construction; it says nothing about the paper.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import simulate as S
from analysis import standins as ST
from analysis.config import load_config
from analysis.data_tables import load_dataset
from analysis.sdm.inputs import coords
from analysis.sdm.rng import derive_rng
from analysis.sdm.statistics.effect_sizes import g_from_t

REPO_DATA = Path(__file__).resolve().parents[1] / "data"

#: Tolerances of the reproduction (whole-brain main analysis against published Table 3).
MAX_DISTANCE_MM = 4.0
SDM_Z_ATOL = 0.25
HEDGES_G_ATOL = 0.05
SIZE_FACTOR = 2.0
MAX_I2_PERCENT = 25.0
MIN_EGGER_P = 0.05


@pytest.fixture(scope="module")
def cfg():
    return load_config()


@pytest.fixture(scope="module")
def committed():
    from analysis.data_tables import load_peaks, load_studies

    return load_peaks(REPO_DATA), load_studies(REPO_DATA)


@pytest.fixture(scope="module")
def v2_counts(committed, cfg):
    """Peaks per study and direction of the simulated stand-ins (generator v2, same seed)."""
    v2 = S.regenerate_peaks(REPO_DATA, cfg=cfg, version="2")
    sim = v2[S.is_simulated(v2["provenance"])]
    assert (sim["provenance"] == f"simulated:v2:seed={cfg['seed']}").all()
    return {(str(s), int(d)): int(n) for (s, d), n in sim.groupby(["study", "sign"]).size().items()}


def test_v3_is_the_default_generator(cfg):
    assert cfg["simulation"]["generator_version"] == ST.VERSION == "3"


def test_committed_rows_are_v3_and_keep_what_is_known(committed, cfg):
    peaks, studies = committed
    assert len(peaks) == 143  # the paper's total (Results l. 220)
    sim = S.is_simulated(peaks["provenance"])
    real = peaks[~sim]
    assert len(real) == 27 and set(real["study"]) == {"Moriguchi2007"}
    assert real["provenance"].str.startswith("original:").all()
    stand = peaks[sim]
    assert (stand["provenance"] == f"simulated:v3:seed={cfg['seed']}").all()
    assert stand["note"].str.startswith(ST.CONSTRUCTED_NOTE).all()
    assert set(stand["study"]) == set(studies["study"]) - {"Moriguchi2007"}
    st = studies.set_index("study")
    for row in stand.itertuples(index=False):
        s = st.loc[row.study]
        assert int(row.sign) in S.reported_directions(s["contrasts_reported"]), row
        assert np.sign(row.t) == row.sign, row
        assert abs(row.t) >= s["t_thr"] - 1e-9, row  # never below the study's threshold


def test_counts_per_study_and_direction_are_v2s(committed, v2_counts):
    """Same counts as the simulated stand-ins: the design stage simulates the same listing."""
    from analysis.checks.design_simulation import design_quotas

    peaks, studies = committed
    stand = peaks[S.is_simulated(peaks["provenance"])]
    assert {(str(s), int(d)): int(n) for (s, d), n in
            stand.groupby(["study", "sign"]).size().items()} == v2_counts
    quotas = design_quotas(studies, peaks)
    assert {(s, d): n for s, q in quotas.items() for d, n in q.items()
            if s != "Moriguchi2007"} == v2_counts


def test_constructed_peaks_sit_where_the_construction_says(committed):
    peaks, studies = committed
    eff = S.published_effects(REPO_DATA)
    plan = ST.construction_table(eff)
    targets = ST.cluster_targets(eff)
    # the targets are the published coordinates, or within 4 mm where the labels differ
    d = np.linalg.norm(targets.to_numpy() - eff[["x", "y", "z"]].to_numpy(float), axis=1)
    assert (d <= MAX_DISTANCE_MM).all()
    st = studies.set_index("study")
    stand = peaks[S.is_simulated(peaks["provenance"])]
    built = stand[~stand["note"].str.contains("filler")]
    assert len(built) == len(plan)
    for c in plan.itertuples(index=False):
        mine = built[(built["study"] == c.study) & (built["sign"] == c.sign)]
        dist = np.linalg.norm(mine[["x_mni", "y_mni", "z_mni"]].to_numpy(float)
                              - [c.x, c.y, c.z], axis=1)
        hit = mine[dist <= 1.5]  # Talairach integers converted back to MNI
        assert len(hit) == 1, c
        s = st.loc[c.study]
        g = float(g_from_t(abs(hit["t"].iloc[0]), s["n1"], s["n2"]))
        assert g >= abs(c.g) - 1e-9 and g <= max(abs(c.g), float(
            g_from_t(s["t_thr"], s["n1"], s["n2"]))) + 0.01, c


def test_fillers_lie_away_from_the_published_peaks(committed):
    peaks, _ = committed
    eff = S.published_effects(REPO_DATA)
    stand = peaks[S.is_simulated(peaks["provenance"])]
    fill = stand[stand["note"].str.contains("filler")]
    assert len(fill) == 116 - len(ST.construction_table(eff))
    xyz = fill[["x_mni", "y_mni", "z_mni"]].to_numpy(float)
    pub = eff[["x", "y", "z"]].to_numpy(float)
    dist = np.sqrt(((xyz[:, None] - pub[None]) ** 2).sum(-1)).min(axis=1)
    assert dist.min() >= ST.EXCLUSION_MM - 1.5  # Talairach rounding


def test_construction_errors():
    eff = pd.DataFrame({"x": [0.0], "y": [48.0], "z": [0.0], "g": [0.39],
                        "label": ["Cingulate_Ant_L"]})
    with pytest.raises(ValueError, match="cluster 2 not in the published table"):
        ST.construction_table(eff, [(2, "A", 0.4, (0, 0, 0))])
    with pytest.raises(ValueError, match="published direction is \\+1"):
        ST.construction_table(eff, [(1, "A", -0.4, (0, 0, 0))])
    ok = ST.construction_table(eff, [(1, "A", -0.4, (10, 0, 0))])  # beside: either sign
    assert ok[["x", "y", "z"]].to_numpy().tolist() == [[10.0, 48.0, 0.0]]


def test_talairach_study_is_converted(committed):
    peaks, _ = committed
    fuj = peaks[peaks["study"] == "Fujino2014"]
    assert set(fuj["space"]) == {"TAL"}
    xyz = fuj[["x", "y", "z"]].to_numpy(float)
    back = coords.tal2mni_lancaster(xyz)
    assert np.allclose(back, fuj[["x_mni", "y_mni", "z_mni"]].to_numpy(float), atol=1e-6)


@pytest.mark.slow
def test_v3_reproduces_table3(committed, cfg, tmp_path):
    """Whole-brain main analysis of data/ (configured seed, imputations and thresholds): the
    four published clusters and no other, each within the tolerances above."""
    from analysis.stages import meta
    from analysis.stages.params import data_checks

    assert cfg["sdm"]["analysis_roi_radius_mm"] is None  # whole mask
    ds = load_dataset(REPO_DATA, **data_checks(cfg))
    n_imp = int(cfg["sdm"]["imputations"])
    seed = int(derive_rng(cfg["seed"], "meta/fit").integers(2**31 - 1))  # the stage's seed
    res = meta.fit_mean_model(ds, cfg, n_imp, seed)
    published = meta.load_published_table3(REPO_DATA)

    def out(rel):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    values = meta.report(res, ds, published, out, config=cfg,
                         provenance=meta.input_provenance(ds), imputations=n_imp,
                         figures=False)
    assert values["standin_generator_versions"] == ["3"]
    assert values["standins_reproduce_table3_by_construction"] is True
    t3 = pd.read_csv(tmp_path / "tables/table3.tsv", sep="\t")
    assert len(t3) == len(published) == 4
    assert sorted(t3["direction"]) == sorted(published["direction"])
    used = set()
    for pub in published.itertuples(index=False):
        cand = t3[t3["direction"] == pub.direction]
        d = np.linalg.norm(cand[["x", "y", "z"]].to_numpy(float) - [pub.x, pub.y, pub.z],
                           axis=1)
        j = int(np.argmin(d))
        rep = cand.iloc[j]
        assert cand.index[j] not in used
        used.add(cand.index[j])
        assert d[j] <= MAX_DISTANCE_MM, (pub.aal_label, d[j])
        assert rep["aal_label"] == pub.aal_label
        assert abs(rep["sdm_z"] - pub.sdm_z) <= SDM_Z_ATOL, (pub.aal_label, rep["sdm_z"])
        assert abs(rep["hedges_g"] - pub.hedges_g) <= HEDGES_G_ATOL, (pub.aal_label,
                                                                     rep["hedges_g"])
        ratio = rep["cluster_voxels"] / pub.cluster_voxels
        assert 1 / SIZE_FACTOR <= ratio <= SIZE_FACTOR, (pub.aal_label, rep["cluster_voxels"])
        assert rep["i2"] < MAX_I2_PERCENT, (pub.aal_label, rep["i2"])
        assert rep["egger_p"] > MIN_EGGER_P, (pub.aal_label, rep["egger_p"])
