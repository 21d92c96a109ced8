"""Sensitivity of the design: detection probability and reported g against the true g."""

from __future__ import annotations

import numpy as np
import pandas as pd

#: one colour per published location (colour-blind safe, Okabe & Ito 2008)
COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00"]


def plot_sensitivity(summary: pd.DataFrame, published: pd.DataFrame, *, title: str = "",
                     note: str | None = None, fwe_label: str = "voxel-wise FWE",
                     radius_mm: float = 8.0):
    """Three panels: detection near each location, coverage of it, and the g reported.

    Parameters
    ----------
    summary : DataFrame
        :func:`analysis.checks.design_simulation.summarise_sensitivity` output (``location, direction,
        effect_size, p_detect*, p_detect_fwe, p_detect_covered*, g_mean, g_lower, g_upper``).
    published : DataFrame
        Table 3 (``aal_label`` or ``region``, ``hedges_g``, ``sdm_z``), row ``i - 1`` for
        location ``i``.
    title : str
        Figure title.
    note : str, optional
        A line under the panels (e.g. the number of replicates).
    fwe_label : str
        Legend text of the dashed curves (detection at the design's FWE threshold).
    radius_mm : float
        Largest distance of a detected cluster peak from its location.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import textwrap

    import matplotlib.pyplot as plt

    from analysis.figures.print_size import TEXT_WIDTH_IN

    font = 7.0
    pub = published.reset_index(drop=True)
    fig, axes = plt.subplots(2, 2, figsize=(TEXT_WIDTH_IN, 5.6), constrained_layout=True)
    (ax1, ax3), (ax2, lax) = axes
    n_loc = max(int(summary["location"].nunique()), 1)
    step = float(np.min(np.diff(np.unique(summary["effect_size"])))) if summary[
        "effect_size"].nunique() > 1 else 0.2
    handles = []
    for loc, grp in summary.groupby("location", sort=True):
        grp = grp.sort_values("effect_size")
        i = int(loc) - 1
        col = COLOURS[i % len(COLOURS)]
        name = str(pub["aal_label"].iloc[i] if "aal_label" in pub else pub["region"].iloc[i])
        x = grp["effect_size"].to_numpy(float)
        # the locations side by side around each true g, so no interval hides another's
        off = (i - (n_loc - 1) / 2) * step * 0.09
        for ax, key in ((ax1, "p_detect"), (ax3, "p_detect_covered")):
            p = grp[key].to_numpy(float)
            lo, hi = grp[f"{key}_lower"].to_numpy(float), grp[f"{key}_upper"].to_numpy(float)
            ax.errorbar(x + off, p, yerr=[p - lo, hi - p], fmt="none", ecolor=col, elinewidth=0.6,
                        alpha=0.45, capsize=0)
            h, = ax.plot(x + off, p, "-o", color=col, ms=3, lw=1.1, label=name, zorder=3)
        handles.append(h)
        ax1.plot(x + off, grp["p_detect_fwe"].to_numpy(float), "--", color=col, lw=1.1,
                 marker="x", ms=3.5, zorder=4)
        sign = -1.0 if str(grp["direction"].iloc[0]) == "Patients<Controls" else 1.0
        g = sign * grp["g_mean"].to_numpy(float)
        ok = np.isfinite(g)
        lo, hi = np.sort(sign * grp[["g_lower", "g_upper"]].to_numpy(float), axis=1).T
        ax2.errorbar(x[ok] + off, g[ok], yerr=[g[ok] - lo[ok], hi[ok] - g[ok]], fmt="-o",
                     color=col, ms=3, capsize=1.5, lw=0.9, elinewidth=0.6)
        ax2.axhline(abs(float(pub["hedges_g"].iloc[i])), color=col, ls=":", lw=1.1)
    xlab = "true Hedges' g at the location"
    ax1.set_ylabel(f"P(cluster peak within {radius_mm:g} mm)", fontsize=font)
    ax3.set_ylabel("P(location inside a cluster)", fontsize=font)
    lim = float(np.nanmax(summary["effect_size"])) * 1.05
    ax2.plot([0, lim], [0, lim], color="0.6", lw=0.8)
    ax2.set_ylabel("|g| at the detected peak", fontsize=font)
    for ax, head in ((ax1, f"A  Same-sign cluster peak within {radius_mm:g} mm"),
                     (ax3, "B  Location inside a same-sign cluster"),
                     (ax2, "C  Reported effect when detected (A)")):
        ax.set_xlabel(xlab, fontsize=font)
        ax.set_title(head, loc="left", fontsize=font + 1)
        ax.tick_params(labelsize=font - 0.5)
    for ax in (ax1, ax3):
        ax.set_ylim(-0.03, 1.03)
    lax.set_axis_off()
    from matplotlib.lines import Line2D

    extra = [Line2D([], [], color="k", lw=1.1, marker="o", ms=3,
                    label="paper's thresholds (A, B)"),
             Line2D([], [], color="k", lw=1.1, ls="--", marker="x", ms=3.5,
                    label=f"{fwe_label} (A)"),
             Line2D([], [], color="k", lw=0.6, alpha=0.5, label="95 % interval (vertical bars)"),
             Line2D([], [], color="0.6", lw=0.8, label="reported = true (C)"),
             Line2D([], [], color="k", ls=":", lw=1.1, label="published |g| (C)")]
    lax.legend(handles=handles + extra, loc="upper left", fontsize=font, frameon=False,
               title="Published location", title_fontsize=font, borderaxespad=0)
    if note:
        lax.text(0.0, 0.0, textwrap.fill(note, 58), transform=lax.transAxes, va="bottom",
                 ha="left", fontsize=font - 0.5)
    if title:
        fig.suptitle(textwrap.fill(title, 100), fontsize=font + 1)
    return fig
