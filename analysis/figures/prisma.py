"""Figure 1: the PRISMA 2020 flow diagram, drawn from ``data/prisma.yaml``.

The record holds only what He et al. (2024) state in their text: the three databases, the end of
the search, the deduplication tool, the exclusion criteria and the 11 included studies. Every
stage count the text does not state is ``null`` in the record and is drawn as "not reported";
nothing is estimated. When counts are filled in, the stage arithmetic of the diagram is checked
(records identified - removed = screened, and so on) before anything is drawn.

The layout follows the PRISMA 2020 flow diagram for new systematic reviews that searched
databases and other sources :footcite:p:`page2021prisma`, simplified to one screening path:
records from other sources join at full-text assessment.

References
----------
.. footbibliography::
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any

import yaml

from analysis import paths
from analysis.sdm.errors import DataError

LGR = logging.getLogger(__name__)

PRISMA_FILE = "prisma.yaml"
NOT_REPORTED = "not reported"

#: Every stage count of the diagram, in drawing order.
COUNT_FIELDS: tuple[str, ...] = (
    "identified_databases",
    "identified_other",
    "removed_duplicates",
    "removed_other",
    "screened",
    "excluded_screening",
    "sought",
    "not_retrieved",
    "assessed",
    "excluded_full_text",
    "included_studies",
)

#: Arithmetic identities of the PRISMA 2020 flow: (result, [(sign, term), ...]).
IDENTITIES: tuple[tuple[str, tuple[tuple[int, str], ...]], ...] = (
    ("screened", ((1, "identified_databases"), (-1, "removed_duplicates"), (-1, "removed_other"))),
    ("sought", ((1, "screened"), (-1, "excluded_screening"))),
    ("assessed", ((1, "sought"), (-1, "not_retrieved"), (1, "identified_other"))),
    ("included_studies", ((1, "assessed"), (-1, "excluded_full_text"))),
)


def load_prisma(path: str | Path | None = None) -> dict[str, Any]:
    """Read and validate the PRISMA record.

    Parameters
    ----------
    path : path-like, optional
        The YAML file; defaults to ``<data dir>/prisma.yaml``.

    Returns
    -------
    dict
        ``{"search": {...}, "counts": {field: int | None}, "exclusion_reasons": [...],
        "source": str}``.

    Raises
    ------
    analysis.sdm.errors.DataError
        Naming the file and field of the first problem: unreadable YAML, a missing section or
        count, a count that is not a non-negative integer or null, or counts that contradict
        the arithmetic of the flow diagram.
    """
    path = Path(path) if path is not None else paths.data_dir() / PRISMA_FILE
    if not path.exists():
        raise DataError(path, "file not found (the PRISMA record of Figure 1)")
    try:
        record = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not valid UTF-8 YAML: {exc}") from exc
    if not isinstance(record, dict):
        raise DataError(path, "expected a mapping with sections search, counts, exclusion_reasons")
    for section, kind in (("search", dict), ("counts", dict), ("exclusion_reasons", list)):
        if not isinstance(record.get(section), kind):
            raise DataError(path, f"section missing or not a {kind.__name__}", field=section)
    search = record["search"]
    dbs = search.get("databases")
    if not isinstance(dbs, list) or not dbs or not all(isinstance(d, str) for d in dbs):
        raise DataError(path, "expected a non-empty list of database names", field="search.databases")
    if not isinstance(search.get("end"), str):
        raise DataError(path, "expected text such as 'May 2024'", field="search.end")
    counts = record["counts"]
    unknown = sorted(set(counts) - set(COUNT_FIELDS))
    if unknown:
        raise DataError(path, f"unknown count(s) {unknown}; known: {list(COUNT_FIELDS)}",
                        field="counts")
    clean: dict[str, int | None] = {}
    for name in COUNT_FIELDS:
        if name not in counts:
            raise DataError(path, "count missing (write null when not reported)",
                            field=f"counts.{name}")
        value = counts[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 0):
            raise DataError(path, f"expected a non-negative integer or null, got {value!r}",
                            field=f"counts.{name}")
        clean[name] = value
    if clean["included_studies"] is None:
        raise DataError(path, "the number of included studies is required",
                        field="counts.included_studies")
    _check_identities(path, clean)
    return {
        "source": str(record.get("source", "")),
        "search": search,
        "counts": clean,
        "exclusion_reasons": [str(r) for r in record["exclusion_reasons"]],
    }


def _check_identities(path: Path, counts: dict[str, int | None]) -> None:
    for result, terms in IDENTITIES:
        values = [counts[result]] + [counts[t] for _, t in terms]
        if any(v is None for v in values):
            continue  # an unreported count leaves the identity unchecked
        expected = sum(sign * counts[t] for sign, t in terms)
        if counts[result] != expected:
            formula = " ".join(f"{'+' if s > 0 else '-'} {t}" for s, t in terms).lstrip("+ ")
            raise DataError(path, f"{counts[result]} contradicts {formula} = {expected}",
                            field=f"counts.{result}")


def n_text(value: int | None) -> str:
    """``"n = 11"`` or ``"n = not reported"``."""
    return f"n = {NOT_REPORTED if value is None else value}"


def box_texts(record: dict[str, Any]) -> dict[str, str]:
    """Text of every box of the diagram (also used by the tests).

    Parameters
    ----------
    record : dict
        As returned by :func:`load_prisma`.

    Returns
    -------
    dict
        Box name -> text.
    """
    c = record["counts"]
    s = record["search"]
    dbs = ", ".join(s["databases"])
    dedup = f" ({s['deduplication']})" if s.get("deduplication") else ""
    reasons = "\n".join(f"  - {r}" for r in record["exclusion_reasons"])
    return {
        "identified": (f"Records identified from databases\n({n_text(c['identified_databases'])})"
                       f"\n{dbs}\nsearched until {s['end']}"),
        "removed": (f"Records removed before screening\n{dedup.strip()}:\n"
                    f"  duplicates ({n_text(c['removed_duplicates'])})\n"
                    f"  non-articles ({n_text(c['removed_other'])})"),
        "other": (f"Records identified from\nother sources ({n_text(c['identified_other'])})\n"
                  + textwrap.fill(str(s.get("other_sources", "")), 30)),
        "screened": f"Records screened\n({n_text(c['screened'])})",
        "excluded_screening": f"Records excluded\n({n_text(c['excluded_screening'])})",
        "sought": f"Reports sought for retrieval\n({n_text(c['sought'])})",
        "not_retrieved": f"Reports not retrieved\n({n_text(c['not_retrieved'])})",
        "assessed": f"Reports assessed for eligibility\n({n_text(c['assessed'])})",
        "excluded_full_text": (f"Reports excluded ({n_text(c['excluded_full_text'])}):\n"
                               f"{reasons}"),
        "included": f"Studies included in the meta-analysis\n({n_text(c['included_studies'])})",
    }


def draw_prisma(record: dict[str, Any]):
    """Draw the PRISMA 2020 flow diagram with matplotlib boxes and arrows.

    Parameters
    ----------
    record : dict
        As returned by :func:`load_prisma`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    texts = box_texts(record)
    from analysis.figures.print_size import TEXT_WIDTH_IN

    # drawn at the PDF's text width: the point sizes below are the printed sizes
    fig = plt.figure(figsize=(TEXT_WIDTH_IN, TEXT_WIDTH_IN * 1.0))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")

    # (x centre, y centre, width, height) in axes coordinates
    main_x, side_x, other_x = 0.29, 0.60, 0.872
    layout = {
        "identified": (main_x, 0.88, 0.28, 0.12),
        "removed": (side_x, 0.88, 0.29, 0.12),
        "other": (other_x, 0.88, 0.24, 0.12),
        "screened": (main_x, 0.70, 0.30, 0.07),
        "excluded_screening": (side_x, 0.70, 0.20, 0.07),
        "sought": (main_x, 0.56, 0.30, 0.07),
        "not_retrieved": (side_x, 0.56, 0.20, 0.07),
        "assessed": (main_x, 0.40, 0.30, 0.07),
        "excluded_full_text": (0.725, 0.33, 0.50, 0.17),
        "included": (main_x, 0.14, 0.30, 0.08),
    }
    for name, (x, y, w, h) in layout.items():
        missing = NOT_REPORTED in texts[name]
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h,
                                    boxstyle="round,pad=0.004,rounding_size=0.01",
                                    fc="#f4f4f4" if missing else "#ffffff", ec="#333333", lw=1.0))
        left = name == "excluded_full_text"
        ax.text(x - w / 2 + 0.01 if left else x, y, texts[name], ha="left" if left else "center",
                va="center", fontsize=6.0, linespacing=1.15)

    def arrow(x0, y0, x1, y1):
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops={"arrowstyle": "-|>", "color": "#333333", "lw": 1.0})

    def below(a, b):
        ax_, ay, _, ah = layout[a]
        _, by, _, bh = layout[b]
        arrow(ax_, ay - ah / 2, ax_, by + bh / 2)

    def right(a, b):
        ax_, ay, aw, _ = layout[a]
        bx, _, bw, _ = layout[b]
        arrow(ax_ + aw / 2, ay, bx - bw / 2, ay)

    below("identified", "screened")
    right("identified", "removed")
    right("screened", "excluded_screening")
    below("screened", "sought")
    right("sought", "not_retrieved")
    below("sought", "assessed")
    # other sources join at full-text assessment
    ox, oy, _, oh = layout["other"]
    axx, ayy, aw, ah = layout["assessed"]
    join_y = ayy + ah / 2 + 0.04
    ax.plot([ox, ox], [oy - oh / 2, join_y], color="#333333", lw=1.0)
    ax.plot([ox, axx + aw / 4], [join_y, join_y], color="#333333", lw=1.0)
    arrow(axx + aw / 4, join_y, axx + aw / 4, ayy + ah / 2)
    right("assessed", "excluded_full_text")
    below("assessed", "included")

    # phase bands on the left
    for label, y0, y1 in (("Identification", 0.80, 0.96), ("Screening", 0.31, 0.78),
                          ("Included", 0.08, 0.20)):
        ax.add_patch(FancyBboxPatch((0.02, y0), 0.07, y1 - y0, boxstyle="round,pad=0.003",
                                    fc="#cfe2f3", ec="#6fa8dc", lw=0.8))
        ax.text(0.055, (y0 + y1) / 2, label, rotation=90, ha="center", va="center",
                fontsize=7.5, weight="bold")
    n_missing = sum(v is None for v in record["counts"].values())
    if n_missing:
        ax.text(0.5, 0.02, f"Grey boxes: counts not reported in the text of He et al. (2024) "
                f"({n_missing} of {len(COUNT_FIELDS)} stage counts); none is estimated.",
                ha="center", va="bottom", fontsize=6.2, style="italic", color="#555555")
    return fig
