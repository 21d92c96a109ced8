"""Peak kernels of SDM pre-processing: isotropic and anisotropic (AES-SDM) Gaussians.

A kernel turns one reported peak into a weight map ``K`` over the in-mask voxels, ``K = 1`` at
the peak and ``K -> 0`` far from it. The bound maps of a study (see
:mod:`analysis.sdm.maps.preprocess`) are then ``lower = -g_thr + K (g_p + g_thr)`` and
``upper = g_thr + K (g_p - g_thr)``.

Isotropic kernel
    ``K(v) = exp(-d^2 / (2 sigma^2))`` with ``d`` the Euclidean distance (mm) between voxel and
    peak and ``sigma = FWHM / sqrt(8 ln 2)`` (8.493 mm for the 20 mm default of SDM-PSI,
    Radua et al. 2012, Eur Psychiatry 27:605).

Anisotropic kernel (AES-SDM: Radua et al. 2014, Front Psychiatry 5:13)
    SDM makes voxels that correlate with the peak "closer" to it. We write the kernel as a
    Gaussian of a *virtual distance*::

        vd^2 = (1 - alpha) d^2 + alpha * D^2,        K = exp(-vd^2 / (2 sigma^2))

    with ``alpha`` the degree of anisotropy (0 = isotropic, 1 = SDM's default "fully
    anisotropic") and ``D`` the shortest path from the peak to the voxel through the mask
    graph (26-connected neighbours), where each edge between neighbours ``v, w`` at distance
    ``l`` mm has the length ``l * s(v, w)``; the *stretch* ``s`` comes from a correlation
    template (:mod:`analysis.sdm.maps.templates`): ``s < 1`` where neighbouring voxels are strongly
    correlated, ``s > 1`` across tissue boundaries. Writing ``alpha * 2 sigma^2 ln(1/r)`` for
    ``alpha * D^2`` gives the "virtual distance" ``vd^2 = (1-alpha) d^2 + alpha 2 sigma^2
    ln(1/r(v, p))`` as transcribed in T. Salo's draft SDM-PSI estimator for NiMARE (pull
    request 591; with ``sigma^2`` where the draft writes ``sigma``), with the correlation to
    the peak ``r = exp(-D^2 / (2 sigma^2))`` of a Gaussian random field whose local scale is
    set by the template, i.e. neighbour correlations are combined along the best path
    (Dijkstra) in units where ``sqrt(ln 1/r)`` is additive.
    The alternative reading of that draft, Dijkstra on ``-ln r`` (product of neighbour
    correlations, an exponential rather than Gaussian fall-off), is available as
    ``path_model="product"``; the Enge validation (tests) measures both.

Peak position
    A peak is rounded to integer mm and put on the voxels whose centre lies within half a voxel
    of it along every axis (one voxel, or both neighbours where a rounded coordinate is odd, as
    SDM-PSI v6.21 does: e.g. x = -45 gives K = 1 at x = -44 and x = -46; measured on the bound
    maps of Enge et al. 2021, NeuroImage 241:118436, see :func:`peak_position`). A peak with no
    such voxel in the mask is NOT moved (as SDM-PSI v6.21, see the test of peaks outside the
    mask in ``tests/test_sdm_preprocess.py``): no voxel gets K = 1 and the
    in-mask voxels within ``outside_radius`` mm are reached along straight segments of length
    ``outside_stretch`` times their Euclidean distance, then along the mask graph.

Truncation
    Weights below ``2**-9`` are set to 0: the smallest non-zero kernel value in the SDM-PSI
    v6.21 bound maps of Enge et al. (2021) is 1/512 (measured). This also bounds the Dijkstra
    search (:func:`_bounded_dijkstra`, compiled; the peaks of a study run in parallel threads):
    with ``alpha = 1`` and
    ``sigma = 8.49`` mm no voxel farther than ``sigma sqrt(18 ln 2) = 30`` virtual mm from the
    peak is visited, i.e. the search is local and each peak costs milliseconds.

Limits: SDM's own correlation templates are distributed only with its binaries, so the
anisotropic kernel here is a documented reconstruction, its stretch template fitted on SDM-PSI's
bound maps of Enge et al. (2021) (:mod:`analysis.kernel_template`); the measured agreement with
SDM-PSI's kernel is reported in ``tests/test_sdm_preprocess.py`` (the tests of bound-map
agreement with SDM-PSI's maps).
"""

