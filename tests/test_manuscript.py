"""The manuscript: labels, values, provenance statement, tables, and rendering without Quarto.

Groups of tests:

* static checks of ``manuscript/index.qmd`` against ``analysis.manuscript_values`` (every label
  and value declared, no orphan, no number typed into the prose, every citation in the .bib);
* the pandoc renderer (``analysis.render``: cells, inline code, Quarto's divs, cross-references
  and citations through the Lua filters and citeproc, HTML and Typst PDF) on small documents;
* the formatting of the manuscript's tables (headers, rounding, notes on missing values);
* a quick run of the pipeline (``run_stages(quick=True)``, once per session, cached between
  sessions by the stage manifests in pytest's cache folder), then: each artefact is written by
  exactly one stage, the declared one; every value resolves; the whole manuscript renders to
  HTML and PDF; the provenance banner matches ``data/peaks.tsv``; golden values;
* in a real browser (markers ``slow`` and ``browser``, ``make validate``; skipped without
  Chromium): the page has no console error and its interactive viewer is drawn.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from analysis import manuscript_values as mv
from analysis import pipeline
from analysis import render as rd
from analysis.pipeline import STAGES
from analysis.sdm.errors import DataError

REPO = Path(__file__).resolve().parents[1]
QMD = REPO / "manuscript" / "index.qmd"
BIB = REPO / "manuscript" / "references.bib"
QMD_TEXT = QMD.read_text(encoding="utf-8")
FRONT, CHUNKS = rd.parse_qmd(QMD_TEXT)

# Digits allowed in the prose: names of guidelines/classifications and references to the
# paper's own numbered tables and figures (never a result).
DIGIT_ALLOW = [
    r"PRISMA 2020",
    r"DSM-5",
    r"log10",
    r"paper's (?:Table|Figure)s? \d",
]


# --- static checks -------------------------------------------------------------------------------

def _labels():
    return [str(c.options["label"]) for c in CHUNKS if c.kind == "code" and "label" in c.options]


def test_quarto_project_points_at_the_article():
    import yaml

    cfg = yaml.safe_load((REPO / "_quarto.yml").read_text())
    assert cfg["project"]["type"] == "manuscript"
    assert cfg["project"]["output-dir"] == "_manuscript"
    assert cfg["manuscript"]["article"] == "manuscript/index.qmd"
    assert set(cfg["format"]) == {"html", "typst"}
    assert FRONT["bibliography"] == "references.bib"
    assert (QMD.parent / FRONT["csl"]).exists()  # the citation style, used by both renderers


def test_required_sections_present():
    headings = re.findall(r"^## (.+?)(?:\s*\{.*\})?$", QMD_TEXT, flags=re.M)
    for needed in ("Abstract", "Introduction", "Methods", "Results", "Discussion",
                   "Limitations", "Reproduction"):
        assert needed in headings


def test_every_figure_and_table_label_is_declared_and_referenced():
    labels = [lab for lab in _labels() if lab.startswith(("fig-", "tbl-"))]
    assert len(labels) == len(set(labels)), "duplicate label"
    refs = set(re.findall(r"@((?:fig|tbl)-[\w-]+)", QMD_TEXT))
    assert refs <= set(labels), f"references without a target: {refs - set(labels)}"
    produced = [lab for lab in labels if lab != "tbl-sample-check"]
    assert set(produced) <= set(mv.ARTEFACTS), set(produced) - set(mv.ARTEFACTS)
    # no orphan: every declared figure/table is shown and referenced in the text
    declared = {k for k in mv.ARTEFACTS if k.startswith(("fig-", "tbl-"))}
    assert declared <= set(labels), declared - set(labels)
    assert set(labels) <= refs, f"never referenced: {set(labels) - refs}"
    for needed in ("fig-prisma", "fig-meta", "fig-network", "fig-behaviour", "tbl-demographics",
                   "tbl-data", "tbl-results", "tbl-reproduction"):
        assert needed in labels


def test_every_artefact_stage_is_registered():
    stages = {s.name for s in STAGES}
    for label, (stage, rel) in mv.ARTEFACTS.items():
        assert stage in stages, label
        assert not Path(rel).is_absolute() and ".." not in rel


def _value_names_used():
    return set(re.findall(r"\bv(?:\[|\.fmt\(|\.has\()\s*[\"'](\w+)[\"']", QMD_TEXT))


def test_every_value_name_is_declared_and_used():
    used = _value_names_used()
    assert used <= set(mv.VALUES), f"undeclared names: {used - set(mv.VALUES)}"
    quoted = {n for n in mv.VALUES if re.search(rf"[\"']{n}[\"']", QMD_TEXT)}
    assert quoted == set(mv.VALUES), f"declared but unused: {set(mv.VALUES) - quoted}"
    stages = {s.name for s in STAGES} | {"config"}
    for name, dotted in mv.VALUES.items():
        assert dotted.split(".")[0] in stages, name


def test_values_name_stages_not_the_configuration():
    # the manuscript reads what the stages recorded (values.json), never config.yaml
    stages = {s.name for s in pipeline.STAGES}
    for name, dotted in mv.VALUES.items():
        assert dotted.split(".")[0] in stages, (name, dotted)


def _prose(text: str) -> str:
    _, chunks = rd.parse_qmd(text)
    prose = []
    for c in chunks:
        if c.kind == "markdown":
            prose.append(c.text)
        else:  # captions are prose too
            prose += [str(c.options.get(k, "")) for k in ("fig-cap", "tbl-cap", "fig-alt")]
    out = "\n".join(prose)
    out = rd.INLINE_RE.sub(" ", out)                  # inline expressions
    out = re.sub(r"`[^`]*`", " ", out)                # code spans (paths, commands)
    out = re.sub(r"<https?://[^>]+>", " ", out)       # links
    out = re.sub(r"-?@[\w:.-]+", " ", out)            # citation keys and cross-references
    out = re.sub(r"\{[^}]*\}", " ", out)              # attributes
    for allowed in DIGIT_ALLOW:
        out = re.sub(allowed, " ", out)
    return out


def test_no_number_is_typed_into_the_prose():
    prose = _prose(QMD_TEXT)
    hits = [m.group(0) for m in re.finditer(r"\S*[0-9]\S*", prose)]
    assert hits == [], f"numbers typed into the prose (bind them to values.json): {hits}"


def test_digit_scan_catches_a_typed_number():
    first = rd.INLINE_RE.search(QMD_TEXT)  # the first inline value, typed in as a number
    assert first is not None
    bad = QMD_TEXT[:first.start()] + "11" + QMD_TEXT[first.end():]
    assert rd.INLINE_RE.sub(" ", bad) != rd.INLINE_RE.sub(" ", QMD_TEXT)
    assert re.search(r"[0-9]", _prose(bad))


def test_every_citation_is_in_the_bibliography():
    bib = set(re.findall(r"@\w+\s*\{\s*([^,\s]+)\s*,", BIB.read_text(encoding="utf-8")))
    keys = set(re.findall(r"(?<![\w@])-?@([A-Za-z][\w:.-]*[\w])", QMD_TEXT))
    keys = {k for k in keys if not k.startswith(("fig-", "tbl-", "sec-"))}
    assert keys and keys <= set(bib), keys - set(bib)


# --- pandoc renderer pieces ----------------------------------------------------------------------

MINI = """---
title: Mini
author:
  - name: A. Person
