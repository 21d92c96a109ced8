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
def quick_results_dir(request, tmp_path_factory):
    """The results folder of the tests' quick pipeline runs, one per session.

    pytest's cache folder ``painemp-quick-results`` (kept between sessions) when the cache
    plugin runs, else one temporary folder for the whole session (``make validate`` runs with
    ``-p no:cacheprovider``). Every test that needs the quick pipeline runs ``run_stages`` on
    this folder: the stage manifests make it reuse the stages already computed with the same
    inputs, code and configuration, so the pipeline is computed once, not once per test.
    """
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("painemp-quick-results"))
    return tmp_path_factory.mktemp("painemp-quick-results")


@pytest.fixture(scope="session")
def mirror():
    """The local dataset mirror; CI always has it (.ci/run sets PAINEMP_MIRROR)."""
    m = _mirror()
    if m is None:
        if os.environ.get("CI"):
            pytest.fail("PAINEMP_MIRROR is not set on CI")
        pytest.skip("no dataset mirror (set PAINEMP_MIRROR to run this test)")
    return m


@pytest.fixture(scope="session")
def enge_dir(mirror):
    """The public SDM-PSI v6.21 run of Enge et al. (2021)."""
    from analysis.fetch import fetch_dataset

    return fetch_dataset("validation/enge2021_sdm", download=False)
