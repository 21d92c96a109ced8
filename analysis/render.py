"""Render the manuscript: Quarto when installed, else nbclient + pandoc + Typst.

Quarto cannot be installed on the project's machines (no GitHub downloads; the PyPI
``quarto-cli`` is an sdist that downloads the binary). Without it, :func:`render_pandoc` does
what Quarto does for this manuscript with tools that install from wheels:

1. **execute** - the ```` ```{python} ```` cells of ``manuscript/index.qmd`` (with their ``#|``
   options) and its inline expressions `` `{python} expr` `` run in order in a Jupyter kernel
   (nbclient), from the repository root as Quarto's ``execute-dir: project``;
2. **assemble** - the executed cells become pandoc markdown: images written to files and shown
   as figures with their ``fig-cap`` and ``fig-alt``, markdown output (tables) as is, HTML
   output (the interactive viewer) as raw HTML, labelled figure and table cells as numbered
   floats;
3. **convert** - pandoc (``pypandoc-binary``) with the Lua filters in ``analysis/templates``
   (Quarto's ``content-visible`` and callout divs; the data-provenance box and the title's
   stand-in suffix; cross-references ``@fig-x`` -> "Figure 1")
   and then ``--citeproc`` (``manuscript/references.bib``, the CSL style named by ``csl:`` in
   the front matter) writes a self-contained ``_manuscript/index.html`` (template and styles
   in ``analysis/templates``) and a Typst file,
   which the ``typst`` package compiles to ``_manuscript/index.pdf``.

An unresolved cross-reference or citation, a failing cell or a Typst error is a
:class:`RenderError` naming the file and line. Both outputs are written atomically.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from analysis import paths
from analysis.sdm.inputs.io import atomic_path

LGR = logging.getLogger(__name__)

QMD = paths.REPO_ROOT / "manuscript" / "index.qmd"
OUT_DIR = paths.REPO_ROOT / "_manuscript"
TEMPLATES = Path(__file__).resolve().parent / "templates"
#: Lua filters, in the order pandoc runs them (all before --citeproc).
FILTERS = (TEMPLATES / "quarto-divs.lua", TEMPLATES / "front-matter.lua",
           TEMPLATES / "crossref.lua")
HTML_CSS = TEMPLATES / "manuscript.css"
HTML_TEMPLATE = TEMPLATES / "manuscript.html"
TYPST_HEADER = TEMPLATES / "manuscript.typ"
MIN_PANDOC = (3, 1)
INLINE_RE = re.compile(r"`\{python\}\s+([^`]+?)`")
CELL_OPEN_RE = re.compile(r"^```\{(\w+)([^}]*)\}\s*$")
INLINE_MARK = "<<PAINEMP-INLINE>>"
#: Front-matter keys that are Quarto's (execution, project) and not document metadata.
QUARTO_ONLY = {"jupyter", "execute", "format", "number-sections", "toc", "engine", "freeze"}
#: Characters escaped in plain-text inline values so that pandoc shows them literally.
MD_SPECIAL_RE = re.compile(r"([\\`*_{}\[\]<>#|~^$@])")
UNRESOLVED_XREF_RE = re.compile(r"crossref: (?:unresolved reference|reference) @([\w:.-]+)")
REFS_DIV_RE = re.compile(r"^:::+\s*\{#refs[\s}]", re.M)
UNRESOLVED_CITE_RE = re.compile(r"Citeproc: citation (\S+) not found")


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


# --- reading the .qmd ----------------------------------------------------------------------------

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

    Raises
    ------
    RenderError
        Front matter or a code cell not closed, or cell options that are not YAML.
    """
    lines = text.splitlines()
    front: dict[str, Any] = {}
    start = 0
    if lines and lines[0].strip() == "---":
        try:
            end = next(i for i in range(1, len(lines)) if lines[i].strip() in ("---", "..."))
        except StopIteration:
            raise RenderError(f"{source}:1: front matter not closed by '---'") from None
        try:
            front = yaml.safe_load("\n".join(lines[1:end])) or {}
        except yaml.YAMLError as exc:
            raise RenderError(f"{source}:1: front matter is not YAML: {exc}") from exc
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


