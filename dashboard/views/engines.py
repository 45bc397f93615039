"""Engines: the plan manifest as a precision map, fallbacks, scale sources, bytes; a diff of two recipes or plans."""
from __future__ import annotations

import streamlit as st

from dashboard import charts, frames
from dashboard.session import client, load

st.title("Engines")
api = client()
engines = load("engines", api.engines)
if not engines:
    st.info("No engines yet: a build job writes one.")
    st.stop()
recipes = {r["id"]: r for r in load("recipes", api.recipes)}
accelerators = {a["id"]: a["name"] for a in load("accelerators", api.accelerators)}
by_id = {e["id"]: e for e in engines}


def label(engine_id: int) -> str:
    return frames.engine_label(by_id[engine_id], recipes, accelerators) + f" · {by_id[engine_id]['content_hash'][:12]}"


linked = st.query_params.get("engine")
chosen = st.selectbox("Engine", list(by_id), format_func=label, key="engine-select",
                      index=list(by_id).index(int(linked)) if linked and linked.isdigit() and int(linked) in by_id else 0)
st.query_params["engine"] = str(chosen)
engine = load("the engine", lambda: api.engine(chosen))
manifest = engine["manifest"]
sizes = manifest.get("bytes") or {}
c1, c2, c3, c4 = st.columns(4)
c1.metric("Accelerator", manifest.get("accelerator", "?"))
c2.metric("Linear weights", f"{sizes.get('linear_ops', 0) / 2**20:.2f} MiB")
c3.metric("KV cache per token", f"{sizes.get('kv_cache_per_token', 0):,} B")
c4.metric("Fallbacks", len(manifest.get("fallbacks") or []))
calibration = manifest.get("calibration")
st.caption(f"Recipe **{manifest['recipe']['name']}** ({manifest['recipe']['content_hash'][:19]}…) · model "
           f"{manifest['model']['architecture']} · calibration: "
           f"{calibration['label'] if calibration else 'none (dynamic or weight-only scales)'} · casts per forward: "
           f"{(manifest.get('casts_per_forward') or {}).get('total', '?')}")

map_tab, fallback_tab, scales_tab, bytes_tab, diff_tab = st.tabs(
    ["Precision map", "Fallbacks", "Scale sources", "Bytes", "Diff"])
with map_tab:
    precision = frames.precision_map(manifest)
    kinds = sorted(precision["kind"].unique())
    shown_kinds = st.multiselect("Op kinds", kinds, default=[k for k in kinds if k in ("linear", "lm_head", "kv_cache")]
                                 or kinds, key="engine-op-kinds")
    view = precision[precision["kind"].isin(shown_kinds)]
    left, right = st.columns([2, 3])
    left.altair_chart(charts.precision_heatmap(frames.precision_long(view)), key="engine-precision-map")
    right.dataframe(view, hide_index=True, key="engine-precision-table", height=min(38 * (len(view) + 1), 900))
with fallback_tab:
    fallbacks = frames.fallbacks_frame(manifest)
    if fallbacks.empty:
        st.success(f"No fallbacks: every op runs the recipe's formats on {manifest.get('accelerator')}.")
    else:
        st.dataframe(fallbacks, hide_index=True, key="engine-fallbacks")
with scales_tab:
    st.dataframe(frames.scale_sources_frame(manifest), hide_index=True, key="engine-scales")
with bytes_tab:
    classes = frames.bytes_frame(manifest)
    st.altair_chart(charts.bytes_chart(classes), width="stretch", key="engine-bytes")
    st.dataframe(classes, hide_index=True, key="engine-bytes-table")
with diff_tab:
    kind = st.radio("Compare", ["plans", "recipes"], horizontal=True, key="diff-kind")
    ids = list(by_id)
    left_col, right_col = st.columns(2)
    left_id = left_col.selectbox("Left", ids, index=ids.index(chosen), format_func=label, key="diff-left")
    right_id = right_col.selectbox("Right", ids, index=min(1, len(ids) - 1) if ids[0] == chosen else 0,
                                   format_func=label, key="diff-right")
    a = load("the left engine", lambda: api.engine(left_id))
    b = load("the right engine", lambda: api.engine(right_id))
    if kind == "plans":
        diff = frames.plan_diff(a["manifest"], b["manifest"])
        st.caption(f"{len(diff)} ops differ in effective precision or kernel.")
    else:
        ra, rb = recipes.get(a["recipe_id"]), recipes.get(b["recipe_id"])
        if ra and rb and ra["name"] == rb["name"] and ra["version"] != rb["version"]:
            diff = frames.changes_frame(load("the recipe diff", lambda: api.recipe_diff(
                ra["name"], ra["version"], rb["version"]))["changes"])
        else:
            diff = frames.spec_diff(a["manifest"]["recipe"]["document"], b["manifest"]["recipe"]["document"])
        st.caption(f"{len(diff)} recipe fields differ.")
    st.dataframe(diff, hide_index=True, key="diff-table")
