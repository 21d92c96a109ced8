"""The deposit archive: citation metadata, refusal of a dirty tree, determinism, the RO-Crate
(checked by the community validator, roc-validator), and verification offline.

The archive tests use the quick run of the manuscript tests (``manuscript.test_overrides``,
kept in pytest's cache folder ``painemp-quick-results``) and never touch the network: the
datasets come from ``PAINEMP_MIRROR``; the validator runs behind proxies that lead nowhere.
The full offline rebuild of an archive (a whole quick pipeline run) is ``slow``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from analysis import archive as ar
from analysis.sdm.inputs.io import sha256_file

REPO = Path(__file__).resolve().parents[1]
DEAD = "http://127.0.0.1:9"
#: the RO-Crate 1.1 JSON-LD context, for roc-validator offline (provenance in its SOURCE)
CRATE_CONTEXT_COPY = REPO / "tests" / "fixtures" / "ro-crate-1.1" / "context.jsonld"
CRATE_CONTEXT_SHA256 = "4a8c4cbdfd73d3d11be5ebe135f6122a0fc711fd1433e4258a748c80cc257ab7"


# --- CITATION.cff --------------------------------------------------------------------------------

def _cffconvert() -> Path:
    """The cffconvert executable: a test dependency of the lock, so missing it is a failure."""
    exe = Path(sys.executable).with_name("cffconvert")
    assert exe.is_file(), f"{exe} missing: cffconvert is in requirements.lock (extra 'test')"
    return exe


def test_citation_cff_is_valid():
    proc = subprocess.run([str(_cffconvert()), "--validate", "-i", str(REPO / "CITATION.cff")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cffconvert_rejects_a_citation_without_authors(tmp_path):
    bad = tmp_path / "CITATION.cff"
    text = (REPO / "CITATION.cff").read_text(encoding="utf-8")
    bad.write_text(text.replace("authors:\n  - name:", "contributors:\n  - name:", 1))
    proc = subprocess.run([str(_cffconvert()), "--validate", "-i", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode != 0


def test_citation_names_the_paper_licence_and_version():
    import yaml

    from analysis import __version__

    cff = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["version"] == __version__
    assert cff["license"] == "MIT" and "MIT License" in (REPO / "LICENSE").read_text()
    assert cff["references"][0]["doi"] == "10.1016/j.bpsc.2024.08.019"


# --- the dataset register ------------------------------------------------------------------------

def test_every_dataset_file_has_a_licence_and_a_redistribution_decision():
    rows = ar.dataset_register()
    assert rows and {r["redistribute"] for r in rows} <= {"yes", "no"}
    by_dataset = {}
    for r in rows:
        by_dataset.setdefault(r["dataset"], set()).add((r["licence"], r["version"]))
        assert r["relpath"].startswith(r["dataset"] + "/")
        if r["url"] != "-":
            assert r["version"] in r["url"]  # the pinned commit of the source URL
    assert all(len(v) == 1 for v in by_dataset.values())  # one licence and version per dataset
    assert set(ar.SPDX) >= {r["licence"] for r in rows}


def test_register_errors_name_row_and_field(tmp_path):
    reg = tmp_path / "datasets.tsv"
    reg.write_text("relpath\tsha256\turl\tdataset\tlicence\tversion\tredistribute\n"
                   f"a/b/c\t{'0' * 64}\t-\ta/b\tMIT\tv1\tperhaps\n")
    with pytest.raises(ar.ArchiveError, match=r"row 1, field 'redistribute': 'perhaps'"):
        ar.dataset_register(reg)


def test_licence_register_says_what_is_left_out():
    rows = [{"relpath": "d/x/f.nii.gz", "sha256": "a" * 64, "url": "https://e.org/f", "dataset":
             "d/x", "licence": "MIT", "version": "v1", "redistribute": "no"}]
    out = list(csv.DictReader(io.StringIO(ar.licence_register(rows).decode()), delimiter="\t"))
    assert out == [{"dataset": "d/x", "file": "datasets/d/x/f.nii.gz", "licence": "MIT",
                    "source_url": "https://e.org/f", "version": "v1", "sha256": "a" * 64,
                    "in_archive": "no"}]


# --- clean tree, determinism ---------------------------------------------------------------------

def _git(cwd: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@e.org", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@e.org", GIT_AUTHOR_DATE="2024-08-19T00:00:00Z",
               GIT_COMMITTER_DATE="2024-08-19T00:00:00Z")
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout


def test_dirty_tree_is_refused_naming_the_files(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "kept.txt").write_text("one\n")
    (tmp_path / ".gitignore").write_text("ignored/\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "first")
    assert ar.dirty_files(tmp_path) == []
    (tmp_path / "ignored").mkdir()
    (tmp_path / "ignored" / "x").write_text("not a change\n")
    assert ar.dirty_files(tmp_path) == []
    (tmp_path / "kept.txt").write_text("two\n")
    (tmp_path / "new.py").write_text("\n")
    assert ar.dirty_files(tmp_path) == ["kept.txt", "new.py"]
    with pytest.raises(ar.ArchiveError, match=r"differs from HEAD \(kept.txt, new.py\)"):
        ar.build_archive(root=tmp_path, out_dir=tmp_path / "dist")
    assert not (tmp_path / "dist").exists()


def test_zip_is_byte_identical_whatever_the_order_and_file_times(tmp_path):
    f = tmp_path / "on_disk.bin"
    f.write_bytes(os.urandom(5000))
    members = [ar.Member("b/run.sh", data=b"#!/bin/sh\n", mode=0o755), ar.Member("a.txt", data=b"x"),
               ar.Member("c/on_disk.bin", path=f)]
    ar.write_zip(tmp_path / "one.zip", "top", members, 1724025600)
    os.utime(f, (0, 0))
    ar.write_zip(tmp_path / "two.zip", "top", members[::-1], 1724025600)
    assert (tmp_path / "one.zip").read_bytes() == (tmp_path / "two.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "one.zip") as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == ["top/a.txt", "top/b/run.sh", "top/c/on_disk.bin"]
        assert {i.date_time for i in infos} == {(2024, 8, 19, 0, 0, 0)}
        assert [(i.external_attr >> 16) & 0o777 for i in infos] == [0o644, 0o755, 0o644]
    assert ar.zip_stamp(tmp_path / "one.zip") == 1724025600


def test_compare_trees_reports_each_kind_of_difference(tmp_path):
    import nibabel as nib
    import numpy as np

    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "maps").mkdir(parents=True)
        (d / "same.txt").write_text("same\n")
    (a / "t.tsv").write_text("name\tz\tp\nx\t1.5\t0.01\ny\t2.0\t0.02\n")
    (b / "t.tsv").write_text("name\tz\tp\nx\t1.5\t0.01\nY\t2.25\t0.02\n")
    data = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    nib.save(nib.Nifti1Image(data, np.eye(4)), a / "maps" / "z.nii.gz")
    data[1, 1, 1] += 0.5
    nib.save(nib.Nifti1Image(data, np.eye(4)), b / "maps" / "z.nii.gz")
    (a / "only_archived.json").write_text("{}")
    (b / "only_rebuilt.json").write_text("{}")
    got = {c.name: (c.status, c.detail) for c in ar.compare_trees(a, b, "results")}
    assert got["results/same.txt"] == ("identical", "")
    assert got["results/t.tsv"] == ("different", "name: 1 cell(s) differ; z: max |diff| 0.25")
    assert got["results/maps/z.nii.gz"] == ("different", "max |diff| 0.5")
    assert got["results/only_archived.json"][0] == "missing"
    assert got["results/only_rebuilt.json"][0] == "extra"


# --- an archive of quick results -----------------------------------------------------------------

@pytest.fixture(scope="module")
def quick_archive(quick_results, quick_manuscript, tmp_path_factory, mirror):
    """An archive of the session's quick run (fixture ``quick_results`` of conftest.py, shared
    with the manuscript tests), with the manuscript rendered for it (``quick_manuscript``),
    written from the repository's HEAD."""
    results, _, missing = quick_results
    assert missing == []
    _, stamp = ar.head_commit(REPO)
    stamp -= stamp % 2
    out = tmp_path_factory.mktemp("archive")
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("PAINEMP_RESULTS_DIR", str(results))
        mp.setenv("SOURCE_DATE_EPOCH", str(stamp))
        mp.delenv("PAINEMP_DATA_DIR", raising=False)
        manuscript = quick_manuscript["html"].parent
        rep = ar.build_archive(root=REPO, out_dir=out / "dist", results=results,
                               manuscript=manuscript, allow_dirty=True, render=False)
        again = ar.build_archive(root=REPO, out_dir=out / "dist2", results=results,
                                 manuscript=manuscript, allow_dirty=True, render=False)
    finally:
        mp.undo()
    return rep, again, results


