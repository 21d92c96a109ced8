"""Named random streams: one seed, an independent reproducible stream per named use.

The engine draws its imputations and permutations from streams derived here (e.g.
``derive_rng(seed, "sdm/impute")``), and the compendium derives one stream per pipeline stage the
same way, so that a run is identical whatever else ran before it.
"""

from __future__ import annotations

import hashlib

import numpy as np


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


def check_random_state(random_state, name: str) -> np.random.Generator:
    """A generator from ``random_state``: an int seed (stream ``name`` of :func:`derive_rng`), a
    :class:`numpy.random.Generator` (used as is) or None (seed 0).
    """
    if isinstance(random_state, np.random.Generator):
        return random_state
    if random_state is None:
        random_state = 0
    if isinstance(random_state, (bool, np.bool_)) or not isinstance(random_state, (int, np.integer)):
        raise TypeError(f"random_state must be an int, a numpy Generator or None, "
                        f"got {random_state!r}")
    return derive_rng(int(random_state), name)
