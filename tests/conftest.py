"""Shared fixtures. Tests never touch the network: datasets come from PAINEMP_MIRROR."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def rng():
    """A seeded generator for tests."""
    return np.random.default_rng(0)


@pytest.fixture
def data_copy(tmp_path, monkeypatch):
    """A writable copy of data/ that the package reads (PAINEMP_DATA_DIR)."""
    dest = tmp_path / "data"
    shutil.copytree(REPO / "data", dest)
    monkeypatch.setenv("PAINEMP_DATA_DIR", str(dest))
    return dest


@pytest.fixture
def results_tmp(tmp_path, monkeypatch):
    """An empty results folder that the package writes to (PAINEMP_RESULTS_DIR)."""
    dest = tmp_path / "results"
    monkeypatch.setenv("PAINEMP_RESULTS_DIR", str(dest))
    return dest


def _mirror() -> Path | None:
    env = os.environ.get("PAINEMP_MIRROR")
    if env and Path(env).is_dir():
        return Path(env)
    return None


@pytest.fixture(scope="session")
def mirror():
    """The local dataset mirror; CI always has it (.ci/run sets PAINEMP_MIRROR)."""
    m = _mirror()
    if m is None:
        if os.environ.get("CI"):
            pytest.fail("PAINEMP_MIRROR is not set on CI")
        pytest.skip("no dataset mirror (set PAINEMP_MIRROR to run this test)")
    return m


def quick_run(results: Path, skip: list[str]):
    """``run_stages(quick=True)`` of every stage but ``skip`` into ``results``, with the
    configuration's ``manuscript.test_overrides`` (a region of interest, few imputations and
    permutations): ``(results, stages run, stages left out)``."""
    from analysis.pipeline import STAGES, run_stages

    ready = [s.name for s in STAGES if s.name not in skip]
    missing = [s.name for s in STAGES if s.name not in ready]
    run_stages(ready, quick=True, config=quick_config(), results_dir=results,
               data_dir=REPO / "data")
    return results, ready, missing


def quick_config() -> dict:
    """The configuration of the quick test runs (``manuscript.test_overrides``)."""
    from analysis.config import load_config

    return load_config(load_config()["manuscript"]["test_overrides"])


def cache_dir(request, name: str) -> Path:
    """pytest's cache folder ``name`` (kept between runs), or a fresh temporary folder when the
    cache plugin is disabled (``-p no:cacheprovider``)."""
    cache = getattr(request.config, "cache", None)
    if cache is None:
        return request.getfixturevalue("tmp_path_factory").mktemp(name)
    return Path(cache.mkdir(name))


@pytest.fixture(scope="session")
def quick_results(request, mirror):
    """One quick run of the pipeline per session (:func:`quick_run`), shared by every test that
    checks real stage outputs; kept in pytest's cache (stage manifests make reruns cheap when
    nothing changed), without the stages of ``manuscript.test_skip_stages``."""
    from analysis.config import load_config

    skip = list(load_config()["manuscript"].get("test_skip_stages") or [])
    return quick_run(cache_dir(request, "painemp-quick-results"), skip)


@pytest.fixture(scope="session")
def quick_manuscript(quick_results, tmp_path_factory):
    """The manuscript of the session's quick run rendered once by pandoc and Typst (HTML and
    PDF; ``SOURCE_DATE_EPOCH`` at the repository's HEAD commit, as ``make archive`` renders),
    shared by the manuscript and archive tests: ``{"html": path, "pdf": path}``."""
    from analysis import archive as ar
    from analysis import render as rd

    results, _, _ = quick_results
    _, stamp = ar.head_commit(REPO)
    out = tmp_path_factory.mktemp("quick-manuscript") / "_manuscript"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAINEMP_RESULTS_DIR", str(results))
        mp.setenv("SOURCE_DATE_EPOCH", str(stamp - stamp % 2))
        mp.delenv("PAINEMP_DATA_DIR", raising=False)
        mp.delenv("PAINEMP_ALLOW_MISSING", raising=False)
        return rd.render_pandoc(rd.QMD, out, timeout=600)


@pytest.fixture(scope="session")
def enge_dir(mirror):
    """The public SDM-PSI v6.21 run of Enge et al. (2021)."""
    from analysis.fetch import fetch_dataset

    return fetch_dataset("validation/enge2021_sdm", download=False)


@pytest.fixture(scope="session")
def enge_bounds(enge_dir):
    """SDM-PSI's own bound maps (``pp/``) of the 50 studies of Enge et al. (2021), read once:
    ``(space of sdm_mask, studies, lower, upper)``, float32 (k, V) in the order of ``studies``."""
    import nibabel as nib

    from analysis.sdm.maps.preprocess import read_bound_maps
    from analysis.sdm.maps.space import MaskSpace

    space = MaskSpace(nib.load(enge_dir / "sdm_mask.nii.gz"))
    studies = sorted(p.name[:-len("_lower.nii.gz")] for p in (enge_dir / "pp").glob("*_lower.nii.gz"))
    lower, upper = read_bound_maps(enge_dir / "pp", studies, space)
    return space, studies, lower, upper