bibliography: refs.bib
execute:
  echo: false
---

## Intro

Intro with `{python} 6 * 7` and @smith2020x; see @fig-a and [@smith2020x; @doe2019y]. Text
value `{python} "a_b*c @x"`.

```{python}
#| label: setup
#| include: false
x = 3
```

Value x is `{python} x`.

```{python}
#| label: fig-a
#| fig-cap: A caption citing [@doe2019y].
#| fig-alt: A line going up.
import matplotlib.pyplot as plt
fig = plt.figure(figsize=(2, 1)); plt.plot([0, 1]); plt.show()
```

::: {.content-visible when-format="typst"}
TYPST ONLY
:::

::: {.content-visible when-format="pdf"}
PDF ONLY
:::

::: {.content-visible when-format="html"}
HTML ONLY
:::

::: {.content-hidden unless-format="html"}
HIDDEN UNLESS HTML
:::

::: {.callout-warning title="Careful"}
Warned.
:::

```{python}
#| label: tbl-b
#| tbl-cap: Tab.
from IPython.display import Markdown
Markdown("| a | b |\\n|---|--:|\\n| 1 | 2 |\\n\\n::: {.table-note}\\n*Note.* see @fig-a\\n:::\\n")
```

```{python}
#| label: tbl-c
#| tbl-cap: Empty one.
Markdown("*No rows.*")
```

See @tbl-b and @tbl-c.
"""

MINI_BIB = """
@article{smith2020x, author = {Smith, Ann and Jones, Bob and Lee, Cy}, title = {T}, journal = {J},
  year = {2020}, doi = {10.1/x}}
