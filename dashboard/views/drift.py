"""Drift: a deployment's canary windows over time against its policy, with alerts and rollbacks marked."""
from __future__ import annotations

import streamlit as st

from dashboard import charts, frames
from dashboard.client import ApiError
from dashboard.session import client, load

TOP_LAYERS = 6

st.title("Drift")
st.caption("Shadow canaries re-run served requests in reference precision. Each point is one window's aggregate; "
           "dashed red lines are the deployment's drift-policy thresholds, solid red rules the alerts, dashed black "
           "rules the rollbacks.")
api = client()
deployments = load("deployments", api.deployments)
if not deployments:
    st.info("No deployments yet.")
    st.stop()
by_id = {d["id"]: d for d in deployments}
# Open on `?deployment=<id>` when linked, else where drift is: the newest deployment with an open alert.
linked = st.query_params.get("deployment")
alerted = [a["deployment_id"] for a in load("alerts", lambda: api.alerts(status="open")) if a["deployment_id"] in by_id]
first = int(linked) if linked and linked.isdigit() and int(linked) in by_id else (alerted[0] if alerted else None)
chosen = st.selectbox("Deployment", list(by_id), key="drift-deployment",
                      index=list(by_id).index(first) if first is not None else 0,
                      format_func=lambda i: f"#{i} {by_id[i]['endpoint']} · {by_id[i]['stage']} · engine "
                                            f"{by_id[i]['engine_id']}")
st.query_params["deployment"] = str(chosen)
deployment = by_id[chosen]
policy = load("the drift policy", lambda: api.drift_policy(chosen))
windows = load("canary windows", lambda: api.canary_windows(chosen))
alerts = load("alerts", lambda: api.alerts(deployment_id=chosen))
approvals = load("approvals", lambda: api.approvals(chosen))
try:
    analyses, profile = api.drift_analyses(chosen), api.traffic_profile(chosen)
except ApiError as exc:
    analyses = profile = None  # a control plane without drift analysis still shows windows, alerts and rollbacks
    analyses_error = exc.message
marks = frames.event_marks(alerts, approvals)

c1, c2, c3, c4 = st.columns(4)
c1.metric("Stage", deployment["stage"])
c2.metric("Canary windows", len(windows))
c3.metric("Samples", sum(w["sample_count"] for w in windows))
c4.metric("Open alerts", sum(1 for a in alerts if a["status"] == "open"))

with st.expander("Drift policy", expanded=False):
    st.dataframe(frames.policy_frame(policy), hide_index=True, key="drift-policy")

if not windows:
    st.info(f"Deployment #{chosen} has no canary samples yet: serving posts them as it shadows requests.")
else:
    series = frames.windows_frame(windows)
    left, right = st.columns(2)
    left.altair_chart(charts.metric_chart(series, y="kl_mean", title="KL(reference ‖ engine), window mean",
                                          threshold=policy["kl_mean_max"], rule="≤", marks=marks),
                      width="stretch", key="drift-kl")
    right.altair_chart(charts.metric_chart(series, y="top1_agreement", title="top-1 agreement, window mean",
                                           threshold=policy["top1_agreement_min"], rule="≥", marks=marks),
                       width="stretch", key="drift-top1")
    saturation = frames.layer_frame(windows, "saturation_max")
    amax = frames.layer_frame(windows, "amax_ratio_max")
    layers = sorted(set(saturation["layer"]) | set(amax["layer"]))
    default = list(dict.fromkeys(frames.top_layers(amax, TOP_LAYERS // 2) + frames.top_layers(saturation, TOP_LAYERS // 2)))
    picked = st.multiselect("Layers", layers, default=default, key="drift-layers",
                            help="Defaults to the layers with the largest peaks.")
    left, right = st.columns(2)
    left.altair_chart(charts.layer_chart(saturation[saturation["layer"].isin(picked)],
                                         title="saturation (share clipped), window max", marks=marks,
                                         threshold=policy["saturation_max"]),
                      width="stretch", key="drift-saturation")
    right.altair_chart(charts.layer_chart(amax[amax["layer"].isin(picked)], title="amax ratio (observed / calibrated)",
                                          marks=marks, threshold=policy["amax_ratio_max"]),
                       width="stretch", key="drift-amax")
    with st.expander("Window table"):
        st.dataframe(series, hide_index=True, key="drift-windows")

st.subheader("Alerts")
if alerts:
    st.dataframe(frames.alerts_frame(alerts), hide_index=True, key="drift-alerts")
else:
    st.caption("No alerts on this deployment.")
rollbacks = [a for a in approvals if a["to_stage"] == "rolled_back"]
if rollbacks:
    st.subheader("Rollbacks")
    st.dataframe(frames.approvals_frame(rollbacks), hide_index=True, key="drift-rollbacks")

st.subheader("Analysis outcomes")
if analyses is None:
    st.caption(f"Drift analyses are not available from this control plane ({analyses_error}).")
elif analyses:
    st.dataframe(frames.analyses_frame(analyses), hide_index=True, key="drift-analyses",
                 column_config={"at": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss")})
else:
    st.caption("No analysis has run on this deployment yet.")

if profile is not None:
    st.subheader(f"Traffic of {profile['endpoint']!r} against the calibration")
    shares = frames.profile_coverage(profile)
    if shares is None:
        st.caption("The engine has no calibrated (static) scales, or the endpoint has no canary traffic yet.")
    else:
        st.caption(f"Recent traffic ({profile['samples']} canary samples, counts halving every "
                   f"{profile['half_life']}) beside calibration corpus {profile['calibration']['corpus']!r}.")
        coverage = frames.coverage_frame(*shares)
        left, right = st.columns(2)
        left.altair_chart(charts.coverage_chart(coverage, "length (tokens)"), width="stretch",
                          key="drift-coverage-lengths")
        right.altair_chart(charts.coverage_chart(coverage, "script"), width="stretch", key="drift-coverage-scripts")
        if profile["gaps"]:
            st.warning("Traffic the calibration never saw:\n\n" + "\n".join(f"- {g['message']}" for g in profile["gaps"]))
