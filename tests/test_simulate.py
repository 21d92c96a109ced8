"""The simulator of stand-in peaks and of validation meta-analyses (analysis.simulate)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from analysis import simulate as S
from analysis.config import load_config
from analysis.sdm.maps.space import brain_mask, in_mask, mni_to_ijk
from analysis.sdm.rng import derive_rng
from analysis.sdm.statistics.effect_sizes import t_from_g


@pytest.fixture(scope="module")
def cfg():
    return load_config()


@pytest.fixture(scope="module")
def mask():
    return np.asarray(brain_mask().dataobj) > 0


def _min_pair_distance(xyz: np.ndarray) -> float:
    if len(xyz) < 2:
        return np.inf
    d = np.sqrt(((xyz[:, None] - xyz[None]) ** 2).sum(-1))
    return d[np.triu_indices(len(xyz), 1)].min()


def check_peak_rules(peaks: pd.DataFrame, cfg: dict, directions=(1, -1)) -> None:
    """Direction, distance, per-cluster, in-mask and sign rules of a study's peak list."""
    sim = cfg["simulation"]
    assert set(peaks["sign"]) <= set(directions)
    assert (np.sign(peaks["stat_value"]) == peaks["sign"]).all()
    for _, grp in peaks.groupby("sign"):
        xyz = grp[["x", "y", "z"]].to_numpy(float)
        assert _min_pair_distance(xyz) >= sim["local_max_min_distance_mm"]
    assert peaks.groupby("cluster").size().max() <= sim["local_max_per_cluster"]
    assert in_mask(peaks[["x", "y", "z"]].to_numpy(float)).all()
    assert len(peaks) <= sim["max_peaks_per_study"]


# ------------------------------------------------------------------------------- noise model


def test_smooth_noise_is_standardised_with_the_configured_smoothness(cfg, mask):
    fwhm = cfg["simulation"]["smoothness_fwhm_mm"]
    z = S.smooth_noise(np.random.default_rng(1), fwhm, mask)
    inside = z[mask]
    assert abs(inside.mean()) < 1e-9 and abs(inside.std() - 1) < 1e-9
    # FWHM from the lag-1 autocorrelation of a Gaussian field: rho = exp(-d^2 / (4 sigma^2))
    both = mask[1:] & mask[:-1]
    rho = np.corrcoef(z[1:][both], z[:-1][both])[0, 1]
    d = 2.0  # SDM-PSI grid (analysis.sdm.maps.space.VOXEL_MM)
    fwhm_est = np.sqrt(8 * np.log(2)) * np.sqrt(-d * d / (4 * np.log(rho)))
    assert fwhm_est == pytest.approx(fwhm, rel=0.1)


def test_gaussian_to_t_has_nominal_tail_probability():
    z = np.array([-3.0, -1.0, 0.0, 2.0, 5.0])
    t = S.gaussian_to_t(z, df=20)
    from scipy import stats

    np.testing.assert_allclose(stats.t.sf(t, 20), stats.norm.sf(z), rtol=1e-10)


def test_null_maps_exceed_a_threshold_at_the_nominal_rate(cfg, mask):
    from analysis.sdm.inputs.coords import t_threshold

    rng = np.random.default_rng(7)
    df, p = 30, 0.01
    thr = float(t_threshold(p, df))
    frac = [np.mean(S.simulate_tmap(16, 16, None, rng, cfg)[0][mask] > thr) for _ in range(4)]
    assert 0.004 < np.mean(frac) < 0.02  # smooth maps: few independent resels per map