@book{doe2019y, author = {Doe, Jane}, title = {{Book} title}, publisher = {P}, year = {2019}}
"""


def test_parse_qmd_front_cells_options_and_lines():
    front, chunks = rd.parse_qmd(MINI)
    assert front["title"] == "Mini"
    code = [c for c in chunks if c.kind == "code"]
    assert [c.options.get("label") for c in code] == ["setup", "fig-a", "tbl-b", "tbl-c"]
    assert code[0].options["include"] is False
    assert MINI.splitlines()[code[1].line - 1].startswith("```{python}")
    assert "#|" not in code[1].text
    assert rd.inline_expressions(chunks[0].text) == ["6 * 7", '"a_b*c @x"']


def test_parse_qmd_unclosed_cell_names_the_line():
    with pytest.raises(rd.RenderError, match=r"doc.qmd:3"):
        rd.parse_qmd("text\n\n```{python}\nx = 1\n", source="doc.qmd")


def test_escape_markdown_and_fences():
    assert rd.escape_markdown("a_b*c @x [y]") == r"a\_b\*c \@x \[y\]"
    assert rd._fence("x ``` y", "{=html}").startswith("````{=html}\n")


def test_document_metadata(tmp_path):
    qmd = tmp_path / "doc.qmd"
    qmd.write_text("x")
    (tmp_path / "refs.bib").write_text(MINI_BIB)
    meta = rd.document_metadata({"title": "T", "author": [{"name": "A"}, "B"],
                                 "date": "last-modified", "bibliography": "refs.bib",
                                 "jupyter": "python3", "execute": {"echo": False}}, qmd)
    assert meta["author"] == ["A", "B"] and re.fullmatch(r"\d{4}-\d\d-\d\d", meta["date"])
    assert meta["bibliography"] == str(tmp_path / "refs.bib")
    assert "jupyter" not in meta and "execute" not in meta
    with pytest.raises(rd.RenderError, match="csl file missing.csl not found"):
        rd.document_metadata({"csl": "missing.csl"}, qmd)


def _pdf_text(path: Path) -> str:
    from pypdf import PdfReader

    return "\n".join(page.extract_text() for page in PdfReader(path).pages)


def _norm(text: str) -> str:
    """Letters and digits only (compares text across line breaks, hyphenation, quotes)."""
    import unicodedata

    return re.sub(r"[^a-z0-9]", "", unicodedata.normalize("NFKD", text).lower())


class _Html:
    """Tags, attributes and visible text of an HTML page (html.parser, no dependency)."""

    def __init__(self, text: str):
        from html.parser import HTMLParser

        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        outer = self

        class P(HTMLParser):
            skip = 0

            def handle_starttag(self, tag, attrs):
                outer.tags.append((tag, dict(attrs)))
                if tag in ("script", "style"):
                    self.skip += 1

            def handle_endtag(self, tag):
                if tag in ("script", "style"):
                    self.skip -= 1

            def handle_data(self, data):
                if not self.skip:
                    outer.text.append(data)

        P().feed(text)

    def all(self, tag: str) -> list[dict]:
        return [a for t, a in self.tags if t == tag]


@pytest.fixture(scope="module")
def mini_render(tmp_path_factory):
    d = tmp_path_factory.mktemp("mini")
    (d / "doc.qmd").write_text(MINI)
    (d / "refs.bib").write_text(MINI_BIB)
    out = rd.render_pandoc(d / "doc.qmd", d / "out", cwd=d, timeout=120)
    return out


def test_render_pandoc_html(mini_render):
    html = mini_render["html"].read_text()
    page = _Html(html)
    text = " ".join(page.text)
    assert "Intro with 42" in text and "Value x is 3" in text and "a_b*c @x" in text
    figure = [a for a in page.all("figure") if a.get("id") == "fig-a"]
    assert figure, "figure fig-a missing"
    imgs = page.all("img")
    assert imgs and all(a.get("alt") == "A line going up." for a in imgs)
    assert all(a["src"].startswith("data:image/png;base64,") for a in imgs)  # self-contained
    assert "Figure 1: A caption citing" in re.sub(r"\s+", " ", text)
    assert any(a.get("id") == "tbl-b" for a in page.all("table"))
    assert "Table 1: Tab." in text and "Table 2: Empty one." in text
    assert html.count('href="#fig-a"') == 2  # in the text, in the table note
    assert 'href="#tbl-c"' in html
    assert "HTML ONLY" in text and "TYPST ONLY" not in text and "PDF ONLY" not in text
    assert "HIDDEN UNLESS HTML" in text
    assert "Careful" in text and "callout-warning" in html
    assert 'id="ref-smith2020x"' in html and "https://doi.org/10.1/x" in html
    assert "?@" not in text and "@smith2020x" not in text
    assert [a.get("id") for a in page.all("h1")][-1] == "references"


def test_render_pandoc_pdf(mini_render):
    text = _pdf_text(mini_render["pdf"])
    flat = re.sub(r"\s+", " ", text)
    assert "Intro with 42" in flat and "a_b*c @x" in flat
    assert "Figure 1: A caption citing" in flat and "Table 1: Tab." in flat
    assert "Table 2: Empty one." in flat and "See Table 1 and Table 2" in flat
    assert "TYPST ONLY" in flat and "PDF ONLY" in flat and "HIDDEN UNLESS HTML" not in flat
    assert "HTML ONLY" not in flat and "Careful" in flat
    assert "References" in flat and "Book Title" in flat


@pytest.mark.parametrize("body, message", [
    ("see @fig-zz here", r"doc.qmd:5: unresolved cross-reference @fig-zz"),
    ("cite [@nope2020] here", r"doc.qmd:5: citation @nope2020 is not in the bibliography"),
])
def test_render_pandoc_names_unresolved_references(tmp_path, body, message):
    qmd = tmp_path / "doc.qmd"
    qmd.write_text(f"---\ntitle: t\nbibliography: refs.bib\n---\n{body}\n")
    (tmp_path / "refs.bib").write_text(MINI_BIB)
    with pytest.raises(rd.RenderError, match=message):
        rd.render_pandoc(qmd, tmp_path / "out", cwd=tmp_path, timeout=60, pdf=False)
    assert not (tmp_path / "out" / "index.html").exists()


def test_typst_error_names_the_source(tmp_path, monkeypatch):
    import typst

    def fail(*args, **kwargs):
        raise typst.TypstError("unknown variable: x")

    monkeypatch.setattr(typst, "compile", fail)
    with pytest.raises(rd.RenderError, match=r"doc.qmd \(via index.typ\): Typst could not "
                                             r"compile the PDF: unknown variable"):
        rd.compile_typst(tmp_path / "index.typ", tmp_path / "x.pdf", tmp_path, "doc.qmd")


def test_render_pandoc_reports_the_failing_line(tmp_path):
    qmd = tmp_path / "doc.qmd"
    qmd.write_text("---\ntitle: t\n---\n\nok `{python} undefined_name` here\n")
    with pytest.raises(rd.RenderError, match=r"doc.qmd:4: inline expression failed: NameError"):
        rd.render_pandoc(qmd, tmp_path / "out", cwd=tmp_path, timeout=60)
    assert not (tmp_path / "out" / "index.html").exists()


def test_missing_artefact_is_an_error_unless_allowed(tmp_path, monkeypatch):
    monkeypatch.delenv("PAINEMP_ALLOW_MISSING", raising=False)
    v = mv.Values(results_dir=tmp_path)
    with pytest.raises(mv.MissingArtefact, match="stage 'tables'"):
        v["n_studies"]
    with pytest.raises(mv.MissingArtefact, match="figure1"):
        mv.figure("fig-prisma", results_dir=tmp_path)
    monkeypatch.setenv("PAINEMP_ALLOW_MISSING", "1")
    assert v["n_studies"] == "[missing: tables.n_studies]"


# --- manuscript tables ---------------------------------------------------------------------------

def test_md_table_formats_cells():
    df = pd.DataFrame({"a": ["x|y", None], "b": [0.123456, float("nan")], "c": [1, 2]})
    md = mv.md_table(df, align=["left", "right", "right"])
    lines = md.splitlines()
    assert lines[0] == "| a | b | c |"
    assert lines[1] == "|:---|----:|--:|"  # widths from the cells, alignment from `align`
    assert "| x\\|y | 0.123 | 1 |" in md and "|  |  | 2 |" in md


def test_number_formats():
    assert mv.fmt_num(2)(-0.004) == "0.00" and mv.fmt_num(1)(-3.25) == "−3.2"
    assert mv.fmt_int(12174.0) == "12,174" and mv.fmt_pct(1)(0.8733) == "87.3"
    assert mv.fmt_p_table(0.0004) == "4.00 × 10⁻⁴" and mv.fmt_p_table(0.0234) == "0.0234"
    assert mv.fmt_p_sci(9.92584e-14) == "9.9 × 10⁻¹⁴" and mv.fmt_p_sci(0.0123) == "0.012"


def test_table_spec_drops_empty_columns_and_explains_missing_cells():
    spec = mv.TableSpec(
        columns=[mv.Column("Name", "name"), mv.Column("Value (mm)", "v", mv.fmt_num(1),
                                                      "not measured."),
                 mv.Column("Never", "never")],
        notes=lambda df: ["Static note."], dropped_note="Why it is empty.")
    df = pd.DataFrame({"name": ["a", "b"], "v": [1.234, float("nan")], "never": [None, None]})
    md = mv.format_table("tbl-x", df, spec)
    assert "| Name | Value (mm) |" in md and "Never |" not in md.splitlines()[0]
    assert "| b | – |" in md and "| a | 1.2 |" in md
    assert "– not measured." in md and "Static note." in md
    assert "Not shown, because no value exists in this run: Never. Why it is empty." in md
    assert md.index("::: {.table-note}") > md.index("| b |")


def _headers(md: str) -> list[str]:
    return [h.strip() for h in md.splitlines()[0].strip("|").split("|")]


def _body_cells(md: str) -> list[str]:
    rows = [ln for ln in md.splitlines()[2:] if ln.startswith("|")]
    return [c.strip() for ln in rows for c in ln.strip("|").split("|")]


def test_metaregression_table_without_clusters():
    """The stage writes one row per covariate with empty peak columns when no cluster
    survives: the manuscript shows the whole-brain columns only, with human headers."""
    df = pd.DataFrame({"covariate": ["age", "female_pct", "treated"], "n_studies": [10, 11, 11],
                       "n_missing": [1, 0, 0], "n_slope_clusters": [0, 2, 0],
                       "n_fwe_voxels": [0, 15, 0]})
    for col in ("cluster", "direction", "x", "y", "z", "slope", "slope_se", "slope_z",
                "p_two_tailed", "p_fwe_freedman_lane"):
        df[col] = float("nan")
    md = mv.format_table("tbl-metaregression", df)
    assert _headers(md) == ["Covariate", "Studies", "Slope clusters, whole brain",
                            "Voxels with p FWE < 0.05, whole brain"]
    assert all(c for c in _body_cells(md)) and "_" not in md.split("::: {.table-note}")[0]
    assert "Mean age (years)" in md and "1 study does not report the mean age" in md
    assert "no peak at which to test the slopes" in md


def test_metaregression_table_with_clusters():
    df = pd.DataFrame({"covariate": ["age"], "n_studies": [11], "n_missing": [0],
                       "cluster": [1], "direction": ["increase"], "x": [0], "y": [48],
                       "z": [-2], "slope": [0.012345], "slope_se": [0.00456],
                       "slope_z": [2.7071], "p_two_tailed": [0.00679],
                       "p_fwe_freedman_lane": [float("nan")], "n_slope_clusters": [1],
                       "n_fwe_voxels": [float("nan")]})
    md = mv.format_table("tbl-metaregression", df)
    assert "| 0,\u00a048,\u00a0−2 |" in md and "0.012 (0.005)" in md and "| 2.71 |" in md
    assert "| 0.00679 |" in md and "Patients > controls" not in _headers(md)
    assert "p FWE" not in _headers(md)  # no permutation test in this run: column left out
    assert "Slope: change of Hedges' g at the cluster peak (mean age: per year" in md


def test_network_table_headers_and_rounding(quick_results):
    results, ready, _ = quick_results
    assert "characterisation" in ready
    df = mv.read_table("tbl-networks", results).query("set == 'published'")
    md = mv.format_table("tbl-networks", df)
    heads = _headers(md)
    assert "Default mode (%)" in heads and "Voxels" in heads
    assert not any("_" in h for h in heads)
    numbers = [c for c in _body_cells(md) if re.fullmatch(r"[−\d.,]+", c)]
    assert numbers and all(re.fullmatch(r"−?\d+\.\d|[\d,]+", c) for c in numbers)


def test_run_mode_follows_the_values():
    assert mv.run_mode(3, 4, 50, 1000) == "quick"
    assert mv.run_mode(50, 1000, 50, 1000) == "full"
    assert mv.run_mode("[missing: meta.imputations]", 4, 50, 1000) == "unknown"


# --- provenance ----------------------------------------------------------------------------------

PEAK_COLS = "study\tpeak_id\tsign\tx\ty\tz\tspace\tstat_type\tstat_value\tprovenance\tnote\n"


def _peaks(tmp_path, rows, studies=None):
    """A data folder: the peak rows and a study table (default: the studies of the rows)."""
    d = tmp_path / "pdata"
    d.mkdir(exist_ok=True)
    (d / "peaks.tsv").write_text(PEAK_COLS + "".join(
        f"{s}\t{i}\t1\t0\t0\t0\tMNI\tt\t3\t{p}\t\n" for i, (s, p) in enumerate(rows, 1)))
    studies = studies or list(dict.fromkeys(s for s, _ in rows))
    (d / "studies.tsv").write_text("study\n" + "".join(f"{s}\n" for s in studies))
    return d


def test_provenance_counts_and_banner(tmp_path):
    d = _peaks(tmp_path, [("A", "original:A 2007; Table 6"), ("A", "original:A 2007; Table 6"),
                          ("B", "simulated:v1:seed=1"), ("C", "sdm-import:proj"),
                          ("D", "simulated:v1:seed=1"), ("D", "original:D")])
    p = mv.provenance(d)
    assert p.real_studies == ["A", "C"] and p.simulated_studies == ["B", "D"]
    assert (p.n_peaks_real, p.n_peaks_simulated) == (4, 2)
    banner = mv.provenance_banner(p)
    assert "2 of 4 studies" in banner and "simulated stand-ins" in banner


def test_banner_disappears_when_all_real(tmp_path):
    d = _peaks(tmp_path, [("A", "original:x"), ("B", "sdm-import:y")])
    assert mv.provenance(d).all_real
    assert mv.provenance_banner(mv.provenance(d)) == ""


def test_provenance_bad_tag_names_row_and_field(tmp_path):
    d = _peaks(tmp_path, [("A", "original:x"), ("B", "made-up")])
    with pytest.raises(DataError) as err:
        mv.provenance(d)
    assert err.value.row == 2 and err.value.field == "provenance"
    assert err.value.file.endswith("peaks.tsv")


# --- against a real (quick) pipeline run (fixture ``quick_results`` of conftest.py) --------------

def test_all_stages_present(quick_results):
    _, _, missing = quick_results
    assert missing == [], f"stages left out of the default run: {missing}"


def test_artefacts_have_exactly_one_producer(quick_results):
    results, ready, _ = quick_results
    outputs: dict[str, list[str]] = {}
    for stage in ready:
        manifest = json.loads((results / ".stages" / f"{stage}.json").read_text())
        for rel in manifest["outputs"]:
            outputs.setdefault(rel, []).append(stage)
    for label, (stage, rel) in mv.ARTEFACTS.items():
        if stage not in ready:
            continue
        assert outputs.get(rel) == [stage], f"{label}: {rel} produced by {outputs.get(rel)}"
        assert (results / rel).exists()


def test_every_value_resolves(quick_results):
    results, ready, _ = quick_results
    v = mv.Values(results)
    unresolved = [f"{n} -> {d}" for n, d in mv.VALUES.items()
                  if d.split(".")[0] in ready + ["config"] and not v.has(n)]
    assert unresolved == [], f"values.json lacks: {unresolved}"


def test_prisma_and_study_table_agree(quick_results):
    results, ready, _ = quick_results
    v = mv.Values(results)
    assert v.get("prisma_included") == v.get("n_studies")


def test_manuscript_executes_without_quarto(quick_results, quick_manuscript, monkeypatch):
    _check_manuscript(quick_results, quick_manuscript, monkeypatch)


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_manuscript_full_pipeline(request, tmp_path, monkeypatch, mirror):
    """Every stage (quick mode), then the manuscript with no placeholder allowed."""
    from conftest import cache_dir, quick_run

    run = quick_run(cache_dir(request, "painemp-quick-results-all"), [])
    assert run[2] == [], f"stages not importable: {run[2]}"
    _check_manuscript(run, None, monkeypatch, tmp_path)


def _check_manuscript(quick_results, out, monkeypatch, tmp_path=None):
    """The manuscript ``out`` (``{"html", "pdf"}`` of :func:`analysis.render.render_pandoc`)
    rendered from the results of ``quick_results``; ``out=None``: rendered here into
    ``tmp_path``."""
    results, _, missing = quick_results
    monkeypatch.setenv("PAINEMP_RESULTS_DIR", str(results))
    monkeypatch.delenv("PAINEMP_DATA_DIR", raising=False)
    monkeypatch.delenv("PAINEMP_ALLOW_MISSING", raising=False)
    if out is None:
        out = rd.render_pandoc(QMD, tmp_path / "_manuscript", timeout=600)
    assert set(out) == {"html", "pdf"} and all(p.stat().st_size > 0 for p in out.values())
    html = out["html"].read_text()
    page = _Html(html)
    text = re.sub(r"\s+", " ", " ".join(page.text))
    for label in _labels():
        if label.startswith(("fig-", "tbl-")):
            assert f'id="{label}"' in html, label
    # no unresolved cross-reference or citation
    keys = set(re.findall(r"@\w+\s*\{\s*([^,\s]+)\s*,", BIB.read_text(encoding="utf-8")))
    assert not re.search(r"\?@|@(?:fig|tbl|sec)-", text)
    assert not [k for k in keys if f"@{k}" in text]
    assert "[missing" not in text
    # every image has a text alternative; figures are embedded
    imgs = page.all("img")
    assert imgs and all(a.get("alt", "").strip() for a in imgs)
    assert all(a["src"].startswith("data:") for a in imgs)
    # publication tables: human headers, no empty cell
    for th in re.findall(r"<th[^>]*>(.*?)</th>", html, flags=re.S):
        assert "_" not in th, th
    assert not re.findall(r"<td[^>]*>\s*</td>", html)
    # the provenance banner matches data/peaks.tsv
    prov = mv.provenance(REPO / "data")
    assert ("Data provenance:" in text) == (not prov.all_real)
    if prov.simulated_studies:
        assert f"{prov.n_studies_simulated} of {prov.n_studies} studies" in text
    # one renderer note, naming pandoc
    assert text.count("This document was rendered by") == 1 and "rendered by pandoc" in text
    # the run-mode sentence matches values.json (the test run is a quick run)
    v = mv.Values(results)
    mode = mv.run_mode(v["imputations"], v["permutations"], v["imputations_config"],
                       v["permutations_config"])
    assert ("quick run of the pipeline" in text) == (mode == "quick")
    assert "fewer than configured when" not in text
    if "meta" not in missing:
        # the interactive viewer of the clusters (maps/z_thresholded.nii.gz), or a note that
        # the thresholded map is empty: never an empty viewer
        has_clusters = v["n_clusters_increase"] + v["n_clusters_decrease"] > 0
        assert ("<iframe" in html) == has_clusters
        assert ("no interactive map to explore" in text) == (not has_clusters)
    # the PDF: every figure and table caption, the reference list
    pdf = _norm(_pdf_text(out["pdf"]))
    for c in CHUNKS:
        cap = c.options.get("fig-cap") or c.options.get("tbl-cap") if c.kind == "code" else None
        if cap and "caption=" in c.text:  # computed from the results (manuscript_values)
            cap = mv.caption(str(c.options["label"]), v, prov)
        if cap:
            plain = re.sub(r"\[?-?@[\w:.-]+\]?|\*", "", str(cap))
            assert _norm(plain) in pdf, f"caption of {c.options['label']} not in the PDF"
    # while stand-ins are in use: the title says so, and the provenance box comes before the
    # table of contents in HTML
    if prov.simulated_studies:
        assert _norm(mv.TITLE_SUFFIX) in pdf.split(_norm("Data provenance"))[0]
        assert mv.TITLE_SUFFIX in re.search(r"<title>(.*?)</title>", html, flags=re.S).group(1)
        assert html.index('class="provenance-box"') < html.index('id="TOC"')
    assert _norm("References") in pdf
    for title in _bib_titles():
        assert _norm(title) in pdf, f"reference {title!r} not in the PDF"
    return out


def _bib_titles() -> list[str]:
    """Titles of the bibliography's entries that the manuscript cites (read by pandoc)."""
    import pypandoc

    cited = set(re.findall(r"@([A-Za-z][\w:.-]*[\w])", QMD_TEXT))
    entries = json.loads(pypandoc.convert_file(str(BIB), "csljson", format="bibtex"))
    titles = [e["title"] for e in entries if e["id"] in cited]
    assert titles
    return titles


