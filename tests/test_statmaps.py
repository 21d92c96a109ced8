"""Statistical maps as study inputs: exact bounds, resampling, fall-back voxels, entry points
and their checks (small masks; every map here is simulated, none is a study's)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from analysis.sdm.errors import DataError, DataErrors
from analysis.sdm.estimator import SDMPSI
from analysis.sdm.inputs.dataset import SDMDataset
from analysis.sdm.inputs.statmaps import (
    MIN_COVERAGE,
    check_t_map,
    read_study_map,
    sample_map,
    t_from_beta,
    t_from_z_map,
)
from analysis.sdm.maps.preprocess import preprocess
from analysis.sdm.maps.space import MaskSpace, grid_affine, grid_shape
from analysis.sdm.statistics.effect_sizes import g_from_t, t_from_g

STUDIES = pd.DataFrame({"study": ["simA", "simB", "simC", "simD"], "n1": [20, 25, 18, 30],
                        "n2": [20, 24, np.nan, 28], "t_thr": [3.3, 3.2, 3.5, 3.1]})
PEAKS = pd.DataFrame({"study": ["simA", "simB", "simC", "simD"], "x": [-40, -42, -38, -40],
                      "y": [16, 18, 14, 16], "z": [-4, -6, -2, -4], "t": [5.1, 4.4, 4.8, 6.0],
                      "sign": [1, 1, 1, 1]})
FIT = {"anisotropy": 0.0, "imputations": 4, "seed": 3}


def _box_mask(center=(-40, 16, -4), half=(10, 10, 8)):
    data = np.zeros(grid_shape(), np.uint8)
    inv = np.linalg.inv(grid_affine())
    lo = np.rint(inv @ np.r_[np.subtract(center, half), 1])[:3].astype(int)
    hi = np.rint(inv @ np.r_[np.add(center, half), 1])[:3].astype(int)
    data[tuple(slice(min(a, b), max(a, b) + 1) for a, b in zip(lo, hi, strict=True))] = 1
    return nib.Nifti1Image(data, grid_affine())


@pytest.fixture(scope="module")
def space():
    return MaskSpace(_box_mask())


def _grid_map(space, vec, fill=0.0):
    """A map on the analysis grid holding ``vec`` in the mask."""
    return nib.Nifti1Image(space.to_volume(np.asarray(vec, np.float32), fill), space.affine)


def _peak_bounds(space, dataset):
    return preprocess(dataset, space, anisotropy=0.0, progress=False)


# ---- effect sizes and bounds --------------------------------------------------------------
def test_map_consistent_with_its_peaks_keeps_the_peak_effect(space):
    """A t-map equal to what the peaks imply (the middle of their bounds): exact inside the
    peaks' interval everywhere and equal to the peak's g at the peak."""
    peaks_only = _peak_bounds(space, SDMDataset(STUDIES, PEAKS))
    i = peaks_only.studies.index("simA")
    g_mid = (peaks_only.lower[i].astype(float) + peaks_only.upper[i]) / 2
    t_map = t_from_g(g_mid, 20, 20)
    ds = SDMDataset(STUDIES, PEAKS, images={"simA": _grid_map(space, t_map)})
    b = _peak_bounds(space, ds)
    assert np.all(b.known[i]) and not np.any(b.known[1:].all(axis=1))
    np.testing.assert_allclose(b.lower[i], g_mid, atol=1e-6)
    assert np.all(b.lower[i] >= peaks_only.lower[i] - 1e-5)
    assert np.all(b.upper[i] <= peaks_only.upper[i] + 1e-5)
    at_peak = space.voxel_index([[-40, 16, -4]])[0]
    np.testing.assert_allclose(b.lower[i, at_peak], g_from_t(5.1, 20, 20), rtol=1e-5)
    # the other studies are untouched
    np.testing.assert_array_equal(b.lower[1:], peaks_only.lower[1:])
    # and the meta-analysis barely moves: the same peak, a close z map
    z_peaks = SDMPSI(**FIT).fit(SDMDataset(STUDIES, PEAKS), mask_img=space.mask_img).maps["z"]
    z_map = SDMPSI(**FIT).fit(ds, mask_img=space.mask_img).maps["z"]
    assert np.argmax(z_map) == np.argmax(z_peaks) or np.linalg.norm(
        space.xyz[np.argmax(z_map)] - space.xyz[np.argmax(z_peaks)]) <= 4
    assert np.corrcoef(z_map, z_peaks)[0, 1] > 0.95


def test_map_values_give_hedges_g_one_and_two_samples(space):
    t = np.linspace(-4, 6, space.n_voxels)
    ds = SDMDataset(STUDIES, PEAKS.iloc[:0], images={"simB": _grid_map(space, t),
                                                     "simC": _grid_map(space, t)})
    b = _peak_bounds(space, ds)
    tt = t.astype(np.float32).astype(float)
    # two samples: g = J t sqrt(1/n1 + 1/n2); one sample: g = J t / sqrt(n)
    df2, df1 = 25 + 24 - 2, 18 - 1
    j2, j1 = 1 - 3 / (4 * df2 - 1), 1 - 3 / (4 * df1 - 1)
    np.testing.assert_allclose(b.lower[1], j2 * tt * np.sqrt(1 / 25 + 1 / 24), rtol=2e-3)
    np.testing.assert_allclose(b.lower[2], j1 * tt / np.sqrt(18), rtol=2e-3)
    np.testing.assert_allclose(b.lower[1], g_from_t(tt, 25, 24), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(b.lower[1], b.upper[1])


def test_missing_voxels_fall_back_to_the_peak_bounds_or_the_censored_interval(space):
    peaks_only = _peak_bounds(space, SDMDataset(STUDIES, PEAKS))
    t = np.full(space.n_voxels, 2.0)
    half = space.xyz[:, 0] > -40
    t[half] = np.nan                      # NaN outside the map
    t[space.xyz[:, 2] > 2] = 0.0          # and zeros (SPM/FSL outside their mask)
    missing = ~np.isfinite(t) | (t == 0)
    ds = SDMDataset(STUDIES, PEAKS, images={"simA": _grid_map(space, t),
                                            "simD": _grid_map(space, t)})
    ds = SDMDataset(ds.studies, ds.peaks[ds.peaks["study"] != "simD"], images=ds.images)
    b = _peak_bounds(space, ds)
    # simA (with a peak): its kernel bounds where the map is missing
    np.testing.assert_array_equal(b.lower[0, missing], peaks_only.lower[0, missing])
    np.testing.assert_array_equal(b.upper[0, missing], peaks_only.upper[0, missing])
    assert np.all(b.known[0, ~missing])
    # simD (no peak): the censored interval of a study without peaks
    g_thr = g_from_t(3.1, 30, 28)
    np.testing.assert_allclose(b.lower[3, missing], -g_thr, rtol=1e-6)
    np.testing.assert_allclose(b.upper[3, missing], g_thr, rtol=1e-6)
    np.testing.assert_allclose(b.lower[3, ~missing], g_from_t(2.0, 30, 28), rtol=1e-6)


# ---- resampling ---------------------------------------------------------------------------
def _linear(xyz):
    return 1.0 + 0.05 * xyz[..., 0] - 0.03 * xyz[..., 1] + 0.02 * xyz[..., 2]


def test_resampling_from_another_grid_and_orientation(space):
    """A linear field on a 3 mm RAS grid (the analysis grid is 2 mm LAS) is read back exactly
    (trilinear interpolation reproduces linear fields) where the map covers the voxel."""
    aff = np.diag([3.0, 3.0, 3.0, 1.0])
    aff[:3, 3] = [-80, -40, -40]
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in (40, 40, 30)], indexing="ij"), -1)
    xyz = ijk @ aff[:3, :3].T + aff[:3, 3]
    img = nib.Nifti1Image(_linear(xyz).astype(np.float64), aff)
    assert np.sign(aff[0, 0]) != np.sign(space.affine[0, 0])
    out = sample_map(check_t_map(img), space)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, _linear(space.xyz), atol=1e-9)
    # on the analysis grid itself the map comes back unchanged
    vec = np.random.default_rng(0).normal(size=space.n_voxels)
    np.testing.assert_allclose(sample_map(_grid_map(space, vec, np.nan), space),
                               vec.astype(np.float32), rtol=0, atol=0)


def test_map_edge_is_neither_shrunk_nor_extended(space):
    """Zeros outside a map do not pull the values at its edge towards 0 (normalised
    interpolation); voxels beyond the edge are missing."""
    aff = np.diag([4.0, 4.0, 4.0, 1.0])
    aff[:3, 3] = [-70, -20, -40]
    data = np.zeros((20, 20, 20))
    data[:, :, :10] = 3.0                     # covers z < 0 only (cell centres -40..-4 mm)
    out = sample_map(check_t_map(nib.Nifti1Image(data, aff)), space)
    have = np.isfinite(out)
    np.testing.assert_allclose(out[have], 3.0)
    assert have.any() and not have.all()
    assert np.all(space.xyz[have, 2] <= -4 + 4 * (1 - MIN_COVERAGE) + 1e-9)


# ---- the mean model with maps only --------------------------------------------------------
@pytest.fixture(scope="module")
def all_maps(space):
    rng = np.random.default_rng(5)
    imgs = {s: _grid_map(space, rng.normal(1.5, 1.0, space.n_voxels)) for s in STUDIES["study"]}
    ds = SDMDataset(STUDIES, PEAKS, images=imgs)
    return ds, SDMPSI(**FIT).fit(ds, mask_img=space.mask_img)


def test_all_map_dataset_has_nothing_censored(all_maps):
    _, res = all_maps
    assert res.bounds.known.all()
    np.testing.assert_array_equal(res.imputations.min(axis=0), res.imputations.max(axis=0))
    np.testing.assert_array_equal(res.imputations[0], res.bounds.lower)
    for name in ("z", "g", "var", "tau2", "i2"):
        assert np.isfinite(res.maps[name]).all(), name


def test_map_studies_go_through_psi_and_jackknife(all_maps):
    from analysis.sdm.diagnostics.jackknife import Jackknife
    from analysis.sdm.inference.correct import PSICorrector

    _, res = all_maps
    out = PSICorrector(n_iters=4, seed=2).transform(res)
    assert np.isfinite(out.maps["corrp_voxel"]).all()
    assert len(out.tables["permutation_maxima"]) == 4
    jk = Jackknife(p_threshold=0.05).transform(res)
    assert len(jk.tables["jackknife"]) > 0


# ---- conversions --------------------------------------------------------------------------
def test_z_and_beta_maps_become_t():
    from scipy import stats

    z = np.array([-3.0, 0.0, 1.5, 4.0, np.nan])
    t = t_from_z_map(z, 20)
    np.testing.assert_allclose(stats.t.sf(t[[2, 3]], 20), stats.norm.sf(z[[2, 3]]), rtol=1e-9)
    assert t[0] < -3 and t[1] == 0 and np.isnan(t[4])
    np.testing.assert_allclose(t_from_beta([2.0, -1.0], se=[0.5, 0.25]), [4.0, -4.0])
    np.testing.assert_allclose(t_from_beta([2.0], varcope=[0.25]), [4.0])
    assert np.isnan(t_from_beta([1.0], se=[0.0])[0])


def test_z_intent_header_is_read_as_z(space):
    data = np.full(grid_shape(), 2.5, np.float32)
    img = nib.Nifti1Image(data, grid_affine())
    img.header.set_intent("z score")
    t = np.asarray(read_study_map(img, 30, source="z.nii.gz").dataobj)
    np.testing.assert_allclose(t[0, 0, 0], t_from_z_map(2.5, 30), rtol=1e-9)
    img.header.set_intent("f test", (1, 20))
    with pytest.raises(DataError, match=r"z.nii.gz, field 'intent'.*not a t or z"):
        read_study_map(img, 30, source="z.nii.gz")


# ---- entry points -------------------------------------------------------------------------
def test_sdm_project_folder_with_maps(tmp_path, space):
    d = tmp_path / "proj"
    d.mkdir()
    (d / "sdm_table.txt").write_text("study\tn1\tn2\tt_thr\tthreshold\n"
                                     "simA\t20\t20\t3.3\tuncorrected\n"
                                     "simB\t25\t24\t3.2\tuncorrected\n"
                                     "simC\t18\t\t3.5\tuncorrected\n")
    (d / "simA.other_mni.txt").write_text("-40,16,-4,5.1\n")
    (d / "simC.no_peaks.txt").write_text("")
    t = np.full(space.n_voxels, 2.0)
    nib.save(_grid_map(space, t), d / "simB.nii.gz")          # a map instead of peaks
    nib.save(_grid_map(space, t), d / "simC.nii")              # beside an empty peak file
    ds = SDMDataset.from_sdm_project(d)
    assert sorted(ds.images) == ["simB", "simC"] and len(ds.peaks) == 1
    b = _peak_bounds(space, ds)
    assert b.known[1].all() and b.known[2].all() and not b.known[0].all()
    np.testing.assert_allclose(b.lower[1], g_from_t(2.0, 25, 24), rtol=1e-6)
    # a map that is not a t-map is refused naming its file
    data = np.asarray(_grid_map(space, t).dataobj).copy()
    data[45, 50, 40] = 1e4
    nib.save(nib.Nifti1Image(data, grid_affine()), d / "simB.nii.gz")
    with pytest.raises(DataErrors, match=r"simB.nii.gz, field 't': 1 voxel\(s\) with \|t\| > 100"):
        SDMDataset.from_sdm_project(d)
    # a study with neither peaks nor map
    (d / "simB.nii.gz").unlink()
    with pytest.raises(DataErrors, match=r"sdm_table.txt, row 2, field 'study'.*no statistical map"):
        SDMDataset.from_sdm_project(d)
    # two maps for one study
    nib.save(_grid_map(space, t), d / "simB.nii.gz")
    nib.save(_grid_map(space, t), d / "simA.nii")
    nib.save(_grid_map(space, t), d / "simA.nii.gz")
    with pytest.raises(DataErrors, match="second statistical map for study 'simA'"):
        SDMDataset.from_sdm_project(d)


def test_from_nimare_reads_t_z_and_beta_images(tmp_path, space):
    import warnings

    from nimare.dataset import Dataset

    rng = np.random.default_rng(2)
    t = rng.normal(2.0, 1.0, space.n_voxels)
    paths = {}
    for name, vec in {"t": t, "z": t / 2, "beta": 2 * t, "se": np.full_like(t, 2.0),
                      "varcope": np.full_like(t, 4.0)}.items():
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        nib.save(_grid_map(space, vec), paths[name])
    images = {"s1": {"t": paths["t"]}, "s2": {"z": paths["z"]},
              "s3": {"beta": paths["beta"], "se": paths["se"]},
              "s4": {"beta": paths["beta"], "varcope": paths["varcope"]}}
    data = {s: {"contrasts": {"1": {"images": img, "metadata": {"sample_sizes": [20, 20],
                                                                "t_thr": 3.0}}}}
            for s, img in images.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dset = Dataset(data, target="mni152_2mm")
    ds = SDMDataset.from_nimare(dset)
    assert sorted(ds.images) == ["s1", "s2", "s3", "s4"] and len(ds.peaks) == 0
    b = _peak_bounds(space, ds)
    assert b.known.all()
    t32 = t.astype(np.float32).astype(float)
    for i in (0, 2, 3):  # t, beta / se, beta / sqrt(varcope)
        np.testing.assert_allclose(b.lower[i], g_from_t(t32, 20, 20), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(b.lower[1], g_from_t(t_from_z_map(t32 / 2, 38), 20, 20),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("edit", "pattern"), [
    (lambda d: d.__setitem__((40, 50, 40), np.inf), r"field 't': 1 infinite voxel"),
    (lambda d: d.__setitem__((40, 50, 40), -250.0), r"field 't': 1 voxel\(s\) with \|t\| > 100"),
    (lambda d: d.__setitem__(Ellipsis, 0.0), r"field 't': no voxel with a value"),
])
def test_dataset_map_checks_name_the_study_and_field(edit, pattern):
    data = np.full(grid_shape(), 2.0, np.float32)
    edit(data)
    with pytest.raises(DataErrors, match=r"SDMDataset images \[simA\], " + pattern):
        SDMDataset(STUDIES, PEAKS, images={"simA": nib.Nifti1Image(data, grid_affine())})


def test_map_shape_affine_and_coverage_checks(space):
    with pytest.raises(DataErrors, match=r"images \[simA\], field 't': a statistical map must "
                       r"be 3-D"):
        SDMDataset(STUDIES, PEAKS, images={"simA": nib.Nifti1Image(
            np.ones((5, 5, 5, 2), np.float32), grid_affine())})
    with pytest.raises(ValueError, match="maps for unknown studies"):
        SDMDataset(STUDIES, PEAKS, images={"nobody": nib.Nifti1Image(
            np.ones((5, 5, 5), np.float32), grid_affine())})
    far = grid_affine().copy()
    far[:3, 3] += 5000.0
    ds = SDMDataset(STUDIES, PEAKS, images={"simA": nib.Nifti1Image(
        np.ones(grid_shape(), np.float32), far)})
    with pytest.raises(DataError, match=r"map of study 'simA', field 'affine': the map covers "
                       "no voxel"):
        _peak_bounds(space, ds)
    # a subset keeps the maps of the studies kept
    assert list(ds.subset(["simA", "simB"]).images) == ["simA"]
    assert ds.subset(["simB"]).images == {}


def test_import_sdm_refuses_a_folder_with_maps(tmp_path, space, capsys):
    """The compendium's data tables hold peaks only: a map is not dropped without a word."""
    from analysis.cli import main

    d = tmp_path / "proj"
    d.mkdir()
    (d / "sdm_table.txt").write_text("study\tn1\tn2\tt_thr\tthreshold\n"
                                     "simA\t20\t20\t3.3\tuncorrected\n")
    nib.save(_grid_map(space, np.full(space.n_voxels, 2.0)), d / "simA.nii.gz")
    assert main(["import-sdm", str(d), "--data", str(tmp_path / "data")]) != 0
    err = capsys.readouterr()
    assert "1 studies have a statistical map (simA)" in err.out + err.err
    assert not (tmp_path / "data" / "studies.tsv").exists()


def test_description_names_the_map_studies(all_maps):
    _, res = all_maps
    assert "4 of the 4 studies entered as statistical maps" in res.description_
