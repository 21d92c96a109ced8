"""Early, located, one-line errors: bad settings are refused at configuration time naming the
key, bad files naming the file (and what is wrong with it), before any computing."""

from __future__ import annotations

import errno

import pytest

from analysis import cli


def _err_lines(capsys):
    err = capsys.readouterr().err
    return [ln for ln in err.splitlines() if ln.strip()]


def test_n_jobs_zero_is_refused_naming_the_key(results_tmp, capsys):
    assert cli.main(["run", "--stage", "figure1", "--set", "sdm.psi.n_jobs=0"]) == 1
    (line,) = _err_lines(capsys)
    assert "key 'sdm.psi.n_jobs'" in line and "must not be 0" in line
    assert not results_tmp.exists()
    from analysis.config import load_config

    assert load_config({"sdm": {"psi": {"n_jobs": -1}}})["sdm"]["psi"]["n_jobs"] == -1


def test_meta_n_jobs_zero_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["meta", "--sdm-dir", str(tmp_path), "--out", str(tmp_path / "o"),
                  "--n-jobs", "0"])
    assert exc.value.code == 2
    assert "--n-jobs" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_binary_config_file_is_named(results_tmp, tmp_path, capsys):
    bad = tmp_path / "extra.yaml"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    assert cli.main(["run", "--config", str(bad)]) == 1
    (line,) = _err_lines(capsys)
    assert str(bad) in line and "not a UTF-8 text file" in line


def test_config_folder_is_reported_as_a_folder(results_tmp, tmp_path, capsys):
    assert cli.main(["run", "--config", str(tmp_path)]) == 1
    (line,) = _err_lines(capsys)
    assert str(tmp_path) in line and "is a folder" in line


def test_duplicate_yaml_key_is_refused_with_its_lines(results_tmp, tmp_path, capsys):
    extra = tmp_path / "extra.yaml"
    extra.write_text("sdm:\n  imputations: 7\nseed: 3\nsdm:\n  permutations: 30\n")
    assert cli.main(["run", "--config", str(extra)]) == 1
    (line,) = _err_lines(capsys)
    assert str(extra) in line and "key 'sdm'" in line and "line 1 and line 4" in line
    nested = tmp_path / "nested.yaml"
    nested.write_text("sdm:\n  imputations: 7\n  imputations: 9\n")
    assert cli.main(["run", "--config", str(nested)]) == 1
    assert "key 'imputations'" in capsys.readouterr().err


def test_bom_is_accepted_in_peak_files(tmp_path):
    from analysis.sdm.inputs.project import read_sdm_project

    d = tmp_path / "proj"
    d.mkdir()
    (d / "sdm_table.txt").write_bytes("\ufeffstudy\tn1\tt_thr\tthreshold\n"
                                      "a\t10\t3.5\tuncorrected\nb\t12\t3.2\tuncorrected\n"
                                      .encode())
    (d / "a.other_mni.txt").write_bytes("\ufeff40,16,-4,4.5\n".encode())
    (d / "b.no_peaks.txt").write_bytes("\ufeff".encode())
    studies, peaks = read_sdm_project(d)
    assert list(peaks["x"]) == ["40"] and list(studies["study"]) == ["a", "b"]


def test_disk_full_names_the_file(tmp_path, monkeypatch):
    from analysis.sdm.inputs.io import write_text

    dest = tmp_path / "out" / "table.tsv"

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(dest), "write_text", full)
    with pytest.raises(OSError) as info:
        write_text(dest, "x")
    assert cli.error_lines(info.value) == [f"No space left on device: {dest}"]
    monkeypatch.undo()
    assert not dest.exists() and list((tmp_path / "out").iterdir()) == []


def test_mask_that_is_not_an_image_is_one_line(tmp_path, capsys, enge_dir):
    text = tmp_path / "mask.nii.gz"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    for mask, expect in [(text, "not a NIfTI mask image"), (tmp_path, "is a folder")]:
        assert cli.main(["meta", "--sdm-dir", str(enge_dir), "--out", str(tmp_path / "o"),
                         "--mask", str(mask), "--imputations", "2"]) == 1
        (line,) = _err_lines(capsys)
        assert expect in line and str(mask) in line and "internal error" not in line
    assert not (tmp_path / "o").exists()


def test_folder_given_as_a_file_is_reported_as_such(tmp_path, capsys):
    from analysis.sdm.errors import DataError
    from analysis.sdm.inputs.io import read_tsv_text
    from analysis.sdm.inputs.project import read_sdm_project

    (tmp_path / "studies.tsv").mkdir()
    with pytest.raises(DataError, match="is a folder, not a file"):
        read_tsv_text(tmp_path / "studies.tsv")
    f = tmp_path / "sdm_project.txt"
    f.write_text("x\n")
    with pytest.raises(DataError, match="is a file, not an SDM project folder"):
        read_sdm_project(f)
    assert cli.main(["validate-data", "--data", str(tmp_path)]) == 1
    assert "is a folder, not a file" in capsys.readouterr().err


_HOLDER = """
import sys, time
from analysis.commands.render import private_temp
with private_temp() as d:
    import os
    (d / "runtime" / "kernel-1234.json").write_text('{"key": "secret"}')
    print(d, flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_killed_render_leaves_no_kernel_files(tmp_path, how):
    """A terminated render removes its private temporary folder (kernel connection files with
    their keys); one killed outright has it removed by the next render."""
    import os
    import signal
    import subprocess
    import sys

    from analysis.commands.render import private_temp
    from analysis.paths import REPO_ROOT

    env = {**os.environ, "TMPDIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER], stdout=subprocess.PIPE, env=env,
                            text=True, cwd=REPO_ROOT)
    folder = proc.stdout.readline().strip()
    assert folder.startswith(str(tmp_path)) and os.path.isfile(f"{folder}/runtime/kernel-1234.json")
    proc.send_signal(getattr(signal, how))
    proc.wait(timeout=60)
    if how == "SIGKILL":
        assert os.path.isdir(folder)  # nothing runs after SIGKILL ...
        import tempfile

        old = tempfile.tempdir
        tempfile.tempdir = str(tmp_path)
        try:
            with private_temp():
                pass  # ... the next render removes it
        finally:
            tempfile.tempdir = old
    assert not os.path.exists(folder)
    assert list(tmp_path.iterdir()) == []
