"""A deposit-ready archive of the compendium, and the check that it reproduces itself.

:func:`build_archive` writes ``dist/painemp-compendium-<version>.zip`` from a clean git tree:

* the source at ``HEAD`` (``git archive``: code, data, configuration, ``requirements.lock``,
  ``environment.yml``, ``CITATION.cff``, the manuscript source);
* ``datasets/``: every public dataset file of the registry (``analysis/datasets.tsv``) whose
  licence allows redistribution, copied from the mirror or the fetch cache (never downloaded),
  and ``LICENSES.tsv``, the register of every dataset file (dataset, file, licence, source URL,
  version, SHA-256, whether it is in the archive);
* ``results/`` (with the stage manifests ``results/.stages/*.json``) and ``_manuscript/`` of a
  finished run whose every stage is up to date with ``HEAD``;
* ``ro-crate-metadata.json``: an RO-Crate 1.1 (Soiland-Reyes et al. 2022) following the
  Workflow Run Crate profiles (Leo et al. 2024): Process, Workflow and Provenance Run Crate 0.5.
  Each stage is a ``CreateAction`` built from its manifest (inputs: data files and the
  configuration values the stage key hashes, as ``PropertyValue``; outputs; start and end time;
  the stage's module as instrument), linked to its ``HowToStep`` by a ``ControlAction``; the
  stage runner's ``OrganizeAction`` groups them;
* ``SHA256SUMS`` over every other file of the archive; the zip's own SHA-256 goes beside it
  (``<zip>.sha256``).

The zip is deterministic: entries sorted, every timestamp the commit time of ``HEAD``,
permissions 0644 (0755 for executables in git), fixed compression; two runs on the same tree
give byte-identical files.

:func:`verify_archive` unpacks an archive into an empty temporary folder, checks
``SHA256SUMS``, reruns the pipeline (with the configuration and mode recorded in the archived
manifests) and the render **offline** (``PAINEMP_OFFLINE=1``, the archived datasets as the
mirror, an empty cache), and compares every archived result with the rebuilt one
(:func:`compare_trees`).

References
----------
Soiland-Reyes S, et al. (2022). Packaging research artefacts with RO-Crate. Data Science 5:97-138.
doi:10.3233/DS-210053.
Leo S, et al. (2024). Recording provenance of workflow runs with RO-Crate. PLoS ONE 19:e0309210.
doi:10.1371/journal.pone.0309210.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from analysis import __version__, paths

LGR = logging.getLogger(__name__)

PROJECT = "painemp-compendium"
DATASETS_DIR = "datasets"
LICENSES_FILE = "LICENSES.tsv"
SUMS_FILE = "SHA256SUMS"
CRATE_FILE = "ro-crate-metadata.json"
GENERATED = (DATASETS_DIR, "results", "_manuscript", LICENSES_FILE, SUMS_FILE, CRATE_FILE)
"""Top-level entries of an archive that are not the git source."""

PAPER_DOI = "https://doi.org/10.1016/j.bpsc.2024.08.019"
PREREGISTRATION = "https://osf.io/axt9k/"
PROFILES = {
    "https://w3id.org/ro/wfrun/process/0.5": "Process Run Crate",
    "https://w3id.org/ro/wfrun/workflow/0.5": "Workflow Run Crate",
    "https://w3id.org/ro/wfrun/provenance/0.5": "Provenance Run Crate",
    "https://w3id.org/workflowhub/workflow-ro-crate/1.0": "Workflow RO-Crate",
}
SPDX = {
    "MIT": "MIT License",
    "BSD-3-Clause": "BSD 3-Clause \"New\" or \"Revised\" License",
    "ODbL-1.0": "Open Data Commons Open Database License v1.0",
    "CC0-1.0": "Creative Commons Zero v1.0 Universal",
}
#: registry file of the RO-Crate 1.1 JSON-LD context (https://w3id.org/ro/crate/1.1/context),
#: with which roc-validator checks the crate offline
CRATE_CONTEXT_URL = "https://w3id.org/ro/crate/1.1/context"
WFRUN_SHA256 = "https://w3id.org/ro/terms/workflow-run#sha256"
REGISTER_FIELDS = ("dataset", "licence", "version", "redistribute")
#: software and data the compendium reuses, cited by the crate (DOIs of the publications)
REUSED = {
    "https://doi.org/10.1016/j.neuroimage.2018.10.077": "Albajes-Eizagirre et al. (2019), SDM-PSI",
    "https://doi.org/10.1038/nmeth.1635": "Yarkoni et al. (2011), Neurosynth",
    "https://doi.org/10.7554/eLife.53385": "Dockès et al. (2020), NeuroQuery",
    "https://doi.org/10.1038/s42003-020-0794-7": "Vos de Wael et al. (2020), BrainSpace",
    "https://doi.org/10.1016/j.neuroimage.2021.118436": "Enge et al. (2021), SDM-PSI run of "
                                                        "semantic cognition",
    "https://doi.org/10.52294/001c.87681": "Salo et al. (2023), NiMARE",
}


class ArchiveError(RuntimeError):
    """The archive cannot be built or is not what it claims to be (message names the file)."""


# --- the source tree -----------------------------------------------------------------------------

def _git(root: Path, *args: str) -> bytes:
    try:
        return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True).stdout
    except FileNotFoundError as exc:
        raise ArchiveError("git is not installed: the archive takes the source from git") from exc
    except subprocess.CalledProcessError as exc:
        raise ArchiveError(f"git {' '.join(args)} failed in {root}: "
                           f"{exc.stderr.decode(errors='replace').strip()}") from exc


def dirty_files(root: Path) -> list[str]:
    """Files of ``root`` that differ from ``HEAD`` (modified, staged, deleted or untracked but
    not ignored), as ``git status --porcelain`` names them.
    """
    out = _git(root, "status", "--porcelain=v1", "-z", "--untracked-files=all")
    return sorted({entry[3:] for entry in out.decode().split("\0") if len(entry) > 3})


def head_commit(root: Path) -> tuple[str, int]:
    """``(sha, commit time in seconds since the epoch)`` of ``HEAD``."""
    sha, stamp = _git(root, "log", "-1", "--format=%H %ct", "HEAD").decode().split()
    return sha, int(stamp)


def source_members(root: Path) -> dict[str, tuple[bytes, int]]:
    """``{path: (content, mode)}`` of every file of ``git archive HEAD`` (links are refused)."""
    members = {}
    with tarfile.open(fileobj=io.BytesIO(_git(root, "archive", "--format=tar", "HEAD"))) as tar:
        for m in tar.getmembers():
            if m.isfile():
                members[m.name] = (tar.extractfile(m).read(), 0o755 if m.mode & 0o111 else 0o644)
            elif m.issym() or m.islnk():
                raise ArchiveError(f"{m.name}: a link in git; the archive holds plain files only")
    return members


# --- the dataset register ------------------------------------------------------------------------

def dataset_register(registry_path: Path | None = None) -> list[dict[str, str]]:
    """Rows of ``analysis/datasets.tsv`` with the register fields checked.

    Raises
    ------
    ArchiveError
        A row fails the fetcher's checks (:func:`analysis.fetch.read_registry`), lacks
        ``dataset``, ``licence`` or ``version``, or ``redistribute`` is not yes/no (file, row
        and field named).
    """
    from analysis.fetch import REGISTRY, read_registry
    from analysis.sdm.datasets import FetchError

    path = Path(registry_path or REGISTRY)
    try:
        rows = list(read_registry(path).values())
    except FetchError as exc:
        raise ArchiveError(str(exc)) from None
    for row_no, r in enumerate(rows, start=1):
        for f in REGISTER_FIELDS:
            if not (r.get(f) or "").strip():
                raise ArchiveError(f"{path}, row {row_no}, field '{f}': empty or missing")
        if r["redistribute"] not in ("yes", "no"):
            raise ArchiveError(f"{path}, row {row_no}, field 'redistribute': "
                               f"{r['redistribute']!r} is not yes or no")
    return rows


def licence_register(rows: list[dict[str, str]]) -> bytes:
    """``LICENSES.tsv``: one line per dataset file, with whether the archive holds it."""
    out = io.StringIO()
    w = csv.writer(out, delimiter="\t", lineterminator="\n")
    w.writerow(["dataset", "file", "licence", "source_url", "version", "sha256", "in_archive"])
    for r in sorted(rows, key=lambda r: r["relpath"]):
        w.writerow([r["dataset"], f"{DATASETS_DIR}/{r['relpath']}", r["licence"], r["url"],
                    r["version"], r["sha256"], r["redistribute"]])
    return out.getvalue().encode()


# --- the results of a finished run ---------------------------------------------------------------

def stage_manifests(results: Path, data_dir: Path) -> dict[str, dict]:
    """Every stage's manifest, checked complete and up to date with the current code, data and
    configuration (:func:`analysis.pipeline.check_results`, the check ``render`` makes).

    Raises
    ------
    ArchiveError
        A stage has no manifest or no provenance, an output is missing or changed, the stages
        mix quick and full runs, or a stage's key no longer matches (names the stage).
    """
    from analysis.errors import StaleResults
    from analysis.pipeline import STAGES, _manifest_path, check_results, recorded_config

    manifests = {}
    for stage in STAGES:
        mpath = _manifest_path(results, stage.name)
        if not mpath.is_file():
            raise ArchiveError(f"{mpath}: stage {stage.name} has not run; run `make paper` "
                               "(or `python -m analysis run`) first")
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        if not manifest.get("provenance"):
            raise ArchiveError(f"{mpath}: no provenance record (written before manifests had "
                               "one); rerun the stage with `python -m analysis run --force "
                               f"--stage {stage.name}`")
        manifests[stage.name] = manifest
    try:
        check_results(config=recorded_config(manifests.values()), data_dir=data_dir,
                      results_dir=results)
    except StaleResults as exc:
        raise ArchiveError(str(exc)) from None
    modes = {m["quick"] for m in manifests.values()}
    if len(modes) > 1:
        raise ArchiveError(f"{results}: quick and full stages are mixed; rerun every stage in "
                           "one mode")
    return manifests


def tree_files(folder: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    """Regular files under ``folder`` (sorted), leaving out relative paths starting with ``skip``."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and not p.is_symlink() and not rel.startswith(skip):
            out.append(p)
    return out


