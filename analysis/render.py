"""Render the manuscript: Quarto when installed, else a small built-in fallback renderer.

Quarto cannot be installed on the project's machines (no GitHub downloads; the PyPI
``quarto-cli`` is an sdist that downloads the binary), so :func:`render` falls back to a
renderer that understands the subset of Quarto markdown used by ``manuscript/index.qmd``:

* YAML front matter (``title``, ``subtitle``, ``author``, ``bibliography``, ``execute``);
* executable cells ```` ```{python} ```` with ``#|`` options (``label``, ``fig-cap``,
  ``tbl-cap``, ``fig-alt``, ``echo``, ``output``, ``include``), run in order in a Jupyter kernel
  through nbclient;
* inline expressions `` `{python} expr` `` (evaluated in the kernel at their place in the
  document; a result with ``_repr_markdown_`` is inserted as markdown, anything else as text);
* cross-references ``@fig-x`` / ``@tbl-x`` (numbered in order of appearance), citations
  ``[@key]`` / ``@key`` resolved from the BibTeX file, a reference list;
* fenced divs ``::: {.content-visible when-format="html"}`` (kept), other formats' content
  (dropped), callouts and other ``::: {#id .class}`` divs (kept as ``<div>``).

Markdown becomes HTML with markdown-it-py (CommonMark plus tables). Figures are embedded
(base64 PNG or inline SVG), so ``_manuscript/index.html`` is self-contained. The page states
which renderer produced it.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from analysis import paths
from analysis.io import write_text

LGR = logging.getLogger(__name__)

QMD = paths.REPO_ROOT / "manuscript" / "index.qmd"
OUT_DIR = paths.REPO_ROOT / "_manuscript"
INLINE_RE = re.compile(r"`\{python\}\s+([^`]+?)`")
CELL_OPEN_RE = re.compile(r"^```\{(\w+)([^}]*)\}\s*$")
XREF_RE = re.compile(r"(?<![\w@])@((?:fig|tbl|sec)-[\w-]+)")
CITE_BRACKET_RE = re.compile(r"\[((?:[^\[\]]*?@[\w:.-]+[^\[\]]*?))\]")
CITE_KEY_RE = re.compile(r"(-?)@([\w][\w:.-]*[\w])")
NARRATIVE_CITE_RE = re.compile(r"(?<![\w@\[?])@([A-Za-z][\w:.-]*[\w])")
INLINE_MARK = "<<PAINEMP-INLINE>>"
PREFIX_NAMES = {"fig": "Figure", "tbl": "Table", "sec": "Section"}


class RenderError(RuntimeError):
    """The manuscript could not be rendered (names the file and line)."""


@dataclass
class Chunk:
    """A piece of the document: markdown text or an executable cell."""

    kind: str  # "markdown" | "code"
    text: str
    line: int  # 1-based line of the chunk in the .qmd
    options: dict[str, Any] = field(default_factory=dict)
    lang: str = ""


def parse_qmd(text: str, source: str = "index.qmd") -> tuple[dict[str, Any], list[Chunk]]:
    """Split a ``.qmd`` into its front matter and chunks.

    Parameters
    ----------
    text : str
        The document.
    source : str
        Name used in error messages.

    Returns
    -------
    front : dict
        The YAML front matter (empty when absent).
    chunks : list of Chunk
        Markdown and code chunks in document order.
    """
    lines = text.splitlines()
    front: dict[str, Any] = {}
    start = 0
    if lines and lines[0].strip() == "---":
        try:
            end = next(i for i in range(1, len(lines)) if lines[i].strip() in ("---", "..."))
        except StopIteration:
            raise RenderError(f"{source}:1: front matter not closed by '---'") from None
        front = yaml.safe_load("\n".join(lines[1:end])) or {}
        start = end + 1
    chunks: list[Chunk] = []
    buf: list[str] = []
    buf_line = start + 1
    i = start
    while i < len(lines):
        m = CELL_OPEN_RE.match(lines[i])
        if not m:
            buf.append(lines[i])
            i += 1
            continue
        if buf:
            chunks.append(Chunk("markdown", "\n".join(buf), buf_line))
        open_line = i + 1
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise RenderError(f"{source}:{open_line}: code cell not closed by ```")
        opts_lines = [ln[3:] for ln in body if ln.startswith("#| ")]
        code = "\n".join(ln for ln in body if not ln.startswith("#| "))
        try:
            options = yaml.safe_load("\n".join(opts_lines)) or {} if opts_lines else {}
        except yaml.YAMLError as exc:
            raise RenderError(f"{source}:{open_line}: bad cell options: {exc}") from exc
        chunks.append(Chunk("code", code, open_line, options, m.group(1)))
        i += 1
        buf = []
        buf_line = i + 1
    if buf:
        chunks.append(Chunk("markdown", "\n".join(buf), buf_line))
    return front, chunks


def inline_expressions(text: str) -> list[str]:
    """The inline ``{python}`` expressions of a markdown text, in order."""
    return [m.group(1).strip() for m in INLINE_RE.finditer(text)]


_SETUP = f"""
def __painemp_fmt(x):
    md = getattr(x, "_repr_markdown_", None)
    if md is not None:
        return {{"markdown": md()}}
    return {{"text": str(x)}}
