"""Figure 3: conjunction maps of rs-FC and co-activation (MACM) for each peak, and overlaps.

Panels as in He et al. (2024): A/B the two "increase" peaks, C their overlap, D/E the two
"decrease" peaks, F their overlap (any other seed set: its seeds in order, then the overlaps).
Each map is drawn as maximum-intensity projections with the brain outline (a glass brain;
drawn directly with matplotlib, which is ~20x faster than nilearn's glass brain here). Where no rs-FC map exists (the cerebellar seed
with the cortical-only substitute) the panel shows the MACM alone and says so.
"""

from __future__ import annotations

import logging
import string
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from analysis.figures.print_size import TEXT_WIDTH_IN  # noqa: E402
from analysis.io import save_figure_files  # noqa: E402

LGR = logging.getLogger(__name__)

FONT = 7.0  # points: the figure is drawn at the PDF's text width, so this is the printed size
KIND_TEXT = {
    "conjunction": "conjunction rs-FC (substitute) ∩ MACM",
    "macm_only": "MACM only: no rs-FC substitute",
}


def order_panels(panels: list[dict]) -> list[dict]:
    """Increase seeds, increase overlap, decrease seeds, decrease overlap, then the rest."""
    ordered = []
    for d in ("increase", "decrease"):
        ordered += [p for p in panels if p["seed"] is not None and p["seed"].direction == d]
        ordered += [p for p in panels if p["key"] == d]
    ordered += [p for p in panels if p not in ordered]
    return ordered


def caption(panels: list[dict], substitute: bool, set_label: str) -> str:
    """Figure caption text (notes the rs-FC substitute and any MACM-only panel)."""
    parts = []
    for letter, p in zip(string.ascii_uppercase, order_panels(panels), strict=False):
        if p["seed"] is not None:
            s = p["seed"]
            parts.append(f"({letter}) {s.id} at MNI {s.x:g}, {s.y:g}, {s.z:g}: "
                         f"{KIND_TEXT.get(p['kind'], p['kind'])}.")
        else:
            parts.append(f"({letter}) {p['note']}.")
    text = (f"Figure 3 ({set_label}). Conjunctions of resting-state connectivity (r > 0.2, "
            "converted to Z) and meta-analytic co-activation (Neurosynth v7 association test, "
            "FDR q < 0.01) maps; minimum statistic. " + " ".join(parts))
    if substitute:
        text += (" The connectivity maps are a SUBSTITUTE for Neurosynth's unreleased GSP-1000 "
                 "seed maps: HCP group parcel-level FC (Schaefer-400, cortex only, via brainspace), "
                 "painted into MNI space; a seed without cortical coverage shows its MACM alone.")
    return text + " Coordinates are in MNI space."


def _mip_axes(ax, vol: np.ndarray, mask: np.ndarray, vmax: float) -> None:
    """Glass-brain style maximum-intensity projections (sagittal, coronal, axial) side by side.

    The grid is LAS (x index grows to the left), so the axial and coronal views are flipped to
    show the left hemisphere on the left (neurological convention, like nilearn's glass brain).
    """
    views = [
        (vol.max(axis=0).T, mask.any(axis=0).T),             # sagittal: y (→ anterior), z (↑)
        (vol.max(axis=1).T[:, ::-1], mask.any(axis=1).T[:, ::-1]),  # coronal: x (L→R), z
        (vol.max(axis=2).T[:, ::-1], mask.any(axis=2).T[:, ::-1]),  # axial: x (L→R), y
    ]
    tiles, outlines = [], []
    for img, msk in views:
        h = 109
        pad = np.zeros((h, img.shape[1]))
        pad_m = np.zeros((h, img.shape[1]), dtype=bool)
        pad[:img.shape[0]] = img
        pad_m[:msk.shape[0]] = msk
        tiles.append(pad)
        outlines.append(pad_m)
    big = np.hstack(tiles)
    bigm = np.hstack(outlines)
    ax.imshow(np.where(bigm, 0.92, 1.0), cmap="gray", vmin=0, vmax=1, origin="lower",
              interpolation="nearest")
    ax.contour(bigm.astype(float), levels=[0.5], colors="0.35", linewidths=0.6)
    shown = np.ma.masked_less_equal(big, 0)
    im = ax.imshow(shown, cmap="autumn_r", vmin=0, vmax=vmax, origin="lower",
                   interpolation="nearest")
    ax.set_axis_off()
    return im


def plot_figure3(panels: list[dict], mask: np.ndarray | None = None, substitute: bool = True,
                 to_volume=None):
    """The panels as glass-brain projections, two per row at the PDF's text width.

    Parameters
    ----------
    panels : list of dict
        ``seed`` (or None), ``key``, ``kind``, ``note`` and ``map`` of each panel.
    mask : ndarray, optional
        Brain mask volume of the maps (default: Neurosynth's mask).
    substitute : bool
        Whether the rs-FC maps are the substitute (a note under the panels says so).
    to_volume : callable, optional
        ``map -> 3-D array`` (default: :func:`analysis.characterisation.macm.vector_to_img`).

    Returns
    -------
    matplotlib.figure.Figure
    """
    if mask is None:
        from analysis.characterisation.databases import neurosynth_mask

        mask = np.asarray(neurosynth_mask().dataobj) > 0
    if to_volume is None:
        from analysis.characterisation.macm import vector_to_img

        def to_volume(m):
            return np.asarray(vector_to_img(m).dataobj, dtype=float)

    ordered = order_panels(panels)
    n = len(ordered)
    ncol = 2 if n > 1 else 1
    nrow = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(TEXT_WIDTH_IN, 1.45 * nrow + 0.35),
                             squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_axis_off()
    for i, p in enumerate(ordered):
        ax = axes.ravel()[i]
        letter = string.ascii_uppercase[i]
        if p["seed"] is not None:
            s = p["seed"]
            title = f"{letter}  {s.id} ({s.x:g}, {s.y:g}, {s.z:g}): {KIND_TEXT.get(p['kind'], '')}"
        else:
            title = f"{letter}  {p['note']}"
        vol = np.asarray(to_volume(p["map"]), dtype=float)
        vol = np.where(vol > 0, vol, 0.0)
        vmax = float(np.percentile(vol[vol > 0], 99)) if (vol > 0).any() else 1.0
        im = _mip_axes(ax, vol, mask, vmax)
        if not (vol > 0).any():
            ax.text(0.5, 0.5, "no voxel", ha="center", va="center", transform=ax.transAxes,
                    fontsize=FONT)
        else:
            cb = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.01)
            cb.ax.tick_params(labelsize=FONT - 0.5)
            cb.locator = MaxNLocator(3)
            cb.update_ticks()
            cb.set_label("Z", fontsize=FONT)
        title = title.replace("macm_only", "MACM only")
        ax.set_title(textwrap.fill(title, 44), fontsize=FONT, loc="left")
    if substitute:
        fig.text(0.01, 0.005, "rs-FC: SUBSTITUTE (HCP parcel FC, cortex only); projections: "
                 "sagittal, coronal, axial (left = left)", fontsize=FONT - 0.5,
                 color="firebrick")
    fig.tight_layout(rect=(0, 0.035, 1, 1), h_pad=0.6, w_pad=0.8)
    return fig


def draw(panels: list[dict], png: Path, svg: Path | None, set_label: str,
         substitute: bool = True) -> str:
    """Draw the panels (:func:`plot_figure3`) and save PNG (and SVG); return the caption."""
    fig = plot_figure3(panels, substitute=substitute)
    text = caption(panels, substitute, set_label)
    save_figure_files(fig, png, svg, caption=text, dpi=300)
    return text
