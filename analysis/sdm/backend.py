"""Array back-end seam of the permutation engine.

The permutation kernels are written once against the NumPy array API and run on

- ``"numpy"`` (default): vectorised NumPy, in voxel blocks that fit the CPU caches;
- ``"numba"``: the same arithmetic fused per voxel block by numba (CPU, releases the GIL, so
  joblib threads or a Dask cluster run blocks in parallel); intercept-only models only, others
  fall back to ``"numpy"``;
- ``"cupy"``: the NumPy code on a CUDA GPU through CuPy (only when CuPy is installed and asked
  for; the optional dependency ``painemp-compendium[gpu]``).

Where the work runs (serial, joblib processes/threads, a Dask ``distributed`` cluster) is chosen
separately, with :func:`joblib.parallel_config` around the call, e.g.
``with joblib.parallel_config(backend="dask"): psi_permutation_test(...)``, or
:func:`dask_cluster` for a cluster given by its scheduler address. The permutation chunks are
independent and their results are put together in order, so a cluster gives the serial
result bit for bit.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Iterator
from types import ModuleType

import numpy as np

LGR = logging.getLogger(__name__)

BACKENDS = ("numpy", "numba", "cupy")


def available_backends() -> list[str]:
    """Back-ends usable in this environment (cupy only if importable and a GPU answers)."""
    out = ["numpy"]
    if importlib.util.find_spec("numba") is not None:
        out.append("numba")
    if importlib.util.find_spec("cupy") is not None:
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() > 0:
                out.append("cupy")
        except Exception as exc:  # noqa: BLE001 - any CUDA failure means "not available"
            LGR.debug("cupy present but unusable: %s", exc)
    return out


def check_backend(name: str) -> str:
    """Validate a back-end name; raise a clear error when it cannot be used here."""
    if name not in BACKENDS:
        raise ValueError(f"unknown array backend {name!r}; choose one of {BACKENDS}")
    if name != "numpy" and name not in available_backends():
        raise RuntimeError(
            f"array backend {name!r} is not available here (install "
            f"{'cupy-cuda12x and use a CUDA GPU' if name == 'cupy' else name})"
        )
    return name


def array_module(name: str = "numpy") -> ModuleType:
    """The array module of a back-end (``numpy`` for ``"numpy"`` and ``"numba"``)."""
    check_backend(name)
    if name == "cupy":
        import cupy

        return cupy
    return np


def to_numpy(a) -> np.ndarray:
    """Bring an array of any back-end to host memory as a NumPy array."""
    if hasattr(a, "get") and not isinstance(a, np.ndarray):  # cupy
        return a.get()
    return np.asarray(a)


@contextlib.contextmanager
def dask_cluster(address: str) -> Iterator:
    """Run the joblib work inside the block (the PSI permutation chunks) on a Dask cluster.

    Connects a :class:`distributed.Client` to the scheduler at ``address`` and makes Dask
    joblib's back-end (:func:`joblib.parallel_config` ``backend="dask"``), so every worker
    thread of the cluster takes permutation chunks whatever ``n_jobs`` says. The workers
    must import this package (the same version) and its numba.

    Parameters
    ----------
    address : str
        The scheduler's address, e.g. ``"tcp://10.0.0.5:8786"`` (``dask scheduler`` prints it;
        ``distributed.LocalCluster().scheduler_address`` on one machine).

    Yields
    ------
    distributed.Client
        The connected client (closed on leaving the block).

    Examples
    --------
    >>> from analysis.sdm import PSICorrector  # doctest: +SKIP
    >>> with dask_cluster("tcp://10.0.0.5:8786"):  # doctest: +SKIP
    ...     result = PSICorrector(n_iters=1000).transform(result)
    """
    if not address or not str(address).strip():
        raise ValueError("dask_cluster needs a scheduler address, e.g. 'tcp://host:8786'")
    if importlib.util.find_spec("distributed") is None:
        raise RuntimeError("a Dask cluster needs dask[distributed] (the extra "
                           "painemp-compendium[dask]; it is in requirements.lock)")
    import distributed
    from joblib import parallel_config

    with distributed.Client(str(address).strip()) as client, parallel_config(backend="dask"):
        yield client