def test_planted_effect_is_on_the_t_scale(cfg, mask, monkeypatch):
    monkeypatch.setattr(S, "smooth_noise", lambda rng, fwhm, m=None, v=None: np.zeros(mask.shape))
    eff = pd.DataFrame({"x": [0.0], "y": [48.0], "z": [0.0], "g": [0.8]})
    tmap, true_g = S.simulate_tmap(20, 18, eff, np.random.default_rng(0), cfg, tau=0.0)
    i, j, k = np.rint(mni_to_ijk([[0, 48, 0]])[0]).astype(int)
    assert true_g.tolist() == [0.8]
    assert tmap[i, j, k] == pytest.approx(float(t_from_g(0.8, 20, 18)), rel=1e-12)
    # Gaussian profile: half the height at FWHM / 2 from the centre
    half = cfg["simulation"]["effect_fwhm_mm"] / 2
    i2 = np.rint(mni_to_ijk([[0, 48 + half, 0]])[0]).astype(int)
    assert tmap[tuple(i2)] == pytest.approx(tmap[i, j, k] / 2, rel=1e-9)


# ------------------------------------------------------------------------------ peak listing


def test_find_peaks_rules_on_a_map_with_many_maxima(cfg, mask):
    tmap, _ = S.simulate_tmap(15, 14, None, np.random.default_rng(3), cfg)
    peaks = S.find_peaks(tmap, 1.7, (1, -1), cfg, max_peaks=0)  # lax threshold: big clusters
    assert len(peaks) > 30 and (peaks["sign"] == 1).any() and (peaks["sign"] == -1).any()
    check_peak_rules(peaks.assign(stat_value=peaks["stat_value"]), {
        "simulation": {**cfg["simulation"], "max_peaks_per_study": len(peaks)}})
    ijk = np.rint(mni_to_ijk(peaks[["x", "y", "z"]].to_numpy(float))).astype(int)
    vals = tmap[tuple(ijk.T)]
    np.testing.assert_allclose(vals, peaks["stat_value"])
    # every listed peak is a local maximum (in its direction) above the threshold
    for sign in (1, -1):
        s = sign * np.where(mask, tmap, 0.0)
        mx = ndimage.maximum_filter(np.where(mask & (s > 1.7), s, -np.inf), size=3)
        sel = peaks["sign"].to_numpy() == sign
        assert (sign * vals[sel] > 1.7).all()
        assert (sign * vals[sel] >= mx[tuple(ijk[sel].T)]).all()
    # the highest suprathreshold voxel is always the first peak of its direction
    assert peaks["stat_value"].iloc[0] == pytest.approx(tmap[mask].max())


def test_find_peaks_direction_cap_and_extent(cfg):
    tmap, _ = S.simulate_tmap(15, 14, None, np.random.default_rng(3), cfg)
    neg = S.find_peaks(tmap, 1.7, (-1,), cfg)
    assert (neg["sign"] == -1).all() and (neg["stat_value"] < 0).all()
    assert len(neg) == cfg["simulation"]["max_peaks_per_study"]
    assert (neg["cluster_voxels"] >= cfg["simulation"]["cluster_extent_voxels"]).all()
    big = {"simulation": {**cfg["simulation"], "cluster_extent_voxels": 10**9}}
    assert S.find_peaks(tmap, 1.7, (1, -1), {**cfg, **big}).empty
    with pytest.raises(ValueError, match="direction"):
        S.find_peaks(tmap, 1.7, (2,), cfg)


def test_reported_directions():
    assert S.reported_directions("Patients>HC;HC>Patients") == [1, -1]
    assert S.reported_directions("HC>Patients") == [-1]
    with pytest.raises(ValueError, match="unknown contrast"):
        S.reported_directions("Patients<HC")


# -------------------------------------------------------------------- validation meta-datasets


def test_planted_effects_produce_peaks_near_their_centres(cfg):
    effects = [(0, 48, 0, 1.2), (-52, -70, 2, -1.2)]
    studies, peaks = S.simulate_meta_dataset(8, effects, np.random.default_rng(11),
                                             n_range=(20, 30), tau=0.1, cfg=cfg)
    assert list(studies.columns[:7]) == ["study", "n1", "n2", "df", "t_thr", "threshold_kind",
                                         "contrasts_reported"]
    assert peaks["provenance"].str.startswith("simulated:").all()
    from analysis.sdm.inputs.dataset import SDMDataset

    assert SDMDataset(studies, peaks).ids == list(studies["study"])
    assert studies.attrs["true_g"].shape == (8, 2)
    for x, y, z, g in effects:
        same = peaks[np.sign(peaks["stat_value"]) == np.sign(g)]
        d = np.sqrt(((same[["x", "y", "z"]].to_numpy(float) - [x, y, z]) ** 2).sum(1))
        hit = same.assign(d=d).groupby("study")["d"].min()
        assert len(hit) == 8 and (hit <= 8).mean() >= 0.75, hit
    for _, grp in peaks.groupby("study"):
        check_peak_rules(grp.assign(cluster=grp["note"].str.extract(r"cluster (\d+)")[0]), cfg)