__PAINEMP_MARK = {INLINE_MARK!r}
"""


def build_notebook(chunks: list[Chunk], lang: str = "python"):
    """A notebook of the executable cells, with one extra cell per markdown chunk that has
    inline expressions (so they are evaluated at their place in the document).

    Returns
    -------
    nb : nbformat.NotebookNode
    cell_of : dict
        Chunk index -> cell index.
    """
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": lang}
    nb.cells.append(nbformat.v4.new_code_cell(_SETUP))
    cell_of: dict[int, int] = {}
    for k, ch in enumerate(chunks):
        if ch.kind == "code":
            if ch.lang != lang:
                raise RenderError(f"line {ch.line}: only {lang} cells are supported, got {ch.lang}")
            cell_of[k] = len(nb.cells)
            nb.cells.append(nbformat.v4.new_code_cell(ch.text))
        else:
            exprs = inline_expressions(ch.text)
            if exprs:
                body = ", ".join(f"__painemp_fmt(({e}))" for e in exprs)
                code = f"import json as __j\nprint(__PAINEMP_MARK + __j.dumps([{body}]))"
                cell_of[k] = len(nb.cells)
                nb.cells.append(nbformat.v4.new_code_cell(code))
    return nb, cell_of


def execute_notebook(nb, cwd: Path, timeout: int = 900, env: dict[str, str] | None = None):
    """Run every cell with a Python kernel of this interpreter (nbclient)."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                                resources={"metadata": {"path": str(cwd)}})
        client.execute()
    except CellExecutionError as exc:
        raise RenderError(str(exc)) from exc
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


# --- markdown to HTML --------------------------------------------------------------------------

def _markdown_it():
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": True, "typographer": False}).enable("table")


DIV_OPEN_RE = re.compile(r"^:::+\s*\{([^}]*)\}\s*$")
DIV_CLOSE_RE = re.compile(r"^:::+\s*$")


def _div_attrs(spec: str) -> tuple[str | None, list[str], dict[str, str]]:
    ident = None
    classes: list[str] = []
    attrs: dict[str, str] = {}
    for tok in re.findall(r'[\w-]+="[^"]*"|[#.][\w-]+|[\w-]+=\S+', spec):
        if tok.startswith("#"):
            ident = tok[1:]
        elif tok.startswith("."):
            classes.append(tok[1:])
        else:
            k, v = tok.split("=", 1)
            attrs[k] = v.strip('"')
    return ident, classes, attrs


