"""The engine's public API: parameters (scikit-learn semantics), validated defaults, fitted
attributes, the missing-covariate policy, the leave-one-group-out jackknife.

All data here are simulated (labelled as such); they test the machinery, not any finding.
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import json
import weakref

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from analysis.sdm.base import ParamsMixin
from analysis.sdm.diagnostics.jackknife import Jackknife
from analysis.sdm.errors import DataError
from analysis.sdm.estimator import (
    SDMPSI,
    MissingCovariateWarning,
    complete_cases,
    design_matrix,
)
from analysis.sdm.inference.correct import PSICorrector
from analysis.sdm.inference.permutation import PermutationResult
from analysis.sdm.inputs.dataset import SDMDataset
from analysis.sdm.maps.space import MaskSpace, grid_affine, grid_shape

STUDIES = ["simA", "simB", "simC", "simD", "simE", "simF", "simG"]


def _box_mask(center=(-40, 16, -4), half=(12, 12, 8)):
    """Box mask (on the 2 mm grid) around an MNI point."""
    data = np.zeros(grid_shape(), np.uint8)
    inv = np.linalg.inv(grid_affine())
    lo = np.rint(inv @ np.r_[np.subtract(center, half), 1])[:3].astype(int)
    hi = np.rint(inv @ np.r_[np.add(center, half), 1])[:3].astype(int)
    sl = tuple(slice(min(a, b), max(a, b) + 1) for a, b in zip(lo, hi, strict=True))
    data[sl] = 1
    return nib.Nifti1Image(data, grid_affine())


def _dataset(age=None):
    """Simulated studies: five report a positive peak near (-40, 16, -4), two report none."""
    studies = pd.DataFrame({
        "study": STUDIES,
        "n1": [20, 25, 18, 30, 22, 16, 24], "n2": [20, 24, 18, 28, np.nan, np.nan, 20],
        "t_thr": [3.3, 3.2, 3.5, 3.1, 3.4, 3.6, 3.3],
        "age": age if age is not None else [30.0, 35, 28, 40, 33, 25, 31],
        "disorder": ["d1", "d1", "d2", "d2", "d3", "d1", "d2"],
    })
    peaks = pd.DataFrame({
        "study": ["simA", "simB", "simC", "simD", "simG"],
        "x": [-40, -42, -38, -40, -40], "y": [16, 18, 14, 16, 14], "z": [-4, -6, -2, -4, -4],
        "t": [5.1, 4.4, 4.8, 6.0, 5.5], "sign": [1, 1, 1, 1, 1],
    })
    return SDMDataset(studies, peaks)


@pytest.fixture(scope="module")
def fitted():
    """A mean-model fit with one cluster (isotropic kernel, small box, few imputations)."""
    est = SDMPSI(anisotropy=0.0, imputations=3, seed=5)
    return est, est.fit(_dataset(), mask_img=_box_mask())


# ---- parameters: scikit-learn semantics ------------------------------------------------------


@pytest.mark.parametrize("obj", [
    SDMPSI(imputations=7, covariates=["age"], hypothesis=[0, 1], missing="drop"),
    PSICorrector(n_iters=17, tfce_params={"E": 0.5, "H": 2.0}),
    Jackknife(groups={"a": "x"}, p_threshold=0.01),
])
def test_clone_copies_parameters_not_state(obj):
    obj.fitted_marker_ = object()  # a fitted attribute must not travel with clone
    new = clone(obj)
    assert type(new) is type(obj) and new is not obj
    assert not hasattr(new, "fitted_marker_")
    params, new_params = obj.get_params(deep=False), new.get_params(deep=False)
    assert params.keys() == new_params.keys()
    for key, value in params.items():
        assert new_params[key] == value or (value is None and new_params[key] is None)
    assert repr(new) == repr(obj)


class _Wrapper(ParamsMixin):
    """An estimator with an estimator parameter (to test nested parameters)."""

    def __init__(self, inner=None, alpha: float = 1.0):
        self.inner = inner
        self.alpha = alpha


def test_nested_parameters_get_set_and_clone():
    w = _Wrapper(inner=SDMPSI(seed=3), alpha=2.0)
    deep = w.get_params(deep=True)
    assert deep["inner__seed"] == 3 and deep["alpha"] == 2.0 and deep["inner"] is w.inner
    assert "inner__seed" not in w.get_params(deep=False)
    assert w.set_params(inner__seed=9, alpha=0.5) is w
    assert w.inner.seed == 9 and w.alpha == 0.5
    c = clone(w)
    assert c.inner is not w.inner and c.inner.seed == 9
    with pytest.raises(ValueError, match="invalid parameter 'beta'"):
        w.set_params(beta=1)
    with pytest.raises(ValueError, match="no parameters of its own"):
        w.set_params(alpha__x=1)


# ---- defaults = the settings validated against SDM-PSI -------------------------------------


def test_defaults_are_the_validated_settings():
    from analysis.sdm.maps.kernel import make_kernel
    from analysis.sdm.maps.preprocess import preprocess
    from analysis.sdm.maps.templates import DEFAULT_TEMPLATE

    assert DEFAULT_TEMPLATE == "enge_fit"
    assert SDMPSI().kernel_template == DEFAULT_TEMPLATE
    for func in (make_kernel, preprocess):
        assert inspect.signature(func).parameters["template"].default == DEFAULT_TEMPLATE
    assert PSICorrector().backend == "numba"
    assert SDMPSI().missing == "raise"


def test_fit_without_a_mask_uses_sdm_psis_mask(monkeypatch, mirror):
    """No mask given and none in the dataset: SDM-PSI's gray_matter_2mm (193,768 voxels)."""
    import analysis.sdm.maps.preprocess as pp

    seen = {}

    class Stop(Exception):
        pass

    def capture(dataset, space, **kw):
        seen["space"], seen["template"] = space, kw["template"]
        raise Stop

    monkeypatch.setattr(pp, "preprocess", capture)
    with pytest.raises(Stop):
        SDMPSI().fit(_dataset())
    assert seen["space"].n_voxels == 193768 and seen["template"] == "enge_fit"