def test_archive_is_deterministic_and_complete(quick_archive, tmp_path):
    rep, again, results = quick_archive
    assert rep.path.name.endswith("-quick.zip") and rep.quick
    assert rep.path.read_bytes() == again.path.read_bytes()  # two runs, byte-identical zips
    top = ar.unpack(rep.path, tmp_path)
    assert ar.check_sums(top) == []
    names = {p.relative_to(top).as_posix() for p in ar.tree_files(top)}
    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout.split())
    assert tracked <= names and {"requirements.lock", "environment.yml", "CITATION.cff"} <= names
    for r in ar.dataset_register():
        assert (f"datasets/{r['relpath']}" in names) == (r["redistribute"] == "yes")
    produced = {f"results/{p.relative_to(results).as_posix()}"
                for p in ar.tree_files(results, ar.RESULTS_SKIP)}
    assert produced <= names and "results/.stages/meta.json" in names
    assert {"_manuscript/index.html", "_manuscript/index.pdf", "LICENSES.tsv"} <= names


def _ids(value) -> set[str]:
    """``@id``s of a JSON-LD reference or list of references."""
    return {v["@id"] for v in (value if isinstance(value, list) else [value])}


def test_crate_records_each_stage_from_its_manifest(quick_archive, tmp_path):
    from analysis.pipeline import STAGES

    rep, _, results = quick_archive
    top = ar.unpack(rep.path, tmp_path)
    graph = {e["@id"]: e for e in json.loads((top / ar.CRATE_FILE).read_text())["@graph"]}
    root = graph["./"]
    assert _ids(root["conformsTo"]) == set(ar.PROFILES)
    assert graph["ro-crate-metadata.json"]["conformsTo"]["@id"] == "https://w3id.org/ro/crate/1.1"
    assert root["mainEntity"]["@id"] == "analysis/pipeline.py"
    assert root["license"]["@id"] == "https://spdx.org/licenses/MIT"
    assert {ar.PAPER_DOI, ar.PREREGISTRATION} <= _ids(root["citation"])
    for stage in STAGES:
        manifest = json.loads((results / ".stages" / f"{stage.name}.json").read_text())
        action = graph[f"#run-{stage.name}"]
        assert action["@type"] == "CreateAction"
        assert action["startTime"] == manifest["provenance"]["started"]
        assert _ids(action["result"]) == {f"results/{k}" for k in manifest["outputs"]}
        objects = _ids(action["object"])
        assert {f for f in manifest["provenance"]["inputs"]} <= objects
        assert any(graph[o]["@type"] == "PropertyValue" and graph[o]["name"] == "seed"
                   for o in objects if o.startswith("#config-"))
        assert graph[action["instrument"]["@id"]]["@type"][0] == "File"
        assert graph[f"#control-{stage.name}"]["object"]["@id"] == f"#run-{stage.name}"
    for f in graph.values():  # the crate's checksums are the archive's
        if "sha256" in f and (top / f["@id"]).is_file():
            assert sha256_file(top / f["@id"]) == f["sha256"], f["@id"]