from __future__ import annotations

import itertools
import logging
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numba
import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree

from analysis.sdm.maps.space import MaskSpace, mni_to_ijk, neighbour_indices

LGR = logging.getLogger(__name__)

#: smallest kernel weight kept (SDM-PSI v6.21 bound maps: min non-zero K = 1/512)
TRUNCATE = 2.0 ** -9

#: the 13 "forward" offsets of the 26-neighbourhood (the other 13 are their negatives)
OFFSETS = np.array(
    [o for o in itertools.product((-1, 0, 1), repeat=3) if o > (0, 0, 0)], dtype=np.int64
)


def fwhm_to_sigma(fwhm_mm: float) -> float:
    """Gaussian sigma (mm) from a FWHM (mm): ``sigma = FWHM / sqrt(8 ln 2)``."""
    return float(fwhm_mm) / np.sqrt(8.0 * np.log(2.0))


def peak_position(xyz) -> np.ndarray:
    """Where SDM-PSI puts a peak: each coordinate rounded to the nearest integer mm.

    Measured on the SDM-PSI v6.21 bound maps of Enge et al. (2021): for the 469 isolated peaks
    with a box-shaped ``K = 1`` plateau, the plateau's centre equals the rounded coordinate in
    every peak of the 23 studies that report integer coordinates; 1, 2, 4 or 8 voxels carry
    ``K = 1`` (one per axis whose rounded coordinate is odd, i.e. half-way between two 2 mm
    voxel centres) in the proportions 0.10/0.43/0.35/0.11 expected from a fair coin per axis.
    """
    return np.floor(np.asarray(xyz, dtype=float) + 0.5)


def peak_voxels(xyz, space: MaskSpace, tol: float = 1e-6, outside: str = "keep") -> np.ndarray:
    """In-mask voxel indices that carry one peak (``K = 1``).

    The peak is first rounded to integer mm (:func:`peak_position`); the voxels whose centre is
    within half a voxel of it along every axis carry it (both neighbours where a rounded
    coordinate falls half-way between two voxel centres, e.g. x = -45 gives x = -44 and -46).

    Parameters
    ----------
    xyz : array-like, shape (3,)
        Peak in MNI mm.
    space : MaskSpace
        Voxel space.
    tol : float
        Tolerance (in voxels) for "exactly half-way".
    outside : {"keep", "nearest"}
        When none of those voxels is in the mask: ``"keep"`` (SDM-PSI v6.21) returns no voxel,
        the kernel stays centred on the peak's own position and only its in-mask voxels are
        kept (see :class:`AnisotropicKernel`); ``"nearest"`` moves the peak to the nearest
        in-mask voxel.

    Returns
    -------
    numpy.ndarray
        Indices into the voxel vector (possibly empty with ``outside="keep"``).
    """
    if outside not in ("keep", "nearest"):
        raise ValueError(f"outside must be 'keep' or 'nearest', got {outside!r}")
    pos = peak_position(xyz)
    f = mni_to_ijk(pos, space.affine)[0]
    lo = np.ceil(f - 0.5 - tol).astype(int)
    hi = np.floor(f + 0.5 + tol).astype(int)
    cand = np.array(list(itertools.product(*[range(a, b + 1) for a, b in zip(lo, hi)])))
    shape = np.array(space.shape)
    ok = np.all((cand >= 0) & (cand < shape), axis=1)
    idx = space._index[tuple(cand[ok].T)] if ok.any() else np.empty(0, dtype=np.int64)
    idx = idx[idx >= 0]
    if idx.size or outside == "keep":
        return np.unique(idx).astype(np.int64)
    dist, nearest = _tree(space).query(pos)
    LGR.info("peak %s outside the mask: moved %.1f mm to the nearest mask voxel", xyz, dist)
    return np.array([nearest], dtype=np.int64)


