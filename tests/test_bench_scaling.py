"""The scaling benchmark's parts: synthetic projects, the memory model of the PSI arrays, the
extrapolation to full counts, the table and the plot (the timed runs are ``make bench``)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from analysis.bench import scaling as S
from analysis.sdm.inference import permutation as P
from analysis.sdm.maps.space import MaskSpace


def _mask(shape=(20, 24, 18)):
    data = np.zeros(shape, dtype=np.uint8)
    data[4:-4, 4:-4, 3:-3] = 1
    return nib.Nifti1Image(data, np.array([[-2.0, 0, 0, 20], [0, 2, 0, -24], [0, 0, 2, -18],
                                           [0, 0, 0, 1]]))


def test_synthetic_project_is_a_readable_sdm_folder_with_peaks_in_the_mask(tmp_path):
    from analysis.sdm.inputs.dataset import SDMDataset

    mask = _mask()
    folder = S.synthetic_project(tmp_path / "p", 7, 10, mask, np.random.default_rng(1))
    ds = SDMDataset.from_sdm_project(folder)
    assert len(ds.ids) == 7
    st = ds.studies
    assert (st["n1"].between(12, 40)).all() and (st["n2"].between(12, 40)).all()
    inside = np.asarray(mask.dataobj) > 0
    inv = np.linalg.inv(mask.affine)
    for sid in ds.ids:
        peaks = ds.study_peaks(sid)
        assert len(peaks) == 10
        ijk = np.rint(np.c_[peaks[["x", "y", "z"]].to_numpy(float), np.ones(10)]
                      @ inv.T)[:, :3].astype(int)
        assert inside[tuple(ijk.T)].all(), sid
    # the same generator state gives the same project
    again = S.synthetic_project(tmp_path / "q", 7, 10, mask, np.random.default_rng(1))
    for f in sorted(p.name for p in folder.iterdir() if p.suffix == ".txt"):
        assert (folder / f).read_bytes() == (again / f).read_bytes(), f


def test_memory_model_counts_the_arrays_the_permutation_engine_holds():
    """:func:`psi_array_bytes` against the arrays of a real engine (numba, voxel-blocked)."""
    mask = np.zeros((30, 30, 20), dtype=bool)
    mask[2:-2, 2:-2, 2:-2] = True
    space = MaskSpace(nib.Nifti1Image(mask.astype(np.uint8), np.diag([-2.0, 2, 2, 1])))
    rng = np.random.default_rng(0)
    m, k = 4, 5
    n1 = np.array([12, 15, 9, 20, 11], dtype=float)
    n2 = np.array([10, np.nan, 14, 18, np.nan])
    g = (0.2 + 0.3 * rng.standard_normal((m, k, space.n_voxels))).astype(np.float32)
    inp = P.PSIInputs(g, n1, n2, space)
    subj = P.make_subject_images(n1, n2, space, rng)
    engine = P._Engine(inp, subj, None, None, 0, 0.0, "numba", 256, {})
    model = S.psi_array_bytes(k, int(np.nansum(n1) + np.nansum(n2)), space.n_voxels, m)
    assert model["imputations"] == inp.imputations.nbytes
    assert model["subject_images"] == sum(s.nbytes for s in subj)
    # the blocked copy pads the last voxel block only
    assert model["blocked"] <= engine.blocked.nbytes < model["blocked"] * 1.01
    assert model["total"] == sum(v for n, v in model.items() if n != "total")


def _run(m, p, **seconds):
    base = {"preprocess_s": 3.0, "mle_s": 40.0, "impute_s": 1.0, "meta_s": 0.5,
            "psi_setup_s": 7.0, "psi_s": 4.0}
    return {"imputations": m, "permutations": p, **{**base, **seconds}}


def test_extrapolation_keeps_the_fixed_part_and_scales_the_rest():
    runs = [_run(2, 41, impute_s=1.0, psi_s=4.0), _run(4, 41, impute_s=1.8, psi_s=6.0)]
    # imputation: 1.8 + 0.4 s per imputation beyond 4
    assert S._at_target(runs, "impute_s", True, 50, 1000) == pytest.approx(1.8 + 0.4 * 46)
    # PSI: per permutation 0.1 s at 2 and 0.15 s at 4 imputations, then 999 permutations
    assert S._at_target(runs, "psi_s", True, 50, 1000) == pytest.approx(
        (0.15 + 0.025 * 46) * 999)
    # the MLE does not depend on the imputations
    assert S._at_target(runs, "mle_s", False, 50, 1000) == 40.0
    # a slope lost in noise (smaller at more imputations) is not extrapolated downwards
    noisy = [_run(2, 41, meta_s=0.6), _run(4, 41, meta_s=0.5)]
    assert S._at_target(noisy, "meta_s", True, 50, 1000) == 0.5
    # one run: in proportion to the imputations
    assert S._at_target(runs[1:], "impute_s", True, 50, 1000) == pytest.approx(1.8 * 12.5)


def test_growth_exponents_read_linear_and_quadratic_growth():
    rows = [{"studies": k, "a": 2.0 * k, "b": 0.1 * k * k} for k in (10, 50, 200)]
    assert S.growth_exponents(rows, "a") == {"10->50": 1.0, "50->200": 1.0}
    assert S.growth_exponents(rows, "b") == {"10->50": 2.0, "50->200": 2.0}


def test_table_and_plot(tmp_path):
    done = {"studies": 10, "voxels": 1000, "extrapolated": True, "measured_imputations": 4,
            "stages_s": {key: 1.0 for key, _, _ in S.STAGES}, "meta_total_s": 4.0,
            "psi_total_s": 2.0, "peak_rss_measured_gb": 1.0, "peak_rss_target_gb": 1.5,
            "psi_arrays_target_gb": 0.2}
    skipped = {"studies": 500, "voxels": 1000, "psi_arrays_target_gb": 21.0,
               "failed": "not run"}
    table = S.scaling_table([done, skipped], 50, 1000)
    lines = table.splitlines()
    assert len(lines) == 4 and all(line.count("|") == lines[0].count("|") for line in lines)
    assert "~1.0" in lines[2] and "| 500 |" in lines[3] and "21.00" in lines[3]
    png = S.scaling_plot([done, skipped], tmp_path / "scaling.png", 50, 1000, True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # no size completed (all stopped or too large): the memory model is still drawn
    png = S.scaling_plot([skipped], tmp_path / "none.png", 50, 1000, True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