@pytest.fixture
def offline_validator(monkeypatch):
    """roc-validator's ``validate`` with its HTTP requests answered locally: the RO-Crate 1.1
    JSON-LD context (the copy in ``tests/fixtures``, checked against its published sha256), 404
    for anything else. Without the context the validator's SHACL checks see no
    terms and pass vacuously."""
    import requests
    from rocrate_validator import services
    from rocrate_validator.utils.http import HttpRequester

    context = CRATE_CONTEXT_COPY.read_bytes()
    assert hashlib.sha256(context).hexdigest() == CRATE_CONTEXT_SHA256, CRATE_CONTEXT_COPY
    asked = []

    def get(self, url, *args, **kwargs):
        asked.append(url)
        r = requests.Response()
        r.url, r.status_code = url, 200 if url == ar.CRATE_CONTEXT_URL else 404
        r._content = context if r.status_code == 200 else b""
        r.headers["Content-Type"] = "application/ld+json"
        return r

    monkeypatch.setattr(HttpRequester, "get", get, raising=False)
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(k, DEAD)

    def validate(folder: Path, profile: str):
        result = services.validate({"rocrate_uri": str(folder), "profile_identifier": profile,
                                    "requirement_severity": "REQUIRED", "offline": True,
                                    "abort_on_first": False})
        assert ar.CRATE_CONTEXT_URL in asked  # the context was read
        return result, [f"{i.check.identifier}: {i.message}" for i in result.get_issues()]

    return validate