def test_default_mask_is_the_registry_file(mirror):
    """The engine's mask is SDM-PSI's file of Enge et al.'s project folder, the registry's copy."""
    from analysis.fetch import fetch_file
    from analysis.grid import SDM_MASK_FILE, gm_mask
    from analysis.sdm.datasets import SDM_GM_MASK
    from analysis.sdm.maps.space import sdm_gm_mask

    assert SDM_MASK_FILE == SDM_GM_MASK.relpath
    img = sdm_gm_mask()
    assert int(np.asarray(img.dataobj).sum()) == 193768
    assert img.get_fdata().max() == 1 and np.allclose(img.affine, grid_affine())
    ref = nib.load(fetch_file(SDM_MASK_FILE))  # the compendium's fetch of the same file
    np.testing.assert_array_equal(np.asarray(img.dataobj), np.asarray(ref.dataobj) > 0)
    assert gm_mask() is img  # the compendium's default mask is the engine's


def test_shipped_template_records_its_fit(mirror):
    """The fitted template: provenance, read-only float32 on SDM's grid, checked on loading."""
    from analysis.kernel_template import FIT_VERSION, split_studies
    from analysis.resources import _source_checksums
    from analysis.sdm.maps.templates import enge_template_provenance, stretch_template

    prov = enge_template_provenance()
    assert prov["sources"] == _source_checksums()  # every input map, as registered
    assert sum(k.endswith("_lower.nii.gz") for k in prov["sources"]) == 50
    assert prov["fit_version"] == FIT_VERSION and prov["fwhm_mm"] == 20.0
    enge_ids = [k.split("/")[-1][:-len("_lower.nii.gz")] for k in prov["sources"]
                if k.endswith("_lower.nii.gz")]
    assert prov["train"] == split_studies(enge_ids)[0] and len(prov["train"]) == 25
    arr = stretch_template("enge_fit", grid_affine(), grid_shape())
    assert arr.shape == (13, *grid_shape()) and arr.dtype == np.float32
    assert not arr.flags.writeable
    assert hashlib.sha256(arr.tobytes()).hexdigest() == prov["dense_sha256"]
    assert np.float32(prov["fallback"]) == arr[0, 0, 0, 0]  # off the mask: the fill value
    with pytest.raises(ValueError, match="grid"):
        stretch_template("enge_fit", grid_affine(), (10, 10, 10))


def test_edge_value_planes_round_trip_exactly(rng):
    from analysis.sdm.maps.templates import decode_edge_values, encode_edge_values

    v = np.concatenate([rng.normal(size=1000), [0.0, -0.0, np.inf, 1e-40, 3.4e38]])
    v = v.astype(np.float32)
    planes = encode_edge_values(v)
    assert planes.shape == (4, v.size) and planes.dtype == np.uint8
    np.testing.assert_array_equal(decode_edge_values(planes).view(np.uint32), v.view(np.uint32))


