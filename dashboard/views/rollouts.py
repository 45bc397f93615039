"""Rollouts: each endpoint's deployments with stage, traffic, engine, recipe, gate verdicts and pending approvals."""
from __future__ import annotations

from collections import defaultdict

import streamlit as st

from dashboard import frames
from dashboard.client import PopsClient
from dashboard.session import action, client, flash, load

DEFAULT_CANARY_SHARE = 0.05


def action_form(api: PopsClient, deployment: dict) -> None:
    """Approve/promote, traffic, pause, resume or roll back one deployment: a reason and a confirmation each."""
    did, stage = deployment["id"], deployment["stage"]
    # The version this session last showed: a change made since then is refused by the server (409),
    # never applied on top of a view the user did not see.
    seen_key = f"seen-version-{did}"
    seen = st.session_state.get(seen_key, deployment["version"])
    st.session_state[seen_key] = deployment["version"]
    options = frames.ACTIONS_BY_STAGE[stage]
    with st.form(key=f"form-{did}", border=False):
        chosen = st.radio("Action", options, format_func=frames.ACTION_LABELS.get, key=f"action-{did}",
                          horizontal=True)
        share = None
        if stage in ("shadow", "canary"):
            current = deployment["traffic_share"] if stage == "canary" else DEFAULT_CANARY_SHARE
            share = st.number_input("Canary traffic share (promote to canary, change traffic)", min_value=0.01,
                                    max_value=0.99, value=float(current), step=0.01, format="%.2f",
                                    key=f"traffic-{did}")
        reason = st.text_area("Reason (recorded with your name in the audit log)", key=f"reason-{did}",
                              max_chars=2000)
        confirmed = st.checkbox(f"I confirm this change to deployment #{did} of {deployment['endpoint']!r}",
                                key=f"confirm-{did}")
        submitted = st.form_submit_button("Apply", key=f"apply-{did}", type="primary")
    if not submitted:
        return
    if not reason.strip():
        st.error("reason: say why; the reason is recorded in the audit log")
        return
    if not confirmed:
        st.error("confirm: tick the confirmation box to apply the change")
        return
    label = frames.ACTION_LABELS[chosen]
    with action(f"{label}: deployment #{did} done"):
        version = seen
        if chosen == "promote":
            api.promote(did, expected_version=version, reason=reason,
                        traffic_share=share if stage == "shadow" else None)
        elif chosen == "traffic":
            api.set_traffic(did, expected_version=version, reason=reason, traffic_share=share)
        elif chosen == "pause":
            api.pause(did, expected_version=version, reason=reason)
        elif chosen == "resume":
            api.resume(did, expected_version=version, reason=reason)
        else:
            api.rollback(did, expected_version=version, reason=reason)


st.title("Rollouts")
st.caption("Every endpoint's deployments. Promotions and rollbacks need the approver role; the server checks it "
           "and refuses a change made from a stale view.")
flash()
api = client()
deployments = load("deployments", api.deployments)
if not deployments:
    st.info("No deployments yet: an engine that passed its gates enters shadow with `POST /v1/deployments`.")
    st.stop()
engines = {e["id"]: e for e in load("engines", api.engines)}
recipes = {r["id"]: r for r in load("recipes", api.recipes)}
accelerators = {a["id"]: a["name"] for a in load("accelerators", api.accelerators)}
corpus_names = {c["id"]: c["name"] for c in load("corpora", api.corpora)}
evaluations: dict[int, list[dict]] = defaultdict(list)
for evaluation in load("evaluations", api.evaluations):
    evaluations[evaluation["engine_id"]].append(evaluation)

endpoints = sorted({d["endpoint"] for d in deployments})
left, right = st.columns([2, 1])
chosen = left.selectbox("Endpoint", ["all endpoints", *endpoints], key="rollouts-endpoint")
show_closed = right.toggle("Show rolled back and retired", key="rollouts-show-closed")

for endpoint in endpoints if chosen == "all endpoints" else [chosen]:
    mine = [d for d in deployments if d["endpoint"] == endpoint]
    shown = [d for d in mine if show_closed or d["stage"] in frames.OPEN_STAGES]
    st.subheader(endpoint, divider="gray")
    active = next((d for d in mine if d["stage"] == "active"), None)
    rollout = next((d for d in mine if d["stage"] in ("shadow", "canary", "paused")), None)
    c1, c2, c3 = st.columns(3)
    c1.metric("Active engine", frames.engine_label(engines.get(active["engine_id"]), recipes) if active else "none")
    c2.metric("Rollout", f"#{rollout['id']} {rollout['stage']}" if rollout else "none")
    c3.metric("Canary traffic", f"{rollout['traffic_share']:.0%}" if rollout and rollout["stage"] == "canary" else "0%")
    st.dataframe(
        frames.deployments_frame(shown, engines=engines, recipes=recipes, accelerators=accelerators,
                                 evaluations=evaluations, corpus_names=corpus_names),
        hide_index=True, key=f"deployments-{endpoint}",
        column_config={"traffic": st.column_config.NumberColumn(format="percent"),
                       "gates": st.column_config.TextColumn(width="large"),
                       "updated": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss")})
    for deployment in [d for d in shown if frames.ACTIONS_BY_STAGE[d["stage"]]]:
        waiting = frames.pending_approval(deployment)
        title = f"Deployment #{deployment['id']} · {deployment['stage']}" + (f" · awaiting: {waiting}" if waiting else "")
        with st.expander(title, expanded=bool(waiting)):
            action_form(api, deployment)
            approvals = load("approvals", lambda: api.approvals(deployment["id"]))
            if approvals:
                st.caption("Approvals so far")
                st.dataframe(frames.approvals_frame(approvals), hide_index=True, key=f"approvals-{deployment['id']}")
