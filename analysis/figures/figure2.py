"""Figure 2: increases (A) and decreases (B) of pain-empathy activation, patients vs controls.

He et al. (2024) show the SDM-Z map thresholded at voxel p < 0.0025 (uncorrected, one-tailed),
k > 10, on a template (drawn with MRIcroGL). Here the thresholded map (the clusters of
:func:`analysis.sdm.inference.clusters.threshold_clusters`, nothing else) is drawn with nilearn on the
MNI152 template at the PDF's text width (:mod:`analysis.figures.print_size`): one orthogonal
view through each reproduced cluster peak, increases in warm colours (row A), decreases in
cool colours (row B), one colour bar per row labelled "SDM-Z" that starts at the voxel
threshold, and the published peaks marked. A direction without any cluster says so in its
row; when no cluster survives at all, a glass brain shows only the published peaks under a
statement that nothing survived, so that no unthresholded colour is ever shown.
"""

from __future__ import annotations

import logging
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis.figures.print_size import TEXT_WIDTH_IN  # noqa: E402
from analysis.sdm.heap import frozen_heap  # noqa: E402
from analysis.sdm.inference.clusters import DECREASE, INCREASE  # noqa: E402

LGR = logging.getLogger(__name__)

#: direction, panel letter, colour map, sign of the map, marker colour of the published peaks
ROWS = ((INCREASE, "A", "autumn", 1.0, "#0b3d91"), (DECREASE, "B", "winter", -1.0, "#8b0000"))


def _rows(directions) -> tuple:
    """:data:`ROWS` with the direction labels of a cluster result (e.g. positive and negative
    effects of a one-sample meta-analysis, :func:`analysis.sdm.inference.clusters.direction_labels`).
    """
    return tuple((label, *row[1:]) for label, row in zip(directions, ROWS, strict=True))
FONT = 7.0  # points; the figure is drawn at the PDF's text width, so this is the printed size


def _threshold_text(params: dict) -> str:
    p = params.get("p_threshold")
    k = params.get("min_voxels")
    parts = [f"voxel p < {p:g}" if p is not None else None,
             f"k \u2265 {k}" if k is not None else None]
    return ", ".join(x for x in parts if x)


def _published_cuts(published, direction) -> list[tuple[int, int, int]]:
    if published is None or not len(published):
        return []
    sel = published[published["direction"] == direction]
    return [tuple(int(v) for v in r) for r in sel[["x", "y", "z"]].to_numpy()]