def test_crate_passes_roc_validator(quick_archive, tmp_path, offline_validator):
    """REQUIRED level of the Provenance Run Crate 0.5 profile, which inherits the checks of the
    Workflow Run Crate, Process Run Crate, Workflow RO-Crate and RO-Crate 1.1 profiles."""
    rep, _, _ = quick_archive
    result, issues = offline_validator(ar.unpack(rep.path, tmp_path), "provenance-run-crate-0.5")
    assert result.passed(), "\n".join(issues)


def test_roc_validator_rejects_a_crate_missing_required_properties(quick_archive, tmp_path,
                                                                   offline_validator):
    """One property removed from each of three profiles' requirements: each check fails."""
    rep, _, _ = quick_archive
    top = ar.unpack(rep.path, tmp_path)
    crate = json.loads((top / ar.CRATE_FILE).read_text())
    removed = {("./", "datePublished"): "ro-crate-1.1_8.4",
               ("#control-meta", "instrument"): "provenance-run-crate-0.5_7.1",
               ("./", "mainEntity"): "workflow-ro-crate-1.0_4.1"}
    for e in crate["@graph"]:
        for (eid, prop) in removed:
            if e["@id"] == eid:
                del e[prop]
    (top / ar.CRATE_FILE).write_text(json.dumps(crate))
    result, issues = offline_validator(top, "provenance-run-crate-0.5")
    assert not result.passed()
    for check in removed.values():
        assert any(i.startswith(check) for i in issues), (check, issues)


def test_flipped_byte_in_a_result_is_named_and_fails(quick_archive, tmp_path):
    rep, _, _ = quick_archive
    target = next(n for n in zipfile.ZipFile(rep.path).namelist()
                  if n.endswith("results/tables/table1.tsv"))
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(rep.path) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == target:
                data = data[:40] + bytes([data[40] ^ 0x01]) + data[41:]
            dst.writestr(info, data)
    proc = subprocess.run([sys.executable, "-m", "analysis", "verify", "--python",
                           sys.executable, "--quick", str(bad)], cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ, HTTP_PROXY=DEAD, HTTPS_PROXY=DEAD))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "results/tables/table1.tsv" in proc.stdout and "different" in proc.stdout
    assert "NOT verified" in proc.stdout


def test_verify_refuses_the_wrong_mode(quick_archive):
    rep, _, _ = quick_archive
    with pytest.raises(ar.ArchiveError, match="holds quick-run results; add --quick"):
        ar.verify_archive(rep.path, python=Path(sys.executable), quick=False)


@pytest.mark.slow
def test_quick_archive_verifies_offline_and_a_changed_result_is_found(quick_archive, tmp_path):
    """The whole check: unpack, rerun every stage and the render offline, compare."""
    rep, _, _ = quick_archive
    report = ar.verify_archive(rep.path, python=Path(sys.executable), quick=True,
                               workdir=tmp_path / "work")
    assert report.ok, report.table()
    assert report.counts()["identical"] > 20 and report.counts()["different"] == 0
    # the same rebuild against an archived result with one changed value
    top = tmp_path / "work" / "archive" / rep.path.stem
    t1 = top / "results" / "tables" / "table1.tsv"
    text = t1.read_text()
    t1.write_text(text.replace("\t", "\t9", 1) if "\t" in text else text + "x")
    diffs = [c for c in ar.compare_trees(top / "results", tmp_path / "work" / "src" / "results",
                                         "results", skip=(".stages/",) + ar.RESULTS_SKIP)
             if c.status != "identical"]
    assert [c.name for c in diffs] == ["results/tables/table1.tsv"]
