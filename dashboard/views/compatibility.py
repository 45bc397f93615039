"""Compatibility matrix: accelerators x formats, native / emulated / unsupported, per tensor role."""
from __future__ import annotations

import streamlit as st

from dashboard import charts, frames
from dashboard.session import client, load

st.title("Compatibility matrix")
st.caption("Native: a kernel runs the format. Emulated: dequantized to a wide format before the matmul. "
           "Unsupported: a plan falls back, and records why.")
api = client()
entries = load("the compatibility matrix", api.compatibility)
if not entries:
    st.info("No accelerator profiles: run `pops db upgrade` (it syncs them from the runtime).")
    st.stop()
roles = list(dict.fromkeys(e["op_kind"] for e in entries))
role = st.radio("Tensor role", roles, horizontal=True, key="compat-role")
pivot = frames.compat_pivot(entries, role)
st.altair_chart(charts.support_heatmap(pivot), width="stretch", key="compat-heatmap")
st.dataframe(pivot, key="compat-pivot")
support = st.selectbox("Details for", ["all", *frames.SUPPORT_ORDER], key="compat-support")
st.dataframe(frames.compat_details(entries, op_kind=role, support=None if support == "all" else support),
             hide_index=True, key="compat-details")
