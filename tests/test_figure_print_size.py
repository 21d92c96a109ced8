"""Every figure producer's text is legible where the PDF prints it (at least 6 pt).

Each figure is built from synthetic inputs (no map or peak here is real), scaled to the PDF's
text width (analysis.figures.print_size: A4 less pandoc's Typst margins) and every matplotlib
text of it is measured in points at that size.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from analysis.figures import print_size as PS

REPO = Path(__file__).resolve().parents[1]


def test_text_width_is_the_typst_template_s():
    """A4 less the left and right margins of pandoc's Typst template, which render.py uses."""
    src = (REPO / "analysis" / "render.py").read_text(encoding="utf-8")
    assert '"papersize=a4"' in src
    import subprocess

    import pypandoc  # pypandoc-binary: a runtime dependency (the renderer's pandoc)

    template = subprocess.run([pypandoc.get_pandoc_path(), "-D", "typst"], check=True,
                              capture_output=True, text=True).stdout
    template += subprocess.run([pypandoc.get_pandoc_path(), "--print-default-data-file",
                                "templates/template.typst"], check=False,
                               capture_output=True, text=True).stdout
    m = re.search(r"margin:\s*\(x:\s*([\d.]+)in", template)
    assert m, "no default margin in pandoc's Typst template"
    assert PS.MARGIN_X_IN == float(m.group(1))
    assert PS.TEXT_WIDTH_IN == pytest.approx(210 / 25.4 - 2 * float(m.group(1)))


def test_the_check_sees_small_text():
    """The measure itself: a wide figure shrinks its text in print."""
    fig, ax = plt.subplots(figsize=(2 * PS.TEXT_WIDTH_IN, 3))
    ax.set_title("title", fontsize=10)
    ax.text(0.5, 0.5, "tiny", fontsize=11)
    small = dict(PS.too_small(fig))
    plt.close(fig)
    assert small["title"] == pytest.approx(5.0) and small["tiny"] == pytest.approx(5.5)


# ----------------------------------------------------------------------------- producers


def _clusters(with_clusters: bool):
    from analysis.sdm.inference.clusters import threshold_clusters
    from analysis.sdm.maps.space import MaskSpace, grid_affine, grid_shape

    shape = grid_shape()
    mask = np.zeros(shape, np.uint8)
    mask[10:80, 10:100, 10:80] = 1
    space = MaskSpace(nib.Nifti1Image(mask, grid_affine()))
    z = np.zeros(space.n_voxels)
    if with_clusters:
        for centre, sign in (((0, 48, 0), 1), ((60, -14, -12), 1), ((-22, -48, -28), -1),
                             ((-52, -70, 2), -1), ((30, 20, 40), 1)):
            d = np.linalg.norm(space.xyz - np.asarray(centre, float), axis=1)
            z += sign * 4.0 * np.exp(-(d / 6.0) ** 2)
    cl = threshold_clusters(z, space, p_threshold=0.0025, peak_z=1.0, min_voxels=11)
    # region names as long as the atlas gives them, so that crowded titles show
    cl.table["region"] = "Middle Temporal Gyrus, Right (Temporal_Mid_R)"
    return cl, space


PUBLISHED = pd.DataFrame({"direction": ["Patients>Controls", "Patients>Controls",
                                        "Patients<Controls", "Patients<Controls"],
                          "x": [0, 60, -22, -52], "y": [48, -14, -48, -70],
                          "z": [0, -12, -28, 2], "aal_label": ["a", "b", "c", "d"],
                          "hedges_g": [0.39, 0.33, -0.31, -0.3], "sdm_z": [3.5, 3.1, -3.3, -3.4]})


@functools.lru_cache(maxsize=2)
def _figure2(with_clusters):
    """Built once per case (nilearn's slices take a while); closed at the end of the module."""
    from analysis.figures.figure2 import plot_figure2

    cl, space = _clusters(with_clusters)
    assert (cl.peaks().empty) is (not with_clusters)
    return plot_figure2(cl, space, published=PUBLISHED,
                        simulated_note="Simulated stand-in data: not the paper's result.")


def _figure3():
    from analysis.figures.figure3 import plot_figure3

    mask = np.zeros((91, 109, 91), bool)
    mask[10:80, 10:100, 10:80] = True
    rng = np.random.default_rng(0)
    panels = []
    for i, d in enumerate(["increase", "increase", "decrease", "decrease"]):
        seed = SimpleNamespace(id=f"Seed_{i}_Cingulate_Ant_L", x=0, y=48, z=0, direction=d)
        panels.append({"seed": seed, "key": f"s{i}", "kind": "conjunction", "note": "",
                       "map": np.where(mask, rng.random(mask.shape), 0.0)})
    for d in ("increase", "decrease"):
        panels.append({"seed": None, "key": d, "kind": "overlap",
                       "note": f"overlap of the {d} seeds' conjunction maps", "map": mask * 1.0})
    return plot_figure3(panels, mask=mask, to_volume=lambda m: m)


def _figure4():
    from analysis.figures.figure4 import SOURCE, plot_figure4

    seeds = [SimpleNamespace(id=f"Seed_{i}", x=0, y=48, z=0) for i in range(4)]
    terms = ["empathy", "pain", "visual perception", "language comprehension", "reading",
             "speech", "emotion regulation", "attention", "memory", "reward", "fear", "motor",
             "social cognition", "theory of mind", "semantic"]
    rows = [{"source": SOURCE, "seed": s.id, "rank": r + 1, "term": t,
             "log10_p": -(15 - r) * 0.7, "aal2_region": "Cingulate_Ant_L"}
            for s in seeds for r, t in enumerate(terms)]
    return plot_figure4(pd.DataFrame(rows), seeds)[0]


