"""Figure 2: increases (A) and decreases (B) of pain-empathy activation, patients vs controls.

He et al. (2024) show the SDM-Z map thresholded at voxel p < 0.0025 (uncorrected, one-tailed),
k > 10 (drawn with MRIcroGL). Here the thresholded map (clusters of
:func:`analysis.sdm.clusters.threshold_clusters`) is drawn with nilearn on the MNI152 template:
one orthogonal view through each cluster peak, increases in warm colours (row A), decreases in
cool colours (row B), each panel with its MNI cut coordinates and an SDM-Z colour bar. When the
input data are simulated stand-ins the title says so.
"""

from __future__ import annotations

import logging
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis.sdm.clusters import DECREASE, INCREASE  # noqa: E402

LGR = logging.getLogger(__name__)

ROWS = ((INCREASE, "A", "autumn", 1.0), (DECREASE, "B", "winter", -1.0))


def plot_figure2(clusters, space, title: str = "", simulated_note: str | None = None,
                 max_panels: int = 4, z=None, fallback_cuts: dict | None = None):
    """Draw Figure 2 from a cluster result.

    Parameters
    ----------
    clusters : analysis.sdm.clusters.ClusterResult
        Thresholded map and cluster peaks.
    space : analysis.sdm.space.MaskSpace
        Voxel space of the map.
    title : str
        Figure title.
    simulated_note : str, optional
        Text stating that (part of) the input data are simulated stand-ins; drawn in red under
        the title when given.
    max_panels : int
        Most peaks shown per direction (largest clusters first).
    z : array, optional
        Unthresholded SDM-Z vector. With ``fallback_cuts``, a direction without any surviving
        cluster is drawn unthresholded (clearly labelled as such) at those cuts instead of
        being left empty.
    fallback_cuts : dict, optional
        ``direction -> list of (x, y, z)`` MNI cuts (e.g. the published peaks).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from nilearn import plotting

    peaks = clusters.peaks()
    fallback_cuts = fallback_cuts if z is not None else None
    counts = [int((peaks["direction"] == d).sum()) or
              (len((fallback_cuts or {}).get(d, [])) if fallback_cuts else 0) for d, *_ in ROWS]
    n_cols = max(2, min(max_panels, max(counts)))
    fig = plt.figure(figsize=(5.5 * n_cols, 5.6), dpi=150)
    top = 0.84 if simulated_note else 0.9
    grid = fig.add_gridspec(2, n_cols, left=0.02, right=0.98, bottom=0.03, top=top,
                            hspace=0.35, wspace=0.05)
    zt = np.asarray(clusters.thresholded_z, dtype=np.float32)
    vmax = float(np.max(np.abs(zt))) if np.any(zt) else 1.0
    for row, (direction, letter, cmap, sign) in enumerate(ROWS):
        sel = peaks[peaks["direction"] == direction].head(max_panels)
        header = f"{letter}  {direction} (|SDM-Z|, thresholded)"
        if sel.empty and fallback_cuts and fallback_cuts.get(direction):
            # nothing survives: show the unthresholded map at the given cuts, labelled as such
            zu = np.asarray(z, dtype=np.float32)
            part = np.where(sign * zu > 0, sign * zu, 0.0).astype(np.float32)
            vmax_u = max(float(part.max()), 1e-3)
            cuts = [tuple(int(v) for v in c) for c in fallback_cuts[direction]][:max_panels]
            panels = [(c, f"MNI {c}: SDM-Z = {float(zu[space.voxel_index(c)[0]]):.2f}"
                       if space.voxel_index(c)[0] >= 0 else f"MNI {c}") for c in cuts]
            img, vmax_row = space.to_img(part), vmax_u
            header = (f"{letter}  {direction}: no cluster survives the threshold; "
                      "UNTHRESHOLDED |SDM-Z| at the published peaks")
        elif sel.empty:
            ax = fig.add_subplot(grid[row, :])
            ax.axis("off")
            ax.text(0.5, 0.5, f"({letter}) {direction}: no cluster survives the threshold",
                    ha="center", va="center", fontsize=10)
            continue
        else:
            part = np.where(sign * zt > 0, sign * zt, 0.0).astype(np.float32)
            img, vmax_row = space.to_img(part), vmax
            panels = []
            for _, pk in sel.iterrows():
                cut = (int(pk["x"]), int(pk["y"]), int(pk["z"]))
                panels.append((cut, f"{pk['region']}  MNI {cut}  SDM-Z = {pk['sdm_z']:.2f}"))
        for col, (cut, text) in enumerate(panels):
            ax = fig.add_subplot(grid[row, col])
            display = plotting.plot_stat_map(
                img, display_mode="ortho", cut_coords=cut, axes=ax, cmap=cmap,
                threshold=1e-6, vmin=0.0, vmax=vmax_row, symmetric_cbar=False, colorbar=True,
                draw_cross=False, annotate=True, black_bg=False,
            )
            display.title(text, size=7, color="black", bgcolor="white", alpha=0.0)
        fig.text(0.01, grid[row, 0].get_position(fig).y1 + 0.01, header, fontsize=10,
                 weight="bold")
    if title:
        fig.suptitle(textwrap.fill(title, 120), fontsize=11, y=0.985)
    if simulated_note:
        fig.text(0.5, top + 0.035, textwrap.fill(simulated_note, 140), ha="center", va="bottom",
                 color="firebrick", fontsize=9)
    return fig
