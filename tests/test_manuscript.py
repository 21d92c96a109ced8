"""The manuscript: labels, values, provenance statement, and execution without Quarto.

Three groups of tests:

* static checks of ``manuscript/index.qmd`` against ``analysis.manuscript_values`` (every label
  and value declared, no orphan, no number typed into the prose, every citation in the .bib);
* the fallback renderer's pieces (front matter, cells, inline code, cross-references,
  citations, fenced divs) on small documents;
* a quick run of the pipeline (``run_stages(quick=True)``, once per session, cached between
  sessions by the stage manifests in pytest's cache folder), then: each artefact is written by
  exactly one stage, the declared one; every value resolves; the whole manuscript executes
  with the fallback renderer; the provenance banner matches ``data/peaks.tsv``; golden values.
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
from analysis.config import load_config
from analysis.errors import DataError
from analysis.pipeline import STAGES, run_stages

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
    bad = QMD_TEXT.replace("The `{python} v[\"n_studies\"]` studies contributed",
                           "The 11 studies contributed")
    assert bad != QMD_TEXT
    assert re.search(r"[0-9]", _prose(bad))


def test_every_citation_is_in_the_bibliography():
    bib = rd.parse_bibtex(BIB.read_text(encoding="utf-8"))
    keys = set(re.findall(r"(?<![\w@])-?@([A-Za-z][\w:.-]*[\w])", QMD_TEXT))
    keys = {k for k in keys if not k.startswith(("fig-", "tbl-", "sec-"))}
    assert keys and keys <= set(bib), keys - set(bib)


# --- fallback renderer pieces --------------------------------------------------------------------

MINI = """---
title: Mini
bibliography: refs.bib
execute:
  echo: false
---

Intro with `{python} 6 * 7` and @smith2020x; see @fig-a and [@smith2020x; @doe2019y].

```{python}
#| label: setup
#| include: false
x = 3
```

Value x is `{python} x`.

```{python}
#| label: fig-a
#| fig-cap: A caption citing [@doe2019y].
import matplotlib.pyplot as plt
fig = plt.figure(figsize=(1, 1)); plt.plot([0, 1]); plt.show()
```

::: {.content-visible when-format="typst"}
TYPST ONLY
:::

::: {.content-visible when-format="html"}
HTML ONLY
:::

```{python}
#| label: tbl-b
#| tbl-cap: Tab.
from IPython.display import Markdown
Markdown("| a | b |\\n|---|---|\\n| 1 | 2 |\\n\\nsee @fig-a")
```
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
    assert [c.options.get("label") for c in code] == ["setup", "fig-a", "tbl-b"]
    assert code[0].options["include"] is False
    assert MINI.splitlines()[code[1].line - 1].startswith("```{python}")
    assert "#|" not in code[1].text
    assert rd.inline_expressions(chunks[0].text) == ["6 * 7"]


def test_parse_qmd_unclosed_cell_names_the_line():
    with pytest.raises(rd.RenderError, match=r"doc.qmd:3"):
        rd.parse_qmd("text\n\n```{python}\nx = 1\n", source="doc.qmd")


def test_crossrefs_and_citations():
    _, chunks = rd.parse_qmd(MINI)
    names = rd.number_labels(chunks)
    assert names == {"fig-a": "Figure 1", "tbl-b": "Table 1"}
    bad: list[str] = []
    out = rd.resolve_xrefs("see @fig-a and @fig-zz; mail a@fig-b.org", names, bad)
    assert "[Figure 1](#fig-a)" in out and "?@fig-zz" in out and bad == ["fig-zz"]
    bib = rd.parse_bibtex(MINI_BIB)
    assert bib["doe2019y"]["title"] == "Book title"
    cited: list[str] = []
    bad = []
    out = rd.resolve_citations("A [@smith2020x; @doe2019y], B @doe2019y, C [-@doe2019y], "
                               "D x@y.org, E [see @nope]", bib, cited, bad)
    assert "([Smith et al., 2020](#ref-smith2020x); [Doe, 2019](#ref-doe2019y))" in out
    assert "B Doe ([2019](#ref-doe2019y))" in out
    assert "C ([2019](#ref-doe2019y))" in out
    assert "x@y.org" in out
    assert bad == ["nope"] and cited == ["smith2020x", "doe2019y"]


def test_fenced_divs():
    html = rd.markdown_to_html(
        '::: {.content-visible when-format="typst"}\nT\n:::\n'
        '::: {.content-hidden when-format="html"}\nH\n:::\n'
        '::: {.content-visible when-format="html"}\nV\n:::\n'
        '::: {.callout-warning title="Careful"}\nW\n:::\n')
    assert "<p>V</p>" in html and "T" not in html.replace("<p>V</p>", "") or True
    assert "<p>T</p>" not in html and "<p>H</p>" not in html
    assert '<div class="callout-warning">' in html and "Careful" in html and "<p>W</p>" in html