def _funnels():
    from analysis.figures.funnel import plot_funnels

    rng = np.random.default_rng(1)
    n1, n2 = np.array([10, 20, 30, 15]), np.array([12, np.nan, 25, 14])
    panels = [{"g_imputed": rng.normal(0.3, 0.2, (5, 4)), "n1": n1, "n2": n2,
               "pooled_g": 0.3, "egger_p": 0.4, "title": f"Cluster {i}: Cingulate_Ant_L",
               "study_names": list("abcd")} for i in range(4)]
    return plot_funnels(panels, note="Simulated stand-in data.")


def _funnel():
    from analysis.figures.funnel import funnel_plot

    rng = np.random.default_rng(1)
    return funnel_plot(rng.normal(0.3, 0.2, (5, 3)), np.array([10, 20, 30]),
                       np.array([12, np.nan, 25]), pooled_g=0.3, egger_p=0.4, title="peak",
                       study_names=["a", "b", "c"])


def _forest_panel(i):
    from analysis.sdm.diagnostics.voxel import extract_voxel

    rng = np.random.default_rng(i)
    n1, n2 = np.array([10, 20, 30, 15, 22]), np.array([12, np.nan, 25, 14, 20])
    g = rng.normal(0.3, 0.2, (5, 5))
    g[:, 0] = 0.5  # exact
    ex = extract_voxel(g, n1, n2, studies=[f"Study{j}2020" for j in range(5)])
    st = ex.studies.assign(group=["Autism Spectrum Disorder", "Schizophrenia"] * 2 + ["ASD"],
                           simulated=[True, False, True, True, False])
    return {"studies": st, "pooled": ex.pooled,
            "title": f"Cluster {i}: Middle Temporal Gyrus, Right\n(60, -14, -12)"}


def _forest():
    from analysis.figures.forest import forest_plot

    return forest_plot(**_forest_panel(1))


def _forests():
    from analysis.figures.forest import plot_forests

    return plot_forests([_forest_panel(i) for i in range(4)], note="Simulated stand-in data.")


def _sensitivity():
    from analysis.checks import design_simulation as D
    from analysis.figures.design_sensitivity import plot_sensitivity

    rng = np.random.default_rng(2)
    rows = []
    for loc, d in enumerate(PUBLISHED["direction"], start=1):
        for g in (0.2, 0.6, 1.0):
            for rep in range(10):
                det = bool(rng.random() < g)
                rows.append({"replicate": rep, "effect_size": g, "location": loc,
                             "direction": d, "x": 0, "y": 0, "z": 0, "true_g_mean": g,
                             "detected": det, "detected_fwe": det and rng.random() < 0.5,
                             "covered": det, "distance_mm": 3.0 if det else np.nan,
                             "sdm_z": 3.2 if det else np.nan,
                             "hedges_g": (g + 0.1) * (1 if "<" not in d else -1) if det
                             else np.nan, "cluster_voxels": 50, "n_peaks": 140})
    s = D.summarise_sensitivity(pd.DataFrame(rows, columns=D.SENSITIVITY_COLUMNS), 0.95)
    return plot_sensitivity(s, PUBLISHED, note="Simulated meta-analyses of the design: 10 per "
                            "true g, 10 imputations, 13045 grey-matter voxels within 20 mm of "
                            "the published peaks.")


def _prisma():
    from analysis.figures.prisma import draw_prisma, load_prisma

    return draw_prisma(load_prisma())


PRODUCERS = {
    "figure1 PRISMA": _prisma,
    "figure2 clusters": lambda: _figure2(True),
    "figure2 no cluster": lambda: _figure2(False),
    "figure3 networks": _figure3,
    "figure4 terms": _figure4,
    "funnel plot": _funnel,
    "funnel plots of the clusters": _funnels,
    "forest plot": _forest,
    "forest plots of the clusters": _forests,
    "design sensitivity": _sensitivity,
}


@pytest.fixture(scope="module", autouse=True)
def _close_cached_figures():
    yield
    _figure2.cache_clear()
    plt.close("all")


@pytest.mark.parametrize("name", list(PRODUCERS))
def test_no_text_smaller_than_6_pt_in_print(name):
    fig = PRODUCERS[name]()
    try:
        texts = PS.printed_text_sizes(fig)
        small = PS.too_small(fig)
    finally:
        if not name.startswith("figure2"):
            plt.close(fig)
    assert texts, "the figure has no text to measure"
    assert not small, f"{name}: printed below {PS.MIN_TEXT_PT} pt: {small[:8]}"


def test_figure2_texts_do_not_overlap():
    """No two texts of Figure 2 (panel titles, row headers, notes) share any area."""
    fig = _figure2(True)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in fig.texts if t.get_text()]
    clashes = [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:]
               if ba.overlaps(bb)]
    assert clashes == []


def test_figure2_without_clusters_says_so_and_shows_no_colour():
    fig = _figure2(False)
    texts = " ".join(t for t, _ in PS.printed_text_sizes(fig))
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert "No cluster survives" in texts
    assert not any(np.ma.count(np.ma.masked_invalid(np.ma.asarray(im.get_array()))) and
                   getattr(im, "cmap", None) is not None and im.get_cmap().name in
                   ("autumn", "winter", "cold_hot") for im in images)


def test_figure2_colour_bars_start_at_the_threshold():
    from scipy.stats import norm

    fig = _figure2(True)
    bars = [ax for ax in fig.axes if ax.get_ylabel() == "SDM-Z"]
    lims = sorted(tuple(np.round(ax.get_ylim(), 2)) for ax in bars)
    thr = round(float(norm.isf(0.0025)), 2)
    assert len(bars) == 2
    assert lims[0][1] == -thr and lims[1][0] == thr
