"""Every dashboard page, driven with streamlit's AppTest against the live, seeded control plane."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow  # the session's seeded control plane takes 30-60 s to build on 2 cores

PAGES = ["views/rollouts.py", "views/drift.py", "views/engines.py", "views/evaluations.py", "views/compatibility.py",
         "views/audit.py"]


def _texts(at) -> str:
    """Everything a page wrote as text: titles, markdown, captions, metrics, alerts and table cells."""
    parts = [e.value for kind in ("title", "header", "subheader", "markdown", "caption", "success", "info",
                                  "warning", "error") for e in getattr(at, kind)]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    parts += [df.value.to_csv() for df in at.dataframe]
    return "\n".join(str(p) for p in parts)


def _charts(at) -> list:
    return at.get("vega_lite_chart")


def _thresholds(spec: dict) -> list[float]:
    """The constant y values (policy thresholds) a layered Vega-Lite chart draws."""
    found = []
    for layer in spec.get("layer", []):
        found += _thresholds(layer)
        datum = layer.get("encoding", {}).get("y", {}).get("datum")
        if datum is not None and layer.get("mark", {}).get("type") == "rule":
            found.append(datum)
    return found


def _table(at, *columns: str, where: tuple[str, object] | None = None):
    """The one table on the page with these columns (and, with `where`, that value in every row of a column)."""
    found = [df.value for df in at.dataframe if set(columns) <= set(df.value.columns)
             and (where is None or (len(df.value) and set(df.value[where[0]]) == {where[1]}))]
    assert len(found) == 1, f"{len(found)} tables with columns {columns} where {where}"
    return found[0]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_without_exceptions(app_test, page):
    at = app_test("viewer").run()
    assert "Signed in as **viewer-user** (viewer" in _texts(at)  # the sidebar, written by app.py
    at.switch_page(page).run()  # AppTest runs the page script itself
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_rollouts_lists_each_endpoint_with_stage_traffic_engine_recipe_and_gates(app_test, live_api):
    at = app_test("viewer").run()
    chat = _table(at, "stage", "awaiting approval", where=("endpoint", "chat"))
    code = _table(at, "stage", "awaiting approval", where=("endpoint", "code"))
    assert list(chat["stage"]) == ["canary", "active"]  # newest first
    canary = chat.iloc[0]
    assert canary["traffic"] == pytest.approx(0.2)
    assert canary["recipe"] == "fp8_static v1"
    assert canary["engine"].startswith(f"#{live_api.ids['engine:fp8_static@cpu']} ")
    assert f"#{live_api.ids['evaluation:fp8_static@cpu']} eval-en: passed (2/2 gates)" in canary["gates"]
    assert canary["awaiting approval"] == "promote to active (serving 20% now)"
    assert canary["last known-good"] == f"#{live_api.ids['engine:int8@cpu']}"
    assert code.iloc[0]["stage"] == "shadow" and code.iloc[0]["awaiting approval"] == "promote to canary"
    # Each open deployment offers only the actions its stage allows.
    assert at.radio(key=f"action-{live_api.ids['deployment:code-shadow']}").options == [
        "Approve and promote", "Pause", "Roll back"]
    assert at.radio(key=f"action-{live_api.ids['deployment:chat-active']}").options == ["Roll back"]


def test_an_action_needs_a_reason_and_a_confirmation(app_test, live_api):
    did = live_api.ids["deployment:code-shadow"]
    at = app_test("approver").run()
    at.radio(key=f"action-{did}").set_value("pause")
    at.button(key=f"apply-{did}").click().run()
    assert [e.value for e in at.error] == ["reason: say why; the reason is recorded in the audit log"]
    at.text_area(key=f"reason-{did}").input("hold for the weekend")
    at.button(key=f"apply-{did}").click().run()
    assert [e.value for e in at.error] == ["confirm: tick the confirmation box to apply the change"]
    assert live_api.client("viewer").get(f"/deployments/{did}").json()["stage"] == "shadow"


def test_the_server_refuses_a_viewer_and_the_page_says_why(app_test, live_api):
    did = live_api.ids["deployment:code-shadow"]
    at = app_test("viewer").run()
    at.text_area(key=f"reason-{did}").input("ship it")
    at.checkbox(key=f"confirm-{did}").check()
    at.button(key=f"apply-{did}").click().run()
    assert len(at.error) == 1
    assert at.error[0].value.startswith("Refused: 403 authorization: this action needs the 'approver' role")
    assert live_api.client("viewer").get(f"/deployments/{did}").json()["stage"] == "shadow"


def test_pause_resume_and_promote_go_through_the_api_and_are_audited(app_test, live_api):
    did = live_api.ids["deployment:code-shadow"]
    viewer = live_api.client("viewer")
    at = app_test("approver").run()
    for step, reason, expected in (("pause", "hold: load test tonight", "paused"),
                                   ("resume", "load test done", "shadow"),
                                   ("promote", "shadow agrees with bf16", "canary")):
        at.radio(key=f"action-{did}").set_value(step)
        if step == "promote":
            at.number_input(key=f"traffic-{did}").set_value(0.1)
        at.text_area(key=f"reason-{did}").input(reason)
        at.checkbox(key=f"confirm-{did}").check()
        at.button(key=f"apply-{did}").click().run()
        assert not at.error, [e.value for e in at.error]
        assert at.success[0].value.endswith(f"deployment #{did} done")
        assert viewer.get(f"/deployments/{did}").json()["stage"] == expected
    assert viewer.get(f"/deployments/{did}").json()["traffic_share"] == pytest.approx(0.1)
    events = viewer.get("/audit-events", params={"object_type": "deployment", "object_id": str(did)}).json()["data"]
    assert [(e["action"], e["actor"], e["reason"]) for e in events[:3]] == [
        ("deployment.promote", "approver-user", "shadow agrees with bf16"),
        ("deployment.resume", "approver-user", "load test done"),
        ("deployment.pause", "approver-user", "hold: load test tonight")]
    # Leave `code` as the seed made it for the other tests: roll the canary back and start a new shadow.
    version = viewer.get(f"/deployments/{did}").json()["version"]
    assert live_api.client("approver").post(f"/deployments/{did}/rollback", json={
        "expected_version": version, "reason": "test cleanup"}).status_code == 200
    live_api.ids["deployment:code-shadow"] = live_api.client("admin").post("/deployments", json={
        "endpoint": "code", "engine_id": live_api.ids["engine:fp8@cpu"], "reason": "again"}).json()["id"]


def test_a_stale_view_is_refused_with_the_servers_reason(app_test, live_api):
    did = live_api.ids["deployment:code-shadow"]
    at = app_test("approver").run()  # the page read version 1 ...
    version = live_api.client("viewer").get(f"/deployments/{did}").json()["version"]
    assert live_api.client("approver").post(f"/deployments/{did}/pause", json={
        "expected_version": version, "reason": "someone else paused it"}).status_code == 200  # ... then it moved on
    at.radio(key=f"action-{did}").set_value("pause")
    at.text_area(key=f"reason-{did}").input("pause")
    at.checkbox(key=f"confirm-{did}").check()
    at.button(key=f"apply-{did}").click().run()
    assert "Refused: 409 expected_version: deployment" in at.error[0].value
    assert live_api.client("approver").post(f"/deployments/{did}/resume", json={
        "expected_version": version + 1, "reason": "test cleanup"}).status_code == 200


def test_drift_plots_windows_against_policy_thresholds(app_test, live_api):
    did = live_api.ids["deployment:chat-canary"]
    at = app_test("viewer").run()
    at.switch_page("views/drift.py").run()
    at.selectbox(key="drift-deployment").set_value(did).run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Canary windows"] == "3" and metrics["Samples"] == "60"
    specs = [json.loads(c.proto.spec) for c in _charts(at)]
    assert len(specs) == 6  # KL, top-1, saturation, amax ratio; then traffic against calibration coverage (2)
    drawn = [_thresholds(spec) for spec in specs[:4]]
    assert drawn == [[0.05], [0.9], [0.001], [2.0]]  # the default policy's thresholds, one per chart
    assert "Recent traffic (60 canary samples" in _texts(at) and not at.warning  # short English: covered
    assert at.multiselect(key="drift-layers").value == ["model.layers.1.self_attn.o_proj",
                                                        "model.layers.0.mlp.down_proj"]
    windows = _table(at, "kl_mean", "top1_min")
    assert list(windows["samples"]) == [20, 20, 20]
    assert windows["kl_mean"].is_monotonic_increasing  # the seed raised KL window by window


def test_drift_marks_the_alert_and_the_automatic_rollback_with_the_analyses(app_test, live_api):
    did = live_api.ids["deployment:support-drifted"]
    at = app_test("viewer").run()
    at.switch_page("views/drift.py").run()
    at.selectbox(key="drift-deployment").set_value(did).run()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Stage"] == "rolled_back" and metrics["Open alerts"] == "1"
    for spec in (json.loads(c.proto.spec) for c in _charts(at)[:4]):  # each drift chart marks alert and rollback
        events = [layer["mark"]["color"] for layer in spec["layer"]
                  if layer.get("encoding", {}).get("detail", {}).get("field") == "event"]
        assert events == ["#de2d26", "#252525"]
    alerts = _table(at, "metric", "severity", "status")
    assert list(alerts["status"]) == ["open"] and "rolled back" in alerts["message"][0]
    rollbacks = _table(at, "approver", "action", "to")
    assert list(rollbacks["action"]) == ["auto_rollback"] and list(rollbacks["approver"]) == ["drift-analysis"]
    analyses = _table(at, "outcome", "action", "over limit")
    assert analyses["action"][0] == "rolled_back" and analyses["outcome"][0] == "failed"
    assert analyses["alert"][0] == alerts["id"][0]
    assert "amax_ratio model.layers." in analyses["over limit"][0]


def test_engines_page_shows_precision_map_fallbacks_and_plan_diff(app_test, live_api):
    ids = live_api.ids
    at = app_test("viewer").run()
    at.switch_page("views/engines.py").run()
    at.selectbox(key="engine-select").set_value(ids["engine:fp8@a100"]).run()
    table = _table(at, "op", "weights", "activations", "kv_cache")
    q_proj = table[table["op"] == "model.layers.0.self_attn.q_proj"].iloc[0]
    assert (q_proj["weights"], q_proj["activations"]) == ("fp8_e4m3", "bf16")  # the A100 has no fp8 tensor cores
    fallbacks = _table(at, "op", "requested", "effective", "reason")
    q_fallbacks = fallbacks[fallbacks["op"] == "model.layers.0.self_attn.q_proj"]
    assert list(q_fallbacks["effective"])[0] == "bf16"
    assert list(q_fallbacks["reason"])[0] == "sm_80 has no fp8 tensor cores: fp8 activations are unsupported"
    at.selectbox(key="engine-select").set_value(ids["engine:fp8_static@cpu"]).run()
    scales = _table(at, "op", "scales")
    assert scales["scales"].str.contains("calibrated on").any()
    at.selectbox(key="diff-left").set_value(ids["engine:fp8@cpu"])
    at.selectbox(key="diff-right").set_value(ids["engine:fp8@a100"]).run()
    diff = _table(at, "op", "changed")
    q_proj = diff[diff["op"] == "model.layers.0.self_attn.q_proj"].iloc[0]
    assert q_proj["changed"] == "activations, kernel"
    assert (q_proj["left activations"], q_proj["right activations"]) == ("fp8_e4m3", "bf16")
    assert "model.layers.0.self_attn.kv_cache" not in set(diff["op"])  # bf16 on both: not a difference
    at.radio(key="diff-kind").set_value("recipes")
    at.selectbox(key="diff-right").set_value(ids["engine:int8@cpu"]).run()
    changes = _table(at, "path", "change")
    assert "default.weights.format" in set(changes["path"])


def test_compatibility_matrix_pivots_accelerators_by_format(app_test):
    at = app_test("viewer").run()
    at.switch_page("views/compatibility.py").run()
    at.radio(key="compat-role").set_value("weight").run()
    pivot = _table(at, "fp8_e4m3", "int8")
    assert {"cpu", "h100", "a100"} <= set(pivot.index)
    assert pivot.loc["h100", "fp8_e4m3"] == "native" and pivot.loc["a100", "fp8_e4m3"] != "native"
    at.selectbox(key="compat-support").set_value("unsupported").run()
    assert set(_table(at, "accelerator", "support", "reason")["support"]) <= {"unsupported"}


def test_evaluations_show_gates_slices_buckets_and_coverage_gaps(app_test, live_api):
    at = app_test("viewer").run()
    at.switch_page("views/evaluations.py").run()
    at.selectbox(key="evaluation-select").set_value(live_api.ids["evaluation:fp8_static@cpu"]).run()
    gates = _table(at, "result", "metric", "scope")
    assert list(gates["metric"]) == ["kl_mean", "top1_agreement"] and set(gates["result"]) == {"pass"}
    assert _table(at, "slice", "kl_mean")["samples"].sum() == 8  # the first 8 samples of eval-en, by slice
    assert at.selectbox(key="coverage-calibration").value == live_api.ids["calib-en-short"]
    assert at.selectbox(key="coverage-traffic").value == live_api.ids["traffic-multiscript"]
    warning = at.warning[0].value
    assert "no calibration sample longer than" in warning and "script CJK" in warning


def test_audit_log_filters_on_the_server(app_test, live_api):
    at = app_test("viewer").run()
    at.switch_page("views/audit.py").run()
    everything = _table(at, "actor", "action", "object")
    assert len(everything) > 10
    at.text_input(key="audit-action").input("deployment.promote")
    at.text_input(key="audit-actor").input("approver-user").run()
    filtered = _table(at, "actor", "action", "object")
    assert len(filtered) >= 3 and set(filtered["action"]) == {"deployment.promote"}
    assert set(filtered["actor"]) == {"approver-user"}
    at.selectbox(key="audit-object-type").set_value("recipe")
    at.text_input(key="audit-action").input("")
    at.text_input(key="audit-actor").input("").run()
    assert set(_table(at, "actor", "action", "object")["action"]) == {"recipe.create"}