def test_null_simulation_has_few_peaks_at_a_stringent_threshold(cfg):
    studies, peaks = S.simulate_meta_dataset(6, [(0, 48, 0, 1.0)], np.random.default_rng(5),
                                             null=True, p_threshold=1e-6, cfg=cfg)
    assert (studies.attrs["effects"]["g"] == 0).all()
    assert len(peaks) <= 2
    _, lax = S.simulate_meta_dataset(2, [], np.random.default_rng(5), null=True,
                                     p_threshold=0.01, cfg=cfg)
    assert len(lax) > 0  # the same null does produce peaks at a lax threshold


def test_same_seed_same_output(cfg):
    a = S.simulate_meta_dataset(1, [(60, -14, -12, 0.8)], np.random.default_rng(9), cfg=cfg)
    b = S.simulate_meta_dataset(1, [(60, -14, -12, 0.8)], np.random.default_rng(9), cfg=cfg)
    c = S.simulate_meta_dataset(1, [(60, -14, -12, 0.8)], np.random.default_rng(10), cfg=cfg)
    pd.testing.assert_frame_equal(a[0], b[0])
    pd.testing.assert_frame_equal(a[1], b[1])
    assert not a[1].equals(c[1])


def test_standins_use_one_stream_per_study(cfg):
    studies = pd.DataFrame({"study": ["A1", "B2"], "n1": [20, 15], "n2": [20, np.nan],
                            "t_thr": [3.3, 3.0],
                            "contrasts_reported": ["Patients>HC;HC>Patients", "HC>Patients"]})
    both = S.simulate_standins(studies, 1, cfg)
    alone = S.simulate_standins(studies.iloc[[1]], 1, cfg)
    pd.testing.assert_frame_equal(both[both["study"] == "B2"].reset_index(drop=True), alone)
    assert (alone["sign"] == -1).all()
    assert (both["provenance"] == "simulated:v2:seed=1").all()  # simulated: always v2
    assert both["note"].str.contains("stand-in").all()
    assert S.simulate_standins(studies, 1, cfg, skip=["A1", "B2"]).empty
    assert derive_rng(1, "simulate-peaks/A1").random() != derive_rng(1, "simulate-peaks/B2").random()


# ------------------------------------------------------------------ committed stand-ins (data/)


REPO_DATA = __import__("pathlib").Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def committed():
    from analysis.data_tables import load_peaks, load_studies
    from analysis.sdm.inputs.io import read_tsv_text

    text = read_tsv_text(REPO_DATA / "peaks.tsv").reset_index(drop=True)
    return text, load_peaks(REPO_DATA), load_studies(REPO_DATA)


def test_regenerating_from_the_configured_seed_reproduces_the_committed_rows(committed, cfg):
    text, _, _ = committed
    new = S.regenerate_peaks(REPO_DATA, cfg=cfg, write=False)
    assert list(new.columns) == list(text.columns)
    assert new.astype(str).values.tolist() == text.astype(str).values.tolist()


def test_every_simulated_row_is_labelled_and_real_rows_are_real(committed, cfg):
    _, peaks, studies = committed
    sim = S.is_simulated(peaks["provenance"])
    assert sim.sum() > 0 and (~sim).sum() == 27  # Moriguchi 2007's real peaks
    assert set(peaks.loc[~sim, "study"]) == {"Moriguchi2007"}
    assert peaks.loc[~sim, "provenance"].str.startswith("original:").all()
    assert (peaks.loc[sim, "provenance"] == S.provenance_label(cfg["seed"], cfg)).all()
    from analysis.standins import CONSTRUCTED_NOTE

    note = {"2": S.STANDIN_NOTE, "3": CONSTRUCTED_NOTE}[cfg["simulation"]["generator_version"]]
    assert peaks.loc[sim, "note"].str.startswith(note).all()
    # every study without real peaks has stand-ins, and no study mixes both
    assert set(peaks.loc[sim, "study"]) == set(studies["study"]) - {"Moriguchi2007"}


