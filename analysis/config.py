"""The single configuration of the compendium.

Every preregistered parameter lives in ``analysis/config.yaml``; this module loads it and derives
per-stage random streams from the one seed (one stream per stage name, so adding a stage never
changes the numbers of another; compare NiMARE PR #1152).
"""

from __future__ import annotations

import copy
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

CONFIG_PATH = Path(__file__).with_name("config.yaml")


@lru_cache(maxsize=1)
def _load_default() -> dict[str, Any]:
    with CONFIG_PATH.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def load_config(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return a fresh copy of the configuration, with optional nested overrides.

    Parameters
    ----------
    overrides : dict, optional
        Nested mapping merged over the defaults, e.g. ``{"sdm": {"imputations": 5}}``.

    Returns
    -------
    dict
        The configuration.
    """
    cfg = copy.deepcopy(_load_default())
    if overrides:
        _merge(cfg, overrides)
    return cfg


def _merge(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def stage_seed(seed: int, stage: str) -> np.random.SeedSequence:
    """Derive the seed sequence of one named stage from the global seed.

    The stage name is hashed (SHA-256, stable across Python runs) into the spawn key, so each
    stage has an independent, reproducible stream.
    """
    digest = hashlib.sha256(stage.encode("utf-8")).digest()
    key = tuple(int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4))
    return np.random.SeedSequence(entropy=int(seed), spawn_key=key)


def derive_rng(seed: int, stage: str) -> np.random.Generator:
    """Return the random generator of one named stage (see :func:`stage_seed`)."""
    return np.random.default_rng(stage_seed(seed, stage))


def config_hash(cfg: dict[str, Any], *sections: str) -> str:
    """Stable hash of the given configuration sections (all when none are given)."""
    part = {k: cfg[k] for k in sections} if sections else cfg
    return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:16]
