"""Reliability: honest provenance, bounded inputs, located errors, validated configuration,
atomic stages, reproducible outputs and verified caches (each case a regression test)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from test_data_layer import _edit_line as _edit  # set one cell of a TSV file (row 0 = header)

from analysis import cli, paths
from analysis import manuscript_values as mv
from analysis.data_tables import load_dataset
from analysis.sdm.errors import DataError, DataErrors
from analysis.validate import validate_data

# --- helpers -------------------------------------------------------------------------------------


def _keep_peaks(path, study_prefixes):
    lines = path.read_text(encoding="utf-8").split("\n")
    keep = [lines[0]] + [ln for ln in lines[1:] if ln.startswith(tuple(study_prefixes))]
    path.write_text("\n".join(keep) + "\n", encoding="utf-8")


def _errors(exc_info):
    err = exc_info.value
    return err.errors if isinstance(err, DataErrors) else [err]


def _located(exc_info, file, field, row=None):
    return [e for e in _errors(exc_info)
            if e.file == file and e.field == field and (row is None or e.row == row)]


# --- 1. provenance over all studies of the study table -----------------------------------------


def test_provenance_counts_studies_without_peaks(data_copy):
    _keep_peaks(data_copy / "peaks.tsv", ["Moriguchi2007\t"])  # the simulated rows deleted
    summary = validate_data(data_copy, check_mask=False)
    assert summary["studies_real"] == ["Moriguchi2007"]
    assert len(summary["studies_without_peaks"]) == 10 and "Bird2010" in summary["warnings"][0]
    prov = mv.provenance(data_copy)
    assert not prov.all_real and prov.n_studies == 11 and prov.n_studies_no_peaks == 10
    banner = mv.provenance_banner(prov)
    assert "no peak coordinates at all" in banner and "Bird2010" in banner
    assert "1 of 11" in banner

    from analysis.stages.meta import input_provenance

    ip = input_provenance(load_dataset(data_copy))
    assert ip["real"] == ["Moriguchi2007"] and len(ip["no_peaks"]) == 10
    assert "10 without peaks" in ip["statement"]


def test_provenance_header_only_peaks_is_not_all_real(data_copy):
    peaks = data_copy / "peaks.tsv"
    peaks.write_text(peaks.read_text().split("\n")[0] + "\n")
    prov = mv.provenance(data_copy)
    assert not prov.all_real and prov.real_studies == [] and prov.n_studies_no_peaks == 11
    assert "Data provenance" in mv.provenance_banner(prov)


def test_validate_data_cli_warns_on_study_without_peaks(data_copy, capsys):
    lines = (data_copy / "peaks.tsv").read_text().split("\n")
    (data_copy / "peaks.tsv").write_text(
        "\n".join(ln for ln in lines if not ln.startswith("Xu2020\t")))
    assert cli.main(["validate-data", "--data", str(data_copy), "--no-mask"]) == 0
    out = capsys.readouterr().out
    assert "warning:" in out and "Xu2020" in out and "without peaks: 1" in out


def test_provenance_one_classification():
    from analysis.data_tables import classify_provenance

    v = classify_provenance(["A", "B", "C", "D"], ["A", "B", "B", "X"],
                            ["original:a", "sdm-import:p", "simulated:v1", "simulated:v1"])
    assert (v.real, v.simulated, v.no_peaks) == (["A"], ["B"], ["C", "D"])
    assert (v.n_peaks_real, v.n_peaks_simulated) == (2, 1) and not v.all_real
    assert classify_provenance(["A"], ["A"], ["original:a"]).all_real
    with pytest.raises(DataError, match="row 2, field 'provenance'"):
        classify_provenance(["A"], ["A", "A"], ["original:a", "typo:x"])


# --- 2. plausibility bounds --------------------------------------------------------------------


@pytest.mark.parametrize("file,row,col,value", [
    ("peaks.tsv", 27, "stat_value", "-1e12"),      # a Moriguchi2007 t
    ("peaks.tsv", 27, "stat_value", "-1e300"),
    ("studies.tsv", 2, "n_patients", "1000000"),
    ("studies.tsv", 3, "n_controls", "250000"),
])
def test_bounds_on_t_and_n_are_located_errors(data_copy, file, row, col, value):
    path = data_copy / file
    if file == "peaks.tsv":
        _keep_peaks(path, ["Moriguchi2007\t"])
        sign = path.read_text().split("\n")[row].split("\t")[2]
        value = value if sign == "-1" else value.lstrip("-")
    _edit(path, row, col, value)
    with pytest.raises(DataErrors) as info:
        validate_data(data_copy, check_mask=False)
    assert _located(info, file, col, row), str(info.value)


def test_bound_on_z_and_on_converted_statistics(data_copy):
    path = data_copy / "peaks.tsv"
    _keep_peaks(path, ["Moriguchi2007\t"])
    sign = path.read_text().split("\n")[3].split("\t")[2]
    s = "" if sign == "1" else "-"
    _edit(path, 2, "stat_type", "z")
    _edit(path, 2, "stat_value", f"{s}45")
    _edit(path, 3, "stat_type", "p")
    _edit(path, 3, "stat_value", "1e-290")  # converts to |t| far above 100 with df = 28
    with pytest.raises(DataErrors) as info:
        validate_data(data_copy, check_mask=False)
    assert _located(info, "peaks.tsv", "stat_value", 2)
    assert _located(info, "peaks.tsv", "stat_value", 3)


# --- 3. one-line errors at the command line ----------------------------------------------------


def test_duplicate_study_id_is_a_message_not_a_crash(data_copy, capsys):
    _edit(data_copy / "studies.tsv", 3, "study", "bird2010")  # beside Bird2010: same id
    assert cli.main(["validate-data", "--data", str(data_copy)]) == 1
    err = capsys.readouterr().err
    assert "studies.tsv, row 3, field 'study': duplicate study 'bird2010'" in err
    assert "Traceback" not in err


def test_header_only_study_table(data_copy, capsys):
    path = data_copy / "studies.tsv"
    path.write_text(path.read_text().split("\n")[0] + "\n")
    assert cli.main(["validate-data", "--data", str(data_copy)]) == 1
    assert "studies.tsv, field 'study': the table has a header but no study rows" in \
        capsys.readouterr().err


def test_overlong_study_id_is_refused(data_copy):
    _edit(data_copy / "studies.tsv", 2, "study", "x" * 5000)
    with pytest.raises(DataErrors) as info:
        validate_data(data_copy, check_mask=False)
    assert _located(info, "studies.tsv", "study", 2)
    assert "5000 characters" in str(info.value)


@pytest.mark.parametrize("exc,expect", [
    ("fetch", "checksum mismatch for x.nii.gz"),
    ("perm", "Permission denied: /r/values"),
    ("config", "key 'sdm.imputations'"),
    ("value", "bad value"),
    ("bug", "internal error (ZeroDivisionError"),
])
def test_cli_errors_are_one_line_and_debug_shows_traceback(monkeypatch, capsys, exc, expect):
    from analysis.commands import validate_data as cmd
    from analysis.errors import ConfigError
    from analysis.sdm.datasets import FetchError

    def boom(args):
        if exc == "fetch":
            raise FetchError("checksum mismatch for x.nii.gz")
        if exc == "perm":
            raise PermissionError(13, "Permission denied", "/r/values")
        if exc == "config":
            raise ConfigError("sdm.imputations", "not an integer", "--set")
        if exc == "value":
            raise ValueError("bad value")
        return 1 / 0

    monkeypatch.setattr(cmd, "run_command", boom)
    assert cli.main(["validate-data"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expect in err
    with pytest.raises(Exception):  # noqa: B017 (any of them)
        cli.main(["--debug", "validate-data"])
    with pytest.raises(Exception):  # noqa: B017
        cli.main(["validate-data", "--debug"])


def test_cli_entry_point_exit_status(tmp_path):
    env = {**os.environ, "PAINEMP_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "analysis", "validate-data", "--data",
                          str(tmp_path / "none")], capture_output=True, text=True, env=env)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "studies.tsv: file not found" in out.stderr


# --- 4. whitespace and case ------------------------------------------------------------------------


def test_whitespace_is_stripped_everywhere(data_copy):
    from analysis.data_tables import load_peaks, load_studies

    s = data_copy / "studies.tsv"
    lines = s.read_text().split("\n")
    _edit(s, 1, "study", " Bird2010 ")
    _edit(s, 1, "disorder_abbrev", "Alexithymia  ")
    lines = s.read_text().split("\n")
    lines[0] = lines[0].replace("disorder_abbrev", "disorder_abbrev ")
    s.write_text("\n".join(lines))
    _edit(data_copy / "peaks.tsv", 1, "study", "Bird2010\u00a0")
    summary = validate_data(data_copy, check_mask=False)
    assert "Bird2010" in summary["peaks_per_study"]
    st = load_studies(data_copy)
    assert st["study"].iloc[0] == "Bird2010" and "disorder_abbrev" in st.columns
    assert st["disorder_abbrev"].iloc[0] == "Alexithymia"
    pk = load_peaks(data_copy, check_mask=False)
    assert set(pk["study"]) == set(st["study"])


def test_case_insensitive_duplicate_ids(data_copy):
    _edit(data_copy / "studies.tsv", 2, "study", "BIRD2010")
    with pytest.raises(DataErrors) as info:
        validate_data(data_copy, check_mask=False)
    hit = _located(info, "studies.tsv", "study", 2)
    assert hit and "also row 1" in str(hit[0])


# --- 5. SDM project import -------------------------------------------------------------------------


@pytest.fixture
def sdm_folder(tmp_path):
    """A small SDM project: three studies of the compendium's data."""
    from analysis.data_tables import load_peaks, load_studies
    from analysis.sdm.inputs.project import write_sdm_project

    st = load_studies(paths.data_dir())
    keep = ["Bird2010", "Moriguchi2007", "Xu2020"]
    pk = load_peaks(paths.data_dir(), studies=st, check_mask=False)
    st = st[st["study"].isin(keep)].reset_index(drop=True)
    return write_sdm_project(st, pk[pk["study"].isin(keep)], tmp_path / "proj")


