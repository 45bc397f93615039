"""Headless Chromium over the DevTools protocol: open a dashboard page, wait for its text, take a screenshot.

Also a script that screenshots every page of a running dashboard into docs/ (optionally with a query per page):
    python -m tests.dashboard.browser http://127.0.0.1:8501 docs/ "drift?deployment=2" "engines?engine=2"
"""
from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from websockets.sync.client import connect

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--hide-scrollbars", "--force-device-scale-factor=1"]
# Page -> text that shows the page has rendered its data (not just its skeleton). Rollouts, the default, is at "/".
PAGES = {"rollouts": "Active engine", "drift": "Analysis outcomes", "engines": "Precision map",
         "evaluations": "Calibration coverage against traffic", "compatibility": "Tensor role", "audit": "events match"}


def chromium_path() -> str | None:
    return CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")


class Browser:
    """One headless Chromium with its own profile, driven through one page target."""

    def __init__(self, width: int = 1440, height: int = 1000):
        path = chromium_path()
        if path is None:
            raise FileNotFoundError("chromium is not installed (apt-get install -y chromium)")
        self.profile = Path(tempfile.mkdtemp(prefix="pops-chromium-"))
        self.process = subprocess.Popen([path, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        target = next(t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
                      if t["type"] == "page")
        self._connection = connect(target["webSocketDebuggerUrl"], max_size=64 * 2**20, open_timeout=30)
        self.ws = self._connection.__enter__()
        self._ids = itertools.count(1)
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params) -> dict:
        """Sends one DevTools command and returns its result (events in between are skipped)."""
        message_id = next(self._ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def text(self) -> str:
        result = self.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                           returnByValue=True)
        return result["result"].get("value") or ""

    def busy(self) -> bool:
        """Streamlit shows its status widget while a script runs."""
        result = self.call("Runtime.evaluate", returnByValue=True,
                           expression="!!document.querySelector('[data-testid=\"stStatusWidget\"]')")
        return bool(result["result"].get("value"))

    def open(self, url: str, expect: str, timeout: float = 90.0) -> str:
        """Navigates and waits until the page shows `expect` and has finished running; returns its text."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if expect in text and not self.busy():
                time.sleep(1.5)  # charts render after the script's last message
                return self.text()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not show {expect!r} within {timeout:.0f} s; it shows:\n{text[:2000]}")
            time.sleep(0.3)

    def screenshot(self, path: Path) -> Path:
        """The viewport as a PNG (streamlit scrolls inside its own container: a taller viewport shows more)."""
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self._connection.__exit__(None, None, None)
        finally:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(base_url: str, out: str, *queries: str) -> None:
    """Screenshots every page of a running dashboard as <out>/dashboard-<page>.png; `page?query` args add a query."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    extra = dict(q.split("?", 1) for q in queries)
    with Browser(height=1800) as browser:
        for page, expect in PAGES.items():
            query = f"?{extra[page]}" if page in extra else ""
            path = "" if page == "rollouts" else page
            browser.open(f"{base_url.rstrip('/')}/{path}{query}", expect)
            print(browser.screenshot(folder / f"dashboard-{page}.png"))


if __name__ == "__main__":
    main(*sys.argv[1:])
