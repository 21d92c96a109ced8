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
        :func:`analysis.checks.design.summarise_sensitivity` output (``location, direction,
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
    import matplotlib.pyplot as plt

    pub = published.reset_index(drop=True)
    fig, (ax1, ax3, ax2) = plt.subplots(1, 3, figsize=(14, 4.6), constrained_layout=True)
    for loc, grp in summary.groupby("location", sort=True):
        grp = grp.sort_values("effect_size")
        i = int(loc) - 1
        col = COLOURS[i % len(COLOURS)]
        name = str(pub["aal_label"].iloc[i] if "aal_label" in pub else pub["region"].iloc[i])
        x = grp["effect_size"].to_numpy(float)
        p = grp["p_detect"].to_numpy(float)
        ax1.plot(x, p, "-o", color=col, label=name, ms=4)
        ax1.fill_between(x, grp["p_detect_lower"].to_numpy(float),
                         grp["p_detect_upper"].to_numpy(float), color=col, alpha=0.12, lw=0)
        ax1.plot(x, grp["p_detect_fwe"].to_numpy(float), "--", color=col, lw=1)
        ax3.plot(x, grp["p_detect_covered"].to_numpy(float), "-o", color=col, ms=4, label=name)
        ax3.fill_between(x, grp["p_detect_covered_lower"].to_numpy(float),
                         grp["p_detect_covered_upper"].to_numpy(float), color=col, alpha=0.12,
                         lw=0)
        sign = -1.0 if str(grp["direction"].iloc[0]) == "Patients<Controls" else 1.0
        g = sign * grp["g_mean"].to_numpy(float)
        ok = np.isfinite(g)
        lo, hi = np.sort(sign * grp[["g_lower", "g_upper"]].to_numpy(float), axis=1).T
        off = (i - 1.5) * 0.012  # keep the error bars of the locations apart
        ax2.errorbar(x[ok] + off, g[ok], yerr=[g[ok] - lo[ok], hi[ok] - g[ok]], fmt="-o",
                     color=col, ms=4, capsize=2, lw=1, label=name)
        ax2.axhline(abs(float(pub["hedges_g"].iloc[i])), color=col, ls=":", lw=1.2)
    ax1.plot([], [], "k--", lw=1, label=fwe_label)
    ax1.set_xlabel("true Hedges' g at the location (every study)")
    ax1.set_ylabel(f"P(same-sign cluster peak within {radius_mm:g} mm)")
    ax1.set_ylim(-0.02, 1.02)
    ax1.legend(fontsize=7, loc="upper left")
    ax1.set_title(f"A. Same-sign cluster peak within {radius_mm:g} mm", loc="left", fontsize=10)
    ax3.set_xlabel("true Hedges' g at the location (every study)")
    ax3.set_ylabel("P(location inside a same-sign cluster)")
    ax3.set_ylim(-0.02, 1.02)
    ax3.set_title("B. Location covered by a cluster", loc="left", fontsize=10)
    lim = float(np.nanmax(summary["effect_size"])) * 1.05
    ax2.plot([0, lim], [0, lim], color="0.6", lw=0.8, label="reported = true")
    ax2.plot([], [], "k:", lw=1.2, label="published SDM g (|g|)")
    ax2.set_xlabel("true Hedges' g at the location")
    ax2.set_ylabel("|SDM g| at the detected cluster peak")
    ax2.legend(fontsize=7, loc="upper left")
    ax2.set_title("C. Reported effect when detected (A)", loc="left", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    if note:
        import textwrap

        lines = textwrap.wrap(note, 190)
        fig.get_layout_engine().set(rect=(0, 0.025 * (len(lines) + 1), 1,
                                          1 - 0.025 * (len(lines) + 1)))
        fig.text(0.5, 0.01, "\n".join(lines), ha="center", va="bottom", fontsize=7)
    return fig