def _read(folder):
    from analysis.sdm.inputs.project import read_sdm_project

    with pytest.raises(DataErrors) as info:
        read_sdm_project(folder)
    return info


def test_sdm_no_peaks_file_with_peaks(sdm_folder):
    f = sdm_folder / "Xu2020.other_mni.txt"
    f.rename(sdm_folder / "Xu2020.no_peaks.txt")
    info = _read(sdm_folder)
    assert [e for e in _errors(info) if e.file == "Xu2020.no_peaks.txt" and e.row == 1]


def test_sdm_empty_peak_file(sdm_folder):
    (sdm_folder / "Xu2020.other_mni.txt").write_text("\n")
    info = _read(sdm_folder)
    assert [e for e in _errors(info) if e.file == "Xu2020.other_mni.txt"
            and "no peak" in e.message]


def test_sdm_unknown_suffix(sdm_folder):
    (sdm_folder / "Xu2020.other_mni.txt").rename(sdm_folder / "Xu2020.spm_mn.txt")
    info = _read(sdm_folder)
    assert [e for e in _errors(info) if e.file == "Xu2020.spm_mn.txt" and e.field == "suffix"]


def test_sdm_peak_outside_brain_and_huge_t(sdm_folder):
    f = sdm_folder / "Xu2020.other_mni.txt"
    lines = f.read_text().splitlines()
    lines[0] = "150,20,30,4.2"
    lines[1] = "10,20,30,1e300"
    f.write_text("\n".join(lines) + "\n")
    info = _read(sdm_folder)
    assert [e for e in _errors(info) if e.file == f.name and e.row == 1 and e.field == "x"]
    assert [e for e in _errors(info) if e.file == f.name and e.row == 2 and e.field == "t"]