def _visible(classes: list[str], attrs: dict[str, str], fmt: str = "html") -> bool:
    if "content-visible" in classes:
        if "when-format" in attrs:
            return attrs["when-format"] == fmt
        if "unless-format" in attrs:
            return attrs["unless-format"] != fmt
    if "content-hidden" in classes:
        if "when-format" in attrs:
            return attrs["when-format"] != fmt
        if "unless-format" in attrs:
            return attrs["unless-format"] == fmt
        return False
    return True


def markdown_to_html(text: str, md=None) -> str:
    """Markdown (with Quarto fenced divs) to HTML."""
    md = md or _markdown_it()
    out: list[str] = []
    stack: list[tuple[bool, str]] = []  # (visible, closing html)
    buf: list[str] = []

    def flush():
        if buf:
            out.append(md.render("\n".join(buf)))
            buf.clear()

    for line in text.splitlines():
        m = DIV_OPEN_RE.match(line)
        if m:
            flush()
            ident, classes, attrs = _div_attrs(m.group(1))
            parent_visible = all(v for v, _ in stack)
            visible = parent_visible and _visible(classes, attrs)
            plain = {"content-visible", "content-hidden"}
            if visible and not set(classes) <= plain:
                cls = " ".join(c for c in classes if c not in plain)
                id_attr = f' id="{html.escape(ident)}"' if ident else ""
                out.append(f'<div{id_attr} class="{html.escape(cls)}">')
                if "title" in attrs:
                    out.append(f'<p class="callout-title"><strong>{html.escape(attrs["title"])}'
                               "</strong></p>")
                stack.append((visible, "</div>"))
            else:
                stack.append((visible, ""))
            continue
        if DIV_CLOSE_RE.match(line) and stack:
            flush()
            visible, closing = stack.pop()
            if closing and visible:
                out.append(closing)
            continue
        if all(v for v, _ in stack):
            buf.append(line)
    flush()
    return "\n".join(out)


# --- cross-references and citations ------------------------------------------------------------

def number_labels(chunks: list[Chunk]) -> dict[str, str]:
    """``{label: "Figure 1"}`` for every labelled figure/table cell, in document order."""
    counters: dict[str, int] = {}
    names: dict[str, str] = {}
    for ch in chunks:
        label = ch.options.get("label") if ch.kind == "code" else None
        if not label:
            continue
        prefix = str(label).split("-", 1)[0]
        if prefix in ("fig", "tbl"):
            counters[prefix] = counters.get(prefix, 0) + 1
            names[label] = f"{PREFIX_NAMES[prefix]} {counters[prefix]}"
    return names


def resolve_xrefs(text: str, names: dict[str, str], unresolved: list[str]) -> str:
    """Replace ``@fig-x`` by a link ``Figure N`` (``?@fig-x`` when unknown, as Quarto does)."""

    def sub(m):
        label = m.group(1)
        if label in names:
            return f"[{names[label]}](#{label})"
        unresolved.append(label)
        return f"?@{label}"

    return XREF_RE.sub(sub, text)


def parse_bibtex(text: str) -> dict[str, dict[str, str]]:
    """A minimal BibTeX reader: ``{key: {field: value}}`` (braces stripped)."""
    entries: dict[str, dict[str, str]] = {}
    for m in re.finditer(r"@(\w+)\s*\{\s*([^,\s]+)\s*,", text):
        kind, key = m.group(1).lower(), m.group(2)
        pos, depth = m.end(), 1
        i = pos
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        body = text[pos:i - 1]
        fields = {"ENTRYTYPE": kind}
        for fm in re.finditer(r"(\w+)\s*=\s*", body):
            j = fm.end()
            if j < len(body) and body[j] == "{":
                d, k = 1, j + 1
                while k < len(body) and d:
                    d += {"{": 1, "}": -1}.get(body[k], 0)
                    k += 1
                value = body[j + 1:k - 1]
            elif j < len(body) and body[j] == '"':
                k = body.index('"', j + 1)
                value = body[j + 1:k]
            else:
                value = re.match(r"[^,\n]*", body[j:]).group(0)
            fields[fm.group(1).lower()] = re.sub(r"[{}]", "", " ".join(value.split()))
        entries[key] = fields
    return entries