RESULTS_SKIP = (".stages/run.lock", ".staging")


# --- the zip -------------------------------------------------------------------------------------

@dataclass
class Member:
    """One archive entry: bytes in memory or a file on disk."""

    name: str
    data: bytes | None = None
    path: Path | None = None
    mode: int = 0o644
    sha256: str = field(default="")

    def digest(self) -> str:
        if not self.sha256:
            if self.data is not None:
                self.sha256 = hashlib.sha256(self.data).hexdigest()
            else:
                from analysis.sdm.inputs.io import sha256_file

                self.sha256 = sha256_file(self.path)
        return self.sha256

    def size(self) -> int | None:
        if self.data is not None:
            return len(self.data)
        return self.path.stat().st_size if self.path is not None else None


def write_zip(dest: Path, prefix: str, members: list[Member], stamp: int) -> None:
    """Write a deterministic zip: sorted entries under ``prefix/``, one timestamp, fixed modes."""
    from analysis.sdm.inputs.io import atomic_path

    date_time = time.gmtime(max(stamp, 315532800))[:6]  # zip dates start in 1980
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        for m in sorted(members, key=lambda m: m.name):
            info = zipfile.ZipInfo(f"{prefix}/{m.name}", date_time=date_time)
            info.create_system = 3  # unix, so that the modes below are read
            info.external_attr = (0o100000 | m.mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            info.file_size = m.size()
            with zf.open(info, "w", force_zip64=True) as out:
                if m.data is not None:
                    out.write(m.data)
                else:
                    with open(m.path, "rb") as fh:
                        shutil.copyfileobj(fh, out, 1 << 20)


# --- the archive ---------------------------------------------------------------------------------

@dataclass
class ArchiveReport:
    """What :func:`build_archive` wrote."""

    path: Path
    sha256: str
    size: int
    n_files: int
    quick: bool
    excluded_datasets: list[str]


def build_archive(root: Path | None = None, out_dir: Path | None = None,
                  results: Path | None = None, manuscript: Path | None = None,
                  allow_dirty: bool = False, render: bool = True) -> ArchiveReport:
    """Write ``<out_dir>/painemp-compendium-<version>[-quick].zip`` (see the module notes).

    Parameters
    ----------
    root : pathlib.Path, optional
        The git tree (default: the repository of the package).
    out_dir : pathlib.Path, optional
        Where the zip goes (default ``<root>/dist``).
    results, manuscript : pathlib.Path, optional
        The results folder (default :func:`analysis.paths.results_dir`) and the rendered
        manuscript (default ``<root>/_manuscript``).
    allow_dirty : bool
        Archive even if the tree differs from ``HEAD`` (for tests of this function only; the
        command line refuses).
    render : bool
        Render the manuscript again first (``python -m analysis render`` with
        ``SOURCE_DATE_EPOCH`` = the commit time, so that a verification can render the same
        document); ``False`` archives ``_manuscript/`` as it is.

    Raises
    ------
    ArchiveError
        Dirty tree (files named), a stage missing or out of date, no rendered manuscript, or a
        redistributable dataset file neither in the mirror nor in the cache.
    """
    from analysis.fetch import fetch_file
    from analysis.sdm.datasets import FetchError

    root = Path(root or paths.REPO_ROOT)
    results = Path(results or paths.results_dir())
    manuscript = Path(manuscript or root / "_manuscript")
    out_dir = Path(out_dir or root / "dist")
    dirty = dirty_files(root)
    if dirty and not allow_dirty:
        shown = ", ".join(dirty[:10]) + (f" and {len(dirty) - 10} more" if len(dirty) > 10 else "")
        raise ArchiveError(f"{root}: the tree differs from HEAD ({shown}); commit or remove "
                           "these files first, so that the archive is the commit")
    sha, stamp = head_commit(root)
    stamp -= stamp % 2  # zip times have a resolution of 2 s
    manifests = stage_manifests(results, root / "data")
    quick = next(iter(manifests.values()))["quick"]
    if render:
        render_manuscript(sys.executable, root, stamp, dict(os.environ, **{
            "PAINEMP_RESULTS_DIR": str(results)}), out_dir / "render.log")
    if not (manuscript / "index.html").is_file():
        raise ArchiveError(f"{manuscript / 'index.html'}: no rendered manuscript; run "
                           "`python -m analysis render` first")

    members = [Member(name, data=data, mode=mode)
               for name, (data, mode) in source_members(root).items()]
    register = dataset_register()
    excluded = []
    for r in register:
        if r["redistribute"] != "yes":
            excluded.append(r["relpath"])
            continue
        try:
            src = fetch_file(r["relpath"], download=False)
        except FetchError as exc:
            raise ArchiveError(f"{exc}; run `python -m analysis fetch` first") from exc
        members.append(Member(f"{DATASETS_DIR}/{r['relpath']}", path=src, sha256=r["sha256"]))
    members.append(Member(LICENSES_FILE, data=licence_register(register)))
    for p in tree_files(results, RESULTS_SKIP):
        members.append(Member(f"results/{p.relative_to(results).as_posix()}", path=p))
    for p in tree_files(manuscript):
        members.append(Member(f"_manuscript/{p.relative_to(manuscript).as_posix()}", path=p))
    crate = build_crate(members, manifests, register, sha, stamp, root)
    members.append(Member(CRATE_FILE, data=crate))
    members.append(Member(SUMS_FILE, data=sha256sums(members)))

    name = f"{PROJECT}-{__version__}{'-quick' if quick else ''}"
    dest = out_dir / f"{name}.zip"
    write_zip(dest, name, members, stamp)
    from analysis.sdm.inputs.io import sha256_file

    digest = sha256_file(dest)
    dest.with_name(dest.name + ".sha256").write_text(f"{digest}  {dest.name}\n")
    return ArchiveReport(dest, digest, dest.stat().st_size, len(members), quick, excluded)


def render_manuscript(python: str | Path, src: Path, stamp: int, env: dict, log: Path) -> None:
    """``python -m analysis render`` in ``src`` with ``SOURCE_DATE_EPOCH=stamp`` (its date and
    the PDF's timestamp); the output goes to ``log``, removed on success.

    Raises
    ------
    ArchiveError
        The render failed (the last lines of its log).
    """
    cmd = [str(python), "-m", "analysis", "render"]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as fh:
        proc = subprocess.run(cmd, cwd=src, env=dict(env, SOURCE_DATE_EPOCH=str(stamp)),
                              stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise ArchiveError(f"`python -m analysis render` failed (exit {proc.returncode}); log "
                           f"{log}: {' | '.join(tail)}")
    log.unlink()


def zip_stamp(archive: Path) -> int:
    """The one timestamp of an archive's entries (the commit time), in seconds since the epoch."""
    import calendar

    with zipfile.ZipFile(archive) as zf:
        stamps = {info.date_time for info in zf.infolist()}
    if len(stamps) != 1:
        raise ArchiveError(f"{archive}: entries carry {len(stamps)} timestamps; not an archive "
                           "written by python -m analysis archive")
    return calendar.timegm((*stamps.pop(), 0, 0, 0))


def sha256sums(members: list[Member]) -> bytes:
    """``SHA256SUMS`` (``sha256sum`` format, sorted) of the members."""
    lines = [f"{m.digest()}  {m.name}\n" for m in sorted(members, key=lambda m: m.name)
             if m.name != SUMS_FILE]
    return "".join(lines).encode()


# --- RO-Crate ------------------------------------------------------------------------------------

def _citation_cff(root: Path) -> dict:
    import yaml

    path = root / "CITATION.cff"
    if not path.is_file():
        raise ArchiveError(f"{path}: missing (the crate takes its authors and licence from it)")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _flatten(cfg: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in sorted(cfg.items()):
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _value(v) -> str | int | float | bool:
    return v if isinstance(v, str | int | float | bool) else json.dumps(v, sort_keys=True)


def _set_type(entity, types: list[str]) -> None:
    entity._jsonld["@type"] = types  # rocrate's entities keep "@type" read-only after creation


class _FileEntities(dict):
    """File entities by archive path; a path that is not a member gets an entity without a
    checksum (the crate of :func:`availability_markdown`, which has no source members).
    """

    def __init__(self, crate):
        super().__init__()
        self.crate = crate

    def __missing__(self, name: str):
        self[name] = self.crate.add_file(dest_path=name)
        return self[name]


def build_crate(members: list[Member], manifests: dict[str, dict], register: list[dict],
                commit: str, stamp: int, root: Path) -> bytes:
    """``ro-crate-metadata.json`` of the archive (RO-Crate 1.1, Provenance Run Crate 0.5).

    Built with the ``rocrate`` package from the stage manifests, the dataset register and
    ``CITATION.cff``; no file is read besides these.
    """
    from rocrate.model.contextentity import ContextEntity
    from rocrate.rocrate import ROCrate

    from analysis.pipeline import STAGES

    cff = _citation_cff(root)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
    crate = ROCrate(gen_preview=False, version="1.1")

    def entity(eid: str, etype, **props) -> ContextEntity:
        return crate.add(ContextEntity(crate, eid, properties={"@type": etype, **props}))

    # licences, authors, citations
    for spdx in sorted({r["licence"] for r in register} | {cff["license"]}):
        entity(f"https://spdx.org/licenses/{spdx}", "CreativeWork", name=SPDX.get(spdx, spdx),
               identifier=spdx)
    authors = []
    for i, a in enumerate(cff["authors"]):
        name = a.get("name") or f"{a.get('given-names', '')} {a.get('family-names', '')}".strip()
        aid = f"#author-{i + 1}"
        authors.append(entity(aid, "Organization" if "name" in a else "Person", name=name))
    paper = entity(PAPER_DOI, "ScholarlyArticle", name=cff["references"][0]["title"],
                   identifier=PAPER_DOI, datePublished="2024")
    prereg = entity(PREREGISTRATION, "CreativeWork",
                    name="Pre-registration of He et al. (2024) on the Open Science Framework")
    cited = [paper, prereg] + [entity(url, "ScholarlyArticle", name=name, identifier=url)
                               for url, name in REUSED.items()]
    python = entity("https://w3id.org/workflowhub/workflow-ro-crate#python",
                    "ComputerLanguage", name="Python", url="https://www.python.org/",
                    version=".".join(map(str, sys.version_info[:2])))
    licence = crate.get(f"https://spdx.org/licenses/{cff['license']}")

    root_ds = crate.root_dataset
    root_ds["name"] = cff["title"]
    root_ds["description"] = " ".join(cff["abstract"].split())
    root_ds["license"] = licence
    root_ds["author"] = authors
    root_ds["datePublished"] = when
    root_ds["version"] = cff["version"]
    root_ds["citation"] = cited
    root_ds["conformsTo"] = [entity(uri, "CreativeWork", name=f"{name} {uri.rsplit('/', 1)[1]}",
                                    version=uri.rsplit("/", 1)[1]) for uri, name in PROFILES.items()]

    # data entities: every member, with checksum and size
    files = _FileEntities(crate)
    for m in sorted(members, key=lambda m: m.name):
        props = {"sha256": m.digest()}
        if m.size() is not None:
            props["contentSize"] = str(m.size())
        files[m.name] = crate.add_file(dest_path=m.name, properties=props)
    # datasets (one Dataset per registry dataset)
    for dname in sorted({r["dataset"] for r in register}):
        rows = [r for r in register if r["dataset"] == dname]
        parts = [files[f"{DATASETS_DIR}/{r['relpath']}"] for r in rows
                 if f"{DATASETS_DIR}/{r['relpath']}" in files]
        urls = sorted({r["url"].split("/raw/")[0] for r in rows if r["url"] != "-"})
        props = {"name": dname,
                 "license": crate.get(f"https://spdx.org/licenses/{rows[0]['licence']}"),
                 "version": f"git commit {rows[0]['version']}",
                 "description": ("in the archive" if parts else
                                 "not in the archive: its licence does not allow "
                                 "redistribution; `python -m analysis fetch` downloads it")}
        if urls:
            props["url"] = urls[0]
        ds = crate.add_dataset(dest_path=f"{DATASETS_DIR}/{dname}/", properties=props)
        if parts:
            ds["hasPart"] = parts

    # the compendium and its workflow (the stage registry)
    workflow = files["analysis/pipeline.py"]
    _set_type(workflow, ["File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"])
    workflow["name"] = "Stage registry and runner of the compendium (python -m analysis run)"
    workflow["programmingLanguage"] = python
    compendium = entity("#compendium", "SoftwareSourceCode", name=f"{PROJECT} {cff['version']}",
                        version=cff["version"], license=licence, author=authors,
                        programmingLanguage=python, citation=cited,
                        identifier=f"git commit {commit}", hasPart=[workflow])
    root_ds["mainEntity"] = workflow
    root_ds["about"] = compendium

    stage_names = [s.name for s in STAGES]
    steps, tools, actions, controls = [], {}, [], []
    params: dict[tuple[str, str], ContextEntity] = {}
    for pos, stage in enumerate(STAGES, start=1):
        manifest = manifests[stage.name]
        prov = manifest["provenance"]
        module = "analysis/" + stage.target.split(":")[0].split(".", 1)[1].replace(".", "/") + ".py"
        tool = files[module]
        _set_type(tool, ["File", "SoftwareSourceCode", "SoftwareApplication"])
        tool["name"] = f"stage {stage.name} ({stage.target})"
        tool["programmingLanguage"] = python
        tool["softwareVersion"] = __version__
        tool["hasPart"] = [files[f] for f in sorted(prov["code"]) if f != module]
        tools[stage.name] = tool
        step = entity(f"#step-{stage.name}", "HowToStep", name=stage.name, position=str(pos),
                      workExample=tool)
        if stage.depends:
            step["connectedTo"] = [{"@id": f"#step-{d}"} for d in stage.depends]
        steps.append(step)
        objects = [files[f] for f in sorted(prov["inputs"])]
        for dep in stage.depends:  # what the upstream stage wrote
            objects.extend(files[f"results/{rel}"] for rel in sorted(manifests[dep]["outputs"]))
        for key, val in _flatten(prov["config"]).items():
            pkey = (key, json.dumps(val, sort_keys=True))
            if pkey not in params:
                digest = hashlib.sha256(pkey[1].encode()).hexdigest()[:8]
                params[pkey] = entity(f"#config-{key}-{digest}", "PropertyValue", name=key,
                                      value=_value(val),
                                      description="analysis/config.yaml value (with overrides) "
                                                  "hashed into the stage key")
            objects.append(params[pkey])
        action = entity(f"#run-{stage.name}", "CreateAction",
                        name=f"stage {stage.name} ({'quick' if manifest['quick'] else 'full'} "
                             "run)",
                        instrument=tool, startTime=prov["started"], endTime=prov["ended"],
                        actionStatus={"@id": "http://schema.org/CompletedActionStatus"},
                        object=objects,
                        result=[files[f"results/{rel}"] for rel in sorted(manifest["outputs"])])
        actions.append(action)
        controls.append(entity(f"#control-{stage.name}", "ControlAction",
                               name=f"orchestrate stage {stage.name}", instrument=step,
                               object=action))
    workflow["step"] = steps
    workflow["hasPart"] = list(tools.values())
    started = min(m["provenance"]["started"] for m in manifests.values())
    ended = max(m["provenance"]["ended"] for m in manifests.values())
    data_inputs = sorted({f for m in manifests.values() for f in m["provenance"]["inputs"]})
    wf_objects = [files[f] for f in data_inputs] + [
        files[m.name] for m in sorted(members, key=lambda m: m.name)
        if m.name.startswith(f"{DATASETS_DIR}/")]
    wf_results = [files[f"results/{rel}"] for n in stage_names
                  for rel in sorted(manifests[n]["outputs"])]
    run = entity("#run", "CreateAction", name="python -m analysis run", instrument=workflow,
                 startTime=started, endTime=ended, object=wf_objects, result=wf_results,
                 actionStatus={"@id": "http://schema.org/CompletedActionStatus"},
                 description="the compendium's pipeline; datasets are read through "
                             "analysis.fetch (mirror or cache, checked by SHA-256)")
    engine = entity("#engine", "SoftwareApplication", name="analysis.pipeline (stage runner)",
                    version=__version__, softwareVersion=__version__)
    entity("#orchestration", "OrganizeAction", name="stage runner of python -m analysis run",
           instrument=engine, object=controls, result=run, startTime=started, endTime=ended)
    root_ds["mentions"] = [run, *actions]
    data = crate.metadata.generate()
    # "sha256" is not a term of the RO-Crate 1.1 context: the Workflow Run Crate terms define it
    data["@context"] = [data["@context"], {"sha256": WFRUN_SHA256}]
    for ent in data["@graph"]:  # RO-Crate 1.1 recommends single values, not singleton arrays
        for key, value in ent.items():
            if not key.startswith("@") and isinstance(value, list) and len(value) == 1:
                ent[key] = value[0]
    return (json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


# --- verification --------------------------------------------------------------------------------

@dataclass
class Comparison:
    """One archived or rebuilt file: its status and, where measured, the largest differences."""

    name: str
    status: str  # identical | different | missing | extra
    detail: str = ""


def _tsv_difference(a: Path, b: Path) -> str:
    import numpy as np
    import pandas as pd

    x = pd.read_csv(a, sep="\t", keep_default_na=False)
    y = pd.read_csv(b, sep="\t", keep_default_na=False)
    if list(x.columns) != list(y.columns) or len(x) != len(y):
        return (f"shape {len(x)}x{len(x.columns)} archived, {len(y)}x{len(y.columns)} rebuilt"
                + ("" if list(x.columns) == list(y.columns) else "; columns differ"))
    parts = []
    for col in x.columns:
        xs, ys = x[col], y[col]
        if xs.equals(ys):
            continue
        xn, yn = pd.to_numeric(xs, errors="coerce"), pd.to_numeric(ys, errors="coerce")
        if xn.notna().all() and yn.notna().all():
            parts.append(f"{col}: max |diff| {float(np.max(np.abs(xn - yn))):.3g}")
        else:
            parts.append(f"{col}: {int((xs.astype(str) != ys.astype(str)).sum())} cell(s) differ")
    return "; ".join(parts) or "same values, different bytes"


def _nifti_difference(a: Path, b: Path) -> str:
    import nibabel as nib
    import numpy as np

    x, y = nib.load(str(a)), nib.load(str(b))
    if x.shape != y.shape or not np.allclose(x.affine, y.affine):
        return f"grid differs: {x.shape} archived, {y.shape} rebuilt"
    dx, dy = np.asarray(x.dataobj, dtype=float), np.asarray(y.dataobj, dtype=float)
    both = np.isfinite(dx) & np.isfinite(dy)
    nan_differ = int((np.isnan(dx) != np.isnan(dy)).sum())
    diff = float(np.max(np.abs(dx[both] - dy[both]))) if both.any() else 0.0
    if diff == 0 and nan_differ == 0:
        return "same voxel values, different bytes (header or compression)"
    return f"max |diff| {diff:.3g}" + (f"; {nan_differ} voxel(s) NaN in one only"
                                       if nan_differ else "")


def _difference(a: Path, b: Path) -> str:
    name = a.name
    try:
        if name.endswith(".tsv"):
            return _tsv_difference(a, b)
        if name.endswith((".nii", ".nii.gz")):
            return _nifti_difference(a, b)
    except Exception as exc:  # noqa: BLE001 (the comparison itself must not stop the report)
        return f"could not compare contents ({type(exc).__name__}: {exc})"
    return f"{a.stat().st_size} bytes archived, {b.stat().st_size} rebuilt"


def compare_trees(archived: Path, rebuilt: Path, label: str,
                  skip: tuple[str, ...] = ()) -> list[Comparison]:
    """Compare every file of two folders: identical, different (with the largest absolute
    difference per TSV column or NIfTI map), missing from the rebuild, or extra in it.
    """
    a = {p.relative_to(archived).as_posix(): p for p in tree_files(archived, skip)}
    b = {p.relative_to(rebuilt).as_posix(): p for p in tree_files(rebuilt, skip)} \
        if rebuilt.is_dir() else {}
    from analysis.sdm.inputs.io import sha256_file

    out = []
    for rel in sorted(set(a) | set(b)):
        name = f"{label}/{rel}"
        if rel not in b:
            out.append(Comparison(name, "missing", "archived but not rebuilt"))
        elif rel not in a:
            out.append(Comparison(name, "extra", "rebuilt but not archived"))
        elif sha256_file(a[rel]) == sha256_file(b[rel]):
            out.append(Comparison(name, "identical"))
        else:
            out.append(Comparison(name, "different", _difference(a[rel], b[rel])))
    return out


def check_sums(folder: Path) -> list[Comparison]:
    """Check every line of ``folder/SHA256SUMS``; files not listed are reported as extra."""
    from analysis.sdm.inputs.io import sha256_file

    sums = folder / SUMS_FILE
    if not sums.is_file():
        raise ArchiveError(f"{sums}: missing; not an archive of this compendium")
    listed = {}
    for line in sums.read_text(encoding="utf-8").splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
    out = []
    for name, digest in sorted(listed.items()):
        p = folder / name
        if not p.is_file():
            out.append(Comparison(name, "missing", f"listed in {SUMS_FILE}"))
        elif sha256_file(p) != digest:
            out.append(Comparison(name, "different", f"SHA-256 differs from {SUMS_FILE}"))
    for p in tree_files(folder):
        rel = p.relative_to(folder).as_posix()
        if rel != SUMS_FILE and rel not in listed:
            out.append(Comparison(rel, "extra", f"not listed in {SUMS_FILE}"))
    return out


def unpack(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` into ``dest`` (entries must stay inside it); returns its top folder."""
    dest = dest.resolve()
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        tops = {n.split("/", 1)[0] for n in names}
        if len(tops) != 1:
            raise ArchiveError(f"{archive}: expected one top folder, found {sorted(tops)[:5]}")
        for n in names:
            target = (dest / n).resolve()
            if not target.is_relative_to(dest) or n.startswith("/"):
                raise ArchiveError(f"{archive}: entry {n!r} would be written outside the folder")
        bad = zf.testzip()
        if bad is not None:
            raise ArchiveError(f"{archive}: entry {bad} is corrupt (CRC mismatch)")
        zf.extractall(dest)
        for info in zf.infolist():
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(dest / info.filename, mode)
    return dest / tops.pop()


def offline_env(base: dict, mirror: Path, cache: Path) -> dict:
    """The environment of an offline run: the archived datasets as the mirror, an empty cache,
    ``PAINEMP_OFFLINE=1`` and proxies that lead nowhere (so that no other library downloads).
    """
    from analysis.sdm.datasets import CACHE_ENV, MIRROR_ENV, OFFLINE_ENV

    env = {k: v for k, v in base.items()
           if k not in ("PAINEMP_DATA_DIR", "PAINEMP_RESULTS_DIR", "no_proxy", "NO_PROXY")}
    dead = "http://127.0.0.1:9"  # the discard port: every connection is refused
    env.update({MIRROR_ENV: str(mirror), CACHE_ENV: str(cache), OFFLINE_ENV: "1",
                "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead,
                "https_proxy": dead, "ALL_PROXY": dead, "PIP_NO_INDEX": "1",
                "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1"})
    return env


def build_environment(src: Path, venv: Path) -> Path:
    """Create a virtualenv from the archived ``requirements.lock`` (needs the package index)."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--require-hashes", "-r",
                    str(src / "requirements.lock")], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "-e", str(src)], check=True)
    subprocess.run([str(py), "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3"],
                   check=True, stdout=subprocess.DEVNULL)
    return py


@dataclass
class VerifyReport:
    """What :func:`verify_archive` found."""

    comparisons: list[Comparison]
    quick: bool | None
    seconds: dict[str, float]
    workdir: Path

    @property
    def ok(self) -> bool:
        return self.quick is not None and all(c.status == "identical" for c in self.comparisons)

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in ("identical", "different", "missing", "extra")}
        for c in self.comparisons:
            out[c.status] += 1
        return out

    def table(self, all_files: bool = False) -> str:
        """A plain-text table: the counts, then every file that is not identical."""
        rows = [c for c in self.comparisons if all_files or c.status != "identical"]
        width = max([len(c.name) for c in rows] + [4])
        lines = [f"{'file':<{width}}  {'status':<9}  detail"]
        lines += [f"{c.name:<{width}}  {c.status:<9}  {c.detail}" for c in rows]
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items())
        return "\n".join(lines + [f"total: {counts}"])


def archived_run(top: Path) -> tuple[bool, dict]:
    """Mode (quick or not) and configuration that the archived results were computed with."""
    from analysis.pipeline import STAGES

    configs, modes = [], set()
    for stage in STAGES:
        mpath = top / "results" / ".stages" / f"{stage.name}.json"
        if not mpath.is_file():
            raise ArchiveError(f"{mpath}: the archive has no manifest of stage {stage.name}")
        m = json.loads(mpath.read_text(encoding="utf-8"))
        modes.add(bool(m["quick"]))
        configs.append(m["provenance"]["config"])
    if len(modes) != 1 or any(c != configs[0] for c in configs):
        raise ArchiveError(f"{top / 'results/.stages'}: the stages ran in different modes or "
                           "configurations")
    return modes.pop(), configs[0]


def verify_archive(archive: Path, python: Path | None = None, quick: bool | None = None,
                   workdir: Path | None = None, keep: bool = False, download: bool = False,
                   timeout: float | None = None) -> VerifyReport:
    """Unpack, rebuild offline and compare (see the module notes).

    Parameters
    ----------
    archive : pathlib.Path
        A zip written by :func:`build_archive`.
    python : pathlib.Path, optional
        Interpreter of an environment to reuse; default: a new virtualenv from the archived
        ``requirements.lock`` (the only step that needs the network: the package index).
    quick : bool, optional
        Expect an archive of quick-mode results (``True``) or of a full run (``False``); a
        mismatch is an error. ``None`` accepts either.
    workdir : pathlib.Path, optional
        An empty folder to work in (default: a new temporary folder).
    keep : bool
        Keep the folder afterwards (always kept when ``workdir`` is given).
    download : bool
        Allow downloads of the datasets the archive does not hold (licence); off by default.

    Returns
    -------
    VerifyReport
        Every compared file; when a file fails ``SHA256SUMS`` only those files (nothing is
        rebuilt against an altered archive).

    Raises
    ------
    ArchiveError
        Not an archive of this compendium, a mode mismatch, a dataset missing from the archive
        without ``download``, or a failing pipeline or render (its log is named).
    """
    archive = Path(archive).resolve()
    if not archive.is_file():
        raise ArchiveError(f"{archive}: no such archive")
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="painemp-verify-")) if own else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        raise ArchiveError(f"{work}: not empty; verification starts in an empty folder")
    seconds: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        top = unpack(archive, work / "archive")
        comparisons = [Comparison(f"(integrity) {c.name}", c.status, c.detail)
                       for c in check_sums(top)]
        if comparisons:  # a damaged or altered archive: nothing to rebuild against
            LGR.error("verify: %d file(s) of the archive fail %s", len(comparisons), SUMS_FILE)
            return VerifyReport(comparisons, None, seconds, work)
        archived_quick, config = archived_run(top)
        if quick is not None and quick != archived_quick:
            raise ArchiveError(f"{archive}: holds {'quick' if archived_quick else 'full'}-run "
                               f"results; {'drop' if archived_quick is False else 'add'} --quick")
        with (top / LICENSES_FILE).open(encoding="utf-8") as fh:
            register = list(csv.DictReader(fh, delimiter="\t"))
        absent = [r["file"] for r in register if r["in_archive"] != "yes"]
        if absent and not download:
            raise ArchiveError(f"the archive does not hold {len(absent)} dataset file(s) whose "
                               f"licence does not allow redistribution ({', '.join(absent[:3])}"
                               f"{' ...' if len(absent) > 3 else ''}); rerun with --download "
                               "to fetch them from their sources")
        src = work / "src"
        shutil.copytree(top, src, ignore=lambda d, names: [n for n in names if Path(d) == top
                                                           and n in GENERATED])
        seconds["unpack"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        # absolute, not resolved: a virtualenv's python is a link that must stay one
        py = Path(python).absolute() if python else build_environment(src, work / "venv")
        seconds["environment"] = round(time.perf_counter() - t0, 1)
        env = offline_env(dict(os.environ), top / DATASETS_DIR, work / "cache")
        if download:
            from analysis.sdm.datasets import OFFLINE_ENV

            env.pop(OFFLINE_ENV)
            for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
                env.pop(k)
        import yaml

        cfg_file = work / "archived-config.yaml"
        cfg_file.write_text(yaml.safe_dump(config, sort_keys=True), encoding="utf-8")
        env["SOURCE_DATE_EPOCH"] = str(zip_stamp(archive))
        steps = [("pipeline", [str(py), "-m", "analysis", "run", "--config", str(cfg_file)]
                  + (["--quick"] if archived_quick else [])),
                 # the render checks the results against the configuration they were computed
                 # with: the same --config as the run
                 ("render", [str(py), "-m", "analysis", "render", "--config", str(cfg_file)])]
        for label, cmd in steps:
            t0 = time.perf_counter()
            log = work / f"{label}.log"
            LGR.info("verify: %s (log %s)", " ".join(cmd[1:]), log)
            with log.open("wb") as fh:
                proc = subprocess.run(cmd, cwd=src, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                      timeout=timeout)
            seconds[label] = round(time.perf_counter() - t0, 1)
            if proc.returncode != 0:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                raise ArchiveError(f"verify: `{' '.join(cmd[1:])}` failed (exit "
                                   f"{proc.returncode}); log {log}: {' | '.join(tail)}")
        comparisons += compare_trees(top / "results", src / "results", "results",
                                     skip=(".stages/",) + RESULTS_SKIP)
        comparisons += compare_trees(top / "_manuscript", src / "_manuscript", "_manuscript")
        return VerifyReport(comparisons, archived_quick, seconds, work)
    finally:
        if own and not keep:
            shutil.rmtree(work, ignore_errors=True)


# --- the manuscript's "Data and code availability" -----------------------------------------------

def _entities(value) -> list:
    """The entities of a JSON-LD property: RO-Crate writes a single one as an object, several
    as a list (a stage with one output, e.g. only its values).
    """
    if value is None:
        return []
    return [value] if isinstance(value, dict) else list(value)


def availability_markdown(results: Path | None = None, root: Path | None = None) -> str:
    """The manuscript's data and code availability paragraph, generated from the RO-Crate of the
    archive that ``python -m analysis archive`` writes for these results.

    The crate is built as :func:`build_crate` builds it, from the stage manifests of
    ``results``, the dataset register and ``CITATION.cff`` (the source files enter without
    their checksums: a render inside an unpacked archive has no git tree), and summarised:
    the archive's name, the stages and result files, each dataset with its licence and version
    and whether it is inside, the profiles. Nothing in it depends on when the stages ran, so a
    verification renders the same text.
    """
    from analysis.pipeline import STAGES

    root = Path(root or paths.REPO_ROOT)
    results = Path(results or paths.results_dir())
    manifests = {}
    for stage in STAGES:
        mpath = results / ".stages" / f"{stage.name}.json"
        m = json.loads(mpath.read_text(encoding="utf-8")) if mpath.is_file() else None
        if not m or "provenance" not in m:
            return ("The archive's description is generated from the stage manifests; stage "
                    f"{stage.name} has not run with a provenance record (run `make paper`).")
        manifests[stage.name] = m
    register = dataset_register()
    members = [Member(f"{DATASETS_DIR}/{r['relpath']}", sha256=r["sha256"]) for r in register
               if r["redistribute"] == "yes"]
    members += [Member(f"results/{rel}", sha256=digest) for m in manifests.values()
                for rel, digest in m["outputs"].items()]
    graph = {e["@id"]: e for e in json.loads(build_crate(members, manifests, register, "", 0,
                                                         root))["@graph"]}
    quick = any(m["quick"] for m in manifests.values())
    name = f"{PROJECT}-{__version__}{'-quick' if quick else ''}.zip"
    actions = [e for e in graph.values() if e.get("@type") == "CreateAction"
               and e["@id"].startswith("#run-")]
    n_results = len({r["@id"] for a in actions for r in _entities(a.get("result"))})
    datasets = sorted((e for e in graph.values() if e.get("@type") == "Dataset"
                       and e["@id"].startswith(f"{DATASETS_DIR}/")), key=lambda e: e["@id"])
    lines = []
    for d in datasets:
        lic = graph[d["license"]["@id"]].get("identifier", d["license"]["@id"])
        inside = "in the archive" if d.get("hasPart") else "not redistributable, fetched"
        n_files = len(_entities(d.get("hasPart")))
        lines.append(f"* `{d['name']}` ({d.get('url', 'no public URL')}, "
                     f"{d['version'][:23]}): {lic}, {n_files} file{'' if n_files == 1 else 's'}, "
                     f"{inside}")
    profiles = ", ".join(sorted(graph[c["@id"]]["name"] for c in graph["./"]["conformsTo"]))
    return (
        f"The compendium is archived as `{name}` (`make archive`) for deposit beside the "
        "pre-registration. It holds the source at its git commit, the locked environment "
        f"(`requirements.lock`, `environment.yml`), `CITATION.cff`, the {n_results} result "
        f"files written by the {len(actions)} stages of this "
        f"{'quick' if quick else 'full'} run, this document, `SHA256SUMS` over every file, and "
        f"`ro-crate-metadata.json`, an RO-Crate 1.1 ({profiles}) that records each stage as a "
        "`CreateAction` with its inputs, configuration values, outputs, times and code. "
        "The public datasets of the dataset register (those the pipeline and its validation "
        "read, and the RO-Crate context), with their licences (`LICENSES.tsv`):\n\n" + "\n".join(lines) + "\n\n"
        "`make verify ARCHIVE=...` unpacks the archive in an empty folder, reruns the pipeline "
        "and this document offline against the archived datasets and compares every archived "
        "result. The archive's own SHA-256 is published beside it (`.sha256`), since a file "
        "cannot contain its checksum."
    )