@pytest.mark.slow
@pytest.mark.browser
def test_manuscript_in_headless_chromium(quick_results, tmp_path, monkeypatch):
    """The rendered page in a real browser: no console error, the viewer is drawn.

    Needs Chromium (Debian package ``chromium``); run by ``make validate``.
    """
    from analysis import browser

    if browser.find_chromium() is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    out = _check_manuscript(quick_results, tmp_path, monkeypatch)
    v = mv.Values(quick_results[0])
    if v["n_clusters_increase"] + v["n_clusters_decrease"] == 0:
        pytest.skip("no cluster in this run: the page has a note instead of a viewer")
    report = browser.check_page(out["html"], selector="iframe", settle=3.0)
    assert report.errors == [], report.errors
    assert report.title.startswith("Pain empathy")
    assert report.screenshot is not None, "no interactive viewer on the page"
    (tmp_path / "viewer.png").write_bytes(report.screenshot)
    spread, inked = browser.image_variation(report.screenshot)
    assert spread > 10 and inked > 0.05, f"viewer screenshot looks blank ({spread:.1f}, {inked})"


@pytest.mark.slow
@pytest.mark.browser
def test_browser_check_sees_errors_and_blank_pages(tmp_path):
    """The browser check itself: a script error is reported, a blank element is blank."""
    from analysis import browser

    if browser.find_chromium() is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><head><title>t</title></head><body>"
                    "<div id='blank' style='width:200px;height:100px;background:#fff'></div>"
                    "<script>console.error('boom'); undefinedFunction();</script></body></html>")
    report = browser.check_page(page, selector="#blank", settle=0.5)
    assert any("boom" in e for e in report.errors)
    assert any("undefinedFunction" in e for e in report.errors)
    spread, inked = browser.image_variation(report.screenshot)
    assert spread < 1 and inked < 0.01


