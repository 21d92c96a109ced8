"""Forest plots of the study effects at a meta-analytic peak (SDM-PSI's extract, drawn).

At one voxel each study has one imputed Hedges' g per imputation (MetaNSUE; Albajes-Eizagirre
et al. 2019, NeuroImage 186:174-184); :func:`analysis.sdm.diagnostics.voxel.extract_voxel`
summarises them: the mean over imputations, a 95 % interval from the Rubin-pooled variance
(within + (1 + 1/m) between imputations; Rubin 1987), the random-effects weight, and whether
the effect is exact at the voxel (lower = upper bound) or censored (imputed). The forest plot
(Lewis & Clarke 2001, BMJ 322:1479-1480) draws the studies ordered by effect, each a square of
area proportional to its weight (filled when exact, open when censored) with its interval,
coloured by its group (e.g. disorder), the pooled random-effects estimate as a diamond spanning
its 95 % interval, and marks with a dagger the studies whose peaks are simulated stand-ins.
"""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Polygon  # noqa: E402

FONT = 7.0  # points: the combined figure is drawn at the PDF's text width
#: mark of a study whose peaks are simulated stand-ins
STANDIN_MARK = "\u2020"
PALETTE = plt.get_cmap("tab10").colors


def group_colours(groups) -> dict:
    """A colour per group, in sorted order of the group names (stable across figures)."""
    return {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(sorted(set(map(str, groups))))}


