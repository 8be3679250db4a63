"""Open a report in a real headless Chromium and measure what a reader sees: where the key result sits on
the first screen, whether every image decoded, what the console reported; and screenshot that screen.

Chromium is driven over its DevTools protocol (https://chromedevtools.github.io/devtools-protocol/) with
`websocket-client`: the system `chromium` (Debian package) is started with `--remote-debugging-port=0`,
writes the port it picked to `DevToolsActivePort` in its profile directory, and one page target is
driven by JSON commands. Console errors are the union of `console.error` calls, uncaught exceptions and
the browser's own log entries at level "error" (a failed image or resource load lands there).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from pmopt.io import PmoptError

VIEWPORT = (1280, 900)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
START_TIMEOUT_S = 30.0
LOAD_TIMEOUT_S = 60.0

# Run in the page after its load event: the key result's box, the headline figure's box and every image's
# decoded size (naturalWidth is 0 for an image that failed to load or decode).
MEASURE_JS = """(() => {
  const box = (el) => { if (!el) return null; const r = el.getBoundingClientRect();
                        return {top: r.top + window.scrollY, bottom: r.bottom + window.scrollY}; };
  return JSON.stringify({
    key_result: box(document.getElementById("key-result")),
    headline: box(document.querySelector("#key-result figure.headline img")),
    images: Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, naturalWidth: i.naturalWidth})),
    title: document.title,
  });
})()"""


def find_chromium() -> str | None:
    """The Chromium executable: $PMOPT_CHROMIUM, else the first of CHROMIUM_NAMES on PATH."""
    explicit = os.environ.get("PMOPT_CHROMIUM")
    if explicit:
        return explicit
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


@dataclass
class PageCheck:
    """What the browser measured on one page at the given viewport (CSS pixels from the page's top)."""

    viewport: tuple[int, int]
    key_result: dict | None  # {"top", "bottom"} of #key-result, or None when the page has none
    headline: dict | None  # {"top", "bottom"} of the headline figure's image
    images: list[dict]  # {"alt", "complete", "naturalWidth"} per <img>
    console_errors: list[str] = field(default_factory=list)
    page_bytes: int = 0

    @property
    def broken_images(self) -> list[str]:
        return [i["alt"] for i in self.images if not i["complete"] or i["naturalWidth"] <= 0]


def end_process_group(pgid: int, timeout_s: float = 5.0) -> None:
    """SIGKILL every process left in group `pgid` and wait until none is left (or `timeout_s` passes)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return  # the group is empty
        time.sleep(0.05)


def remove_tree(path: Path, attempts: int = 20) -> None:
    """`shutil.rmtree`, retried while a process that is exiting still writes into the tree."""
    for attempt in range(attempts):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.1)


class Chromium:
    """A headless Chromium with one page, driven over the DevTools protocol; use as a context manager."""

    def __init__(self, executable: str | None = None, viewport: tuple[int, int] = VIEWPORT):
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise PmoptError(f"no Chromium found (looked for {', '.join(CHROMIUM_NAMES)} on PATH and $PMOPT_CHROMIUM)")
        self.viewport = viewport
        self._ids = itertools.count(1)
        self.events: list[dict] = []

    def __enter__(self) -> Chromium:
        self._profile = Path(tempfile.mkdtemp(prefix="pmopt-chromium-"))
        # its own session: Chromium's helper processes share its process group, so one signal ends them all
        self._process = subprocess.Popen(self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
        try:
            self._connect()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if getattr(self, "_ws", None) is not None:
            self._ws.close()
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        # helpers (crashpad, utility processes) can outlive the browser and still be writing the profile, which
        # then cannot be removed ('Directory not empty'): end them, then remove it
        end_process_group(self._process.pid)
        remove_tree(self._profile)

    def _command(self) -> list[str]:
        width, height = self.viewport
        command = [self.executable, "--headless=new", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                   "--disable-extensions", "--remote-debugging-port=0", "--remote-allow-origins=*",
                   f"--user-data-dir={self._profile}", f"--window-size={width},{height}", "about:blank"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.insert(1, "--no-sandbox")  # Chromium refuses to run its sandbox as root (containers, CI)
        return command

    def _connect(self) -> None:
        import websocket  # websocket-client, a dev dependency

        port_file = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise PmoptError(f"{self.executable}: Chromium did not start (exit code {self._process.poll()})")
            time.sleep(0.05)
        port = int(port_file.read_text().splitlines()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            targets = json.loads(response.read())
        page = next(t for t in targets if t.get("type") == "page")
        self._ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=LOAD_TIMEOUT_S,
                                               suppress_origin=True)

    def send(self, method: str, **params) -> dict:
        """One DevTools command; events that arrive before its answer are kept in `events`."""
        call_id = next(self._ids)
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise PmoptError(f"Chromium: {method} failed: {message['error'].get('message')}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = LOAD_TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout
        seen = len(self.events)
        while time.monotonic() < deadline:
            for message in self.events[seen:]:
                if message.get("method") == event:
                    return message
            seen = len(self.events)
            self.events.append(json.loads(self._ws.recv()))
        raise PmoptError(f"Chromium: no {event} within {timeout:.0f} s")

    def open(self, url: str) -> None:
        """Navigate at the viewport's size and wait for the load event (every embedded image decoded)."""
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        width, height = self.viewport
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        self.events.clear()
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise PmoptError(f"Chromium: script failed: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def console_errors(self) -> list[str]:
        errors = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                errors.append(params.get("exceptionDetails", {}).get("text", "exception"))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                errors.append(params["entry"].get("text", ""))
        return errors

    def screenshot(self, path: str | Path) -> Path:
        """The first screen (the viewport at the top of the page) as a PNG."""
        self.evaluate("window.scrollTo(0, 0)")
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


def check_page(html_path: str | Path, screenshot: str | Path | None = None,
               viewport: tuple[int, int] = VIEWPORT) -> PageCheck:
    """Open `html_path` in headless Chromium and measure it (optionally screenshot the first screen)."""
    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        raise PmoptError(f"{html_path}: no such page")
    with Chromium(viewport=viewport) as browser:
        browser.open(html_path.as_uri())
        measured = json.loads(browser.evaluate(MEASURE_JS))
        time.sleep(0.2)  # let late log entries (a failed load reported after the load event) arrive
        browser.send("Runtime.evaluate", expression="0")
        if screenshot is not None:
            browser.screenshot(screenshot)
        errors = browser.console_errors()
    return PageCheck(viewport=viewport, key_result=measured["key_result"], headline=measured["headline"],
                     images=measured["images"], console_errors=errors, page_bytes=html_path.stat().st_size)


__all__ = ["Chromium", "PageCheck", "check_page", "find_chromium"]