def test_cited_values_golden(quick_results, data_regression):
    """Golden copy of every value the manuscript cites (quick run).

    The values come from the session's quick run with ``manuscript.test_overrides`` of the
    configuration (few imputations and permutations), so they lock the pipeline's behaviour,
    not the statistics of a full run. Tolerance: floats rounded to 6 decimals
    (``round_digits=6``), which absorbs BLAS/platform drift of the quick run; integers, counts
    and text must match exactly.
    Regenerate on purpose only (``make regen``) and say why in the commit.
    """
    results, _, missing = quick_results
    assert missing == []
    v = mv.Values(results)
    data_regression.check({n: v.get(n) for n in sorted(mv.VALUES)}, round_digits=6)


# --- choice of renderer --------------------------------------------------------------------------

def test_quarto_path_is_called_with_the_venv_python(tmp_path, monkeypatch):
    """Without Quarto here, a stand-in ``quarto`` executable records how it is called."""
    import os
    import stat
    import sys

    log = tmp_path / "call.txt"
    fake = tmp_path / "bin" / "quarto"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@|$QUARTO_PYTHON|$PAINEMP_RENDERER|$PWD\" > {log}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    # the results folder is not under test here (its check: tests/test_reliability.py)
    monkeypatch.setattr(rd, "check_results_current", lambda *args, **kwargs: None)
    engine, out = rd.render("auto")
    assert engine == "quarto" and out == rd.OUT_DIR
    args, python, renderer, cwd = log.read_text().strip().split("|")
    assert args == "render" and python == sys.executable and renderer == "quarto"
    assert Path(cwd) == REPO
    # another output folder is passed to Quarto as its --output-dir
    engine, out = rd.render("auto", out_dir=tmp_path / "elsewhere")
    assert out == tmp_path / "elsewhere"
    assert log.read_text().split("|")[0] == f"render --output-dir {tmp_path / 'elsewhere'}"