def forest_plot(studies: pd.DataFrame, pooled: dict, title: str = "", ax=None,
                colours: dict | None = None, legend: bool = True, values: bool = True,
                title_width: int = 60):
    """Draw a forest plot at one voxel.

    Parameters
    ----------
    studies : pandas.DataFrame
        One row per study with ``study``, ``g``, ``ci_low``, ``ci_high``, ``weight_percent``,
        ``status`` (``exact`` or ``censored``), and optionally ``group`` (colour) and
        ``simulated`` (bool: the study's peaks are stand-ins, marked with a dagger).
    pooled : dict
        ``g``, ``var``, ``tau2``, ``i2`` (percent) of the pooled model.
    title : str
        Title (e.g. the peak's region and MNI coordinate).
    ax : matplotlib Axes, optional
        Axes to draw on (a new figure otherwise).
    colours : dict, optional
        Group -> colour (default :func:`group_colours` of the groups drawn).
    legend : bool
        Whether to draw the legend under the axes.
    values : bool
        Whether to print ``g [95% CI]`` and the weight right of the axes.
    title_width : int
        Characters per line of the title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    df = studies.sort_values(["g", "study"], kind="mergesort").reset_index(drop=True)
    k = len(df)
    groups = df["group"].astype(str) if "group" in df.columns else pd.Series(["study"] * k)
    colours = colours or group_colours(groups)
    simulated = (df["simulated"].astype(bool) if "simulated" in df.columns
                 else pd.Series([False] * k))
    if ax is None:
        from analysis.figures.print_size import TEXT_WIDTH_IN

        fig, ax = plt.subplots(figsize=(TEXT_WIDTH_IN, 0.26 * k + 2.4), dpi=150)
    else:
        fig = ax.figure
    ys = np.arange(k, 0, -1, dtype=float)  # first (smallest g) on top
    wmax = float(np.nanmax(df["weight_percent"])) if k else 1.0
    for y, r, grp in zip(ys, df.itertuples(index=False), groups, strict=True):
        col = colours.get(grp, "0.3")
        ax.plot([r.ci_low, r.ci_high], [y, y], color=col, lw=0.9, solid_capstyle="butt")
        size = 10 + 50 * float(r.weight_percent) / wmax
        exact = r.status == "exact"
        ax.scatter([r.g], [y], s=size, marker="s", color=col if exact else "white",
                   edgecolors=col, linewidths=1.0, zorder=3)
    g, se = float(pooled["g"]), float(np.sqrt(pooled["var"]))
    lo, hi = g - 1.959964 * se, g + 1.959964 * se
    ax.add_patch(Polygon([(lo, -0.2), (g, 0.15), (hi, -0.2), (g, -0.55)], closed=True,
                         facecolor="black", edgecolor="black", zorder=3))
    ax.axvline(0.0, color="0.5", lw=0.6, ls="--", zorder=1)
    ax.axvline(g, color="black", lw=0.5, ls=":", zorder=1)
    labels = [f"{s}{STANDIN_MARK if sim else ''}" for s, sim in zip(df["study"], simulated,
                                                                    strict=True)]
    ax.set_yticks(list(ys) + [-0.2])
    ax.set_yticklabels(labels + ["Pooled (random effects)"], fontsize=FONT - 0.5)
    for tick, grp in zip(ax.get_yticklabels()[:k], groups, strict=True):
        tick.set_color(colours.get(grp, "0.3"))
    ax.get_yticklabels()[-1].set_fontweight("bold")
    ax.set_ylim(-1.0, k + 0.8)
    ax.set_xlabel("Hedges' g (95% CI)", fontsize=FONT)
    ax.tick_params(axis="x", labelsize=FONT - 0.5)
    ax.tick_params(axis="y", length=0)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    if values:
        trans = ax.get_yaxis_transform()
        rows = [f"{r.g:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}]  {r.weight_percent:4.1f}%"
                for r in df.itertuples(index=False)]
        rows.append(f"{g:+.2f} [{lo:+.2f}, {hi:+.2f}]  100%")
        for y, text in zip(list(ys) + [-0.2], rows, strict=True):
            ax.text(1.02, y, text, transform=trans, fontsize=FONT - 1, va="center",
                    family="monospace")
        ax.text(1.02, k + 0.6, "g [95% CI]      weight", transform=trans, fontsize=FONT - 1,
                va="center", family="monospace", color="0.3")
    het = (f"\u03c4\u00b2 = {float(pooled['tau2']):.3f}, I\u00b2 = {float(pooled['i2']):.1f}%")
    t = "\n".join(textwrap.fill(line, title_width) for line in title.split("\n"))
    ax.set_title(f"{t}\n{het}" if t else het, fontsize=FONT)
    if legend:
        handles, names = legend_entries(colours, groups, simulated.any())
        ncol = 3
        fig.legend(handles, names, fontsize=FONT - 1, loc="lower center", ncol=ncol,
                   frameon=False)
        height = fig.get_size_inches()[1]
        fig.tight_layout(rect=(0, 0.16 * (-(-len(names) // ncol)) / height, 1, 1))
    return fig


def legend_entries(colours: dict, groups, any_simulated: bool) -> tuple[list, list]:
    """Legend handles and names: the groups drawn, exact/censored, the pooled diamond and,
    when a study is a stand-in, the dagger.
    """
    handles, names = [], []
    for grp in sorted(set(map(str, groups))):
        handles.append(Line2D([], [], marker="s", ls="", color=colours[grp], markersize=5))
        names.append(grp)
    handles += [Line2D([], [], marker="s", ls="", color="0.3", markersize=5),
                Line2D([], [], marker="s", ls="", markerfacecolor="white",
                       markeredgecolor="0.3", markersize=5),
                Line2D([], [], marker="D", ls="", color="black", markersize=5)]
    names += ["exact (lower = upper bound)", "censored (mean of imputations)",
              "pooled (95% CI)"]
    if any_simulated:
        handles.append(Line2D([], [], ls=""))
        names.append(f"{STANDIN_MARK} simulated stand-in peaks")
    return handles, names


def plot_forests(panels: list[dict], note: str | None = None):
    """Forest plots of several peaks at the PDF's text width, one legend, one colour per group
    across all panels.

    Parameters
    ----------
    panels : list of dict
        Keyword arguments of :func:`forest_plot` per panel (``studies``, ``pooled``,
        ``title``).
    note : str, optional
        A line under the panels (e.g. that the inputs are simulated).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from analysis.figures.print_size import panel_grid

    k = max([len(p["studies"]) for p in panels] or [1])
    fig, axes = panel_grid(len(panels), 0.17 * k + 1.1, 1.0)
    groups = [str(g) for p in panels for g in p["studies"].get("group", pd.Series([], dtype=str))]
    colours = group_colours(groups or ["study"])
    any_sim = False
    for ax, kw in zip(axes.ravel(), panels, strict=False):
        forest_plot(ax=ax, legend=False, values=False, colours=colours, title_width=34, **kw)
        any_sim |= bool(kw["studies"].get("simulated", pd.Series([], dtype=bool)).any())
    handles, names = legend_entries(colours, groups or ["study"], any_sim)
    fig.legend(handles, names, loc="lower center", ncol=3, fontsize=FONT - 1, frameon=False,
               bbox_to_anchor=(0.5, 0.03 if note else 0.0))
    if note:
        fig.text(0.5, 0.0, textwrap.fill(note, 130), ha="center", va="bottom",
                 fontsize=FONT - 0.5, color="firebrick")
    height = fig.get_size_inches()[1]
    legend_in = 0.14 * (-(-len(names) // 3)) + (0.2 if note else 0.05)
    fig.tight_layout(rect=(0, legend_in / height, 1, 1))
    return fig
