"""Open a rendered page in headless Chromium and report what a reader would see.

Used by the browser test of the manuscript (``make validate``): the page
``_manuscript/index.html`` is loaded from disk in a fresh headless Chromium, every console
error, uncaught exception and failed load is collected, and a screenshot of one element (the
interactive viewer) is taken.

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe`` (messages
are JSON texts separated by NUL bytes on file descriptors 3 and 4 of the browser), so no
network port, websocket client or browser-automation package is needed.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LGR = logging.getLogger(__name__)

#: Executable names tried in order (``$CHROMIUM`` first when set).
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Flags of a reproducible headless run that talks to nothing but the page.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--no-default-browser-check",
                  "--hide-scrollbars", "--mute-audio")


class BrowserError(RuntimeError):
    """Chromium could not be started or did not answer as expected."""


def find_chromium() -> str | None:
    """Path of a Chromium (or Chrome) executable: ``$CHROMIUM``, else the first on PATH."""
    env = os.environ.get("CHROMIUM")
    if env:
        return shutil.which(env) or (env if Path(env).exists() else None)
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    return None


@dataclass
class PageReport:
    """What happened while a page was open.

    Attributes
    ----------
    errors : list of str
        Console errors, uncaught exceptions and failed loads, in order.
    title : str
        The document title.
    screenshot : bytes or None
        PNG of the element asked for (``None`` when it does not exist).
    element_size : tuple of float
        Width and height (CSS pixels) of that element.
    element_top : float or None
        Distance (CSS pixels) of the element's top from the top of the page: below the window
        height, the element is not on the first screen.
    """

    errors: list[str] = field(default_factory=list)
    title: str = ""
    screenshot: bytes | None = None
    element_size: tuple[float, float] = (0.0, 0.0)
    element_top: float | None = None


class _Pipe:
    """DevTools protocol over the browser's pipe: send commands, collect events."""

    def __init__(self, write_fd: int, read_fd: int, timeout: float):
        self.write_fd, self.read_fd, self.timeout = write_fd, read_fd, timeout
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("Chromium did not answer in time")
            ready, _, _ = select.select([self.read_fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise BrowserError("Chromium closed its DevTools pipe")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None):
        """Send a command and wait for its result (events meanwhile are kept)."""
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.write_fd, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, seconds: float) -> bool:
        """Wait until an event ``method`` arrives (or was already kept); False on timeout."""
        if any(e.get("method") == method for e in self.events):
            return True
        deadline = time.monotonic() + seconds
        try:
            while True:
                event = self._read_message(deadline)
                self.events.append(event)
                if event.get("method") == method:
                    return True
        except BrowserError:
            return False

    def drain(self, seconds: float) -> None:
        """Keep the events that arrive within ``seconds``."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events.append(self._read_message(deadline))
        except BrowserError:
            return


def _errors(events: list[dict[str, Any]]) -> list[str]:
    out = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            text = d.get("exception", {}).get("description") or d.get("text", "")
            out.append(f"uncaught exception: {text.splitlines()[0] if text else d}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", "")))
                            for a in params.get("args", []))
            out.append(f"console.{params['type']}: {args}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            out.append(f"{entry.get('source', 'log')}: {entry.get('text', '')} "
                       f"{entry.get('url', '')}".strip())
    return out


def check_page(html: str | os.PathLike, selector: str = "iframe", settle: float = 3.0,
               timeout: float = 60.0, chromium: str | None = None,
               window: tuple[int, int] = (1280, 1600)) -> PageReport:
    """Load ``html`` in a fresh headless Chromium; collect errors; screenshot ``selector``.

    Parameters
    ----------
    html : path-like
        The page (opened as a ``file://`` URL).
    selector : str
        CSS selector of the element to photograph (the first match).
    settle : float
        Seconds to wait after the load event for scripts to draw (the viewer's canvas).
    timeout : float
        Seconds allowed for the browser to start and for each command.
    chromium : str, optional
        The executable (default: :func:`find_chromium`).
    window : tuple of int
        Window width and height in pixels.

    Returns
    -------
    PageReport

    Raises
    ------
    BrowserError
        No Chromium, or it failed to start or to load the page.
    """
    exe = chromium or find_chromium()
    if not exe:
        raise BrowserError("no Chromium found (apt-get install chromium, or set $CHROMIUM)")
    url = Path(html).resolve().as_uri()
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def child_fds():  # the browser reads commands on fd 3 and writes answers on fd 4
        import fcntl

        a = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
        b = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        os.dup2(a, 3)
        os.dup2(b, 4)

    with tempfile.TemporaryDirectory(prefix="painemp-chromium-") as profile:
        cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe",
               f"--window-size={window[0]},{window[1]}", "about:blank"]
        LGR.info("starting %s for %s", Path(exe).name, url)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, preexec_fn=child_fds, pass_fds=(3, 4))
        os.close(to_browser_r)
        os.close(from_browser_w)
        pipe = _Pipe(to_browser_w, from_browser_r, timeout)
        try:
            return _inspect(pipe, url, selector, settle, window)
        except BrowserError as exc:
            proc.kill()
            stderr = proc.communicate(timeout=10)[1].decode(errors="replace")[-2000:]
            raise BrowserError(f"{exc}; Chromium said: {stderr}") from exc
        finally:
            try:
                pipe.send("Browser.close")
            except (BrowserError, OSError):
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr:
                proc.stderr.close()
            os.close(to_browser_w)
            os.close(from_browser_r)


def _inspect(pipe: _Pipe, url: str, selector: str, settle: float,
             window: tuple[int, int]) -> PageReport:
    targets = pipe.send("Target.getTargets")["targetInfos"]
    page = next((t for t in targets if t.get("type") == "page"), None)
    if page is None:
        page = {"targetId": pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]}
    session = pipe.send("Target.attachToTarget", {"targetId": page["targetId"],
                                                  "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log"):
        pipe.send(f"{domain}.enable", session=session)
    pipe.send("Emulation.setDeviceMetricsOverride", {"width": window[0], "height": window[1],
                                                     "deviceScaleFactor": 1, "mobile": False},
              session=session)
    pipe.events.clear()
    nav = pipe.send("Page.navigate", {"url": url}, session=session)
    if nav.get("errorText"):
        raise BrowserError(f"{url}: {nav['errorText']}")
    if not pipe.wait_for("Page.loadEventFired", pipe.timeout):
        raise BrowserError(f"{url}: no load event")
    pipe.drain(settle)
    report = PageReport()
    title = pipe.send("Runtime.evaluate", {"expression": "document.title",
                                           "returnByValue": True}, session=session)
    report.title = str(title.get("result", {}).get("value", ""))
    expr = (f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect();"
            " return [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height]; })()")
    rect = pipe.send("Runtime.evaluate", {"expression": expr, "returnByValue": True},
                     session=session).get("result", {}).get("value")
    if rect and rect[2] > 0 and rect[3] > 0:
        pipe.drain(1.0)  # let a scrolled-in canvas repaint
        shot = pipe.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": rect[0], "y": rect[1], "width": rect[2], "height": rect[3],
                     "scale": 1}}, session=session)
        report.screenshot = base64.b64decode(shot["data"])
        report.element_size = (float(rect[2]), float(rect[3]))
        report.element_top = float(rect[1])
    report.errors = _errors(pipe.events)
    return report


def image_variation(png: bytes) -> tuple[float, float]:
    """Standard deviation of the grey levels (0-255) of a PNG and its share of non-white
    pixels: a blank or single-colour image has both near zero.
    """
    import io

    import numpy as np
    from PIL import Image

    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    return float(grey.std()), float((grey < 250).mean())
