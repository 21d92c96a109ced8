"""One rule set for every input of the engine: a data folder, an SDM-PSI project folder, a
NiMARE Dataset and the engine's Python tables (``SDMDataset``) meet the same bounds, and errors
name the source, row and field. What SDM-PSI accepts (Enge et al. 2021's public project) is
accepted, with warnings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.sdm.errors import DataErrors
from analysis.sdm.inputs.dataset import SDMDataset


def _tables():
    """Three SIMULATED studies (test input only) with one peak each, in the brain."""
    studies = pd.DataFrame({"study": ["a", "b", "c"], "n1": [20, 25, 18],
                            "n2": [20, 24, np.nan], "t_thr": [3.3, 3.2, 3.5]})
    peaks = pd.DataFrame({"study": ["a", "b", "c"], "x": [-40, -42, 30], "y": [16, 18, 10],
                          "z": [-4, -6, 4], "t": [5.1, 4.4, -4.0], "sign": [1, 1, -1]})
    return studies, peaks


def _nimare(studies, peaks):
    return SDMDataset(studies, peaks).to_nimare()


# each case: (table, row index, column, value, field named in the error)
BAD = {
    "n = 1e9": ("studies", 0, "n1", 1e9, "n1"),
    "n not an integer": ("studies", 1, "n2", 10.5, "n2"),
    "t_thr = 1e6": ("studies", 2, "t_thr", 1e6, "t_thr"),
    "t_thr = inf": ("studies", 2, "t_thr", np.inf, "t_thr"),
    "t = 1e12": ("peaks", 0, "t", 1e12, "t"),
    "t = inf": ("peaks", 1, "t", np.inf, "t"),
    "peak at (500, 500, 500)": ("peaks", 2, "x", 500.0, "x"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_python_tables_are_checked(case):
    studies, peaks = _tables()
    table, row, col, value, field = BAD[case]
    target = studies if table == "studies" else peaks
    target[col] = target[col].astype(float)
    target.loc[row, col] = value
    if col == "x":
        peaks.loc[row, ["y", "z"]] = value
    with pytest.raises(DataErrors) as info:
        SDMDataset(studies, peaks)
    where = {(e.file, e.row, e.field) for e in info.value.errors}
    assert (f"SDMDataset {table}", row + 1, field) in where, str(info.value)


@pytest.mark.parametrize("case", sorted(BAD))
def test_nimare_dataset_is_checked(case):
    """``from_nimare`` meets the same bounds (it used to fit n = 1e9, t = inf...)."""
    studies, peaks = _tables()
    dset = _nimare(studies, peaks)
    table, row, col, value, field = BAD[case]
    if table == "studies":
        meta = dset.metadata
        sid = meta["id"].iloc[row]
        if col == "t_thr":
            meta.loc[meta["id"] == sid, "t_thr"] = value
        else:
            sizes = list(meta.loc[meta["id"] == sid, "sample_sizes"].iloc[0])
            sizes[0 if col == "n1" else 1] = value
            meta.loc[meta["id"] == sid, "sample_sizes"] = pd.Series(
                [sizes], index=meta.index[meta["id"] == sid])
        src = "NiMARE Dataset studies"
    else:
        coords = dset.coordinates
        pos = coords.index[coords["id"] == dset.metadata["id"].iloc[row]][0]
        coords[col] = coords[col].astype(float)
        coords.loc[pos, col] = value
        if col == "x":
            coords.loc[pos, ["y", "z"]] = value
        row = coords.index.get_loc(pos)
        src = "NiMARE Dataset peaks"
    with pytest.raises(DataErrors) as info:
        SDMDataset.from_nimare(dset)
    where = {(e.file, e.row, e.field) for e in info.value.errors}
    assert (src, row + 1, field) in where, str(info.value)


@pytest.mark.parametrize("sizes", [[], [10, 20, 30]])
def test_nimare_sample_sizes_of_wrong_length(sizes):
    """[] used to raise IndexError and [10, 20, 30] dropped the third value silently."""
    dset = _nimare(*_tables())
    meta = dset.metadata
    meta["sample_sizes"] = pd.Series([list(sizes)] + list(meta["sample_sizes"].iloc[1:]),
                                     index=meta.index)
    with pytest.raises(DataErrors) as info:
        SDMDataset.from_nimare(dset)
    (err,) = info.value.errors
    assert (err.file, err.row, err.field) == ("NiMARE Dataset metadata", 1, "sample_sizes")


def test_untidy_but_usable_peaks_warn(caplog):
    """A t below t_thr and a repeated peak are warnings in every entry point, not errors."""
    studies, peaks = _tables()
    peaks.loc[0, "t"] = 2.0  # below t_thr = 3.3
    peaks = pd.concat([peaks, peaks.iloc[[1]]], ignore_index=True)
    warnings: list[str] = []
    from analysis.sdm.inputs.dataset import check_dataset

    check_dataset(studies, peaks, warnings=warnings)
    assert any("row 1, field 't'" in w and "below" in w for w in warnings), warnings
    assert any("row 4, field 'x'" in w and "duplicate" in w for w in warnings), warnings
    ds = SDMDataset.from_nimare(SDMDataset(studies, peaks).to_nimare())
    assert len(ds.peaks) == 4


def test_enge_project_imports_and_validates(enge_dir, tmp_path, capsys):
    """Enge et al.'s public SDM-PSI project (run by SDM-PSI v6.21) passes import-sdm and then
    validate-data, with the same warnings, each printed once: 5 peaks 4-12 mm outside the
    brain mask, 8 t below t_thr, one repeated peak."""
    from analysis.cli import main

    out = tmp_path / "data"
    assert main(["import-sdm", str(enge_dir), "--data", str(out)]) == 0
    imported = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("warning:")]
    assert main(["validate-data", "--data", str(out)]) == 0
    text = capsys.readouterr()
    validated = [ln for ln in text.out.splitlines() if ln.startswith("warning:")]
    assert "data OK" in text.out and "warning" not in text.err
    peak_warnings = [w for w in validated if "peaks.tsv, row" in w]
    assert sorted(peak_warnings) == sorted(w for w in imported if "peaks.tsv, row" in w)
    # imported without --source or a provenance record: never counted as real
    assert any("provenance unknown" in w for w in imported)
    assert len(set(validated)) == len(validated)  # each printed once
    assert sum("outside the 2 mm MNI152 brain mask" in w for w in imported) == 5
    assert sum("below the study's voxel threshold" in w for w in imported) == 8
    assert sum("duplicate peak" in w for w in imported) == 1


def test_blank_t_thr_is_refused_at_import(tmp_path, capsys):
    """A blank t_thr on an "uncorrected" row used to pass import-sdm and fail later in meta."""
    from analysis.cli import main

    d = tmp_path / "proj"
    d.mkdir()
    (d / "sdm_table.txt").write_text("study\tn1\tt_thr\tthreshold\n"
                                     "a\t10\t3.5\tuncorrected\nb\t12\t\tuncorrected\n")
    (d / "a.other_mni.txt").write_text("40,16,-4,4.5\n")
    (d / "b.other_mni.txt").write_text("-40,16,-4,5.0\n")
    assert main(["import-sdm", str(d), "--data", str(tmp_path / "data")]) != 0
    err = capsys.readouterr().err
    assert "sdm_table.txt, row 2, field 't_thr'" in err
    assert not (tmp_path / "data" / "studies.tsv").exists()