def test_stage_keys_cover_the_engine_data_files():
    """Replacing the shipped template or the fetched mask must invalidate the stages using them:
    the template's bytes and the module recording the mask's URL and SHA-256 enter the key."""
    from analysis import paths, pipeline

    stage = next(s for s in pipeline.STAGES if s.name == "robustness")
    files = pipeline.stage_hashed_files(stage)
    engine = paths.PACKAGE_DIR / "sdm"
    assert engine / "data" / "stretch_enge2021.npz" in files
    assert engine / "datasets.py" in files and engine / "maps" / "space.py" in files


# ---- fitted attributes ----------------------------------------------------------------------


def test_refit_does_not_keep_earlier_results():
    """``results_`` of a refit holds no earlier result (and none of its imputations)."""
    est = SDMPSI(anisotropy=0.0, imputations=2, seed=1)
    first = est.fit(_dataset(), mask_img=_box_mask(half=(6, 6, 6)))
    ref = weakref.ref(first)
    assert isinstance(first.estimator, SDMPSI) and not hasattr(first.estimator, "results_")
    assert first.estimator.get_params(deep=False) == est.get_params(deep=False)
    del first
    second = est.fit(_dataset(), mask_img=_box_mask(half=(6, 6, 6)))
    gc.collect()
    assert ref() is None
    assert est.results_ is second and not hasattr(second.estimator, "results_")


def test_psi_corrector_declares_what_it_sets(fitted):
    _, result = fitted
    corr = PSICorrector(n_iters=4, seed=2)
    out = corr.transform(result)
    assert isinstance(out.permutation_, PermutationResult)
    assert out.permutation_.info["backend"] == "numba"
    assert isinstance(out.corrector, PSICorrector) and out.corrector is not corr
    assert out.corrector.get_params(deep=False) == corr.get_params(deep=False)
    assert "corrp_voxel" in out.maps and "permutation_maxima" in out.tables
    # the input is untouched, and the corrector holds no state
    assert result.permutation_ is None and result.corrector is None
    assert "corrp_voxel" not in result.maps
    assert {k for k in vars(corr) if k.endswith("_")} == set()


def test_psi_corrector_falls_back_to_numpy_without_numba(fitted, monkeypatch):
    import analysis.sdm.inference.correct as correct

    _, result = fitted
    monkeypatch.setattr(correct, "available_backends", lambda: ["numpy"])
    with pytest.warns(RuntimeWarning, match="numba is not installed"):
        out = PSICorrector(n_iters=3, seed=2).transform(result)
    assert out.permutation_.info["backend"] == "numpy"


# ---- the missing-covariate policy ----------------------------------------------------------


def test_missing_covariate_raises_by_default():
    ds = _dataset(age=[30.0, 35, np.nan, 40, 33, 25, 31])
    with pytest.raises(DataError, match=r"row 3, field 'age'.*missing='drop'"):
        SDMPSI(anisotropy=0.0, imputations=2, covariates=["age"]).fit(ds, _box_mask())


def test_missing_covariate_drop_warns_and_records_the_studies():
    """``missing="drop"``: the fit equals the fit of the complete cases, and says whom it left."""
    mask = _box_mask(half=(6, 6, 6))
    ds = _dataset(age=[30.0, 35, np.nan, 40, 33, 25, 31])
    est = SDMPSI(anisotropy=0.0, imputations=2, seed=4, covariates=["age"],
                 hypothesis=[0, 1], missing="drop")
    with pytest.warns(MissingCovariateWarning, match="1 of 7 studies.*: simC"):
        res = est.fit(ds, mask_img=mask)
    assert res.dropped_studies == ["simC"] and "simC" not in res.studies
    assert list(res.bounds.studies) == res.studies and res.X.shape == (6, 2)
    assert "left out: simC" in res.description_
    complete = ds.subset([s for s in STUDIES if s != "simC"])
    ref = SDMPSI(anisotropy=0.0, imputations=2, seed=4, covariates=["age"],
                 hypothesis=[0, 1]).fit(complete, mask_img=mask)
    np.testing.assert_array_equal(res.maps["z"], ref.maps["z"])
    np.testing.assert_array_equal(res.X, ref.X)


def test_one_policy_for_meta_regression_designs():
    """``metaregression.covariate_design`` is the engine's ``missing="drop"`` design."""
    from analysis.sdm.diagnostics.metaregression import covariate_design

    studies = _dataset(age=[30.0, np.nan, 28, 40, np.nan, 25, 31]).studies
    with pytest.warns(MissingCovariateWarning, match="simB, simE"):
        X, keep = covariate_design(studies, "age")
    with pytest.warns(MissingCovariateWarning):
        assert (complete_cases(studies, ["age"], missing="drop") == keep).all()
    ref, _ = design_matrix(studies[keep], ["age"])
    np.testing.assert_array_equal(X, ref)
    with pytest.raises(DataError, match="row 2"):
        complete_cases(studies, ["age"])
    with pytest.raises(ValueError, match="missing must be one of"):
        complete_cases(studies, ["age"], missing="impute")