def test_simulated_standins_obey_the_reporting_rules(committed, cfg, tmp_path):
    """The simulated stand-ins (generator v2, the design stage's world) list their maps' peaks
    as SPM does (the committed rows are the constructed v3: tests/test_standins.py)."""
    from analysis.data_tables import load_peaks, write_peaks

    _, _, studies = committed
    v2 = S.regenerate_peaks(REPO_DATA, cfg=cfg, version="2")
    write_peaks(v2, tmp_path, studies=studies)
    peaks = load_peaks(tmp_path, studies)
    sim = peaks[S.is_simulated(peaks["provenance"])]
    assert (sim["provenance"] == f"simulated:v2:seed={cfg['seed']}").all()
    assert sim["note"].str.startswith(S.STANDIN_NOTE).all()
    contrasts = studies.set_index("study")["contrasts_reported"]
    for study, grp in sim.groupby("study"):
        g = grp.assign(x=grp["x_mni"], y=grp["y_mni"], z=grp["z_mni"],
                       cluster=grp["note"].str.extract(r"cluster (\d+)")[0].astype(int))
        tal = (grp["space"] != "MNI").any()
        sim_cfg = cfg if not tal else {"simulation": {
            **cfg["simulation"],  # Talairach integers converted back: allow rounding
            "local_max_min_distance_mm": cfg["simulation"]["local_max_min_distance_mm"] - 1.5}}
        if tal:
            g = g.assign(x=g["x"].round(), y=g["y"].round(), z=g["z"].round())
        check_peak_rules(g, sim_cfg, S.reported_directions(contrasts[study]))
        assert (grp["peak_id"].to_numpy() == np.arange(1, len(grp) + 1)).all()


def test_write_rewrites_only_simulated_rows(data_copy, cfg, capsys):
    from analysis.cli import main
    from analysis.sdm.inputs.io import read_tsv_text

    keep = {"Moriguchi2007", "Bird2010", "Fujino2014"}  # real; one direction; Talairach
    studies = (data_copy / "studies.tsv").read_text().splitlines()
    (data_copy / "studies.tsv").write_text(
        "\n".join([studies[0]] + [ln for ln in studies[1:] if ln.split("\t")[0] in keep]) + "\n")
    before = read_tsv_text(data_copy / "peaks.tsv").reset_index(drop=True)
    before = before[before["study"].isin(keep)]
    real = before[~S.is_simulated(before["provenance"])]
    real.to_csv(data_copy / "peaks.tsv", sep="\t", index=False)  # drop the stand-ins
    assert main(["simulate-peaks"]) == 0
    assert "differs" in capsys.readouterr().out
    assert read_tsv_text(data_copy / "peaks.tsv").shape[0] == len(real)  # nothing written
    assert main(["simulate-peaks", "--write", "--seed", "1"]) == 0
    after = read_tsv_text(data_copy / "peaks.tsv").reset_index(drop=True)
    kept = after[~S.is_simulated(after["provenance"])]
    assert kept.values.tolist() == real.values.tolist()  # real rows verbatim
    sim = after[S.is_simulated(after["provenance"])]
    assert set(sim["study"]) == {"Bird2010", "Fujino2014"}
    assert (sim["provenance"] == f"simulated:v{cfg['simulation']['generator_version']}:seed=1").all()
    assert set(sim.loc[sim["study"] == "Fujino2014", "space"]) == {"TAL"}
    assert set(sim.loc[sim["study"] == "Bird2010", "sign"]) == {"-1"}
    assert sim.values.tolist() != before[S.is_simulated(before["provenance"])].values.tolist()


