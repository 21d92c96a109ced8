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

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis.sdm.clusters import DECREASE, INCREASE  # noqa: E402

LGR = logging.getLogger(__name__)

ROWS = ((INCREASE, "A", "autumn", 1.0), (DECREASE, "B", "winter", -1.0))


def plot_figure2(clusters, space, title: str = "", simulated_note: str | None = None,
                 max_panels: int = 4):
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

    Returns
    -------
    matplotlib.figure.Figure
    """
    from nilearn import plotting

    peaks = clusters.peaks()
    n_cols = max(1, min(max_panels, max(
        int((peaks["direction"] == d).sum()) for d, *_ in ROWS)))
    fig = plt.figure(figsize=(5.5 * n_cols, 5.4), dpi=150)
    top = 0.86 if simulated_note else 0.9
    grid = fig.add_gridspec(2, n_cols, left=0.02, right=0.98, bottom=0.03, top=top,
                            hspace=0.35, wspace=0.05)
    z = np.asarray(clusters.thresholded_z, dtype=np.float32)
    vmax = float(np.max(np.abs(z))) if np.any(z) else 1.0
    for row, (direction, letter, cmap, sign) in enumerate(ROWS):
        sel = peaks[peaks["direction"] == direction].head(max_panels)
        part = np.where(sign * z > 0, sign * z, 0.0).astype(np.float32)
        img = space.to_img(part)
        if sel.empty:
            ax = fig.add_subplot(grid[row, :])
            ax.axis("off")
            ax.text(0.5, 0.5, f"({letter}) {direction}: no cluster survives the threshold",
                    ha="center", va="center", fontsize=10)
            continue
        for col, (_, pk) in enumerate(sel.iterrows()):
            ax = fig.add_subplot(grid[row, col])
            cut = (int(pk["x"]), int(pk["y"]), int(pk["z"]))
            display = plotting.plot_stat_map(
                img, display_mode="ortho", cut_coords=cut, axes=ax, cmap=cmap,
                threshold=1e-6, vmin=0.0, vmax=vmax, symmetric_cbar=False, colorbar=True,
                draw_cross=False, annotate=True, black_bg=False,
            )
            display.title(f"{pk['region']}  MNI {cut}  SDM-Z = {pk['sdm_z']:.2f}",
                          size=7, color="black", bgcolor="white", alpha=0.0)
        fig.text(0.01, grid[row, 0].get_position(fig).y1 + 0.01,
                 f"{letter}  {direction} (|SDM-Z|)", fontsize=10, weight="bold")
    if title:
        fig.suptitle(title, fontsize=11, y=0.985)
    if simulated_note:
        fig.text(0.5, 0.915, simulated_note, ha="center", color="firebrick", fontsize=9)
    return fig