def _surnames(entry: dict[str, str]) -> list[str]:
    names = [a.strip() for a in entry.get("author", "Anonymous").split(" and ")]
    return [n.split(",")[0].strip() if "," in n else n.split()[-1] for n in names]


def cite_label(entry: dict[str, str]) -> tuple[str, str]:
    """(author part, year) of an author-year citation."""
    s = _surnames(entry)
    who = s[0] if len(s) == 1 else f"{s[0]} and {s[1]}" if len(s) == 2 else f"{s[0]} et al."
    return who, entry.get("year", "n.d.")


def resolve_citations(text: str, bib: dict[str, dict[str, str]], cited: list[str],
                      unresolved: list[str]) -> str:
    """Author-year citations: ``[@a; @b]`` -> (A, 2020; B, 2021); ``@a`` -> A (2020)."""

    def lookup(key: str) -> tuple[str, str] | None:
        """(author, year) of a cited key, recording it as cited or unresolved."""
        if key not in bib:
            unresolved.append(key)
            return None
        if key not in cited:
            cited.append(key)
        return cite_label(bib[key])

    def one(key: str, suppress: bool) -> str:
        if (found := lookup(key)) is None:
            return f"?@{key}"
        who, year = found
        return f"[{year if suppress else who + ', ' + year}](#ref-{key})"

    def bracket(m):
        inner = m.group(1)
        if not re.search(r"(?:^|[;\s])-?@", inner) or XREF_RE.search(inner):
            return m.group(0)
        parts = [p.strip() for p in inner.split(";")]
        rendered = []
        for p in parts:
            km = CITE_KEY_RE.search(p)
            if not km:
                rendered.append(p)
                continue
            rendered.append(p[:km.start()] + one(km.group(2), km.group(1) == "-") + p[km.end():])
        return "(" + "; ".join(rendered) + ")"

    text = CITE_BRACKET_RE.sub(bracket, text)

    def narrative(m):
        key = m.group(1)
        if key.split("-")[0] in PREFIX_NAMES:
            return m.group(0)
        if (found := lookup(key)) is None:
            return f"?@{key}"
        who, year = found
        return f"{who} ([{year}](#ref-{key}))"

    return NARRATIVE_CITE_RE.sub(narrative, text)


def reference_list(bib: dict[str, dict[str, str]], cited: list[str]) -> str:
    """HTML list of the cited references, sorted by first author and year."""
    items = []
    for key in sorted(cited, key=lambda k: (_surnames(bib[k])[0], bib[k].get("year", ""))):
        e = bib[key]
        authors = e.get("author", "").replace(" and others", " et al.").replace(" and ", "; ")
        parts = [f"{html.escape(authors)} ({html.escape(e.get('year', 'n.d.'))}).",
                 f"{html.escape(e.get('title', ''))}."]
        venue = e.get("journal") or e.get("booktitle") or e.get("publisher") or ""
        if venue:
            vol = f" {e['volume']}" if e.get("volume") else ""
            pages = f", {e['pages'].replace('--', '–')}" if e.get("pages") else ""
            parts.append(f"<em>{html.escape(venue)}</em>{html.escape(vol + pages)}.")
        if e.get("doi"):
            doi = html.escape(e["doi"])
            parts.append(f'<a href="https://doi.org/{doi}">doi:{doi}</a>')
        elif e.get("url"):
            parts.append(f'<a href="{html.escape(e["url"])}">{html.escape(e["url"])}</a>')
        items.append(f'<li id="ref-{key}">{" ".join(parts)}</li>')
    return '<ol class="references">\n' + "\n".join(items) + "\n</ol>"


# --- outputs -------------------------------------------------------------------------------------

