"""The full-story demo on the embedded default: every step happens, through the API, and is on record."""
from __future__ import annotations

import struct

import httpx
import pytest
from rich.console import Console

from controlplane import demo

pytestmark = pytest.mark.slow

# Smaller than the command's defaults (fewer samples and requests), the same story.
LEAN = dict(calibration_samples=16, eval_samples=12, eval_seq_len=128, shadow_requests=16, canary_requests=20,
            min_samples=12, drift_requests=40)


def _png_size(path) -> tuple[int, int]:
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    """One embedded run of the demo; the control plane stays up for the checks."""
    config = demo.DemoConfig(home=tmp_path_factory.mktemp("demo"), **LEAN)
    with demo.embedded(config) as target:
        summary = demo.run_demo(config, target, Console(stderr=True, force_terminal=False))
        api = httpx.Client(base_url=f"{target.api_url}/v1", headers={"Authorization": f"Bearer {target.admin_key}"},
                           timeout=60)
        yield summary, api, target


def test_candidates_are_evaluated_and_the_best_passing_one_is_chosen(story):
    summary, _, _ = story
    verdicts = {c["recipe"]: c["verdict"] for c in summary["candidates"]}
    assert verdicts["bf16"] == "passed" and verdicts["int4_w4a16_g128"] == "failed"
    passing = [c for c in summary["candidates"] if c["verdict"] == "passed" and c["recipe"] != "bf16"]
    assert passing, verdicts
    chosen = summary["chosen"]
    assert chosen in passing
    assert all((chosen["linear_bytes"], chosen["kl_mean"]) <= (c["linear_bytes"], c["kl_mean"]) for c in passing)


def test_the_rollout_went_through_shadow_and_canary_approved_by_the_demo_approver(story):
    summary, api, _ = story
    rollout = summary["rollout_deployment"]
    approvals = api.get(f"/deployments/{rollout}/approvals").json()["data"][::-1]  # oldest first
    assert [(a["from_stage"], a["to_stage"], a["approver"]) for a in approvals] == [
        ("shadow", "canary", "demo-approver"), ("canary", "active", "demo-approver"),
        ("active", "rolled_back", "drift-analysis")]
    assert approvals[-1]["action"] == "auto_rollback"
    samples = api.get(f"/deployments/{rollout}/canary-samples", params={"limit": 500}).json()
    assert samples["count"] >= 2 * LEAN["min_samples"]  # serving shadowed the traffic and shipped samples
    slices = {s["slice"] for s in samples["data"]}
    assert any(s.endswith("-long") for s in slices) and slices - {s for s in slices if s.endswith("-long")}


def test_drift_raised_an_alert_and_rolled_back_to_the_last_known_good_engine(story):
    summary, api, target = story
    rollout, alert = summary["rollout_deployment"], summary["alert"]
    assert alert["evidence"]["action"] == "rolled_back" and alert["status"] == "open"
    assert api.get(f"/deployments/{rollout}").json()["stage"] == "rolled_back"
    baseline = next(c for c in summary["candidates"] if c["recipe"] == "bf16")
    active = api.get("/deployments", params={"endpoint": summary["endpoint"], "stage": "active"}).json()["data"]
    assert [d["engine_id"] for d in active] == [baseline["engine_id"]]
    analyses = api.get(f"/deployments/{rollout}/analyses").json()["data"]
    assert analyses[0]["action"] == "rolled_back" and analyses[0]["outcome"] == "failed"
    events = api.get("/audit-events", params={"action": "deployment.auto_rollback"}).json()["data"]
    assert [(e["actor"], e["object_id"]) for e in events] == [("drift-analysis", str(rollout))]
    health = httpx.get(f"{target.serve_url}/healthz", timeout=30).json()  # serving followed the rollback
    assert health["engines"]["active"]["deployment_id"] == active[0]["id"]


def test_the_report_has_plots_html_and_says_where_to_look(story):
    summary, _, _ = story
    files = summary["files"]
    assert _png_size(files["drift_png"])[0] > 600 and _png_size(files["candidates_png"])[0] > 400
    page = open(files["html"], encoding="utf-8").read()
    assert f"Alert #{summary['alert']['id']}" in page and "data:image/png;base64," in page
    assert any("streamlit run dashboard/app.py" in line for line in summary["look"])
    assert any("pops api" in line for line in summary["look"])
