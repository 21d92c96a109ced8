"""Data layer: coordinate/statistic conversions, studies.tsv, peaks.tsv, validate-data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import paths
from analysis.data_tables import load_peaks, load_studies, write_peaks
from analysis.sdm.errors import DataError, DataErrors
from analysis.sdm.inputs import coords
from analysis.sdm.inputs.peaks import PEAK_COLUMNS
from analysis.validate import validate_data

# --------------------------------------------------------------------------- conversions


def test_tal2mni_matches_nimare(rng):
    from nimare.utils import mni2tal, tal2mni

    tal = rng.uniform(-70, 70, size=(50, 3))
    np.testing.assert_allclose(coords.tal2mni_lancaster(tal), tal2mni(tal), atol=1e-10)
    np.testing.assert_allclose(coords.mni2tal_lancaster(tal), mni2tal(tal), atol=1e-10)


@pytest.mark.parametrize("variant", ["icbm_other", "icbm_spm", "icbm_fsl"])
def test_lancaster_round_trip(rng, variant):
    mni = rng.uniform(-70, 70, size=(20, 3))
    back = coords.tal2mni_lancaster(coords.mni2tal_lancaster(mni, variant), variant)
    np.testing.assert_allclose(back, mni, atol=1e-9)


def test_brett_matrices_and_inverse(rng):
    # spm_matrix form equals the 4-decimal matrices of Brett's mni2tal.m (as in FieldTrip's copy)
    up = np.array([[0.9900, 0, 0], [0, 0.9688, 0.0460], [0, -0.0485, 0.9189]])
    down = np.array([[0.9900, 0, 0], [0, 0.9688, 0.0420], [0, -0.0485, 0.8390]])
    np.testing.assert_allclose(coords.BRETT_UP, up, atol=6e-5)
    np.testing.assert_allclose(coords.BRETT_DOWN, down, atol=6e-5)
    mni = rng.uniform(-70, 70, size=(40, 3))
    np.testing.assert_allclose(coords.tal2mni_brett(coords.mni2tal_brett(mni)), mni, atol=1e-9)
    # Brett's transform shrinks: a superior MNI point maps to a lower Talairach z
    assert coords.mni2tal_brett([[0, 0, 60]])[0, 2] < 60


def test_statistic_conversions():
    # z -> t keeps the one-tailed probability and the sign
    t = coords.z_to_t(np.array([3.0, -3.0]), 20)
    np.testing.assert_allclose(stats.t.sf(t[0], 20), stats.norm.sf(3.0), rtol=1e-10)
    assert t[1] == -t[0] and t[0] > 3.0
    # known value: t(0.999, df=28) = 3.408 (tables); p_to_t is one-tailed
    assert coords.p_to_t(0.001, 28) == pytest.approx(3.4082, abs=1e-4)
    assert coords.t_threshold(0.05, 20) == pytest.approx(1.7247, abs=1e-4)
    # extreme z stays finite
    assert np.isfinite(coords.z_to_t(8.0, 10))
    with pytest.raises(ValueError):
        coords.p_to_t(1.5, 10)


def test_to_mni_unknown_space():
    with pytest.raises(ValueError, match="unknown space"):
        coords.to_mni([[0, 0, 0]], "MNI305")


# --------------------------------------------------------------------------- studies


def test_load_studies_derived_columns():
    s = load_studies(paths.data_dir()).set_index("study")
    assert len(s) == 11
    assert s["n1"].sum() == 296 and s["n2"].sum() == 229
    assert s.loc["Moriguchi2007", "df"] == 28
    assert s.loc["Bird2010", "threshold_kind"] == "uncorrected"
    assert s.loc["Bird2010", "t_thr"] == pytest.approx(stats.t.isf(0.001, 34))
    # corrected: the rule of data/README.md (t for one-tailed p = 0.05)
    assert s.loc["Fan2013", "t_thr"] == pytest.approx(stats.t.isf(0.05, 43))
    assert s.loc["Bird2010", "age"] == pytest.approx((34.6 * 18 + 35 * 18) / 36)
    assert np.isnan(s.loc["Xu2020", "age"])
    assert s.loc["Fujino2014", "treated"] == 1 and s.loc["Bird2010", "treated"] == 0
    assert s.loc["Moriguchi2007", "female_pct"] == 83


# --------------------------------------------------------------------------- peaks


def test_moriguchi_peaks():
    p = load_peaks(paths.data_dir())
    m = p[p.study == "Moriguchi2007"]
    assert len(m) == 27
    assert (m.provenance.str.startswith("original:")).all()
    assert (m.sign == -1).sum() == 17 and (m.sign == 1).sum() == 10
    assert (np.sign(m.t) == m.sign).all()
    first = m.iloc[0]
    assert (first.x_mni, first.y_mni, first.z_mni, first.t) == (-20, 56, 34, -4.73)


def test_conversions_recorded(data_copy):
    """A Talairach z peak and a p peak (labelled test rows) are converted and recorded."""
    _only_moriguchi(data_copy / "peaks.tsv")
    peaks = pd.read_csv(data_copy / "peaks.tsv", sep="\t", dtype=str, keep_default_na=False)
    extra = pd.DataFrame([
        ["Fujino2014", "1", "1", "40", "10", "20", "TAL", "z", "3.5", "simulated:vtest:seed=0", ""],
        ["Fujino2014", "2", "-1", "-40", "10", "-10", "TAL", "p", "0.001",
         "simulated:vtest:seed=0", ""],
        ["Fujino2014", "3", "-1", "-30", "20", "30", "TAL", "none", "",
         "simulated:vtest:seed=0", ""],
    ], columns=PEAK_COLUMNS)
    write_peaks(pd.concat([peaks, extra]), data_copy)
    p = load_peaks(data_copy).set_index(["study", "peak_id"])
    r = p.loc[("Fujino2014", 1)]
    assert r.conversion == "z→t (df=20); TAL→MNI (Lancaster icbm_other2tal inverse)"
    assert r.t == pytest.approx(coords.z_to_t(3.5, 20))
    np.testing.assert_allclose([r.x_mni, r.y_mni, r.z_mni],
                               coords.tal2mni_lancaster([[40, 10, 20]])[0])
    r2 = p.loc[("Fujino2014", 2)]
    assert r2.t == pytest.approx(-stats.t.isf(0.001, 20))
    assert np.isnan(p.loc[("Fujino2014", 3)].t)


def test_write_peaks_canonical_and_atomic(data_copy):
    before = (data_copy / "peaks.tsv").read_bytes()
    peaks = pd.read_csv(data_copy / "peaks.tsv", sep="\t", dtype=str, keep_default_na=False)
    write_peaks(peaks.sample(frac=1, random_state=0), data_copy)  # shuffled in, sorted out
    assert (data_copy / "peaks.tsv").read_bytes() == before
    bad = peaks.copy()
    bad.loc[0, "sign"] = "2"
    with pytest.raises(DataError, match="sign"):
        write_peaks(bad, data_copy)
    assert (data_copy / "peaks.tsv").read_bytes() == before  # nothing written


# --------------------------------------------------------------------------- validate-data

def _edit_line(path, row, col, value):
    lines = path.read_text(encoding="utf-8").split("\n")
    header = lines[0].split("\t")
    cells = lines[row].split("\t")
    cells[header.index(col)] = value
    lines[row] = "\t".join(cells)
    path.write_text("\n".join(lines), encoding="utf-8")


def _only_moriguchi(peaks_file):
    """Keep the 27 real Moriguchi 2007 rows (stable row numbers whatever the simulated rows)."""
    lines = peaks_file.read_text(encoding="utf-8").split("\n")
    keep = [lines[0]] + [ln for ln in lines[1:] if ln.startswith("Moriguchi2007\t")]
    assert len(keep) == 28
    peaks_file.write_text("\n".join(keep) + "\n", encoding="utf-8")


def _case(name, d):
    """Break the copy of data/ as named; return (file, row, field) the error must name."""
    P, S = d / "peaks.tsv", d / "studies.tsv"
    _only_moriguchi(P)
    if name == "malformed-row":
        lines = P.read_text().split("\n")
        lines[3] = "\t".join(lines[3].split("\t")[:5])
        P.write_text("\n".join(lines))
        return "peaks.tsv", 3, "z"
    if name == "wrong-columns":
        P.write_text(P.read_text().replace("stat_value", "value", 1))
        return "peaks.tsv", 0, "stat_value"
    if name == "empty-file":
        P.write_text("")
        return "peaks.tsv", 0, None
    if name == "not-utf8":
        lines = P.read_bytes().split(b"\n")
        lines[4] = lines[4].replace(b"cluster", b"cl\xe9ster", 1)
        P.write_bytes(b"\n".join(lines))
        return "peaks.tsv", 4, "note"
    if name == "unknown-study":
        _edit_line(P, 5, "study", "Nobody2099")
        return "peaks.tsv", 5, "study"
    if name == "duplicate-peak":
        lines = P.read_text().split("\n")
        dup = lines[2].split("\t")
        dup[1] = "99"
        lines.insert(10, "\t".join(dup))
        P.write_text("\n".join(lines))
        return "peaks.tsv", 10, "x"
    if name == "outside-mask":
        _edit_line(P, 6, "x", "85")
        _edit_line(P, 6, "y", "90")
        return "peaks.tsv", 6, "x"
    if name == "sign-vs-contrasts":
        _edit_line(P, 7, "study", "Bird2010")  # Bird reported only HC > patients
        _edit_line(P, 7, "sign", "1")
        _edit_line(P, 7, "stat_value", "4.0")
        return "peaks.tsv", 7, "sign"
    if name == "stat-vs-sign":
        _edit_line(P, 8, "stat_value", "4.5")  # row 8 has sign -1
        return "peaks.tsv", 8, "stat_value"
    if name == "near-brain":  # 8 mm outside the brain: SDM-PSI keeps it (Enge et al. 2021)
        _edit_line(P, 6, "x", "0")
        _edit_line(P, 6, "y", "0")
        _edit_line(P, 6, "z", "84")
        return "peaks.tsv", 6, "x"
    if name == "below-threshold":
        _edit_line(P, 13, "stat_value", "-2.1")  # Moriguchi t_thr (p<0.005, df=28) = 2.763
        return "peaks.tsv", 13, "stat_value"
    if name == "missing-n":
        _edit_line(S, 2, "n_patients", "")
        return "studies.tsv", 2, "n_patients"
    if name == "non-numeric-n":
        _edit_line(S, 3, "n_controls", "twenty")
        return "studies.tsv", 3, "n_controls"
    if name == "non-numeric-t":
        _edit_line(P, 9, "stat_value", "high")
        return "peaks.tsv", 9, "stat_value"
    if name == "unknown-space":
        _edit_line(P, 11, "space", "MNI305")
        return "peaks.tsv", 11, "space"
    if name == "p-out-of-range":
        _edit_line(P, 12, "stat_type", "p")
        _edit_line(P, 12, "stat_value", "1.2")
        return "peaks.tsv", 12, "stat_value"
    raise AssertionError(name)


CASES = ["malformed-row", "wrong-columns", "empty-file", "not-utf8", "unknown-study",
         "outside-mask", "sign-vs-contrasts", "stat-vs-sign", "missing-n",
         "non-numeric-n", "non-numeric-t", "unknown-space", "p-out-of-range"]
#: what SDM-PSI accepts although a real project is untidy: warnings naming file, row and field
WARNING_CASES = ["duplicate-peak", "below-threshold", "near-brain"]


@pytest.mark.parametrize("case", CASES)
def test_validate_data_names_file_row_field(data_copy, case):
    file, row, field = _case(case, data_copy)
    with pytest.raises(DataErrors) as info:
        validate_data(data_copy)
    hits = [e for e in info.value.errors if e.file == file and e.row == row and e.field == field]
    assert hits, f"no error at {file} row {row} field {field}: {info.value}"
    text = str(hits[0])
    assert file in text and f"row {row}" in text
    if field:
        assert f"field '{field}'" in text


@pytest.mark.parametrize("case", WARNING_CASES)
def test_validate_data_warns_where_sdm_psi_accepts(data_copy, case):
    """Repeated peaks, t below t_thr and peaks 4-20 mm outside the brain pass, with a warning
    naming file, row and field (one rule set with import-sdm and every engine entry point)."""
    file, row, field = _case(case, data_copy)
    summary = validate_data(data_copy)
    hits = [w for w in summary["warnings"] if w.startswith(f"{file}, row {row}, field '{field}'")]
    assert len(hits) == 1, summary["warnings"]


def test_validate_data_reports_all_errors(data_copy):
    _case("missing-n", data_copy)
    _case("stat-vs-sign", data_copy)
    _case("unknown-space", data_copy)
    with pytest.raises(DataErrors) as info:
        validate_data(data_copy)
    where = {(e.file, e.row, e.field) for e in info.value.errors}
    assert {("studies.tsv", 2, "n_patients"), ("peaks.tsv", 8, "stat_value"),
            ("peaks.tsv", 11, "space")} <= where


def test_validate_data_cli(data_copy, results_tmp, capsys):
    from analysis.cli import main

    assert main(["validate-data", "--data", str(data_copy)]) == 0
    out = capsys.readouterr().out
    assert "patients: 296" in out and "controls: 229" in out and "Moriguchi2007" in out
    _case("unknown-study", data_copy)
    before = sorted(p.name for p in data_copy.iterdir())
    assert main(["validate-data", "--data", str(data_copy)]) != 0
    err = capsys.readouterr().err
    assert "peaks.tsv, row 5, field 'study'" in err
    assert sorted(p.name for p in data_copy.iterdir()) == before
    assert not results_tmp.exists()
