"""Figure 4: radar charts of the top behavioural terms of each peak (BAT-like decoding).

One polar panel per seed (A-D for the paper's four peaks): the top 15 NeuroQuery psychology terms
of the AAL2 region containing the peak, radius = -log10 p of the one-sided Fisher exact test
(larger radius = smaller p = stronger association, as the paper's caption says).
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
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from analysis.figures.print_size import TEXT_WIDTH_IN  # noqa: E402
from analysis.io import save_figure_files  # noqa: E402

LGR = logging.getLogger(__name__)

SOURCE = "neuroquery_psychology_terms"
FONT = 7.0  # points: the figure is drawn at the PDF's text width, so this is the printed size


def plot_figure4(terms: pd.DataFrame, seeds: list):
    """One radar chart per seed, two per row at the PDF's text width.

    Term labels are wrapped and set outside the outermost ring, the radial tick labels sit
    between the first two terms (where no term label is) and there are at most three of them,
    so labels do not collide.

    Returns
    -------
    fig : matplotlib.figure.Figure
    regions : list of str
        AAL2 region of each seed (``"no region"`` when it has no terms).
    """
    tab = terms[terms["source"] == SOURCE]
    n = len(seeds)
    ncol = 2 if n > 1 else 1
    nrow = (n + ncol - 1) // ncol
    fig = plt.figure(figsize=(TEXT_WIDTH_IN, 2.75 * nrow + 0.2))
    regions = []
    for i, s in enumerate(seeds):
        letter = string.ascii_uppercase[i]
        sub = tab[tab["seed"] == s.id].sort_values("rank")
        ax = fig.add_subplot(nrow, ncol, i + 1, projection="polar")
        region = sub["aal2_region"].iloc[0] if len(sub) else "no region"
        regions.append(region)
        if len(sub):
            r = -sub["log10_p"].to_numpy()
            ang = np.linspace(0, 2 * np.pi, len(r), endpoint=False)
            ax.plot(np.r_[ang, ang[:1]], np.r_[r, r[:1]], color="tab:red", lw=1.2)
            ax.fill(np.r_[ang, ang[:1]], np.r_[r, r[:1]], color="tab:red", alpha=0.25)
            ax.set_xticks(ang)
            ax.set_xticklabels([])
            top = float(r.max()) * 1.08
            ax.set_ylim(0, top)
            # each term outside the outer ring, anchored on the side facing the centre, so
            # neighbouring labels grow away from each other and from the ring
            for a, term in zip(ang, sub["term"], strict=True):
                c, sn = np.cos(a), np.sin(a)
                ax.text(a, top * (1.07 if abs(c) > 0.5 else 1.04),
                        textwrap.fill(str(term), 11 if abs(c) < 0.5 else 14,
                                      break_long_words=False), fontsize=FONT - 0.5,
                        ha="left" if c > 0.15 else "right" if c < -0.15 else "center",
                        va="bottom" if sn > 0.15 else "top" if sn < -0.15 else "center",
                        linespacing=1.0, clip_on=False)
            ax.yaxis.set_major_locator(MaxNLocator(3))
            ax.set_rlabel_position(float(np.degrees(ang[1] / 2)) if len(ang) > 1 else 0.0)
            ax.tick_params(axis="y", labelsize=FONT - 1, colors="0.35")
        else:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.5, 0.5, "no terms", transform=ax.transAxes, ha="center", fontsize=FONT)
        ax.set_title(f"{letter}  {s.id} ({s.x:g}, {s.y:g}, {s.z:g})\n{region}",
                     fontsize=FONT + 0.5, pad=22)
    fig.text(0.5, 0.005, "Radius: \u2212log10 p of the term's enrichment (larger = stronger "
             "association).", ha="center", va="bottom", fontsize=FONT - 0.5)
    fig.subplots_adjust(left=0.15, right=0.85, top=0.89, bottom=0.09, wspace=0.95, hspace=0.5)
    return fig, regions


def draw(terms: pd.DataFrame, seeds: list, png: Path, svg: Path | None, set_label: str) -> str:
    """Draw the radar charts (:func:`plot_figure4`) and save them; return the caption.

    Parameters
    ----------
    terms : pandas.DataFrame
        Rows of :func:`analysis.characterisation.core.characterise` ``terms`` (one set).
    seeds : list of Seed
        Panel order.
    """
    fig, regions = plot_figure4(terms, seeds)
    parts = [f"({string.ascii_uppercase[i]}) {s.id}, AAL2 region {region}."
             for i, (s, region) in enumerate(zip(seeds, regions, strict=True))]
    text = (f"Figure 4 ({set_label}). Radar charts of the top 15 psychological terms associated "
            "with the AAL2 region containing each peak: NeuroQuery v1 abstracts (psychology "
            "terms in >= 20 abstracts), one-sided Fisher exact test of term enrichment among the "
            "studies with a focus in the region; radius = -log10 p, so a larger radius means a "
            "smaller p (stronger association). A BAT-like re-implementation, not BAT itself. "
            + " ".join(parts))
    save_figure_files(fig, png, svg, caption=text, dpi=300)
    return text