def test_design_matrix_refuses_a_covariate_without_variation():
    studies = _dataset().studies.assign(const=1.0, level="a")
    with pytest.raises(DataError, match="'const' has fewer than 2 distinct values"):
        design_matrix(studies, ["const"])
    with pytest.raises(DataError, match="'level' has fewer than 2 distinct values"):
        design_matrix(studies, ["level"])
    with pytest.raises(DataError, match="too few studies"):
        design_matrix(studies.iloc[:2], ["age"])


def test_design_centres_each_column_like_a_single_covariate():
    """Several covariates: each column centred on its own 1-D mean (bit for bit as one)."""
    studies = _dataset().studies.assign(x2=[1.5, 2.25, 7.0, 3.3, 9.1, 0.2, 4.4])
    both, _ = design_matrix(studies, ["age", "x2"])
    for j, cov in enumerate(["age", "x2"], start=1):
        one, _ = design_matrix(studies, [cov])
        np.testing.assert_array_equal(both[:, j], one[:, 1])


# ---- Jackknife(groups=...) ----------------------------------------------------------------


def test_jackknife_leaves_out_groups(fitted):
    _, result = fitted
    assert len(result.tables) == 0 and result.study_table is not None
    loo = Jackknife().transform(result)
    t = loo.tables["jackknife"]
    assert len(t) > 0 and set(t["analysis"]) == {"leave-one-out"}
    assert sorted(set(t["left_out"])) == sorted(STUDIES)
    by_col = Jackknife(groups="disorder").transform(loo)
    t2 = by_col.tables["jackknife"]
    lodo = t2[t2["analysis"] == "leave-one-disorder-out"]
    assert set(lodo["left_out"]) == {"d1", "d2", "d3"}
    assert lodo.groupby("left_out")["n_studies"].first().to_dict() == {"d1": 4, "d2": 4, "d3": 6}
    pd.testing.assert_frame_equal(t2[t2["analysis"] == "leave-one-out"], t)  # appended
    assert len(by_col.diagnostics) == 2 and "jackknife" not in result.tables
    # the group of one study (d3 = simE) is leaving that study out
    same = ["survives", "peak_survives", "overlap_voxels", "z_at_peak"]
    np.testing.assert_array_equal(lodo[lodo["left_out"] == "d3"][same].to_numpy(),
                                  t[t["left_out"] == "simE"][same].to_numpy())
    # ... and is not re-fitted: the second jackknife reuses the first one's re-fit
    without_e = tuple(sorted(s for s in STUDIES if s != "simE"))
    assert len(loo.jackknife_refits) == len(STUDIES) and not result.jackknife_refits
    assert by_col.jackknife_refits[without_e] is loo.jackknife_refits[without_e]
    assert len(by_col.jackknife_refits) == len(STUDIES) + 2  # d1 and d2 are new subsets
    summ = by_col.tables["jackknife_summary"]
    assert set(summ["analysis"]) == {"leave-one-out", "leave-one-disorder-out"}
    # a mapping, a named Series and a label per study give the same rows
    table = result.study_table.set_index("study")["disorder"]
    for groups in (table.to_dict(), table, list(table)):
        t3 = Jackknife(groups=groups).transform(result).tables["jackknife"]
        np.testing.assert_array_equal(t3[same].to_numpy(), lodo[same].to_numpy())
    assert set(Jackknife(groups=table).transform(result).tables["jackknife"]["analysis"]) == {
        "leave-one-disorder-out"}
    with pytest.raises(ValueError, match="no group for the studies"):
        Jackknife(groups={"simA": "x"}).transform(result)
    with pytest.raises(ValueError, match="no study table with that column"):
        Jackknife(groups="paradigm").transform(result)


def test_fit_preprocessed_reproduces_fit(fitted):
    """Re-fitting the kept bound maps with the result's estimator gives the same maps."""
    _, result = fitted
    again = result.estimator.fit_preprocessed(result.bounds, result.study_table)
    for name in ("z", "g", "tau2"):
        np.testing.assert_array_equal(again.maps[name], result.maps[name])
    sub = result.bounds.subset(["simD", "simA"])
    assert sub.studies == ["simD", "simA"]
    np.testing.assert_array_equal(sub.lower[1], result.bounds.lower[0])
    with pytest.raises(ValueError, match="no bound maps"):
        result.bounds.subset(["nope"])
    space = MaskSpace(_box_mask())
    assert result.space.n_voxels == space.n_voxels
    assert json.loads(json.dumps(result.params["design_columns"])) == ["intercept"]