def output_html(outputs: list, convert) -> tuple[str, list[str]]:
    """HTML of a cell's outputs (best MIME type of each) and the error texts, if any."""
    parts: list[str] = []
    errors: list[str] = []
    for out in outputs:
        kind = out.get("output_type")
        if kind == "stream":
            if out.get("name") == "stdout":
                parts.append(f"<pre>{html.escape(out.get('text', ''))}</pre>")
            continue
        if kind == "error":
            errors.append(f"{out.get('ename')}: {out.get('evalue')}")
            continue
        data = out.get("data", {})
        if "text/markdown" in data:
            parts.append(convert(_join(data["text/markdown"])))
        elif "text/html" in data:
            parts.append(_join(data["text/html"]))
        elif "image/svg+xml" in data:
            parts.append(_join(data["image/svg+xml"]))
        elif "image/png" in data:
            b64 = _join(data["image/png"]).replace("\n", "")
            parts.append(f'<img src="data:image/png;base64,{b64}" alt="">')
        elif "text/plain" in data:
            parts.append(f"<pre>{html.escape(_join(data['text/plain']))}</pre>")
    return "\n".join(parts), errors


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _join(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _inline_values(cell) -> list[dict[str, str]]:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream" and INLINE_MARK in out.get("text", ""):
            line = next(ln for ln in out["text"].splitlines() if ln.startswith(INLINE_MARK))
            return json.loads(line[len(INLINE_MARK):])
    raise RenderError("inline expressions produced no value")


def _fill_inline(text: str, values: list[dict[str, str]]) -> str:
    it = iter(values)

    def sub(_m):
        v = next(it)
        return v["markdown"] if "markdown" in v else html.escape(v["text"], quote=False)

    return INLINE_RE.sub(sub, text)


CSS = """
body{font-family:Georgia,'Times New Roman',serif;max-width:54rem;margin:2rem auto;padding:0 1rem;
line-height:1.5;color:#222}
h1{font-size:1.9rem;line-height:1.25}h2{margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0;display:block;overflow-x:auto}
th,td{border-bottom:1px solid #ccc;padding:.2rem .5rem;text-align:left;vertical-align:top}
th{border-bottom:2px solid #555}figure{margin:1.5rem 0}figure img{max-width:100%}
figure svg{max-width:100%;height:auto}
.caption,figcaption{font-size:.9rem;color:#333}.caption{font-weight:normal;margin-bottom:.3rem}
.callout-warning{border-left:5px solid #e69d00;background:#fff8e6;padding:.5rem 1rem;margin:1rem 0}
.callout-note{border-left:5px solid #0b6fb3;background:#eef6fc;padding:.5rem 1rem;margin:1rem 0}
.renderer{font-size:.85rem;color:#555;border:1px dashed #aaa;padding:.4rem .8rem}
.references li{margin-bottom:.4rem;font-size:.9rem}pre{background:#f6f6f6;padding:.5rem;
overflow-x:auto}
"""


def _number_headings(body: str) -> tuple[str, list[tuple[int, str, str]]]:
    counters = [0, 0]
    toc: list[tuple[int, str, str]] = []
    used: set[str] = set()

    def sub(m):
        level, content = int(m.group(1)), m.group(2)
        unnumbered = "{.unnumbered}" in content or "{-}" in content
        ident_m = re.search(r"\{#([\w-]+)[^}]*\}", content)
        content = re.sub(r"\s*\{[^}]*\}\s*$", "", content)
        plain = re.sub(r"<[^>]+>", "", content)
        ident = ident_m.group(1) if ident_m else re.sub(r"[^\w]+", "-", plain.lower()).strip("-")
        while ident in used:
            ident += "-x"
        used.add(ident)
        num = ""
        if not unnumbered:
            if level == 2:
                counters[0] += 1
                counters[1] = 0
                num = f"{counters[0]} "
            else:
                counters[1] += 1
                num = f"{counters[0]}.{counters[1]} "
        toc.append((level, ident, num + plain))
        return f'<h{level} id="{ident}">{num}{content}</h{level}>'

    return re.sub(r"<h([23])>(.*?)</h\1>", sub, body), toc


def render_fallback(qmd: Path = QMD, out_dir: Path = OUT_DIR, cwd: Path | None = None,
                    timeout: int = 900) -> Path:
    """Render ``qmd`` to ``out_dir/index.html`` without Quarto.

    Parameters
    ----------
    qmd : path-like
        The manuscript source.
    out_dir : path-like
        Output folder (created); the page is written atomically.
    cwd : path-like, optional
        Working directory of the kernel (default: the repository root, as Quarto's
        ``execute-dir: project``).
    timeout : int
        Seconds allowed per cell.

    Returns
    -------
    pathlib.Path
        The written ``index.html``.

    Raises
    ------
    RenderError
        A cell failed, or a cross-reference or citation does not resolve.
    """
    qmd = Path(qmd)
    front, chunks = parse_qmd(qmd.read_text(encoding="utf-8"), source=str(qmd))
    nb, cell_of = build_notebook(chunks)
    LGR.info("fallback renderer: executing %d cells of %s", len(nb.cells), qmd.name)
    execute_notebook(nb, Path(cwd or paths.REPO_ROOT), timeout=timeout,
                     env={"PAINEMP_RENDERER": "fallback",
                          # figures drawn in a cell are shown inline, as with Quarto, even
                          # where MPLBACKEND=Agg is set for the rest of the process (CI)
                          "MPLBACKEND": "module://matplotlib_inline.backend_inline"})
    for k, idx in cell_of.items():
        errs = [o for o in nb.cells[idx].get("outputs", []) if o.get("output_type") == "error"]
        if errs:
            what = "inline expression" if chunks[k].kind == "markdown" else "code cell"
            raise RenderError(f"{qmd}:{chunks[k].line}: {what} failed: "
                              f"{errs[0].get('ename')}: {_strip_ansi(errs[0].get('evalue', ''))}")
    md = _markdown_it()
    names = number_labels(chunks)
    bib: dict[str, dict[str, str]] = {}
    for bibfile in _as_list(front.get("bibliography")):
        bib.update(parse_bibtex((qmd.parent / bibfile).read_text(encoding="utf-8")))
    unresolved_x: list[str] = []
    unresolved_c: list[str] = []
    cited: list[str] = []
    defaults = front.get("execute", {}) or {}

    def convert(text: str) -> str:
        text = resolve_xrefs(text, names, unresolved_x)
        text = resolve_citations(text, bib, cited, unresolved_c)
        return markdown_to_html(text, md)

    doc: list[str] = []
    cells: dict[str, str] = {}
    for k, ch in enumerate(chunks):
        if ch.kind == "markdown":
            text = ch.text
            if k in cell_of:
                text = _fill_inline(text, _inline_values(nb.cells[cell_of[k]]))
            doc.append(resolve_citations(resolve_xrefs(text, names, unresolved_x), bib, cited,
                                         unresolved_c))
            continue
        cell = nb.cells[cell_of[k]]
        opts = {**defaults, **ch.options}
        body, errors = output_html(cell.get("outputs", []), convert)
        if errors:
            raise RenderError(f"{qmd}:{ch.line}: {'; '.join(errors)}")
        if opts.get("include") is False:
            continue
        block = []
        if opts.get("echo") is True:
            block.append(f'<pre><code class="python">{html.escape(ch.text)}</code></pre>')
        if opts.get("output") is not False:
            block.append(body)
        label = opts.get("label")
        if label and str(label).startswith("fig-"):
            cap = _caption(opts.get("fig-cap", ""), names[label], convert)
            html_block = (f'<figure id="{label}">\n{"".join(block)}\n'
                          f"<figcaption>{cap}</figcaption>\n</figure>")
        elif label and str(label).startswith("tbl-"):
            cap = _caption(opts.get("tbl-cap", ""), names[label], convert)
            html_block = (f'<div id="{label}" class="table">\n<p class="caption">{cap}</p>\n'
                          f'{"".join(block)}\n</div>')
        else:
            html_block = "\n".join(block)
        key = f"<!--PAINEMP-CELL-{k}-->"
        cells[key] = html_block
        doc.append(f"\n{key}\n")
    body = markdown_to_html("\n".join(doc), md)
    for key, html_block in cells.items():
        body = body.replace(key, html_block)
    if unresolved_x or unresolved_c:
        raise RenderError(f"{qmd}: unresolved cross-references {sorted(set(unresolved_x))} "
                          f"or citations {sorted(set(unresolved_c))}")
    body, toc = _number_headings(body)
    if cited:
        body += '\n<h2 id="references">References</h2>\n' + reference_list(bib, cited)
    page = _page(front, body, toc)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = write_text(out_dir / "index.html", page)
    out.chmod(0o644)  # a web page: readable by the server, not only by its author
    LGR.info("fallback renderer: wrote %s (%.1f kB)", out, out.stat().st_size / 1e3)
    return out


def _caption(text, name: str, convert) -> str:
    inner = convert(str(text)).strip()
    inner = re.sub(r"^<p>(.*)</p>$", r"\1", inner, flags=re.S)
    return f"<strong>{name}:</strong> {inner}"


def _as_list(v) -> list:
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def _page(front: dict[str, Any], body: str, toc: list[tuple[int, str, str]]) -> str:
    title = html.escape(str(front.get("title", "Manuscript")))
    subtitle = front.get("subtitle")
    authors = []
    for a in _as_list(front.get("author")):
        authors.append(a.get("name", "") if isinstance(a, dict) else str(a))
    today = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    toc_html = "\n".join(
        f'<li style="margin-left:{(lvl - 2) * 1.2}rem"><a href="#{i}">{html.escape(t)}</a></li>'
        for lvl, i, t in toc)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="generator" content="analysis.render fallback renderer (Quarto not installed)">
<title>{title}</title><style>{CSS}</style></head><body>
<header><h1 class="title">{title}</h1>
{f'<p class="subtitle">{html.escape(str(subtitle))}</p>' if subtitle else ''}
<p class="author">{html.escape(", ".join(authors))}</p><p class="date">Rendered {today}</p>
<p class="renderer">Rendered by the compendium's built-in fallback renderer
(<code>analysis/render.py</code>) because Quarto is not installed here; with Quarto,
<code>make paper</code> renders the same source into HTML and a Typst PDF.</p>
<nav><ul>{toc_html}</ul></nav></header>
<main>
{body}
</main></body></html>
"""


def quarto_available() -> str | None:
    """Path of the ``quarto`` executable, if on PATH."""
    return shutil.which("quarto")


def render_quarto(quarto: str) -> Path:
    """``quarto render`` of the manuscript project (HTML + Typst PDF) with the venv's Python."""
    env = dict(os.environ, QUARTO_PYTHON=sys.executable, PAINEMP_RENDERER="quarto")
    LGR.info("rendering with %s (QUARTO_PYTHON=%s)", quarto, sys.executable)
    subprocess.run([quarto, "render"], cwd=paths.REPO_ROOT, env=env, check=True)
    return OUT_DIR


def render(engine: str = "auto", allow_missing: bool = False) -> tuple[str, Path]:
    """Render with Quarto if available (``engine='auto'``), else with the fallback.

    Returns
    -------
    (engine used, output path)
    """
    if allow_missing:
        os.environ["PAINEMP_ALLOW_MISSING"] = "1"
    quarto = quarto_available()
    if engine == "quarto" and not quarto:
        raise RenderError("quarto is not on PATH (install it from quarto.org or use --engine "
                          "fallback)")
    if engine in ("auto", "quarto") and quarto:
        return "quarto", render_quarto(quarto)
    return "fallback", render_fallback()