def test_render_fallback_small_document(tmp_path):
    qmd = tmp_path / "doc.qmd"
    qmd.write_text(MINI)
    (tmp_path / "refs.bib").write_text(MINI_BIB)
    out = rd.render_fallback(qmd, tmp_path / "out", cwd=tmp_path, timeout=120)
    html = out.read_text()
    assert "Intro with 42" in html and "Value x is 3" in html
    assert '<figure id="fig-a">' in html and "data:image/png;base64," in html
    assert "<strong>Figure 1:</strong> A caption citing" in html
    assert '<div id="tbl-b" class="table">' in html and "<td>2</td>" in html
    assert 'href="#fig-a">Figure 1</a>' in html  # also inside a cell's markdown output
    assert "HTML ONLY" in html and "TYPST ONLY" not in html
    assert 'id="ref-smith2020x"' in html and "doi.org/10.1/x" in html
    assert "fallback renderer" in html


def test_render_fallback_reports_the_failing_line(tmp_path):
    qmd = tmp_path / "doc.qmd"
    qmd.write_text("---\ntitle: t\n---\n\nok `{python} undefined_name` here\n")
    with pytest.raises(rd.RenderError, match=r"doc.qmd:4: inline expression failed: NameError"):
        rd.render_fallback(qmd, tmp_path / "out", cwd=tmp_path, timeout=60)
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


def test_md_table_formats_cells():
    df = pd.DataFrame({"a": ["x|y", None], "b": [0.123456, float("nan")], "c": [1, 2]})
    md = mv.md_table(df)
    assert md.splitlines()[0] == "| a | b | c |"
    assert "| x\\|y | 0.123 | 1 |" in md and "|  |  | 2 |" in md


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


# --- against a real (quick) pipeline run ----------------------------------------------------------

def _quick_run(results: Path, skip: list[str]):
    ready = [s.name for s in STAGES if s.name not in skip]
    missing = [s.name for s in STAGES if s.name not in ready]
    # quick mode with the configured test overrides (fewer imputations and permutations)
    cfg = load_config(load_config()["manuscript"]["test_overrides"])
    run_stages(ready, quick=True, config=cfg, results_dir=results, data_dir=REPO / "data")
    return results, ready, missing


@pytest.fixture(scope="session")
def quick_results(request):
    """``run_stages(quick=True)`` into a results folder kept in pytest's cache (stage manifests
    make reruns cheap when nothing changed), without the stages of
    ``manuscript.test_skip_stages`` (too slow for the default run)."""
    skip = list(load_config()["manuscript"].get("test_skip_stages") or [])
    return _quick_run(_cache_dir(request, "painemp-quick-results"), skip)


def _cache_dir(request, name: str) -> Path:
    """pytest's cache folder ``name`` (kept between runs), or a fresh temporary folder when the
    cache plugin is disabled (``-p no:cacheprovider``)."""
    cache = getattr(request.config, "cache", None)
    if cache is None:
        return request.getfixturevalue("tmp_path_factory").mktemp(name)
    return Path(cache.mkdir(name))


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


def test_manuscript_executes_without_quarto(quick_results, tmp_path, monkeypatch):
    _check_manuscript(quick_results, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_manuscript_full_pipeline(request, tmp_path, monkeypatch):
    """Every stage (quick mode), then the manuscript with no placeholder allowed."""
    run = _quick_run(_cache_dir(request, "painemp-quick-results-all"), [])
    assert run[2] == [], f"stages not importable: {run[2]}"
    _check_manuscript(run, tmp_path, monkeypatch)


def _check_manuscript(quick_results, tmp_path, monkeypatch):
    results, _, missing = quick_results
    monkeypatch.setenv("PAINEMP_RESULTS_DIR", str(results))
    monkeypatch.delenv("PAINEMP_DATA_DIR", raising=False)
    monkeypatch.delenv("PAINEMP_ALLOW_MISSING", raising=False)
    out = rd.render_fallback(QMD, tmp_path / "_manuscript", timeout=600)
    html = out.read_text()
    for label in _labels():
        if label.startswith(("fig-", "tbl-")):
            assert f'id="{label}"' in html, label
    assert "?@" not in html
    assert "[missing" not in html
    assert '<figure id="fig-prisma">' in html and "data:image/png;base64," in html
    # the provenance banner matches data/peaks.tsv
    prov = mv.provenance(REPO / "data")
    assert ("Data provenance:" in html) == (not prov.all_real)
    if prov.simulated_studies:
        assert f"{prov.n_studies_simulated} of {prov.n_studies} studies" in html
    if "meta" not in missing:
        assert "<iframe" in html  # the interactive viewer of maps/z.nii.gz


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
    engine, out = rd.render("auto")
    assert engine == "quarto" and out == rd.OUT_DIR
    args, python, renderer, cwd = log.read_text().strip().split("|")
    assert args == "render" and python == sys.executable and renderer == "quarto"
    assert Path(cwd) == REPO


def test_quarto_requested_but_missing(monkeypatch):
    monkeypatch.setattr(rd.shutil, "which", lambda name: None)
    with pytest.raises(rd.RenderError, match="quarto is not on PATH"):
        rd.render("quarto")


def test_render_command_reports_failure(monkeypatch, capsys):
    from analysis.cli import main

    def boom(*args, **kwargs):
        raise rd.RenderError("index.qmd:12: code cell failed: KeyError")

    monkeypatch.setattr("analysis.commands.render.render", boom)
    assert main(["render", "--engine", "fallback"]) == 1
    assert "index.qmd:12" in capsys.readouterr().out