def test_published_effects_and_bad_input(data_copy):
    from analysis.sdm.errors import DataError

    eff = S.published_effects(data_copy)
    assert eff[["x", "y", "z"]].to_numpy().tolist()[0] == [0, 48, 0]
    assert (np.sign(eff["g"]) == [1, 1, -1, -1]).all()
    path = data_copy / "published_table3.tsv"
    path.write_text(path.read_text().replace("0.414338", "n/a"))
    with pytest.raises(DataError, match=r"published_table3.tsv, row 2, field 'hedges_g'"):
        S.published_effects(data_copy)


# ------------------------------------------------------------- stand-ins total the paper's 143


def test_apportion_is_largest_remainder_with_capacities():
    assert S.apportion(10, [1, 1, 1], [10, 10, 10]).tolist() == [4, 3, 3]  # tie: first unit
    assert S.apportion(10, [1, 1, 1], [10, 10, 10], priority=[2, 0, 1]).tolist() == [3, 4, 3]
    assert S.apportion(10, [1, 2, 2], [10, 10, 10]).tolist() == [2, 4, 4]
    # a full unit passes its share on in the same proportions
    assert S.apportion(12, [1, 1, 2], [1, 10, 10]).tolist() == [1, 4, 7]
    assert S.apportion(0, [1, 1], [0, 3]).tolist() == [0, 0]
    assert S.apportion(3, [0, 1], [5, 3]).tolist() == [0, 3]  # weight 0 gets nothing
    with pytest.raises(ValueError, match="capacity 4"):
        S.apportion(5, [1, 1, 0], [2, 2, 9])
    rng = np.random.default_rng(0)
    for _ in range(50):
        w, cap = rng.integers(1, 4, 7), rng.integers(0, 20, 7)
        n = int(rng.integers(0, cap.sum() + 1))
        out = S.apportion(n, w, cap)
        assert out.sum() == n and (out <= cap).all() and (out >= 0).all()


def test_quotas_follow_the_documented_rule(cfg):
    studies = pd.DataFrame({"study": ["A", "B", "C", "D"], "n1": [20, 30, 10, 10],
                            "n2": [20, 30, 10, 12],
                            "contrasts_reported": ["Patients>HC;HC>Patients", "HC>Patients",
                                                   "Patients>HC", "HC>Patients;Patients>HC"]})
    plenty = {s: {1: 50, -1: 50} for s in "ABCD"}
    q = S.standin_quotas(studies, 30, plenty, cfg)
    # 6 directions: 5 each; both-direction studies split 5 + 5 in printed order
    assert q == {"A": {1: 5, -1: 5}, "B": {-1: 5}, "C": {1: 5}, "D": {-1: 5, 1: 5}}
    q = S.standin_quotas(studies, 31, plenty, cfg)
    assert sum(sum(d.values()) for d in q.values()) == 31
    # shares 10.33, 5.17, 5.17, 10.33: the spare peak goes to the larger of A (40) and D (22)
    assert sum(q["A"].values()) == 11 and sum(q["D"].values()) == 10
    # a direction whose map lists few peaks passes its share on
    few = {**plenty, "A": {1: 1, -1: 50}, "C": {1: 2}}
    q = S.standin_quotas(studies, 30, few, cfg)
    assert q["A"][1] == 1 and q["C"] == {1: 2}
    assert sum(sum(d.values()) for d in q.values()) == 30
    assert max(sum(d.values()) for d in q.values()) <= cfg["simulation"]["max_peaks_per_study"]
    with pytest.raises(ValueError, match="cannot apportion"):
        S.standin_quotas(studies, 30, {s: {1: 2, -1: 2} for s in "ABCD"}, cfg)


