"""Coordinate databases (Neurosynth v7, NeuroQuery v1) and their study x voxel incidence matrix.

Every study becomes a binary image on the 2 mm MNI grid (91 x 109 x 91): the union of hard
spheres of radius ``r`` mm around its foci, restricted to Neurosynth's MNI152 2 mm brain mask
(228,483 voxels; the mask NiMARE ships as ``MNI152_2x2x2_brainmask``). This is Neurosynth's
``Dataset(..., r=6)`` image model (``imageutils.map_peaks_to_image``; Yarkoni et al. 2011).
Talairach foci (Neurosynth ``space == "TAL"``) are converted to MNI with the inverse of
Lancaster's ``icbm_spm2tal`` transform, as Neurosynth's ``transformations.t88_to_mni`` does
(Lancaster et al. 2007); ``UNKNOWN`` space is left untouched (treated as MNI), as in Neurosynth.

The incidence matrix is built once (vectorised, in chunks of studies) and cached as ``.npy`` files
in the user cache folder (:func:`analysis.fetch.cache_dir`), keyed by the SHA-256 of the
coordinate file, the radius and the mask. Beside them a ``.json`` record (written last) holds the
source checksums (coordinate file, radius, mask, shape) and the SHA-256 of each ``.npy`` file;
a cache entry is used only when the record matches and both files still have their recorded
checksums, otherwise it is rebuilt (a corrupted or foreign cache never reaches a result).

References
----------
Yarkoni T, Poldrack RA, Nichols TE, Van Essen DC, Wager TD (2011). Large-scale automated synthesis
of human functional neuroimaging data. Nat Methods 8:665-670.
Lancaster JL et al. (2007). Bias between MNI and Talairach coordinates analyzed using the ICBM-152
brain template. Hum Brain Mapp 28:1194-1205.
Dockès J et al. (2020). NeuroQuery, comprehensive meta-analysis of human brain mapping. eLife 9:e53385.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import sparse

from analysis.fetch import fetch_file, registry
from analysis.io import write_json
from analysis.sdm.datasets import cache_dir
from analysis.sdm.errors import DataError
from analysis.sdm.inputs.coords import tal2mni_lancaster
from analysis.sdm.inputs.io import atomic_path, sha256_file
from analysis.sdm.maps.space import nearest_voxel

LGR = logging.getLogger(__name__)

NS_DIR = "nimare_data/neurosynth"
NQ_DIR = "nimare_data/neuroquery"
NS_COORDS = f"{NS_DIR}/data-neurosynth_version-7_coordinates.tsv.gz"
NS_META = f"{NS_DIR}/data-neurosynth_version-7_metadata.tsv.gz"
NS_LDA = f"{NS_DIR}/data-neurosynth_version-7_vocab-LDA50_source-abstract_type-weight_features.npz"
NS_LDA_VOCAB = f"{NS_DIR}/data-neurosynth_version-7_vocab-LDA50_vocabulary.txt"
NQ_COORDS = f"{NQ_DIR}/data-neuroquery_version-1_coordinates.tsv.gz"
NQ_META = f"{NQ_DIR}/data-neuroquery_version-1_metadata.tsv.gz"
NQ_COUNTS = (f"{NQ_DIR}/data-neuroquery_version-1_vocab-neuroquery7547_source-abstract_"
             "type-count_features.npz")
NQ_VOCAB = f"{NQ_DIR}/data-neuroquery_version-1_vocab-neuroquery7547_vocabulary.txt"
NQ_CATEGORIES = f"{NQ_DIR}/data-neuroquery_version-1_termcategories.csv"


@lru_cache(maxsize=1)
def neurosynth_mask() -> nib.Nifti1Image:
    """Neurosynth's MNI152 2 mm brain mask (91 x 109 x 91, 228,483 voxels), from NiMARE's wheel."""
    import nimare

    path = Path(nimare.__file__).parent / "resources" / "templates" / "MNI152_2x2x2_brainmask.nii.gz"
    img = nib.load(path)
    return nib.Nifti1Image((np.asarray(img.dataobj) > 0).astype(np.uint8), img.affine)


def sphere_offsets(radius_mm: float, voxel_mm: float = 2.0) -> np.ndarray:
    """Integer voxel offsets within ``radius_mm`` of the centre (Euclidean, inclusive), (k, 3)."""
    r = int(np.floor(radius_mm / voxel_mm))
    g = np.arange(-r, r + 1)
    off = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    return off[(off ** 2).sum(1) * voxel_mm ** 2 <= radius_mm ** 2 + 1e-9]


def _require(df: pd.DataFrame, cols: list[str], path) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; found {list(df.columns)}")
    for c in ("x", "y", "z"):
        if c in cols:
            bad = np.flatnonzero(~np.isfinite(pd.to_numeric(df[c], errors="coerce")))
            if len(bad):
                raise DataError(path, "coordinate is not a finite number", row=int(bad[0]) + 1,
                                field=c)


@dataclass
class CoordinateDB:
    """A coordinate database in MNI space with per-study binary images on the 2 mm grid.

    Attributes
    ----------
    name : str
        ``"neurosynth"`` or ``"neuroquery"``.
    foci : pandas.DataFrame
        One row per focus: ``id`` (study), ``x``, ``y``, ``z`` (MNI mm), ``study`` (row index
        into :attr:`ids`).
    ids : numpy.ndarray
        Study identifiers (PMIDs), sorted; row order of :attr:`incidence`.
    checksum : str
        SHA-256 of the coordinate file (cache key).
    """

    name: str
    foci: pd.DataFrame
    ids: np.ndarray
    checksum: str
    _incidence: dict = field(default_factory=dict, repr=False)

    @property
    def n_studies(self) -> int:
        return len(self.ids)

    def studies_near(self, seed, radius_mm: float) -> np.ndarray:
        """Boolean (n_studies,) mask of studies with >= 1 focus within ``radius_mm`` of ``seed``.

        Neurosynth's ``Dataset.get_studies(peaks=[seed], r=radius)`` (Euclidean distance in MNI).
        """
        xyz = self.foci[["x", "y", "z"]].to_numpy()
        d2 = ((xyz - np.asarray(seed, dtype=float)) ** 2).sum(1)
        sel = np.zeros(self.n_studies, dtype=bool)
        sel[self.foci["study"].to_numpy()[d2 <= radius_mm ** 2]] = True
        return sel

    def studies_by_sphere_overlap(self, seed, radius_mm: float, kernel_mm: float,
                                  threshold: float) -> np.ndarray:
        """Older neurosynth.org rule: share of a seed sphere active in the study image > threshold.

        ``get_ids_by_peaks([seed], r=radius, threshold=0.05)`` of an earlier neurosynth-web version
        (in the repository's git history): a study is selected when more than ``threshold`` of the
        in-mask voxels of the ``radius_mm`` sphere around the seed are active in its
        ``kernel_mm``-sphere image. Effectively reaches foci ~10-12 mm away.
        """
        mimg = neurosynth_mask()
        mask = np.asarray(mimg.dataobj) > 0
        pts = nearest_voxel(seed, mimg.affine)[0] + sphere_offsets(radius_mm, abs(mimg.affine[0, 0]))
        pts = pts[np.all((pts >= 0) & (pts < np.array(mask.shape)), axis=1)]
        index = np.full(mask.shape, -1, dtype=np.int64)
        index[mask] = np.arange(int(mask.sum()))
        cols = index[tuple(pts.T)]
        cols = cols[cols >= 0]
        if len(cols) == 0:
            return np.zeros(self.n_studies, dtype=bool)
        frac = np.asarray(self.incidence(kernel_mm)[:, cols].sum(1)).ravel() / len(cols)
        return frac > threshold

    def incidence(self, radius_mm: float) -> sparse.csr_matrix:
        """Study x in-mask-voxel 0/1 matrix (CSR, uint8) of ``radius_mm`` spheres (cached)."""
        key = float(radius_mm)
        if key not in self._incidence:
            self._incidence[key] = _cached_incidence(self, radius_mm)
        return self._incidence[key]


def _mask_key(mask: np.ndarray) -> str:
    h = hashlib.sha256(np.packbits(mask).tobytes())
    h.update(np.asarray(neurosynth_mask().affine, dtype=np.float64).tobytes())
    return h.hexdigest()[:12]


def _cached_incidence(db: CoordinateDB, radius_mm: float) -> sparse.csr_matrix:
    mask = np.asarray(neurosynth_mask().dataobj) > 0
    folder = cache_dir() / "characterisation"
    stem = f"{db.name}-{db.checksum[:16]}-r{radius_mm:g}-mask{_mask_key(mask)}"
    files = {k: folder / f"{stem}-{k}.npy" for k in ("indptr", "indices")}
    record = folder / f"{stem}.json"
    source = {"database": db.name, "coordinates_sha256": db.checksum,
              "radius_mm": float(radius_mm), "mask": _mask_key(mask),
              "shape": [int(db.n_studies), int(mask.sum())]}
    mat = _read_verified(files, record, source)
    if mat is not None:
        LGR.info("incidence matrix of %s read from the cache %s (checksums verified)", db.name,
                 folder)
        return mat
    LGR.info("building the incidence matrix of %s (%d studies, %d foci, r = %g mm); cached in %s",
             db.name, db.n_studies, len(db.foci), radius_mm, folder)
    mat = build_incidence(db.foci, db.n_studies, radius_mm, mask, neurosynth_mask().affine,
                          desc=f"{db.name} incidence (r = {radius_mm:g} mm)")
    folder.mkdir(parents=True, exist_ok=True)
    record.unlink(missing_ok=True)
    for k in ("indices", "indptr"):
        with atomic_path(files[k], suffix=".npy") as tmp:
            np.save(tmp, getattr(mat, k))
    # the record last: its presence (with matching checksums) marks a complete entry
    write_json(record, {"source": source,
                        "sha256": {k: sha256_file(f) for k, f in files.items()}})
    return mat


def _read_verified(files: dict[str, Path], record: Path, source: dict) -> sparse.csr_matrix | None:
    """The cached matrix when its record matches ``source`` and every file its checksum."""
    if not record.exists():
        if any(f.exists() for f in files.values()):
            LGR.warning("incidence cache %s has no checksum record; rebuilding", record.parent)
        return None
    try:
        rec = json.loads(record.read_text())
        if rec.get("source") != source:
            LGR.warning("incidence cache %s was built from other sources; rebuilding", record)
            return None
        for k, f in files.items():
            if sha256_file(f) != rec["sha256"][k]:
                LGR.warning("incidence cache file %s fails its checksum; rebuilding", f)
                return None
        indptr = np.load(files["indptr"])
        indices = np.load(files["indices"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        LGR.warning("incidence cache %s unreadable (%s); rebuilding", record.parent, exc)
        return None
    n_studies, n_vox = source["shape"]
    if len(indptr) != n_studies + 1 or indptr[-1] != len(indices):
        return None
    return sparse.csr_matrix((np.ones(len(indices), dtype=np.uint8), indices, indptr),
                             shape=(n_studies, n_vox))


def build_incidence(foci: pd.DataFrame, n_studies: int, radius_mm: float, mask: np.ndarray,
                    affine: np.ndarray, chunk: int = 256,
                    desc: str = "incidence") -> sparse.csr_matrix:
    """Binary study x in-mask-voxel matrix: union of hard spheres around each study's foci.

    Parameters
    ----------
    foci : pandas.DataFrame
        Columns ``study`` (0-based row), ``x``, ``y``, ``z`` (MNI mm).
    n_studies : int
        Number of rows.
    radius_mm : float
        Sphere radius (Neurosynth: 6 mm).
    mask : numpy.ndarray of bool
        3-D mask on the grid of ``affine``; columns are its voxels in C order.
    affine : numpy.ndarray
        Voxel-to-MNI affine.
    chunk : int
        Studies per vectorised block (bounds memory).
    desc : str
        Label of the progress report (:func:`analysis.sdm.progress.progress`: a bar in a terminal,
        log lines every 10 % or 30 s otherwise).

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(n_studies, mask.sum())``, uint8, sorted indices, no duplicates.
    """
    from analysis.sdm.progress import progress

    shape = mask.shape
    lookup = np.full(mask.size, -1, dtype=np.int64)
    lookup[mask.ravel()] = np.arange(int(mask.sum()))
    ijk = nearest_voxel(foci[["x", "y", "z"]].to_numpy(), affine)
    study = foci["study"].to_numpy().astype(np.int64)
    order = np.argsort(study, kind="stable")
    ijk, study = ijk[order], study[order]
    off = sphere_offsets(radius_mm, abs(affine[0, 0]))
    n_vox = int(mask.sum())
    blocks = []
    bounds = np.searchsorted(study, np.arange(0, n_studies + chunk, chunk))
    with progress(desc=desc, total=n_studies, unit="study", logger=LGR) as bar:
        for b in range(len(bounds) - 1):
            lo, hi = bounds[b], bounds[b + 1]
            s0 = b * chunk
            rows_n = min(chunk, n_studies - s0)
            if rows_n <= 0:
                break
            pts = ijk[lo:hi, None, :] + off[None, :, :]
            ok = np.all((pts >= 0) & (pts < np.array(shape)), axis=2)
            flat = np.ravel_multi_index(
                tuple(np.where(ok[..., None], pts, 0).transpose(2, 0, 1)), shape)
            col = lookup[flat]
            keep = ok & (col >= 0)
            rows = np.broadcast_to((study[lo:hi] - s0)[:, None], keep.shape)[keep]
            dense = np.zeros((rows_n, n_vox), dtype=bool)  # bitmap: no sort needed to deduplicate
            dense[rows, col[keep]] = True
            r, c = np.nonzero(dense)
            indptr = np.searchsorted(r, np.arange(rows_n + 1))
            blocks.append(sparse.csr_matrix(
                (np.ones(len(c), np.uint8), c.astype(np.int32), indptr), shape=(rows_n, n_vox)))
            bar.update(rows_n)
    mat = sparse.vstack(blocks, format="csr") if blocks else sparse.csr_matrix((n_studies, n_vox),
                                                                              dtype=np.uint8)
    mat.indices = mat.indices.astype(np.int32)
    return mat


def _finish(name: str, foci: pd.DataFrame, path_rel: str) -> CoordinateDB:
    ids = np.unique(foci["id"].to_numpy())
    foci = foci.assign(study=np.searchsorted(ids, foci["id"].to_numpy()))
    return CoordinateDB(name, foci.reset_index(drop=True), ids, registry()[path_rel]["sha256"])


@lru_cache(maxsize=2)
def load_neurosynth(tal_to_mni: bool = True) -> CoordinateDB:
    """Neurosynth v7 foci in MNI space (TAL converted with Neurosynth's Lancaster transform).

    Parameters
    ----------
    tal_to_mni : bool
        Convert ``space == "TAL"`` studies (Neurosynth does); ``False`` keeps raw coordinates.
    """
    cpath, mpath = fetch_file(NS_COORDS), fetch_file(NS_META)
    coords = pd.read_csv(cpath, sep="\t", usecols=["id", "x", "y", "z"])
    meta = pd.read_csv(mpath, sep="\t", usecols=["id", "space"])
    _require(coords, ["id", "x", "y", "z"], cpath)
    _require(meta, ["id", "space"], mpath)
    space = coords["id"].map(meta.set_index("id")["space"])
    if space.isna().any():
        row = int(np.flatnonzero(space.isna().to_numpy())[0]) + 1
        raise DataError(cpath, f"study {coords['id'].iloc[row - 1]} has no metadata row", row=row,
                        field="id")
    if tal_to_mni:
        tal = (space == "TAL").to_numpy()
        xyz = coords.loc[tal, ["x", "y", "z"]].to_numpy()
        coords.loc[tal, ["x", "y", "z"]] = tal2mni_lancaster(xyz, "icbm_spm")
    coords["space"] = space.to_numpy()
    name = "neurosynth" if tal_to_mni else "neurosynth-raw"
    db = _finish(name, coords, NS_COORDS)
    if not tal_to_mni:
        db.checksum = hashlib.sha256((db.checksum + "raw").encode()).hexdigest()
    return db


@lru_cache(maxsize=1)
def load_neuroquery() -> CoordinateDB:
    """NeuroQuery v1 foci (MNI, as distributed; Dockès et al. 2020)."""
    cpath = fetch_file(NQ_COORDS)
    coords = pd.read_csv(cpath, sep="\t", usecols=["id", "x", "y", "z"])
    _require(coords, ["id", "x", "y", "z"], cpath)
    return _finish("neuroquery", coords, NQ_COORDS)


def _load_npz_csr(path: Path) -> sparse.csr_matrix:
    f = np.load(path, allow_pickle=False)
    fmt = f["format"].item()
    fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
    cls = {"csr": sparse.csr_matrix, "csc": sparse.csc_matrix}[fmt]
    return cls((f["data"], f["indices"], f["indptr"]), shape=tuple(f["shape"])).tocsr()


@lru_cache(maxsize=1)
def neuroquery_terms(category: str | None = "psychology") -> tuple[sparse.csr_matrix, list[str],
                                                                   np.ndarray]:
    """NeuroQuery abstract term counts (13,459 studies x 7,547 terms), optionally one category.

    Parameters
    ----------
    category : str or None
        Keep only vocabulary terms with at least one ``termcategories.csv`` row of this category
        (``"psychology"``, ``"anatomy"``, ``"disease"``) among the rows whose ``normalized_term``
        is the vocabulary term (1,604 psychology terms of 7,547).

    Returns
    -------
    counts : scipy.sparse.csr_matrix
        Studies x kept terms.
    terms : list of str
    ids : numpy.ndarray
        Study PMIDs (rows), in the metadata order.
    """
    counts = _load_npz_csr(fetch_file(NQ_COUNTS))
    vocab = fetch_file(NQ_VOCAB).read_text(encoding="utf-8").splitlines()
    ids = pd.read_csv(fetch_file(NQ_META), sep="\t", usecols=["id"])["id"].to_numpy()
    if counts.shape != (len(ids), len(vocab)):
        raise DataError(fetch_file(NQ_COUNTS), f"shape {counts.shape} does not match "
                        f"{len(ids)} studies x {len(vocab)} vocabulary terms")
    keep = np.ones(len(vocab), dtype=bool)
    if category is not None:
        cats = pd.read_csv(fetch_file(NQ_CATEGORIES))
        _require(cats, ["term", "normalized_term", "category"], fetch_file(NQ_CATEGORIES))
        cats_of = cats.groupby(cats["normalized_term"].astype(str))["category"].agg(set)
        keep = np.array([category in cats_of.get(t, ()) for t in vocab])
    cols = np.flatnonzero(keep)
    return counts[:, cols].tocsr(), [vocab[i] for i in cols], ids


@lru_cache(maxsize=1)
def neurosynth_lda50() -> tuple[np.ndarray, list[str], np.ndarray]:
    """Neurosynth v7 LDA-50 topic weights (14,371 x 50), topic names and study ids."""
    w = _load_npz_csr(fetch_file(NS_LDA)).toarray()
    names = fetch_file(NS_LDA_VOCAB).read_text(encoding="utf-8").splitlines()
    ids = pd.read_csv(fetch_file(NS_META), sep="\t", usecols=["id"])["id"].to_numpy()
    if w.shape != (len(ids), len(names)):
        raise DataError(fetch_file(NS_LDA), f"shape {w.shape} does not match {len(ids)} studies "
                        f"x {len(names)} topics")
    return w, names, ids


def cache_root() -> Path:
    """Folder of this package's cached derived arrays."""
    return Path(os.fspath(cache_dir())) / "characterisation"