#: KD-trees of the masks alive now: ``id(space) -> (weak reference to space, tree)``. An entry
#: leaves when its space is collected, and is used only while its weak reference still points
#: to the same space, so a reused ``id`` never hands back another mask's tree.
_TREES: dict[int, tuple[weakref.ref, cKDTree]] = {}


def _tree(space: MaskSpace) -> cKDTree:
    key = id(space)
    entry = _TREES.get(key)
    if entry is not None and entry[0]() is space:
        return entry[1]
    tree = cKDTree(space.xyz)
    _TREES[key] = (weakref.ref(space, lambda _ref, key=key: _TREES.pop(key, None)), tree)
    return tree


def mask_edges(space: MaskSpace):
    """All in-mask 26-neighbour edges once: ``(src, dst, offset number, length mm)``."""
    vox = np.abs(np.diag(space.affine)[:3])
    table = neighbour_indices(space.mask, OFFSETS)
    src_l, dst_l, n_l, len_l = [], [], [], []
    for n, off in enumerate(OFFSETS):
        src = np.flatnonzero(table[:, n] >= 0)
        src_l.append(src)
        dst_l.append(table[src, n])
        n_l.append(np.full(len(src), n, dtype=np.int8))
        len_l.append(np.full(len(src), float(np.linalg.norm(off * vox))))
    return (np.concatenate(src_l), np.concatenate(dst_l), np.concatenate(n_l),
            np.concatenate(len_l))


@dataclass
class IsotropicKernel:
    """Isotropic Gaussian kernel ``exp(-d^2 / (2 sigma^2))`` truncated at ``truncate``.

    Parameters
    ----------
    space : MaskSpace
        Voxel space.
    fwhm : float
        Full width at half maximum in mm (SDM-PSI default 20).
    truncate : float
        Weights below this are set to 0.
    """

    space: MaskSpace
    fwhm: float = 20.0
    truncate: float = TRUNCATE

    @property
    def sigma(self) -> float:
        """Gaussian standard deviation (mm) of the kernel's FWHM."""
        return fwhm_to_sigma(self.fwhm)

    def weights(self, xyz) -> tuple[np.ndarray, np.ndarray]:
        """Sparse kernel of one peak: ``(voxel indices, K)`` with ``K >= truncate``."""
        xyz = peak_position(xyz)
        src = peak_voxels(xyz, self.space)
        radius = self.sigma * np.sqrt(2.0 * np.log(1.0 / self.truncate))
        idx = np.asarray(_tree(self.space).query_ball_point(xyz, radius), dtype=np.int64)
        idx = np.union1d(idx, src)
        d2 = np.sum((self.space.xyz[idx] - xyz) ** 2, axis=1)
        k = np.exp(-d2 / (2.0 * self.sigma ** 2))
        k[np.isin(idx, src)] = 1.0
        keep = k >= self.truncate
        return idx[keep].astype(np.int32), k[keep].astype(np.float32)


