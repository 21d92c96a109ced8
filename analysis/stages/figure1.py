"""Stage ``figure1``: the PRISMA 2020 flow diagram (Figure 1) from ``data/prisma.yaml``."""

from __future__ import annotations

import logging
from typing import Any

from analysis.figures.prisma import COUNT_FIELDS, PRISMA_FILE, draw_prisma, load_prisma
from analysis.io import save_figure

LGR = logging.getLogger(__name__)


def produce(ctx) -> dict[str, Any]:
    """Pipeline stage ``figure1``: write ``figures/figure1.png`` and ``.svg``.

    Parameters
    ----------
    ctx : analysis.pipeline.Context
        The stage context (reads ``<data dir>/prisma.yaml``).

    Returns
    -------
    dict
        ``n_included``, ``n_databases``, ``databases`` (text), ``search_end`` (text),
        ``n_counts_reported`` and ``n_counts_not_reported`` (stage counts), and every reported
        count as ``count_<field>``.
    """
    import matplotlib.pyplot as plt

    record = load_prisma(ctx.data_dir / PRISMA_FILE)
    fig = draw_prisma(record)
    try:
        save_figure(fig, ctx.out("figures/figure1.png"), dpi=150)
        save_figure(fig, ctx.out("figures/figure1.svg"))
    finally:
        plt.close(fig)
    counts = record["counts"]
    dbs = record["search"]["databases"]
    values: dict[str, Any] = {
        "n_included": counts["included_studies"],
        "n_databases": len(dbs),
        "databases": ", ".join(dbs[:-1]) + f" and {dbs[-1]}" if len(dbs) > 1 else dbs[0],
        "search_end": record["search"]["end"],
        "n_counts_reported": sum(v is not None for v in counts.values()),
        "n_counts_not_reported": sum(v is None for v in counts.values()),
        "n_exclusion_reasons": len(record["exclusion_reasons"]),
    }
    values.update({f"count_{k}": v for k, v in counts.items() if v is not None})
    LGR.info("figure1: %d included studies, %d of %d stage counts not reported",
             values["n_included"], values["n_counts_not_reported"], len(COUNT_FIELDS))
    return values
