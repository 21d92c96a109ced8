"""Figure 4: radar charts of the top behavioural terms of each peak (BAT-like decoding).

One polar panel per seed (A-D for the paper's four peaks): the top 15 NeuroQuery psychology terms
of the AAL2 region containing the peak, radius = -log10 p of the one-sided Fisher exact test
(larger radius = smaller p = stronger association, as the paper's caption says).
"""

from __future__ import annotations

import logging
import string
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.io import save_figure_files  # noqa: E402

LGR = logging.getLogger(__name__)

SOURCE = "neuroquery_psychology_terms"


def draw(terms: pd.DataFrame, seeds: list, png: Path, svg: Path | None, set_label: str) -> str:
    """Draw one radar chart per seed from a ``top_terms`` table; return the caption.

    Parameters
    ----------
    terms : pandas.DataFrame
        Rows of :func:`analysis.characterisation.core.characterise` ``terms`` (one set).
    seeds : list of Seed
        Panel order.
    """
    tab = terms[terms["source"] == SOURCE]
    n = len(seeds)
    ncol = 2 if n > 1 else 1
    nrow = (n + ncol - 1) // ncol
    fig = plt.figure(figsize=(6.2 * ncol, 5.6 * nrow))
    parts = []
    for i, s in enumerate(seeds):
        letter = string.ascii_uppercase[i]
        sub = tab[tab["seed"] == s.id].sort_values("rank")
        ax = fig.add_subplot(nrow, ncol, i + 1, projection="polar")
        region = sub["aal2_region"].iloc[0] if len(sub) else "no region"
        if len(sub):
            r = -sub["log10_p"].to_numpy()
            ang = np.linspace(0, 2 * np.pi, len(r), endpoint=False)
            ax.plot(np.r_[ang, ang[:1]], np.r_[r, r[:1]], color="tab:red", lw=1.5)
            ax.fill(np.r_[ang, ang[:1]], np.r_[r, r[:1]], color="tab:red", alpha=0.25)
            ax.set_xticks(ang)
            ax.set_xticklabels(sub["term"].tolist(), fontsize=7)
            ax.set_ylim(0, float(r.max()) * 1.1)
            ax.tick_params(axis="y", labelsize=6)
        ax.set_title(f"{letter}  {s.id} ({s.x:g}, {s.y:g}, {s.z:g}) – {region}\n"
                     "radius: −log10 p", fontsize=9)
        parts.append(f"({letter}) {s.id}, AAL2 region {region}.")
    text = (f"Figure 4 ({set_label}). Radar charts of the top 15 psychological terms associated "
            "with the AAL2 region containing each peak: NeuroQuery v1 abstracts (psychology "
            "terms in >= 20 abstracts), one-sided Fisher exact test of term enrichment among the "
            "studies with a focus in the region; radius = -log10 p, so a larger radius means a "
            "smaller p (stronger association). A BAT-like re-implementation, not BAT itself. "
            + " ".join(parts))
    fig.tight_layout()
    save_figure_files(fig, png, svg, caption=text)
    return text