@pytest.mark.parametrize("col,value", [("n1", "0"), ("t_thr", "high"), ("n1", "1e7")])
def test_sdm_table_errors_name_the_table_and_its_column(sdm_folder, col, value):
    _edit(sdm_folder / "sdm_table.txt", 2, col, value)
    info = _read(sdm_folder)
    assert _located(info, "sdm_table.txt", col, 2), str(info.value)
    assert "studies.tsv" not in str(info.value) and "n_patients" not in str(info.value)


def test_sdm_duplicate_table_row(sdm_folder):
    t = sdm_folder / "sdm_table.txt"
    lines = t.read_text().splitlines()
    t.write_text("\n".join([*lines, lines[1]]) + "\n")
    info = _read(sdm_folder)
    hit = _located(info, "sdm_table.txt", "study", 4)
    assert hit and "duplicate row" in hit[0].message
    assert not [e for e in _errors(info) if "no peak file" in e.message]


def test_import_sdm_cli_refuses_huge_t(sdm_folder, tmp_path, capsys):
    f = sdm_folder / "Xu2020.other_mni.txt"
    lines = f.read_text().splitlines()
    lines[0] = ",".join(lines[0].split(",")[:3] + ["1e300"])
    f.write_text("\n".join(lines) + "\n")
    out = tmp_path / "imported"
    assert cli.main(["import-sdm", str(sdm_folder), "--data", str(out)]) == 1
    assert "Xu2020.other_mni.txt, row 1, field 't'" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_meta_refuses_negative_permutations(capsys, tmp_path):
    for bad in ("-5", "1"):
        with pytest.raises(SystemExit) as exc:
            cli.main(["meta", "--sdm-dir", str(tmp_path), "--out", str(tmp_path / "o"),
                      "--permutations", bad])
        assert exc.value.code == 2
        assert "--permutations" in capsys.readouterr().err


# --- 6. configuration schema and overrides --------------------------------------------------------


def test_config_unknown_key_is_named_with_the_closest_key():
    from analysis.config import load_config
    from analysis.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config({"sdm": {"analysis_roi_radius": 20}})
    assert info.value.key == "sdm.analysis_roi_radius"
    assert "did you mean 'analysis_roi_radius_mm'" in str(info.value)


@pytest.mark.parametrize("override,key", [
    ({"sdm": {"imputations": "fifty"}}, "sdm.imputations"),
    ({"sdm": {"imputations": 0}}, "sdm.imputations"),
    ({"sdm": {"psi": {"backend": "fortran"}}}, "sdm.psi.backend"),
    ({"sdm": {"psi": {"tfce_subject_fwhm_mm": 0}}}, "sdm.psi.tfce_subject_fwhm_mm"),
    ({"sdm": {"tfce": {"E": "half"}}}, "sdm.tfce.E"),
    ({"seed": 1.5}, "seed"),
    ({"characterisation": {"decoding_voxel_level": "yes"}}, "characterisation.decoding_voxel_level"),
])
def test_config_wrong_type_names_the_key(override, key):
    from analysis.config import load_config
    from analysis.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(override)
    assert info.value.key == key


