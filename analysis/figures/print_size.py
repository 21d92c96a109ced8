"""Print size of the manuscript's figures: the PDF's text width and the smallest legible text.

The PDF is written by pandoc's Typst writer (``analysis/render.py``: ``papersize=a4``, the
default template's margins of 1.25 in left and right; Quarto's Typst format uses the same) and
Typst draws an image at its natural size (pixels / DPI), shrunk to the text width when wider.
A figure of width ``w`` inches is therefore printed at ``min(1, TEXT_WIDTH_IN / w)`` of its
size, and a text of ``s`` points is printed at that fraction of ``s``. Journals ask for at
least 6-7 pt in print (e.g. Nature's and Elsevier's artwork guidelines); :data:`MIN_TEXT_PT`
is the floor every figure of the compendium keeps (tests/test_figure_print_size.py).

Figures are drawn at :data:`TEXT_WIDTH_IN` wide, so their point sizes are the printed ones.
"""

from __future__ import annotations

#: A4 paper width (ISO 216: 210 mm)
PAGE_WIDTH_IN = 210.0 / 25.4
#: left and right margins of pandoc's (and Quarto's) Typst template
MARGIN_X_IN = 1.25
#: text width of the manuscript PDF (about 5.77 in, 146.5 mm)
TEXT_WIDTH_IN = PAGE_WIDTH_IN - 2.0 * MARGIN_X_IN
#: smallest printed text size allowed in any figure (points)
MIN_TEXT_PT = 6.0


def panel_grid(n_panels: int, row_height_in: float, extra_in: float):
    """A figure of text width with one panel per item, two per row (one when alone), and the
    axes of the empty last places switched off: ``(fig, axes)`` with ``axes`` (rows, columns).

    Parameters
    ----------
    n_panels : int
        Number of panels.
    row_height_in : float
        Height of a row of panels (inches).
    extra_in : float
        Height added under the rows (legend, note; inches).
    """
    import matplotlib.pyplot as plt

    n = max(n_panels, 1)
    ncol = 2 if n > 1 else 1
    nrow = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(TEXT_WIDTH_IN, row_height_in * nrow + extra_in),
                             squeeze=False)
    for ax in axes.ravel()[n_panels:]:
        ax.set_axis_off()
    return fig, axes


def print_scale(fig) -> float:
    """Fraction of its size at which the PDF prints ``fig``: ``min(1, text width / width)``."""
    return min(1.0, TEXT_WIDTH_IN / float(fig.get_figwidth()))


def printed_text_sizes(fig) -> list[tuple[str, float]]:
    """Every visible, non-empty text of ``fig`` with its printed size in points.

    Tick labels, titles, legends, colour-bar labels and annotations are all
    :class:`matplotlib.text.Text` artists; the figure is drawn once first so that tick labels
    exist.
    """
    from matplotlib.text import Text

    fig.canvas.draw()
    scale = print_scale(fig)
    out = []
    for t in fig.findobj(Text):
        if not t.get_visible() or not t.get_text().strip():
            continue
        ax = t.axes
        if ax is not None and not ax.get_visible():
            continue
        out.append((t.get_text(), float(t.get_fontsize()) * scale))
    return out


def too_small(fig, min_pt: float = MIN_TEXT_PT) -> list[tuple[str, float]]:
    """The texts of ``fig`` printed smaller than ``min_pt`` points (empty when all are legible)."""
    return [(s, round(pt, 2)) for s, pt in printed_text_sizes(fig) if pt < min_pt - 1e-9]