@dataclass
class AnisotropicKernel:
    """SDM-style anisotropic kernel on the mask graph (see the module docstring).

    Parameters
    ----------
    space : MaskSpace
        Voxel space; paths run through in-mask voxels only.
    stretch : numpy.ndarray, shape (13, X, Y, Z)
        Edge stretch ``s`` for each forward offset of :data:`OFFSETS` at each voxel (the edge
        from ``v`` to ``v + offset``), from :func:`analysis.sdm.maps.templates.stretch_template`.
    fwhm : float
        FWHM of the Gaussian in mm.
    anisotropy : float
        Degree of anisotropy alpha in [0, 1].
    path_model : {"gaussian", "product"}
        ``"gaussian"``: ``K = exp(-vd^2 / 2 sigma^2)`` with ``D`` additive (default);
        ``"product"``: ``r`` is the product of neighbour correlations ``exp(-l s / sigma)``
        along the path (``-ln r`` additive) and ``K = K_iso^(1-alpha) r^alpha``.
    truncate : float
        Weights below this are set to 0.
    max_cache_entries : int
        Bound on the cached kernel values (voxels summed over peaks; 8 bytes each).
    """

    space: MaskSpace
    stretch: np.ndarray
    fwhm: float = 20.0
    anisotropy: float = 1.0
    path_model: str = "gaussian"
    truncate: float = TRUNCATE
    outside_stretch: float = 1.5
    outside_radius: float = 16.0
    _graph: sparse.csr_matrix = field(init=False, repr=False, default=None)
    max_cache_entries: int = 25_000_000
    _cache: dict = field(init=False, repr=False, default_factory=dict)
    _cached_size: int = field(init=False, repr=False, default=0)

    def __post_init__(self):
        if not 0.0 <= self.anisotropy <= 1.0:
            raise ValueError(f"anisotropy must be in [0, 1], got {self.anisotropy}")
        if self.path_model not in ("gaussian", "product"):
            raise ValueError(f"unknown path_model {self.path_model!r}")
        if self.stretch.shape != (len(OFFSETS), *self.space.shape):
            raise ValueError(
                f"stretch template has shape {self.stretch.shape}, expected "
                f"{(len(OFFSETS), *self.space.shape)}")
        self._graph = self._build_graph()
        self._iso = IsotropicKernel(self.space, self.fwhm, self.truncate)

    @property
    def sigma(self) -> float:
        """Gaussian standard deviation (mm) of the kernel's FWHM."""
        return fwhm_to_sigma(self.fwhm)

    def _build_graph(self) -> sparse.csr_matrix:
        """Symmetric sparse graph of in-mask 26-neighbours with edge length ``l * s`` (mm)."""
        sp = self.space
        src, dst, n, length = mask_edges(sp)
        ijk = sp.ijk[src]
        w = length * self.stretch[n, ijk[:, 0], ijk[:, 1], ijk[:, 2]]
        good = np.isfinite(w) & (w > 0)
        g = sparse.coo_matrix((w[good], (src[good], dst[good])),
                              shape=(sp.n_voxels, sp.n_voxels)).tocsr()
        # symmetric by construction; Dijkstra then runs with directed=True (no re-symmetrising)
        return (g + g.T).tocsr()

    def _limit(self) -> float:
        """Where the path search stops: the largest path length D that can still give
        ``K >= truncate``, plus a relative margin of 1e-9 for rounding and the 1e-9 mm with
        which every path starts.
        """
        a = max(self.anisotropy, 1e-12)
        lnt = np.log(1.0 / self.truncate)
        if self.path_model == "gaussian":
            d = self.sigma * np.sqrt(2.0 * lnt / a)
        else:
            d = self.sigma * lnt / a
        return d * (1 + 1e-9) + 1e-9

    def weights(self, xyz) -> tuple[np.ndarray, np.ndarray]:
        """Sparse kernel of one peak: ``(voxel indices, K)`` with ``K >= truncate`` (cached)."""
        key = self._key(xyz)
        if key not in self._cache:
            self.prefetch([xyz])
        return self._cache[key]

    @staticmethod
    def _key(xyz) -> tuple:
        return tuple(np.round(np.asarray(xyz, dtype=float), 6))

    def prefetch(self, xyz) -> None:
        """Compute and cache the kernels of many peaks, in parallel threads.

        Each peak's path lengths come from :func:`_bounded_dijkstra` (compiled, without the
        GIL), started from its peak voxels at length 1e-9 mm (as a virtual source joined to
        them by edges of that length) and stopped at the largest length that can still give
        ``K >= truncate``; every peak visits only its neighbourhood.
        """
        todo, seen = [], set()
        for p in np.atleast_2d(np.asarray(xyz, dtype=float)):
            k = self._key(p)
            if k not in self._cache and k not in seen:
                seen.add(k)
                todo.append(p)
        if not todo:
            return
        if self.anisotropy == 0.0:
            for p in todo:
                self._store(self._key(p), self._iso.weights(p))
            return
        pts = [peak_position(p) for p in todo]
        seeds = [self._seeds(p) for p in pts]
        g = self._graph
        indptr, indices = g.indptr, g.indices
        limit = self._limit()
        nv = self.space.n_voxels

        def run(chunk):
            dist, pos = np.full(nv, np.inf), np.full(nv, -1, dtype=np.int64)
            return [_bounded_dijkstra(indptr, indices, g.data, seeds[i][1], seeds[i][2], limit,
                                      dist, pos) for i in chunk]

        n_threads = max(1, min(numba.get_num_threads(), len(pts)))
        chunks = [range(t, len(pts), n_threads) for t in range(n_threads)]
        if n_threads == 1:
            found = run(chunks[0])
            paths = dict(zip(chunks[0], found, strict=True))
        else:
            with ThreadPoolExecutor(n_threads) as ex:
                paths = {i: r for chunk, res in zip(chunks, ex.map(run, chunks), strict=True)
                         for i, r in zip(chunk, res, strict=True)}
        for i, (p, key) in enumerate(zip(pts, todo, strict=True)):
            idx, dist = paths[i]
            self._store(self._key(key), self._from_distance(p, seeds[i][0], idx, dist))

    def _seeds(self, p) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(peak voxels, first voxels of the paths, their path lengths)`` of peak ``p``.

        A peak with voxels in the mask starts its paths there (length 1e-9 mm); a peak outside
        the mask reaches the in-mask voxels within ``outside_radius`` along straight segments
        of ``outside_stretch`` times their Euclidean length.
        """
        src = peak_voxels(p, self.space)
        if src.size:
            return src, src.astype(np.int64), np.full(src.size, 1e-9)
        near = np.asarray(_tree(self.space).query_ball_point(p, self.outside_radius),
                          dtype=np.int64)
        d = np.linalg.norm(self.space.xyz[near] - p, axis=1)
        return src, near, np.maximum(d * self.outside_stretch, 1e-9)

    def _store(self, key, value) -> None:
        """Cache one kernel; the oldest entries go once ``max_cache_entries`` is exceeded."""
        self._cache[key] = value
        self._cached_size += len(value[0])
        while self._cached_size > self.max_cache_entries and len(self._cache) > 1:
            old = next(iter(self._cache))
            self._cached_size -= len(self._cache.pop(old)[0])

    def _from_distance(self, xyz, src, idx, dist) -> tuple[np.ndarray, np.ndarray]:
        """Kernel weights of the voxels ``idx`` at path lengths ``dist`` from peak ``xyz``."""
        big_d = np.maximum(dist - 1e-9, 0.0)
        d2 = np.sum((self.space.xyz[idx] - xyz) ** 2, axis=1)
        a = self.anisotropy
        s2 = 2.0 * self.sigma ** 2
        if self.path_model == "gaussian":
            k = np.exp(-((1.0 - a) * d2 + a * big_d ** 2) / s2)
        else:
            k = np.exp(-(1.0 - a) * d2 / s2 - a * big_d / self.sigma)
        k[np.isin(idx, src)] = 1.0
        keep = k >= self.truncate
        return idx[keep].astype(np.int32), k[keep].astype(np.float32)


@numba.njit(cache=True, nogil=True, inline="always")
def _sift_up(hd, hv, pos, i, d, v):  # pragma: no cover - compiled
    """Put voxel ``v`` with key ``d`` at heap slot ``i`` or above (binary min-heap)."""
    while i > 0:
        parent = (i - 1) >> 1
        if hd[parent] <= d:
            break
        hd[i] = hd[parent]
        hv[i] = hv[parent]
        pos[hv[i]] = i
        i = parent
    hd[i] = d
    hv[i] = v
    pos[v] = i


@numba.njit(cache=True, nogil=True)
def _bounded_dijkstra(indptr, indices, weights, starts, start_dist, limit, dist, pos
                      ):  # pragma: no cover - compiled
    """Shortest path lengths from a set of start voxels, up to ``limit``.

    The lengths of :func:`scipy.sparse.csgraph.dijkstra` with ``limit`` from a virtual source
    joined to ``starts`` by edges of lengths ``start_dist`` (an edge is relaxed when the new
    length is ``<= limit``): with positive edge lengths every reached voxel's length is the
    minimum over its neighbours of (neighbour's length + edge), whatever the order of equal
    lengths in the queue, so both give the same floating-point numbers. An indexed binary heap
    (decrease-key); only reached voxels are touched.

    Parameters
    ----------
    indptr, indices, weights : ndarray
        The graph in CSR form (integer, integer, float64), positive weights.
    starts : ndarray of int64
    start_dist : ndarray of float64
    limit : float
    dist : ndarray of float64, shape (V,)
        Work array, all ``inf`` on entry and on return.
    pos : ndarray of int64, shape (V,)
        Work array (heap slot of each voxel), all ``-1`` on entry and on return.

    Returns
    -------
    idx : ndarray of int64
        Reached voxels, ascending.
    lengths : ndarray of float64
        Their path lengths.
    """
    hd = np.empty(4096)
    hv = np.empty(4096, np.int64)
    reached = np.empty(4096, np.int64)
    n = n_reached = 0
    m = starts.size
    u = -1
    du = 0.0
    while True:
        # relax the start voxels first (from the virtual source), then the edges of u
        lo = 0 if u < 0 else indptr[u]
        hi = m if u < 0 else indptr[u + 1]
        for j in range(lo, hi):
            v = starts[j] if u < 0 else indices[j]
            nd = start_dist[j] if u < 0 else du + weights[j]
            if nd > limit or nd >= dist[v]:
                continue
            if pos[v] == -1:  # first reached: a new heap entry
                if n == hd.size:
                    hd = np.concatenate((hd, np.empty(n)))
                    hv = np.concatenate((hv, np.empty(n, np.int64)))
                if n_reached == reached.size:
                    reached = np.concatenate((reached, np.empty(n_reached, np.int64)))
                reached[n_reached] = v
                n_reached += 1
                i = n
                n += 1
            else:
                i = pos[v]
            dist[v] = nd
            _sift_up(hd, hv, pos, i, nd, v)
        if n == 0:
            break
        du = hd[0]
        u = hv[0]
        pos[u] = -2  # settled
        n -= 1
        if n > 0:  # the last entry moves down from the root
            ld = hd[n]
            lv = hv[n]
            i = 0
            while True:
                c = 2 * i + 1
                if c >= n:
                    break
                if c + 1 < n and hd[c + 1] < hd[c]:
                    c += 1
                if hd[c] >= ld:
                    break
                hd[i] = hd[c]
                hv[i] = hv[c]
                pos[hv[i]] = i
                i = c
            hd[i] = ld
            hv[i] = lv
            pos[lv] = i
    idx = np.sort(reached[:n_reached])
    lengths = np.empty(n_reached)
    for i in range(n_reached):
        lengths[i] = dist[idx[i]]
        dist[idx[i]] = np.inf
        pos[idx[i]] = -1
    return idx, lengths


def make_kernel(space: MaskSpace, *, fwhm: float = 20.0, anisotropy: float = 1.0,
                template="enge_fit", path_model: str = "gaussian",
                outside_stretch: float = 1.5, outside_radius: float = 16.0):
    """Kernel for a space: isotropic when ``anisotropy == 0``, else anisotropic.

    Parameters
    ----------
    space : MaskSpace
        Voxel space.
    fwhm : float
        FWHM (mm).
    anisotropy : float
        Degree of anisotropy in [0, 1].
    template : str or numpy.ndarray
        A stretch template (array of shape (13, X, Y, Z), e.g. fitted on SDM-PSI's maps by
        :mod:`analysis.kernel_template`) or the name of one of
        :func:`analysis.sdm.maps.templates.stretch_template` (default ``"enge_fit"``, the template
        fitted on SDM-PSI's own maps, :data:`analysis.sdm.maps.templates.DEFAULT_TEMPLATE`).
    path_model : str
        See :class:`AnisotropicKernel`.
    outside_stretch : float
        Stretch of the straight segments from a peak outside the mask (1.5, chosen on the
        training half of Enge et al. 2021 among 1.0, 1.5 and 2.0).
    outside_radius : float
        ... reaching mask voxels up to this far (mm) from the peak.

    Returns
    -------
    IsotropicKernel or AnisotropicKernel
    """
    if anisotropy == 0.0:
        return IsotropicKernel(space, fwhm)
    from analysis.sdm.maps.templates import stretch_template

    if isinstance(template, str):
        stretch = stretch_template(template, space.affine, space.shape)
    else:
        stretch = np.asarray(template, dtype=float)
    return AnisotropicKernel(space, stretch, fwhm=fwhm, anisotropy=anisotropy,
                             path_model=path_model, outside_stretch=float(outside_stretch),
                             outside_radius=float(outside_radius))
