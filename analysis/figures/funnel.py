"""Funnel plots of the study effects at a meta-analytic peak (small-study effects).

At one voxel each study contributes its Hedges' g and standard error. In SDM-PSI a study whose
effect at the voxel was not reported (its bounds differ) has one imputed value per imputation
(MetaNSUE; Albajes-Eizagirre et al. 2019, Stat Methods Med Res 28:3664-3686), so, as in the
``metansue`` package's funnel plot, censored studies are drawn as clouds of their imputations
and studies with a known effect as single points. The vertical line is the pooled effect and
the dashed lines its pseudo 95 % confidence limits (g +/- 1.96 SE; Sterne & Egger 2001,
J Clin Epidemiol 54:1046-1055). Egger's test (Egger et al. 1997, BMJ 315:629-634) is given in
the title when supplied.
"""

from __future__ import annotations

import logging
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis.sdm.statistics.hedges import g_variance

LGR = logging.getLogger(__name__)
FONT = 7.0  # points: the combined figure is drawn at the PDF's text width


def study_points(g_imputed, n1, n2=None, atol: float = 1e-6) -> dict:
    """Per-study effects and standard errors at one voxel.

    Parameters
    ----------
    g_imputed : array-like, shape (m, k)
        Imputed Hedges' g of the k studies in the m imputations.
    n1, n2 : array-like, shape (k,)
        Sample sizes (``n2`` NaN for one-sample studies).
    atol : float
        Studies whose imputations differ by less than this are "known".

    Returns
    -------
    dict
        ``g`` (m, k), ``se`` (m, k), ``g_mean`` (k,), ``se_mean`` (k,), ``known`` (k, bool).
    """
    g = np.atleast_2d(np.asarray(g_imputed, dtype=float))
    n1 = np.asarray(n1, dtype=float)
    n2 = None if n2 is None else np.asarray(n2, dtype=float)
    if g.shape[1] != n1.shape[0]:
        raise ValueError(f"g_imputed has {g.shape[1]} studies, n1 has {n1.shape[0]}")
    se = np.sqrt(g_variance(g, n1, n2))
    known = np.ptp(g, axis=0) < atol
    gm = g.mean(axis=0)
    return {"g": g, "se": se, "g_mean": gm, "se_mean": np.sqrt(g_variance(gm, n1, n2)),
            "known": known}


def funnel_plot(g_imputed, n1, n2=None, pooled_g: float | None = None,
                egger_p: float | None = None, title: str = "", study_names=None, ax=None,
                legend: bool = True, title_width: int = 60):
    """Draw a funnel plot at one voxel.

    Parameters
    ----------
    g_imputed : array-like, shape (m, k)
        Imputed study effects at the voxel.
    n1, n2 : array-like, shape (k,)
        Sample sizes (``n2`` NaN for one-sample studies).
    pooled_g : float, optional
        Pooled effect (default: mean of the study means).
    egger_p : float, optional
        Egger test p-value to print.
    title : str
        Title (e.g. the peak's region and MNI coordinate).
    study_names : list of str, optional
        Labels of the known studies' points.
    ax : matplotlib Axes, optional
        Axes to draw on (a new figure otherwise).
    legend : bool
        Whether to draw the legend under the axes.
    title_width : int
        Characters per line of the title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    pts = study_points(g_imputed, n1, n2)
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.4, 4.8), dpi=150)
    else:
        fig = ax.figure
    pooled = float(np.mean(pts["g_mean"]) if pooled_g is None else pooled_g)
    se_max = float(np.nanmax(pts["se"])) * 1.1
    s = np.linspace(0, se_max, 50)
    ax.plot(pooled - 1.96 * s, s, "k--", lw=0.8)
    ax.plot(pooled + 1.96 * s, s, "k--", lw=0.8, label="pseudo 95% CI")
    ax.axvline(pooled, color="k", lw=1.0, label=f"pooled g = {pooled:.3f}")
    cens = ~pts["known"]
    if cens.any():
        ax.scatter(pts["g"][:, cens].ravel(), pts["se"][:, cens].ravel(), s=4, alpha=0.15,
                   color="tab:blue", linewidths=0, label="imputations (unreported)")
        ax.scatter(pts["g_mean"][cens], pts["se_mean"][cens], s=22, color="tab:blue",
                   edgecolors="k", linewidths=0.5, label="unreported: mean")
    if pts["known"].any():
        ax.scatter(pts["g_mean"][~cens], pts["se_mean"][~cens], s=26, color="tab:red",
                   edgecolors="k", linewidths=0.5, marker="D", label="reported effect")
        if study_names is not None:
            for i in np.flatnonzero(~cens):
                ax.annotate(str(study_names[i]), (pts["g_mean"][i], pts["se_mean"][i]),
                            fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_ylim(se_max, 0)
    ax.set_xlabel("Hedges' g", fontsize=FONT)
    ax.set_ylabel("Standard error", fontsize=FONT)
    ax.tick_params(labelsize=FONT - 0.5)
    t = textwrap.fill(title, title_width)
    if egger_p is not None and np.isfinite(egger_p):
        t = f"{t}\nEgger test p = {egger_p:.3f}" if t else f"Egger test p = {egger_p:.3f}"
    ax.set_title(t, fontsize=FONT)
    if legend:
        ax.legend(fontsize=FONT - 0.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2,
                  frameon=False)
        fig.tight_layout()
    return fig


def plot_funnels(panels: list[dict], note: str | None = None):
    """Funnel plots of several peaks side by side at the PDF's text width, one legend.

    Parameters
    ----------
    panels : list of dict
        Keyword arguments of :func:`funnel_plot` per panel (``g_imputed``, ``n1``, ``n2``,
        ``pooled_g``, ``egger_p``, ``title``, ``study_names``).
    note : str, optional
        A line under the panels (e.g. that the inputs are simulated).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from analysis.figures.print_size import panel_grid

    fig, axes = panel_grid(len(panels), 2.6, 0.6)
    for ax, kw in zip(axes.ravel(), panels, strict=False):
        funnel_plot(ax=ax, legend=False, title_width=46, **kw)
    handles, labels = {}, []
    for ax in axes.ravel()[:len(panels)]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            key = lab.split(" = ")[0]
            if key not in handles:
                handles[key] = h
                labels.append(key if key != "pooled g" else "pooled g (vertical line)")
    fig.legend(list(handles.values()), labels, loc="lower center", ncol=3, fontsize=FONT - 0.5,
               frameon=False, bbox_to_anchor=(0.5, 0.02 if note else 0.0))
    if note:
        fig.text(0.5, 0.0, textwrap.fill(note, 120), ha="center", va="bottom",
                 fontsize=FONT - 0.5, color="firebrick")
    fig.tight_layout(rect=(0, 0.09 if note else 0.06, 1, 1))
    return fig