# --- executing the cells -------------------------------------------------------------------------

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

    Parameters
    ----------
    chunks : list of Chunk
        From :func:`parse_qmd`.
    lang : str
        The only cell language accepted.

    Returns
    -------
    nb : nbformat.NotebookNode
        The notebook, not yet executed.
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
    """Run every cell with a Python kernel of this interpreter (nbclient).

    Parameters
    ----------
    nb : nbformat.NotebookNode
        Executed in place (errors are kept as outputs, see :func:`check_cells`).
    cwd : path-like
        Working directory of the kernel.
    timeout : int
        Seconds allowed per cell.
    env : dict, optional
        Environment variables set for the kernel (restored afterwards).
    """
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


def check_cells(nb, chunks: list[Chunk], cell_of: dict[int, int], source: str) -> None:
    """Raise :class:`RenderError` at the first cell or inline expression that failed."""
    for k, idx in cell_of.items():
        errs = [o for o in nb.cells[idx].get("outputs", []) if o.get("output_type") == "error"]
        if errs:
            what = "inline expression" if chunks[k].kind == "markdown" else "code cell"
            raise RenderError(f"{source}:{chunks[k].line}: {what} failed: "
                              f"{errs[0].get('ename')}: {_strip_ansi(errs[0].get('evalue', ''))}")


# --- executed cells to pandoc markdown -----------------------------------------------------------

def escape_markdown(text: str) -> str:
    """Plain text as pandoc markdown that shows it literally (``*``, ``_``, ``@``... escaped)."""
    return MD_SPECIAL_RE.sub(r"\\\1", text)


def _fence(text: str, info: str = "") -> str:
    """A fenced block around ``text``, longer than any backtick run inside it."""
    runs = [len(m) for m in re.findall(r"`{3,}", text)]
    ticks = "`" * max([3, *(n + 1 for n in runs)])
    return f"{ticks}{info}\n{text.rstrip()}\n{ticks}"


