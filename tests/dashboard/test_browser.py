"""The dashboard in a real browser: streamlit serving app.py, headless Chromium reading it, a screenshot taken."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys

import httpx
import pytest

from tests.dashboard.browser import Browser, chromium_path
from tests.dashboard.support import REPO, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(chromium_path() is None,
                                                   reason="chromium is not installed (apt-get install -y chromium)")]


@pytest.fixture
def dashboard(live_api, tmp_path):
    """`streamlit run dashboard/app.py` against the live API, signed in with a viewer key."""
    port = free_port()
    env = {**os.environ, "POPS_DASHBOARD_API_URL": live_api.url, "POPS_DASHBOARD_API_KEY": live_api.keys["viewer"],
           "PYTHONPATH": str(REPO)}
    log = open(tmp_path / "streamlit.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.headless",
                                "true", "--server.address", "127.0.0.1", "--server.port", str(port),
                                "--browser.gatherUsageStats", "false"], cwd=REPO, env=env, stdout=log,
                               stderr=subprocess.STDOUT)

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).text == "ok"
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout=60, what="streamlit to serve the dashboard")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_rollouts_page_renders_in_chromium_with_a_screenshot(dashboard, live_api, tmp_path):
    with Browser() as browser:
        text = browser.open(f"{dashboard}/", expect="awaiting: promote to canary")
        shot = browser.screenshot(tmp_path / "dashboard-rollouts.png")
        drift = browser.open(f"{dashboard}/drift?deployment={live_api.ids['deployment:support-drifted']}",
                             expect="Analysis outcomes")
    assert "Signed in as viewer-user" in text and "Page not found" not in text
    for endpoint in ("chat", "code", "support"):
        assert endpoint in text.splitlines()  # each endpoint's subheader
    assert "promote to active (serving 20% now)" in text
    assert "rolled_back" in drift and "Open alerts" in drift
    width, height = _png_size(shot)
    assert (width, height) == (1440, 1000) and shot.stat().st_size > 30_000
    docs = os.environ.get("POPS_DOCS_SCREENSHOTS")  # a folder: keep the screenshot (docs/dashboard-rollouts.png)
    if docs:
        shutil.copyfile(shot, os.path.join(docs, shot.name))
