"""Evaluations: metrics by slice and length bucket, gates passed or failed; calibration coverage against traffic."""
from __future__ import annotations

import streamlit as st

from dashboard import charts, frames
from dashboard.session import client, load

st.title("Evaluations")
api = client()
evaluations = load("evaluations", api.evaluations)
corpora = {c["id"]: c for c in load("corpora", api.corpora)}
if not evaluations:
    st.info("No evaluations yet: an evaluate job writes one.")
else:
    by_id = {e["id"]: e for e in evaluations}
    chosen = st.selectbox(
        "Evaluation", list(by_id), key="evaluation-select",
        format_func=lambda i: f"#{i} engine {by_id[i]['engine_id']} on "
                              f"{corpora.get(by_id[i]['corpus_id'], {}).get('name', by_id[i]['corpus_id'])} · "
                              f"{by_id[i]['verdict']}")
    evaluation = by_id[chosen]
    metrics = evaluation["metrics"]
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Verdict", evaluation["verdict"].upper())
    c2.metric("KL mean", f"{metrics.get('kl_mean', float('nan')):.4f}")
    c3.metric("top-1 agreement", f"{metrics.get('top1_agreement', float('nan')):.3f}")
    c4.metric("Perplexity change", f"{metrics.get('ppl_delta_pct', float('nan')):+.2f}%")
    st.subheader("Gates")
    gates = frames.gates_frame(evaluation["gates"])
    if gates.empty:
        st.caption("No gates were set: the evaluation passes by default.")
    else:
        st.dataframe(gates, hide_index=True, key="evaluation-gates")
    metric = st.selectbox("Metric", ["kl_mean", "kl_p95", "top1_agreement", "ppl_delta_pct"], key="evaluation-metric")
    left, right = st.columns(2)
    slices = frames.metrics_frame(evaluation["by_slice"], "slice")
    buckets = frames.metrics_frame(evaluation["by_bucket"], "bucket")
    with left:
        st.markdown("**By slice**")
        st.altair_chart(charts.slice_chart(slices, "slice", metric), width="stretch", key="evaluation-slices-chart")
        st.dataframe(slices, hide_index=True, key="evaluation-slices")
    with right:
        st.markdown("**By length bucket (tokens)**")
        st.altair_chart(charts.slice_chart(buckets, "bucket", metric), width="stretch",
                        key="evaluation-buckets-chart")
        st.dataframe(buckets, hide_index=True, key="evaluation-buckets")

st.subheader("Calibration coverage against traffic")
if len(corpora) < 2:
    st.info("Register a calibration corpus and a traffic sample to compare their coverage.")
    st.stop()
ids = list(corpora)
calibration_ids = sorted({c["corpus_id"] for c in load("calibrations", api.calibrations)})
name = lambda i: f"#{i} {corpora[i]['name']} ({corpora[i]['sample_count']} texts)"  # noqa: E731
default_cal = ids.index(calibration_ids[0]) if calibration_ids and calibration_ids[0] in corpora else 0
traffic_guess = next((i for i in ids if "traffic" in corpora[i]["name"]), ids[-1])
left, right = st.columns(2)
calibration_id = left.selectbox("Calibration corpus", ids, index=default_cal, format_func=name,
                                key="coverage-calibration")
traffic_id = right.selectbox("Traffic", ids, index=ids.index(traffic_guess), format_func=name, key="coverage-traffic")
cal, traffic = corpora[calibration_id]["coverage"], corpora[traffic_id]["coverage"]
coverage = frames.coverage_frame(cal, traffic)
left, right = st.columns(2)
left.altair_chart(charts.coverage_chart(coverage, "length (tokens)"), width="stretch", key="coverage-lengths")
right.altair_chart(charts.coverage_chart(coverage, "script"), width="stretch", key="coverage-scripts")
gaps = frames.coverage_gaps(cal, traffic)
if gaps:
    st.warning("Traffic the calibration never saw:\n\n" + "\n".join(f"- {g}" for g in gaps))
else:
    st.success("Calibration covers every length bucket and script that traffic holds.")