@frozen_heap()
def plot_figure2(clusters, space, title: str = "", simulated_note: str | None = None,
                 max_panels: int = 2, published=None, threshold_z: float | None = None):
    """Draw Figure 2 from a cluster result.

    Parameters
    ----------
    clusters : analysis.sdm.inference.clusters.ClusterResult
        Thresholded map and cluster peaks (``params`` with ``p_threshold``, ``min_voxels``).
    space : analysis.sdm.maps.space.MaskSpace
        Voxel space of the map.
    title : str
        Figure title (the manuscript's caption numbers the figure; usually empty).
    simulated_note : str, optional
        Text stating that (part of) the input data are simulated stand-ins; drawn in red under
        the title when given.
    max_panels : int
        Most cluster peaks shown per direction (largest clusters first); the row says how
        many more Table 3 lists.
    published : DataFrame, optional
        Published peaks (``direction, x, y, z``), marked on every view of their direction.
    threshold_z : float, optional
        SDM-Z of the voxel threshold: where the colour bars start (default: from
        ``clusters.params["p_threshold"]``, one-tailed; else the smallest surviving |SDM-Z|).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from nilearn import plotting
    from scipy.stats import norm

    peaks = clusters.peaks()
    zt = np.asarray(clusters.thresholded_z, dtype=np.float32)
    params = dict(getattr(clusters, "params", {}) or {})
    if threshold_z is None:
        p_thr = params.get("p_threshold")
        threshold_z = (float(norm.isf(p_thr)) if p_thr else
                       float(np.min(np.abs(zt[zt != 0]))) if np.any(zt) else 0.0)
    thr_text = _threshold_text(params)
    header_h = 0.45 if (title or simulated_note) else 0.25

    rows = _rows(getattr(clusters, "directions", (INCREASE, DECREASE)))
    if peaks.empty:
        return _no_cluster_figure(published, thr_text, title, simulated_note)

    n_cols = max(1, min(max_panels, int(peaks["direction"].value_counts().max())))
    row_h = 1.75
    fig = plt.figure(figsize=(TEXT_WIDTH_IN, header_h + 2 * row_h + 0.1))
    top = 1.0 - header_h / fig.get_figheight()
    grid = fig.add_gridspec(2, n_cols + 1, width_ratios=[1] * n_cols + [0.045], left=0.01,
                            right=0.9, bottom=0.02, top=top - 0.13, hspace=0.62, wspace=0.04)
    vmax = float(np.max(np.abs(zt)))
    vmax = max(vmax, threshold_z + 0.01)
    for row, (direction, letter, cmap, sign, marker) in enumerate(rows):
        sel = peaks[peaks["direction"] == direction]
        n_more = max(0, len(sel) - max_panels)
        sel = sel.head(max_panels)
        y_head = grid[row, 0].get_position(fig).y1 + 0.075
        name = (("increases" if sign > 0 else "decreases") if direction in (INCREASE, DECREASE)
                else f"{direction.lower()} effects")
        if sel.empty:
            ax = fig.add_subplot(grid[row, :])
            ax.set_axis_off()
            ax.text(0.5, 0.5, f"No cluster of {name} survives the thresholds ({thr_text}).",
                    ha="center", va="center", fontsize=FONT + 1, weight="bold",
                    bbox={"boxstyle": "round,pad=0.5", "fc": "#fff3cd", "ec": "#b58900"})
            fig.text(0.01, y_head, f"{letter}  {direction}", fontsize=FONT + 1, weight="bold")
            continue
        part = np.where(sign * zt > 0, sign * zt, 0.0).astype(np.float32)
        img = space.to_img(part)
        pub = _published_cuts(published, direction)
        for col, (_, pk) in enumerate(sel.iterrows()):
            ax = fig.add_subplot(grid[row, col])
            cut = (int(pk["x"]), int(pk["y"]), int(pk["z"]))
            display = plotting.plot_stat_map(
                img, display_mode="ortho", cut_coords=cut, axes=ax, cmap=cmap,
                threshold=1e-6, vmin=threshold_z, vmax=vmax, symmetric_cbar=False,
                colorbar=False, draw_cross=False, annotate=False, black_bg=False)
            display.annotate(size=FONT - 0.5, left_right=True, positions=True)
            if pub:
                # hollow rings, so that a small cluster under a published peak stays visible
                display.add_markers(pub, marker_color="none", marker_size=22, marker="o",
                                    edgecolors=marker, linewidths=0.8)
            pos = ax.get_position()
            # two lines, each shorter than the panel is wide: neighbouring titles never touch
            fig.text(pos.x0 + 0.005, pos.y1 + 0.004,
                     textwrap.shorten(str(pk["region"]), 44, placeholder="...") + "\n"
                     + f"MNI ({cut[0]}, {cut[1]}, {cut[2]}), SDM-Z = {float(pk['sdm_z']):.2f}",
                     fontsize=FONT - 0.5, va="bottom", linespacing=1.1)
        for col in range(len(sel), n_cols):
            fig.add_subplot(grid[row, col]).set_axis_off()
        cax = fig.add_subplot(grid[row, n_cols])
        if sign > 0:
            sm = ScalarMappable(norm=Normalize(threshold_z, vmax), cmap=cmap)
        else:
            sm = ScalarMappable(norm=Normalize(-vmax, -threshold_z), cmap=f"{cmap}_r")
        cb = fig.colorbar(sm, cax=cax)
        cb.set_label("SDM-Z", fontsize=FONT)
        cb.ax.tick_params(labelsize=FONT - 0.5)
        lo, hi = (threshold_z, vmax) if sign > 0 else (-vmax, -threshold_z)
        cb.set_ticks(np.unique(np.round([lo, (lo + hi) / 2, hi], 2)))
        more = f" ({n_more} more in Table 3)" if n_more else ""
        fig.text(0.01, y_head, f"{letter}  {direction}{more}", fontsize=FONT + 1,
                 weight="bold")
    _header(fig, title, simulated_note, top)
    rings = "; rings: published peaks" if published is not None and len(published) else ""
    fig.text(0.5, top + 0.005, f"Clusters at {thr_text}; colour from the voxel threshold, "
             f"|SDM-Z| = {threshold_z:.2f}{rings}.", ha="center",
             va="bottom", fontsize=FONT)
    return fig


def _header(fig, title: str, simulated_note: str | None, top: float) -> None:
    y = 0.995
    if title:
        fig.text(0.5, y, textwrap.fill(title, 100), ha="center", va="top", fontsize=FONT + 2)
        y -= 0.05
    if simulated_note:
        fig.text(0.5, y, textwrap.fill(simulated_note, 120), ha="center", va="top",
                 color="firebrick", fontsize=FONT - 0.5)


def _no_cluster_figure(published, thr_text: str, title: str, simulated_note: str | None):
    """A glass brain with the published peaks only, under a statement that nothing survived."""
    from nilearn import plotting

    fig = plt.figure(figsize=(TEXT_WIDTH_IN, 2.9))
    ax = fig.add_axes((0.0, 0.02, 1.0, 0.62))
    display = plotting.plot_glass_brain(None, display_mode="lyrz", axes=ax, annotate=False,
                                        black_bg=False)
    for direction, _, _, sign, _ in ROWS:
        cuts = _published_cuts(published, direction)
        if cuts:
            display.add_markers(cuts, marker_color="#d62728" if sign > 0 else "#1f77b4",
                                marker_size=30, marker="o" if sign > 0 else "s")
    fig.text(0.5, 0.76, "No cluster survives the thresholds (" + thr_text + "):\n"
             "there is no thresholded map to show.", ha="center", va="center",
             fontsize=FONT + 2, weight="bold",
             bbox={"boxstyle": "round,pad=0.5", "fc": "#fff3cd", "ec": "#b58900"})
    if published is not None and len(published):
        fig.text(0.5, 0.645, "Markers: published peaks (circles: patients > controls; "
                 "squares: patients < controls).", ha="center", va="center", fontsize=FONT)
    _header(fig, title, simulated_note, 1.0)
    return fig