def test_tfce_null_smoothness_reaches_the_engine():
    """``sdm.psi.tfce_subject_fwhm_mm``: null (SDM-PSI's shared null) by default, a number
    passed to the permutation engine and the corrector."""
    from analysis.config import load_config
    from analysis.sdm import PSICorrector
    from analysis.stages import params

    assert params.psi_params(load_config())["tfce_subject_fwhm_mm"] is None
    cfg = load_config({"sdm": {"psi": {"tfce_subject_fwhm_mm": 20}}})
    assert params.psi_params(cfg)["tfce_subject_fwhm_mm"] == 20.0
    corr = PSICorrector(tfce_subject_fwhm_mm=20.0)
    assert corr.get_params()["tfce_subject_fwhm_mm"] == 20.0
    assert "tfce_subject_fwhm_mm=20.0" in repr(corr)
    assert PSICorrector().get_params()["tfce_subject_fwhm_mm"] is None


def test_misspelt_key_in_config_file(tmp_path, monkeypatch):
    from analysis import config
    from analysis.errors import ConfigError

    text = config.CONFIG_PATH.read_text().replace("imputations_quick:", "imputation_quick:")
    bad = tmp_path / "config.yaml"
    bad.write_text(text)
    monkeypatch.setattr(config, "CONFIG_PATH", bad)
    config._load_default.cache_clear()
    try:
        with pytest.raises(ConfigError) as info:
            config.load_config()
        assert info.value.source == "config.yaml"
        assert info.value.key == "sdm.imputation_quick"
    finally:
        monkeypatch.undo()
        config._load_default.cache_clear()


def test_set_overrides_are_parsed_and_validated(tmp_path):
    from analysis.commands.run import config_from_args
    from analysis.config import parse_overrides
    from analysis.errors import ConfigError

    assert parse_overrides(["sdm.imputations=20", "sdm.psi.backend=numpy",
                            "sdm.analysis_roi_radius_mm=null"]) == {
        "sdm": {"imputations": 20, "psi": {"backend": "numpy"}, "analysis_roi_radius_mm": None}}
    parser = cli.build_parser()
    extra = tmp_path / "extra.yaml"
    extra.write_text("sdm:\n  imputations: 7\n  permutations: 30\n")
    args = parser.parse_args(["run", "--config", str(extra), "--set", "sdm.imputations=20"])
    cfg = config_from_args(args)
    assert cfg["sdm"]["imputations"] == 20 and cfg["sdm"]["permutations"] == 30
    for bad in (["sdm.imputations"], ["=3"], ["sdm..x=1"]):
        with pytest.raises(ConfigError):
            parse_overrides(bad)


