"""`pops serve`: options checked before anything loads, and a standalone server answering over real HTTP."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from runtime.cli import EXIT_BAD_INPUT, app

REPO = Path(__file__).resolve().parents[3]
runner = CliRunner()


def test_control_plane_needs_a_key():
    r = runner.invoke(app, ["serve", "--control-plane", "http://127.0.0.1:9"], env={"POPS_SERVE_API_KEY": ""})
    assert r.exit_code == EXIT_BAD_INPUT and "api_key is required" in r.output


def test_engine_folders_are_checked(tmp_path):
    r = runner.invoke(app, ["serve", "--engine", str(tmp_path)])
    assert r.exit_code == EXIT_BAD_INPUT
    assert "engine_paths" in r.output and "manifest.json missing" in r.output


def test_standalone_canary_needs_its_engine(engine_dirs):
    r = runner.invoke(app, ["serve", "-e", str(engine_dirs["fp8"]), "--canary-share", "0.2"])
    assert r.exit_code == EXIT_BAD_INPUT and "canary_path" in r.output


@pytest.mark.slow  # a fresh interpreter imports torch and transformers: ~10 s on 2 busy cores
def test_standalone_server_with_a_shadow_engine(engine_dirs, tmp_path, unreachable_url, wait_until):
    port = int(unreachable_url.rsplit(":", 1)[1])
    samples = tmp_path / "samples.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "serve", "--endpoint", "tiny", "-e", str(engine_dirs["fp8"]),
         "--shadow", str(engine_dirs["fp8_narrow"]), "--sample-share", "0", "--samples-out", str(samples),
         "--port", str(port)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        def healthy():
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout=60, what="pops serve to answer /healthz")
        r = httpx.post(f"{base}/v1/completions", json={"model": "tiny", "prompt": "The quick", "max_tokens": 4},
                       headers={"X-Request-ID": "cli-1"}, timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
        wait_until(lambda: samples.exists() and samples.read_text().strip(), timeout=30, what="the shadow sample")
        record = json.loads(samples.read_text().splitlines()[0])
        assert record["request_id"] == "cli-1" and record["role"] == "shadow" and record["kl_mean"] > 0
        assert max(record["saturation"].values()) > 0  # the narrow engine clips
        assert "pops_shadow_samples_taken_total" in httpx.get(f"{base}/metrics", timeout=5).text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
