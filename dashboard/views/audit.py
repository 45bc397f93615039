"""Audit log: who did what to which object, when and why; filtered on the server."""
from __future__ import annotations

from datetime import datetime, time, timezone

import streamlit as st

from dashboard import frames
from dashboard.session import client, load

OBJECT_TYPES = ["any", "deployment", "drift_policy", "alert", "engine", "recipe", "corpus", "model", "job",
                "api_key", "accelerator"]

st.title("Audit log")
api = client()
c1, c2, c3, c4 = st.columns(4)
actor = c1.text_input("Actor", key="audit-actor", placeholder="e.g. demo-approver")
action = c2.text_input("Action", key="audit-action", placeholder="e.g. deployment.rollback")
object_type = c3.selectbox("Object type", OBJECT_TYPES, key="audit-object-type")
object_id = c4.text_input("Object id", key="audit-object-id")
c1, c2, c3 = st.columns(3)
since = c1.date_input("Since", value=None, key="audit-since")
until = c2.date_input("Until (inclusive)", value=None, key="audit-until")
limit = c3.number_input("Rows", min_value=10, max_value=500, value=200, step=10, key="audit-limit")


def day_start(day) -> str | None:
    return None if day is None else datetime.combine(day, time.min, tzinfo=timezone.utc).isoformat()


def day_end(day) -> str | None:
    return None if day is None else datetime.combine(day, time.max, tzinfo=timezone.utc).isoformat()


events, total = load("audit events", lambda: api.audit_events(
    actor=actor.strip() or None, action=action.strip() or None,
    object_type=None if object_type == "any" else object_type, object_id=object_id.strip() or None,
    since=day_start(since), until=day_end(until), limit=int(limit)))
st.caption(f"{total} events match; showing the newest {len(events)}.")
st.dataframe(frames.audit_frame(events), hide_index=True, key="audit-table",
             column_config={"at": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
                            "before": st.column_config.TextColumn(width="medium"),
                            "after": st.column_config.TextColumn(width="medium")})