def test_run_refuses_bad_override_before_any_stage(results_tmp, capsys):
    assert cli.main(["run", "--stage", "figure1", "--set", "sdm.imputations=fifty"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "key 'sdm.imputations'" in err and "--set" in err
    assert cli.main(["run", "--set", "sdm.analysis_roi_radius=20"]) == 1
    assert "did you mean 'analysis_roi_radius_mm'" in capsys.readouterr().err
    assert not results_tmp.exists()


def test_run_stages_validates_a_given_config(tmp_path):
    from analysis import pipeline
    from analysis.config import load_config
    from analysis.errors import ConfigError

    cfg = load_config()
    cfg["sdm"]["imputations"] = "fifty"
    with pytest.raises(ConfigError, match="sdm.imputations"):
        pipeline.run_stages(["figure1"], config=cfg, results_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_stage_key_ignores_result_neutral_keys(tmp_path):
    from analysis import pipeline
    from analysis.config import load_config

    stage = pipeline.Stage("toy", "x:y", sources=["config.py"])

    def key(**sdm):
        return pipeline.stage_key(stage, load_config({"sdm": sdm}), tmp_path, False, {})

    k0 = key()
    assert key(psi={"n_jobs": 1}) == k0 == key(psi={"n_jobs": 7})
    assert key(imputations=20) != k0
    assert key(psi={"chunk_size": 5}) != k0


# --- 7. atomic stages, stale staging, lock ---------------------------------------------------------


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A one-stage pipeline writing tables/toy.tsv and figures/toy.png (content per run)."""
    from analysis import pipeline

    state = {"content": "v1", "values": {"n": 1}}

    def produce(ctx):
        ctx.out("figures/toy.png").write_text(state["content"])
        ctx.out("tables/toy.tsv").write_text(state["content"])
        return dict(state["values"])

    stage = pipeline.Stage("toy", "x:y", sources=["config.py"])
    monkeypatch.setattr(pipeline.Stage, "function", lambda self: produce)
    monkeypatch.setattr(pipeline, "STAGES", [stage])
    data, results = tmp_path / "data", tmp_path / "results"
    data.mkdir()
    return state, dict(data_dir=data, results_dir=results), results


def test_stage_commit_is_all_or_nothing_when_a_folder_is_unusable(toy):
    from analysis import pipeline

    state, kw, results = toy
    results.mkdir()
    (results / "values").write_text("a file where the values folder should be")
    with pytest.raises(OSError):
        pipeline.run_stages(**kw)
    assert not (results / "figures").exists() and not (results / "tables").exists()
    assert not (results / ".stages" / "toy.json").exists()
    assert not (results / ".staging").exists()


def test_stage_commit_rolls_back_to_the_previous_files(toy, monkeypatch):
    from analysis import pipeline

    state, kw, results = toy
    assert pipeline.run_stages(**kw) == {"toy": "ran"}
    state["content"] = "v2"
    real = pipeline.write_json

    def failing(path, obj):
        if ".stages" in str(path):
            raise OSError(28, "No space left on device", str(path))
        return real(path, obj)

    monkeypatch.setattr(pipeline, "write_json", failing)
    with pytest.raises(OSError):
        pipeline.run_stages(force=True, **kw)
    assert (results / "figures/toy.png").read_text() == "v1"
    assert (results / "tables/toy.tsv").read_text() == "v1"
    assert not (results / ".stages" / "toy.json").exists()  # the next run recomputes
    monkeypatch.setattr(pipeline, "write_json", real)
    assert pipeline.run_stages(**kw) == {"toy": "ran"}
    assert (results / "tables/toy.tsv").read_text() == "v2"


def test_stale_staging_of_dead_processes_is_removed(toy):
    from analysis import pipeline

    _, kw, results = toy
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = results / ".staging" / f"toy-{dead}"
    (stale / "figures").mkdir(parents=True)
    (stale / "figures" / "half.png").write_text("x")
    pipeline.run_stages(**kw)
    assert not stale.exists() and not (results / ".staging").exists()


def test_second_run_on_the_same_results_is_refused(toy, capsys):
    from analysis import pipeline
    from analysis.errors import ResultsLocked

    _, kw, results = toy
    with pipeline.results_lock(results):
        with pytest.raises(ResultsLocked, match="another run .* this results folder"):
            pipeline.run_stages(**kw)
    assert pipeline.run_stages(**kw) == {"toy": "ran"}  # released


# --- 8. permissions and byte-reproducible values ---------------------------------------------------


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_outputs_honour_the_umask(tmp_path, umask, mode):
    from analysis.io import write_json
    from analysis.sdm.inputs.io import write_text

    old = os.umask(umask)
    try:
        a = write_json(tmp_path / "a.json", {"x": 1})
        b = write_text(tmp_path / "sub" / "b.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(a.stat().st_mode) == mode and stat.S_IMODE(b.stat().st_mode) == mode


def test_timings_go_to_the_manifest_and_values_are_byte_identical(toy):
    from analysis import pipeline

    state, kw, results = toy
    state["values"] = {"n": 1, "seconds": 12.3, "psi_seconds": 4.5}
    pipeline.run_stages(**kw)
    first = (results / "values.json").read_bytes()
    assert "seconds" not in json.loads(first)["toy"]
    manifest = json.loads((results / ".stages" / "toy.json").read_text())
    assert manifest["timings"]["psi_seconds"] == 4.5 and manifest["timings"]["seconds"] > 0
    state["values"]["seconds"] = 99.0
    pipeline.run_stages(force=True, **kw)
    assert (results / "values.json").read_bytes() == first


def test_nested_timings_go_to_the_manifest(toy):
    """A timing at any depth (characterisation's ``published.seconds``) leaves values.json."""
    from analysis import pipeline

    state, kw, results = toy
    state["values"] = {"n": 1, "published": {"seconds": 22.7, "fit_seconds": 3.0, "k": 2,
                                             "deeper": {"total_seconds": 1.5, "z": [1, 2]}}}
    pipeline.run_stages(**kw)
    first = (results / "values.json").read_bytes()
    assert json.loads(first)["toy"] == {"n": 1, "published": {"k": 2, "deeper": {"z": [1, 2]}}}
    timings = json.loads((results / ".stages" / "toy.json").read_text())["timings"]
    assert timings["published.seconds"] == 22.7
    assert timings["published.deeper.total_seconds"] == 1.5
    state["values"]["published"]["seconds"] = 14.0
    state["values"]["published"]["deeper"]["total_seconds"] = 9.9
    pipeline.run_stages(force=True, **kw)
    assert (results / "values.json").read_bytes() == first


def test_two_runs_of_real_stages_give_byte_identical_outputs(data_copy, tmp_path):
    """Stages ``tables`` and ``figure1`` run twice into two results folders: values.json and
    every output file are byte-identical (the manifests differ only in their timings)."""
    from analysis import pipeline
    from analysis.sdm.inputs.io import sha256_file

    runs = []
    for name in ("first", "second"):
        results = tmp_path / name
        pipeline.run_stages(["tables", "figure1"], data_dir=data_copy, results_dir=results)
        runs.append(results)
    files = sorted(p.relative_to(runs[0]) for p in runs[0].rglob("*")
                   if p.is_file() and ".stages" not in p.parts)
    assert any(f.name == "values.json" for f in files) and any(f.suffix == ".png" for f in files)
    assert files == sorted(p.relative_to(runs[1]) for p in runs[1].rglob("*")
                           if p.is_file() and ".stages" not in p.parts)
    for rel in files:
        assert sha256_file(runs[0] / rel) == sha256_file(runs[1] / rel), rel


# --- 9. derived caches carry and verify their source checksums -------------------------------------


def test_incidence_cache_is_verified_and_rebuilt(tmp_path, monkeypatch, caplog):
    import pandas as pd

    from analysis.characterisation import databases as db_mod

    monkeypatch.setattr(db_mod, "cache_dir", lambda: tmp_path)
    foci = pd.DataFrame({"id": [1, 1, 2, 3], "x": [0.0, 40, -30, 10],
                         "y": [20.0, -20, 10, -60], "z": [30.0, 10, 0, 20]})

    def fresh():  # a new object: no in-memory copy of the matrix
        return db_mod.CoordinateDB("toy", foci.assign(study=[0, 0, 1, 2]), np.array([1, 2, 3]),
                                   "ab" * 32)

    ref = fresh().incidence(6)
    folder = tmp_path / "characterisation"
    record = json.loads(next(folder.glob("*.json")).read_text())
    assert record["source"]["coordinates_sha256"] == "ab" * 32
    assert set(record["sha256"]) == {"indices", "indptr"}
    # corrupt the cached matrix: detected, rebuilt, same result
    indices = next(folder.glob("*-indices.npy"))
    raw = bytearray(indices.read_bytes())
    raw[-1] ^= 0xFF
    indices.write_bytes(bytes(raw))
    with caplog.at_level("WARNING"):
        again = fresh().incidence(6)
    assert "fails its checksum" in caplog.text
    assert (again != ref).nnz == 0
    # a cache without a record (older layout or interrupted write) is not trusted either
    next(folder.glob("*.json")).unlink()
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert (fresh().incidence(6) != ref).nnz == 0
    assert "no checksum record" in caplog.text
    assert next(folder.glob("*.json")).exists()


# --- 10. the SDM round trip: provenance, covariates, no silent overwrite ----------------------------


def test_export_import_keeps_provenance(data_copy, tmp_path, capsys):
    """export-sdm then import-sdm restores every peak's provenance and note from the record
    beside the SDM files: stand-ins come back as stand-ins, never as real peaks."""
    import pandas as pd

    from analysis.sdm.inputs.project import PROVENANCE_FILE, read_sdm_project

    before = pd.read_csv(data_copy / "peaks.tsv", sep="\t", dtype=str, keep_default_na=False)
    proj, back = tmp_path / "proj", tmp_path / "back"
    assert cli.main(["export-sdm", str(proj), "--data", str(data_copy)]) == 0
    assert (proj / PROVENANCE_FILE).is_file()
    assert cli.main(["import-sdm", str(proj), "--data", str(back)]) == 0
    after = pd.read_csv(back / "peaks.tsv", sep="\t", dtype=str, keep_default_na=False)
    key = ["study", "peak_id"]
    pd.testing.assert_frame_equal(after[key + ["provenance", "note"]],
                                  before.sort_values(key, key=lambda c: c.str.zfill(6))
                                  [key + ["provenance", "note"]].reset_index(drop=True))
    capsys.readouterr()
    assert cli.main(["validate-data", "--data", str(back), "--no-mask"]) == 0
    out = capsys.readouterr().out
    assert "studies with real peaks: 1 of 11" in out and "simulated stand-ins: 10" in out
    # an edited peak file no longer matches its record: its peaks are of unknown provenance
    first = sorted(proj.glob("Bird2010.*.txt"))[0]
    first.write_text(first.read_text().replace(",", ", ", 1))
    _, peaks = read_sdm_project(proj)
    bird = peaks[peaks["study"] == "Bird2010"]["provenance"]
    assert len(bird) and bird.str.startswith("unknown:").all()
    assert not peaks[peaks["study"] != "Bird2010"]["provenance"].str.startswith("unknown:").any()


def test_import_without_record_is_provenance_unknown_never_real(data_copy, tmp_path, capsys):
    from analysis.sdm.inputs.project import PROVENANCE_FILE

    proj, back = tmp_path / "proj", tmp_path / "back"
    assert cli.main(["export-sdm", str(proj), "--data", str(data_copy)]) == 0
    (proj / PROVENANCE_FILE).unlink()  # e.g. a project made by SDM-PSI itself
    capsys.readouterr()
    assert cli.main(["import-sdm", str(proj), "--data", str(back)]) == 0
    assert "imported, provenance unknown" in capsys.readouterr().out
    summary = validate_data(back, check_mask=False)
    assert summary["studies_real"] == [] and len(summary["studies_unknown"]) == 11
    assert summary["n_unknown"] == summary["n_peaks"] and summary["n_real"] == 0
    assert any("provenance unknown" in w for w in summary["warnings"])
    prov = mv.provenance(back)
    assert not prov.all_real and prov.n_studies_unknown == 11 and prov.n_studies == 11
    banner = mv.provenance_banner(prov)
    assert "imported, provenance unknown" in banner and "not counted as real" in banner
    assert "Only 0 of the 11" in mv.peaks_limitation(prov)
    # the importer may declare the source: then the peaks count as real
    assert cli.main(["import-sdm", str(proj), "--data", str(back), "--force",
                     "--source", "authors' SDM-PSI project"]) == 0
    summary = validate_data(back, check_mask=False)
    assert len(summary["studies_real"]) == 11 and summary["n_imported"] == summary["n_peaks"]
    with pytest.raises(DataErrors, match="source"):
        from analysis.sdm.inputs.project import read_sdm_project
        read_sdm_project(proj, source=" ")


def test_export_keeps_every_covariate_of_an_imported_table(tmp_path):
    """sdm_table.txt with age, year, disorder, treated, female_pct, paradigm and sex: import ->
    export -> import keeps every column with its cells."""
    from analysis.sdm.inputs.project import read_sdm_project, write_sdm_project

    proj = tmp_path / "proj"
    proj.mkdir()
    covs = ["age", "year", "disorder", "treated", "female_pct", "paradigm", "sex"]
    rows = [["s1", "20", "22", "3.1", "uncorrected", "31.5", "2010", "ASD", "Y", "40", "visual",
             "0.4"],
            ["s2", "15", "16", "3.3", "uncorrected", "28", "2012", "SCZ", "N", "55", "text",
             "0.6"]]
    (proj / "sdm_table.txt").write_text(
        "\n".join("\t".join(r) for r in [["study", "n1", "n2", "t_thr", "threshold", *covs],
                                         *rows]) + "\n")
    (proj / "s1.other_mni.txt").write_text("40,20,30,4.2\n")
    (proj / "s2.other_mni.txt").write_text("-30,-60,10,-3.9\n")
    studies, peaks = read_sdm_project(proj)
    again = write_sdm_project(studies, peaks, tmp_path / "again")
    header = (again / "sdm_table.txt").read_text().splitlines()[0].split("\t")
    assert header[5:] == covs
    s2, _ = read_sdm_project(again)
    assert list(s2.columns) == list(studies.columns)
    assert s2.astype(str).equals(studies.astype(str))


def test_export_refuses_a_non_empty_folder_without_force(data_copy, tmp_path, capsys):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "sdm_table.txt").write_text("study\tn1\tt_thr\nx\t10\t3\n")
    (proj / "old.other_mni.txt").write_text("0,0,0,4\n")
    assert cli.main(["export-sdm", str(proj), "--data", str(data_copy)]) != 0
    err = capsys.readouterr().err
    assert "not empty" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert (proj / "sdm_table.txt").read_text().startswith("study\tn1\tt_thr\nx")
    assert sorted(f.name for f in proj.iterdir()) == ["old.other_mni.txt", "sdm_table.txt"]
    # with --force: the new project, without the peak file of a study it does not have
    assert cli.main(["export-sdm", str(proj), "--data", str(data_copy), "--force"]) == 0
    assert not (proj / "old.other_mni.txt").exists()
    assert cli.main(["import-sdm", str(proj), "--data", str(tmp_path / "back")]) == 0


# --- 11. render refuses stale or half-committed results; provenance from the results ------------


@pytest.fixture
def meta_like(data_copy, tmp_path, monkeypatch):
    """A one-stage pipeline named ``meta`` reading studies.tsv and peaks.tsv and recording
    their provenance as the meta stage does (its ``provenance_values``)."""
    from analysis import pipeline
    from analysis.stages.meta import input_provenance, provenance_values

    def produce(ctx):
        ctx.out("tables/table3.tsv").write_text("x\n1\n")
        ctx.out("figures/figure2.png").write_text("figure")
        ds = load_dataset(ctx.data_dir)
        return provenance_values(input_provenance(ds))

    stage = pipeline.Stage("meta", "x:y", inputs=["studies.tsv", "peaks.tsv"],
                           sources=["config.py"])
    monkeypatch.setattr(pipeline.Stage, "function", lambda self: produce)
    monkeypatch.setattr(pipeline, "STAGES", [stage])
    results = tmp_path / "results"
    monkeypatch.setenv("PAINEMP_RESULTS_DIR", str(results))
    pipeline.run_stages(data_dir=data_copy, results_dir=results)
    return data_copy, results


def test_render_refuses_results_of_changed_inputs(meta_like, capsys):
    from analysis import pipeline
    from analysis.errors import StaleResults

    data, results = meta_like
    pipeline.check_results()  # current: nothing to say
    _keep_peaks(data / "peaks.tsv", ["Moriguchi2007\t"])  # data/ now holds the real study only
    msg = (r"^stage meta is stale \(input data/peaks.tsv changed\): run "
           r"`python -m analysis run`$")
    with pytest.raises(StaleResults, match=msg):
        pipeline.check_results()
    assert cli.main(["render", "--engine", "pandoc"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("error: stage meta is stale (input data/peaks.tsv")
    # the provenance the manuscript shows is the results' own: still 10 stand-ins
    prov = mv.provenance()
    assert prov.n_studies_simulated == 10 and not prov.all_real
    assert "simulated stand-ins" in mv.provenance_banner(prov)
    assert mv.peaks_limitation(prov).startswith("Only 1 of the 11 studies")
    # once recomputed, the record follows the data
    pipeline.run_stages(data_dir=data, results_dir=results)
    pipeline.check_results()
    assert mv.provenance().n_studies_no_peaks == 10


def test_render_refuses_results_of_another_configuration(meta_like):
    from analysis import pipeline
    from analysis.config import load_config
    from analysis.errors import StaleResults

    cfg = load_config({"sdm": {"imputations": 7}})
    with pytest.raises(StaleResults, match=r"stage meta is stale \(configuration changed"):
        pipeline.check_results(config=cfg)
    pipeline.check_results(config=load_config())
    assert cli.main(["render", "--set", "sdm.imputations=7"]) == 1


def test_render_refuses_a_stage_killed_while_committing(meta_like, tmp_path):
    """SIGKILL after the first file of a commit has moved: the old manifest is gone and a new
    figure sits beside the old table. Render refuses; run repairs it."""
    import signal

    from analysis import pipeline
    from analysis.errors import StaleResults

    data, results = meta_like
    script = tmp_path / "kill.py"
    script.write_text(f"""
import os, signal, sys
sys.path.insert(0, {str(paths.REPO_ROOT)!r})
from analysis import pipeline

def produce(ctx):
    ctx.out("tables/table3.tsv").write_text("x\\n2\\n")
    ctx.out("figures/figure2.png").write_text("new figure")
    return {{"n": 2}}

pipeline.Stage.function = lambda self: produce
pipeline.STAGES = [pipeline.Stage("meta", "x:y", inputs=["studies.tsv", "peaks.tsv"],
                                  sources=["config.py"])]
real_replace = os.replace

def replace(src, dst):
    real_replace(src, dst)
    if "/.staging/" in str(src) and "/.staging/" not in str(dst):  # the commit's first move
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
pipeline.run_stages(force=True, data_dir={str(data)!r}, results_dir={str(results)!r})
""")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (results / ".stages" / "meta.json").exists()
    assert (results / "figures" / "figure2.png").read_text() == "new figure"
    assert (results / "tables" / "table3.tsv").read_text() == "x\n1\n"  # the old table
    with pytest.raises(StaleResults, match=r"^stage meta was not committed whole \(interrupted"):
        pipeline.check_results()
    pipeline.run_stages(data_dir=data, results_dir=results)  # the next run repairs it
    pipeline.check_results()
    # an output edited (or replaced) after the commit is refused as well
    (results / "figures" / "figure2.png").write_text("edited")
    with pytest.raises(StaleResults, match=r"figures/figure2.png does not match its manifest"):
        pipeline.check_results()


def test_render_refuses_values_json_that_is_not_the_merge(meta_like):
    from analysis import pipeline
    from analysis.errors import StaleResults

    _, results = meta_like
    values = json.loads((results / "values.json").read_text())
    values["meta"]["inputs_real"] = 11
    (results / "values.json").write_text(json.dumps(values))
    with pytest.raises(StaleResults, match="values.json is not the merge"):
        pipeline.check_results()


# --- 12. meta --out: the output folder is replaced whole or not at all -----------------------------


@pytest.fixture
def small_sdm(tmp_path, mirror):
    import nibabel as nib
    from test_sdm_estimator import _box_mask

    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "sdm_table.txt").write_text(
        "study\tn1\tt_thr\tthreshold\n" "simA\t20\t3.3\tuncorrected\n"
        "simB\t25\t3.2\tuncorrected\n" "simC\t18\t3.5\tuncorrected\n")
    (folder / "simA.other_mni.txt").write_text("-40,16,-4,5.1\n")
    (folder / "simB.other_mni.txt").write_text("-42,18,-6,4.4\n")
    (folder / "simC.no_peaks.txt").write_text("")
    mask = tmp_path / "mask.nii.gz"
    nib.save(_box_mask(half=(8, 8, 6)), str(mask))
    return ["meta", "--sdm-dir", str(folder), "--mask", str(mask), "--imputations", "2",
            "--anisotropy", "0"]


def _tree(folder):
    from analysis.sdm.inputs.io import sha256_file

    return {p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_meta_out_is_replaced_whole_or_not_at_all(small_sdm, tmp_path, monkeypatch):
    from pathlib import Path

    from analysis.sdm.inputs import io as aio

    out = tmp_path / "out"
    assert cli.main([*small_sdm, "--out", str(out), "--permutations", "3", "--seed", "1"]) == 0
    before = _tree(out)
    assert any(r.startswith("corrp_") for r in before) and "fwe/maxima.tsv" in before
    # a run without permutations interrupted after its maps: the old folder is untouched
    real = aio.write_tsv

    def interrupted(path, *a, **k):
        if Path(path).name == "clusters.tsv":
            raise KeyboardInterrupt
        return real(path, *a, **k)

    monkeypatch.setattr(aio, "write_tsv", interrupted)
    assert cli.main([*small_sdm, "--out", str(out), "--seed", "2"]) != 0
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")) == []
    # the same run completed: no corrected map of the earlier run is left beside the new maps
    monkeypatch.setattr(aio, "write_tsv", real)
    assert cli.main([*small_sdm, "--out", str(out), "--seed", "2"]) == 0
    after = _tree(out)
    assert not [r for r in after if r.startswith(("corrp_", "fwe/"))]
    assert after["z.nii.gz"] != before["z.nii.gz"]
    assert "permutations" not in json.loads((out / "summary.json").read_text())


def test_meta_out_refuses_a_folder_it_did_not_write(small_sdm, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert cli.main([*small_sdm, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "not empty" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_peaks_without_a_provenance_column_are_not_counted_real(data_copy):
    from analysis.sdm.inputs.dataset import SDMDataset
    from analysis.stages.meta import input_provenance

    ds = load_dataset(data_copy)
    bare = SDMDataset(ds.studies, ds.peaks.drop(columns="provenance"))
    ip = input_provenance(bare)
    assert ip["real"] == [] and len(ip["unknown"]) == 11
    assert "provenance unknown" in ip["statement"]
