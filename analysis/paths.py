"""Where the compendium reads and writes.

The repository root is found from the package location; ``PAINEMP_DATA_DIR`` and
``PAINEMP_RESULTS_DIR`` may point elsewhere (used by tests). Nothing outside the repository is
hard-coded: external datasets go through :mod:`analysis.fetch`.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def data_dir() -> Path:
    """Directory holding ``studies.tsv``, ``peaks.tsv`` and the other curated inputs."""
    return Path(os.environ.get("PAINEMP_DATA_DIR", REPO_ROOT / "data"))


def results_dir() -> Path:
    """Directory receiving every generated artefact (git-ignored)."""
    return Path(os.environ.get("PAINEMP_RESULTS_DIR", REPO_ROOT / "results"))