def test_render_command_output_dir(monkeypatch, tmp_path):
    """``render --output-dir DIR`` renders there (the paper benchmark leaves _manuscript/ alone)."""
    from analysis.cli import main

    calls = {}
    monkeypatch.setattr(rd, "check_results_current", lambda *args, **kwargs: None)
    monkeypatch.setattr(rd, "render_pandoc", lambda **kwargs: calls.update(kwargs))
    assert main(["render", "--engine", "pandoc", "--output-dir", str(tmp_path / "m")]) == 0
    assert calls == {"out_dir": tmp_path / "m"}
    assert main(["render", "--engine", "pandoc"]) == 0
    assert calls == {"out_dir": rd.OUT_DIR}


def test_quarto_requested_but_missing(monkeypatch):
    monkeypatch.setattr(rd.shutil, "which", lambda name: None)
    with pytest.raises(rd.RenderError, match="quarto is not on PATH"):
        rd.render("quarto")


def test_render_command_reports_failure(monkeypatch, capsys):
    from analysis.cli import main

    def boom(*args, **kwargs):
        raise rd.RenderError("index.qmd:12: code cell failed: KeyError")

    monkeypatch.setattr("analysis.commands.render.render", boom)
    assert main(["render", "--engine", "pandoc"]) == 1
    assert "index.qmd:12" in capsys.readouterr().out