def test_budgeted_standins_are_the_highest_peaks_of_the_same_maps(cfg):
    studies = pd.DataFrame({"study": ["A1", "B2"], "n1": [20, 15], "n2": [20, 15],
                            "t_thr": [2.0, 2.5],
                            "contrasts_reported": ["Patients>HC;HC>Patients", "HC>Patients"]})
    eff = S.published_effects(REPO_DATA)
    some = S.simulate_standins(studies, 3, cfg, effects=eff, n_standins=12)
    assert len(some) == 12
    assert some.groupby("study").size().to_dict() == {"A1": 8, "B2": 4}  # 3 directions: 4 each
    assert some.loc[some["study"] == "A1"].groupby("sign").size().to_dict() == {-1: 4, 1: 4}
    for row in studies.itertuples(index=False):
        tmap, _ = S.simulate_tmap(row.n1, row.n2, eff, derive_rng(3, f"simulate-peaks/{row.study}"),
                                  cfg)  # the study's own stream: the map of the unbudgeted run
        full = S.find_peaks(tmap, row.t_thr, S.reported_directions(row.contrasts_reported), cfg,
                            max_peaks=0)
        mine = some[some["study"] == row.study]
        assert (mine["peak_id"].to_numpy() == np.arange(1, len(mine) + 1)).all()
        for sign, grp in mine.groupby("sign"):
            pool = full[full["sign"] == sign]
            top = pool.iloc[np.argsort(-pool["stat_value"].abs().to_numpy(), kind="stable")[:4]]
            assert sorted(grp["stat_value"]) == sorted(np.round(top["stat_value"], 2))
            assert sorted(map(tuple, grp[["x", "y", "z"]].to_numpy())) == \
                sorted(map(tuple, top[["x", "y", "z"]].to_numpy()))
    pd.testing.assert_frame_equal(some, S.simulate_standins(studies, 3, cfg, effects=eff,
                                                            n_standins=12))  # deterministic


MORIGUCHI_SHA256 = "9c97c6069d2207812f0cd2fc3405336ce2c865d307dcea68717bcaa18cd405c9"


def test_committed_peaks_total_the_papers_143_and_real_rows_are_untouched(committed, cfg):
    import hashlib

    text, peaks, studies = committed
    assert len(peaks) == 143  # Results l. 220: "We exported 143 peak coordinates"
    assert S.published_peak_total(REPO_DATA, len(studies)) == 143
    sim = S.is_simulated(peaks["provenance"])
    assert sim.sum() == 116 and (~sim).sum() == 27
    # the 27 rows of Moriguchi et al. (2007), byte for byte as transcribed from its Table 6
    lines = [ln for ln in (REPO_DATA / "peaks.tsv").read_text().splitlines()
             if ln.startswith("Moriguchi2007\t")]
    assert hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest() == MORIGUCHI_SHA256
    assert len(lines) == 27
    # the documented split (data/README.md)
    n = peaks.groupby("study").size().to_dict()
    assert n == {"Bird2010": 3, "Decety2009": 9, "Fan2013": 10, "Fujino2014": 15, "Gu2015": 15,
                 "Hadjikhani2014": 15, "Horan2016": 15, "Moriguchi2007": 27,
                 "Ruetgen2021": 15, "Vistoli2017": 9, "Xu2020": 10}
    assert max(v for k, v in n.items() if k != "Moriguchi2007") <= \
        cfg["simulation"]["max_peaks_per_study"]


def test_the_total_applies_to_the_papers_study_set_only(data_copy):
    from analysis.sdm.errors import DataError

    assert S.published_peak_total(data_copy, 11) == 143
    assert S.published_peak_total(data_copy, 3) is None  # a subset: no total
    path = data_copy / "published_values.tsv"
    path.write_text(path.read_text().replace("n_peaks\t143", "n_peaks\t14.3"))
    with pytest.raises(DataError, match=r"published_values.tsv, row 12, field 'value'"):
        S.published_peak_total(data_copy, 11)
    path.unlink()
    assert S.published_peak_total(data_copy, 11) is None


def test_real_rows_above_the_total_are_an_error(data_copy, cfg):
    with pytest.raises(ValueError, match="more than the total of 10"):
        S.regenerate_peaks(data_copy, cfg=cfg, n_peaks=10)
    with pytest.raises(ValueError, match="n_peaks must be"):
        S.regenerate_peaks(data_copy, cfg=cfg, n_peaks="paper")
