"""SDM-PSI project format: lossless export/import of our data and import of a real project."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import paths
from analysis.data_tables import load_peaks, load_studies
from analysis.sdm.errors import DataErrors
from analysis.sdm.inputs.project import read_sdm_project, write_sdm_project


def _parse_folder(folder):
    """Every file of an SDM folder as parsed values (table cells as floats where numeric)."""
    out = {}
    for f in sorted(folder.iterdir()):
        if f.name == "sdm_table.txt":
            t = pd.read_csv(f, sep="\t", dtype=str, keep_default_na=False)
            out[f.name] = t.map(_num)
        elif f.name.endswith(".txt"):
            out[f.name] = [tuple(_num(c) for c in line.split(","))
                           for line in f.read_text().splitlines() if line.strip()]
    return out


def _num(cell):
    try:
        return float(cell)
    except ValueError:
        return cell


def test_round_trip_our_data(tmp_path):
    studies, peaks = load_studies(paths.data_dir()), load_peaks(paths.data_dir(), check_mask=False)
    a = write_sdm_project(studies, peaks, tmp_path / "a")
    s2, p2 = read_sdm_project(a)
    assert list(s2["study"]) == list(studies["study"])
    # imported tables load as data and give identical MNI coordinates and t values
    d = tmp_path / "d"
    from analysis.data_tables import write_data_tables

    write_data_tables(s2, p2, d)
    st2 = load_studies(d)
    for col in ("n1", "n2", "t_thr", "age", "female_pct", "treated"):
        np.testing.assert_array_equal(st2[col].to_numpy(float), studies[col].to_numpy(float))
    pk2 = load_peaks(d, check_mask=False)
    cols = ["study", "sign", "space", "x", "y", "z", "x_mni", "y_mni", "z_mni", "t"]
    pd.testing.assert_frame_equal(pk2[cols], peaks[cols])
    # and export -> import -> export is byte-identical
    b = write_sdm_project(s2, p2, tmp_path / "b")
    names = sorted(f.name for f in a.iterdir())
    assert names == sorted(f.name for f in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_import_enge(enge_dir, tmp_path):
    studies, peaks = read_sdm_project(enge_dir)
    assert len(studies) == 50 and len(peaks) == 687
    assert (studies["design"] == "one-sample").all() and (studies["n_controls"] == "").all()
    assert (peaks["stat_type"] == "none").sum() == 226
    assert (peaks["sign"] == "-1").sum() == 12 and (peaks["space"] == "MNI").all()
    assert set(peaks["provenance"]) == {f"unknown:sdm-import:{enge_dir.name}"}
    row = studies.set_index("study").loc["bauer2017"]
    assert (row.n_patients, row.t_thr, row.threshold) == ("14", "3.012275838207184",
                                                          "uncorrected")
    assert list(studies.columns[7:]) == ["age_mean_c", "age_mean_c_2", "task_type", "language",
                                         "modality_pres", "modality_resp", "software"]
    # lossless: writing it back gives the same values in every file
    out = write_sdm_project(studies, peaks, tmp_path / "enge")
    ours, theirs = _parse_folder(out), _parse_folder(enge_dir)
    for name, value in ours.items():
        if name == "sdm_table.txt":
            pd.testing.assert_frame_equal(value, theirs[name])
        else:
            assert value == theirs[name], name
    assert set(ours) == {k for k in theirs if k.endswith(".other_mni.txt")} | {"sdm_table.txt"}


def test_one_sample_and_unknown_peaks(tmp_path):
    d = tmp_path / "proj"
    d.mkdir()
    (d / "sdm_table.txt").write_text("study\tn1\tn2\tt_thr\tthreshold\tcov\n"
                                     "a\t10\t12\t3.5\tuncorrected\t1\n"
                                     "b\t8\t\t4.0\tcorrected\t0\n"
                                     "c\t9\t9\t2.5\tuncorrected\t1\n")
    (d / "a.spm_brett.txt").write_text("10,20,30,4.5\n-10,-20,-30,n\n")
    (d / "b.other_tal.txt").write_text("1.5,2,3,p\n")
    (d / "c.no_peaks.txt").write_text("")
    (d / "sdm_maps.txt").write_text("not a peak file\n")
    s, p = read_sdm_project(d)
    assert list(s["design"]) == ["two-sample", "one-sample", "two-sample"]
    assert list(s["peak_file"]) == ["spm_brett", "other_tal", "no_peaks"]
    assert list(p["space"]) == ["TAL_BRETT", "TAL_BRETT", "TAL"]
    assert list(p["sign"]) == ["1", "-1", "1"]
    out = write_sdm_project(s, p, tmp_path / "out")
    ours, theirs = _parse_folder(out), _parse_folder(d)
    assert set(ours) == set(theirs) - {"sdm_maps.txt"}
    pd.testing.assert_frame_equal(ours.pop("sdm_table.txt"), theirs["sdm_table.txt"])
    assert ours == {k: theirs[k] for k in ours}  # values equal ("4.0" is written "4")


def test_bad_project_lists_all_errors(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "sdm_table.txt").write_text("study\tn1\tt_thr\tthreshold\na\t10\t3\tuncorrected\n"
                                     "b\t10\t3\tuncorrected\n")
    (d / "a.other_mni.txt").write_text("1,2,3,4\n1,2,x,5\n4,5,6\n")
    (d / "z.other_mni.txt").write_text("1,2,3,4\n")
    with pytest.raises(DataErrors) as info:
        read_sdm_project(d)
    where = {(e.file, e.row, e.field) for e in info.value.errors}
    assert ("a.other_mni.txt", 2, "z") in where
    assert ("a.other_mni.txt", 3, "t") in where
    assert ("sdm_table.txt", 2, "study") in where  # b has no peak file
    assert any(e.file == "z.other_mni.txt" for e in info.value.errors)


def test_import_export_cli(enge_dir, tmp_path, capsys):
    from analysis.cli import main

    out = tmp_path / "data"
    assert main(["import-sdm", str(enge_dir), "--data", str(out)]) == 0
    assert "50 studies and 687 peaks (226 without a statistic)" in capsys.readouterr().out
    assert main(["import-sdm", str(enge_dir), "--data", str(out)]) == 1  # no silent overwrite
    assert main(["export-sdm", str(tmp_path / "proj"), "--data", str(out)]) == 0
    assert len(list((tmp_path / "proj").glob("*.other_mni.txt"))) == 50