def _attr_value(text: str) -> str:
    """A quoted attribute value for pandoc's ``{key="value"}``."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


class Media:
    """Files of the images a render writes next to its markdown (``media/<name>``)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.count = 0

    def add(self, stem: str, data: bytes, suffix: str) -> str:
        """Write one image; return its path relative to the build folder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.count += 1
        name = f"{re.sub(r'[^A-Za-z0-9_-]+', '-', stem)}-{self.count}{suffix}"
        (self.folder / name).write_bytes(data)
        return f"{self.folder.name}/{name}"


def output_markdown(outputs: list, media: Media, stem: str) -> tuple[str, list[str]]:
    """Pandoc markdown of a cell's outputs (best MIME type of each) and its error texts.

    Parameters
    ----------
    outputs : list
        The cell's nbformat outputs.
    media : Media
        Where images are written.
    stem : str
        Start of the image file names (the cell's label).

    Returns
    -------
    markdown : str
    errors : list of str
    """
    import base64

    parts: list[str] = []
    errors: list[str] = []
    for out in outputs:
        kind = out.get("output_type")
        if kind == "stream":
            if out.get("name") == "stdout" and out.get("text", "").strip():
                parts.append(_fence(out["text"]))
            continue
        if kind == "error":
            errors.append(f"{out.get('ename')}: {_strip_ansi(out.get('evalue', ''))}")
            continue
        data = out.get("data", {})
        if "text/markdown" in data:
            parts.append(_join(data["text/markdown"]))
        elif "image/png" in data:
            png = base64.b64decode(_join(data["image/png"]))
            parts.append(f"![]({media.add(stem, png, '.png')})")
        elif "image/svg+xml" in data:
            svg = _join(data["image/svg+xml"]).encode("utf-8")
            parts.append(f"![]({media.add(stem, svg, '.svg')})")
        elif "text/html" in data:
            parts.append(_fence(_join(data["text/html"]), "{=html}"))
        elif "text/plain" in data:
            parts.append(_fence(_join(data["text/plain"])))
    return "\n\n".join(p for p in parts if p.strip()), errors


def float_block(label: str, body: str, caption: str, alt: str | None = None) -> str:
    """A numbered float for the cross-reference filter (``analysis/templates/crossref.lua``)."""
    attrs = f"#{label} .painemp-float"
    if alt:
        attrs += f" fig-alt={_attr_value(alt)}"
    return (f":::::: {{{attrs}}}\n{body}\n\n::::: {{.painemp-caption}}\n{caption}\n:::::\n"
            "::::::")


def cell_markdown(chunk: Chunk, cell, defaults: dict[str, Any], media: Media,
                  source: str) -> str:
    """Pandoc markdown of one executed code cell, honouring its ``#|`` options.

    Parameters
    ----------
    chunk : Chunk
        The code chunk (its options and source line).
    cell : nbformat.NotebookNode
        The executed cell.
    defaults : dict
        Document-wide ``execute:`` options (``echo``, ``output``, ``include``).
    media : Media
        Where images are written.
    source : str
        Name of the .qmd for error messages.
    """
    opts = {**defaults, **chunk.options}
    label = str(opts.get("label") or f"cell-{chunk.line}")
    body, errors = output_markdown(cell.get("outputs", []), media, label)
    if errors:
        raise RenderError(f"{source}:{chunk.line}: {'; '.join(errors)}")
    if opts.get("include") is False:
        return ""
    parts = []
    if opts.get("echo") is True:
        parts.append(_fence(chunk.text, " {.python}"))
    if opts.get("output") is not False:
        parts.append(body)
    content = "\n\n".join(p for p in parts if p)
    computed = computed_caption(cell.get("outputs", []))
    if label.startswith("fig-"):
        return float_block(label, content, str(computed.get("caption", opts.get("fig-cap", ""))),
                           computed.get("alt", opts.get("fig-alt")))
    if label.startswith("tbl-"):
        return float_block(label, content, str(computed.get("caption", opts.get("tbl-cap", ""))))
    return content


def computed_caption(outputs: list) -> dict[str, str]:
    """Caption and alternative text that a cell computed from the results.

    A figure or table whose caption depends on the results (``analysis.manuscript_values``)
    is displayed with the metadata ``{"painemp": {"caption": ..., "alt": ...}}``; these
    replace the cell's static ``fig-cap`` / ``tbl-cap`` / ``fig-alt`` options, which remain
    the text that a renderer without this step shows.
    """
    for out in outputs:
        for meta in (out.get("metadata") or {}).values():
            if isinstance(meta, dict) and isinstance(meta.get("painemp"), dict):
                return {k: str(v) for k, v in meta["painemp"].items() if v}
    return {}


def _inline_values(cell, source: str, line: int) -> list[dict[str, str]]:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream" and INLINE_MARK in out.get("text", ""):
            text = next(ln for ln in out["text"].splitlines() if ln.startswith(INLINE_MARK))
            return json.loads(text[len(INLINE_MARK):])
    raise RenderError(f"{source}:{line}: inline expressions produced no value")


def fill_inline(text: str, values: list[dict[str, str]]) -> str:
    """Replace each inline expression by its value (markdown as is, text escaped)."""
    it = iter(values)

    def sub(_m):
        v = next(it)
        return v["markdown"] if "markdown" in v else escape_markdown(v["text"])

    return INLINE_RE.sub(sub, text)


def document_metadata(front: dict[str, Any], qmd: Path) -> dict[str, Any]:
    """Pandoc metadata from Quarto front matter.

    Authors become names, ``date: last-modified`` the date the .qmd was last changed (or
    ``SOURCE_DATE_EPOCH`` where set, as for the PDF's timestamp), paths
    of ``bibliography`` and ``csl`` absolute; Quarto's execution keys are dropped.
    """
    meta = {k: v for k, v in front.items() if k not in QUARTO_ONLY}
    authors = front.get("author") or []
    if authors:
        authors = authors if isinstance(authors, list) else [authors]
        meta["author"] = [a.get("name", "") if isinstance(a, dict) else str(a) for a in authors]
    date = str(front.get("date", ""))
    if date in ("last-modified", "today", "now"):
        stamp = qmd.stat().st_mtime if date == "last-modified" else time.time()
        if os.environ.get("SOURCE_DATE_EPOCH"):  # reproducible builds: the source's date
            stamp = float(os.environ["SOURCE_DATE_EPOCH"])
        meta["date"] = _dt.datetime.fromtimestamp(stamp, _dt.timezone.utc).strftime("%Y-%m-%d")
    for key in ("bibliography", "csl"):
        if key in front:
            files = front[key] if isinstance(front[key], list) else [front[key]]
            resolved = []
            for f in files:
                path = (qmd.parent / str(f)).resolve()
                if not path.exists():
                    raise RenderError(f"{qmd}:1: {key} file {f} not found ({path})")
                resolved.append(str(path))
            meta[key] = resolved if isinstance(front[key], list) else resolved[0]
    if "bibliography" in meta:
        meta.setdefault("link-citations", True)
    meta.setdefault("lang", "en")
    return meta


def assemble_markdown(front: dict[str, Any], chunks: list[Chunk], nb, cell_of: dict[int, int],
                      qmd: Path, media: Media) -> str:
    """The whole executed document as pandoc markdown (front matter first)."""
    source = str(qmd)
    defaults = front.get("execute", {}) or {}
    doc = ["---", yaml.safe_dump(document_metadata(front, qmd), sort_keys=False,
                                 allow_unicode=True).rstrip(), "---", ""]
    for k, ch in enumerate(chunks):
        if ch.kind == "markdown":
            text = ch.text
            if k in cell_of:
                text = fill_inline(text, _inline_values(nb.cells[cell_of[k]], source, ch.line))
            doc.append(text)
        else:
            doc.append(cell_markdown(ch, nb.cells[cell_of[k]], defaults, media, source))
        doc.append("")
    if front.get("bibliography") and not REFS_DIV_RE.search("\n".join(c.text for c in chunks)):
        # where the .qmd has no ::: {#refs} div, the list goes at the end, as Quarto places it
        doc += ["## References {.unnumbered}", "", "::: {#refs}", ":::", ""]
    return "\n".join(doc)


# --- pandoc and Typst ----------------------------------------------------------------------------

def pandoc_executable() -> tuple[str, tuple[int, ...]]:
    """Path and version of pandoc: the one of ``pypandoc-binary``, else ``pandoc`` on PATH.

    Raises
    ------
    RenderError
        No pandoc, or one older than :data:`MIN_PANDOC` (Lua ``Figure`` elements).
    """
    exe = None
    try:
        import pypandoc

        exe = pypandoc.get_pandoc_path()
    except (ImportError, OSError):
        exe = shutil.which("pandoc")
    if not exe:
        raise RenderError("pandoc not found: install pypandoc-binary (pip) or pandoc >= 3.1")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.match(r"pandoc(?:\.exe)? (\d+)\.(\d+)", out)
    version = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    if version < MIN_PANDOC:
        raise RenderError(f"{exe} is pandoc {version}; the renderer needs >= "
                          f"{'.'.join(map(str, MIN_PANDOC))}")
    return exe, version


def _source_line(qmd: Path, needle: str) -> int:
    """First line of the .qmd containing ``needle`` (1 when absent)."""
    for i, line in enumerate(qmd.read_text(encoding="utf-8").splitlines(), 1):
        if needle in line:
            return i
    return 1


def run_pandoc(pandoc: str, markdown: Path, output: Path, to: str, qmd: Path,
               extra: list[str]) -> None:
    """Convert the assembled markdown with the project's filters and ``--citeproc``.

    Parameters
    ----------
    pandoc : str
        The executable.
    markdown : Path
        The assembled document (its folder is the working directory: image paths are
        relative to it).
    output : Path
        The file to write.
    to : str
        Pandoc writer (``html5``, ``typst``).
    qmd : Path
        The source, for error messages.
    extra : list of str
        Writer-specific options.

    Raises
    ------
    RenderError
        Pandoc failed, or reported an unresolved cross-reference, citation or resource (the
        message names the .qmd line of the first occurrence).
    """
    cmd = [pandoc, markdown.name, "--from", "markdown", "--to", to, "--output", str(output),
           "--standalone"]
    for lua in FILTERS:
        cmd += ["--lua-filter", str(lua)]
    cmd += ["--citeproc", *extra]
    proc = subprocess.run(cmd, cwd=markdown.parent, capture_output=True, text=True)
    stderr = proc.stderr.strip()
    if proc.returncode != 0:
        raise RenderError(f"{qmd}: pandoc ({to}) failed with exit status {proc.returncode}: "
                          f"{stderr}")
    problems = []
    for line in stderr.splitlines():
        if m := UNRESOLVED_XREF_RE.search(line):
            key = m.group(1)
            problems.append(f"{qmd}:{_source_line(qmd, '@' + key)}: unresolved cross-reference "
                            f"@{key}")
        elif m := UNRESOLVED_CITE_RE.search(line):
            key = m.group(1)
            problems.append(f"{qmd}:{_source_line(qmd, '@' + key)}: citation @{key} is not in "
                            "the bibliography")
        elif "[WARNING]" in line or line.startswith("crossref:"):
            problems.append(f"{qmd}: pandoc ({to}): {line.strip()}")
    if problems:
        raise RenderError("; ".join(dict.fromkeys(problems)))


def compile_typst(typ: Path, pdf: Path, root: Path, source: str = "") -> None:
    """Compile a Typst file to PDF with the ``typst`` package (embedded fonts only).

    Parameters
    ----------
    typ : Path
        The Typst file.
    pdf : Path
        The PDF to write.
    root : Path
        Root of the Typst project (files it may read: the images).
    source : str
        The document the Typst file was made from, for error messages.

    Raises
    ------
    RenderError
        The Typst compiler reported an error (its message and location).
    """
    try:
        import typst
    except ImportError as exc:
        raise RenderError("the typst package is not installed (pip install typst)") from exc
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    stamp = (_dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc) if epoch
             else _dt.datetime.now(_dt.timezone.utc)).replace(microsecond=0)
    try:
        typst.compile(str(typ), output=str(pdf), root=str(root), ignore_system_fonts=True,
                      timestamp=stamp)
    except typst.TypstError as exc:
        message = getattr(exc, "message", None) or str(exc)
        detail = (getattr(exc, "diagnostic", "") or "").strip()
        where = f"{source} (via {typ.name})" if source else str(typ)
        raise RenderError(f"{where}: Typst could not compile the PDF: {message}"
                          + (f"\n{detail}" if detail else "")) from exc


def render_pandoc(qmd: Path = QMD, out_dir: Path = OUT_DIR, cwd: Path | None = None,
                  timeout: int = 900, pdf: bool = True,
                  build_dir: Path | None = None) -> dict[str, Path]:
    """Render ``qmd`` to ``out_dir/index.html`` and ``out_dir/index.pdf`` without Quarto.

    Parameters
    ----------
    qmd : path-like
        The manuscript source.
    out_dir : path-like
        Output folder (created); each file is written atomically.
    cwd : path-like, optional
        Working directory of the kernel (default: the repository root, as Quarto's
        ``execute-dir: project``).
    timeout : int
        Seconds allowed per cell.
    pdf : bool
        Also write the PDF (through Typst).
    build_dir : path-like, optional
        Keep the intermediate files (``index.md``, ``index.typ``, ``media/``) in this folder
        (default: a temporary folder, removed afterwards).

    Returns
    -------
    dict
        ``{"html": path, "pdf": path}`` of the written files.

    Raises
    ------
    RenderError
        A cell failed, a cross-reference or citation does not resolve, or pandoc or Typst
        failed.
    """
    qmd = Path(qmd).resolve()
    out_dir = Path(out_dir)
    pandoc, version = pandoc_executable()
    front, chunks = parse_qmd(qmd.read_text(encoding="utf-8"), source=str(qmd))
    nb, cell_of = build_notebook(chunks)
    t0 = time.perf_counter()
    LGR.info("executing %d cells of %s", len(nb.cells), qmd.name)
    version_text = ".".join(map(str, version))
    execute_notebook(nb, Path(cwd or paths.REPO_ROOT), timeout=timeout,
                     env={"PAINEMP_RENDERER": "pandoc", "PAINEMP_PANDOC_VERSION": version_text,
                          # figures drawn in a cell are shown inline, as with Quarto, even
                          # where MPLBACKEND=Agg is set for the rest of the process (CI)
                          "MPLBACKEND": "module://matplotlib_inline.backend_inline"})
    check_cells(nb, chunks, cell_of, str(qmd))
    LGR.info("cells executed in %.1f s", time.perf_counter() - t0)
    number = front.get("number-sections", True)
    written: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="painemp-render-") as tmp:
        build = Path(build_dir or tmp).resolve()
        build.mkdir(parents=True, exist_ok=True)
        media = Media(build / "media")
        markdown = build / "index.md"
        markdown.write_text(assemble_markdown(front, chunks, nb, cell_of, qmd, media),
                            encoding="utf-8")
        # Quarto's documents start their sections at "##" (the title is the only "#")
        common = ["--shift-heading-level-by=-1", *(["--number-sections"] if number else [])]
        out_dir.mkdir(parents=True, exist_ok=True)
        LGR.info("pandoc %s: HTML", version_text)
        with atomic_path(out_dir / "index.html") as tmp_html:
            run_pandoc(pandoc, markdown, tmp_html.resolve(), "html5", qmd,
                       [*common, "--toc", "--toc-depth=2", "--embed-resources",
                        "--template", str(HTML_TEMPLATE), "--css", str(HTML_CSS),
                        "--resource-path", str(build)])
        written["html"] = out_dir / "index.html"
        written["html"].chmod(0o644)  # a web page: readable by the server, not only its author
        if pdf:
            LGR.info("pandoc %s: Typst; typst: PDF", version_text)
            typ = build / "index.typ"
            typst_opts = [*common, "--include-in-header", str(TYPST_HEADER), "-V", "papersize=a4",
                          "-V", "page-numbering=1"]
            if number:
                typst_opts += ["-V", "section-numbering=1.1"]
            run_pandoc(pandoc, markdown, typ, "typst", qmd, typst_opts)
            with atomic_path(out_dir / "index.pdf") as tmp_pdf:
                compile_typst(typ, tmp_pdf, build, source=str(qmd))
            written["pdf"] = out_dir / "index.pdf"
    for kind, path in written.items():
        LGR.info("wrote %s (%.1f kB, %s)", path, path.stat().st_size / 1e3, kind)
    LGR.info("rendered in %.1f s", time.perf_counter() - t0)
    return written


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _join(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


# --- choosing the renderer -----------------------------------------------------------------------

def quarto_available() -> str | None:
    """Path of the ``quarto`` executable, if on PATH."""
    return shutil.which("quarto")


def render_quarto(quarto: str, out_dir: Path | None = None) -> Path:
    """``quarto render`` of the manuscript project (HTML + Typst PDF) with the venv's Python,
    into the project's output folder or ``out_dir`` (``--output-dir``).
    """
    env = dict(os.environ, QUARTO_PYTHON=sys.executable, PAINEMP_RENDERER="quarto")
    LGR.info("rendering with %s (QUARTO_PYTHON=%s)", quarto, sys.executable)
    cmd = [quarto, "render"] + ([] if out_dir is None else ["--output-dir", str(out_dir)])
    subprocess.run(cmd, cwd=paths.REPO_ROOT, env=env, check=True)
    return OUT_DIR if out_dir is None else Path(out_dir)


def check_results_current(config: dict | None = None, allow_missing: bool = False) -> None:
    """Refuse to render results that are stale or half-committed.

    :func:`analysis.pipeline.check_results` (the staleness test of ``run`` itself) against the
    current ``data/``, configuration and code; the manuscript is then made only of results
    that ``run`` would reuse as they are.

    Raises
    ------
    RenderError
        One line naming the stale stage and the command that fixes it.
    """
    from analysis.errors import StaleResults
    from analysis.pipeline import check_results

    try:
        check_results(config=config, allow_missing=allow_missing)
    except StaleResults as exc:
        raise RenderError(f"{exc} (then render again)") from None


def render(engine: str = "auto", allow_missing: bool = False,
           config: dict | None = None, out_dir: Path | None = None) -> tuple[str, Path]:
    """Render with Quarto if available (``engine='auto'``), else with pandoc and Typst.

    Parameters
    ----------
    engine : {"auto", "quarto", "pandoc"}
        ``auto``: Quarto when on PATH, else :func:`render_pandoc`.
    allow_missing : bool
        Render missing results as visible placeholders (development only).
    config : dict, optional
        The configuration the results were computed with (default: ``config.yaml``), against
        which :func:`check_results_current` checks them before anything is rendered.
    out_dir : path-like, optional
        Output folder (default: ``_manuscript/`` in the repository).

    Returns
    -------
    (engine used, output folder)
    """
    quarto = quarto_available()
    if engine == "quarto" and not quarto:
        raise RenderError("quarto is not on PATH (install it from quarto.org or use --engine "
                          "pandoc)")
    check_results_current(config, allow_missing=allow_missing)
    if allow_missing:
        os.environ["PAINEMP_ALLOW_MISSING"] = "1"
    if engine in ("auto", "quarto") and quarto:
        return "quarto", render_quarto(quarto, out_dir)
    out = OUT_DIR if out_dir is None else Path(out_dir)
    render_pandoc(out_dir=out)
    return "pandoc", out
