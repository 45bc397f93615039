"""Altair charts for the pages: drift series with their thresholds and events, precision and support maps."""
from __future__ import annotations

import altair as alt
import pandas as pd

FORMAT_COLORS = {
    "fp32": "#08306b", "bf16": "#2171b5", "fp16": "#6baed6",
    "fp8_e4m3": "#fd8d3c", "fp8_e5m2": "#fdae6b", "int8": "#e6550d", "int4": "#a63603",
    "mxfp8": "#74c476", "mxfp4": "#238b45",
}
SUPPORT_COLORS = {"native": "#31a354", "emulated": "#fdae6b", "unsupported": "#de2d26"}
EVENT_STYLES = {"alert": ("#de2d26", []), "rollback": ("#252525", [4, 3])}  # color, dash
CHART_HEIGHT = 220


def _scale(mapping: dict[str, str], present: list[str]) -> alt.Scale:
    domain = [k for k in mapping if k in present] + [k for k in present if k not in mapping]
    return alt.Scale(domain=domain, range=[mapping.get(k, "#969696") for k in domain])


def _threshold(value: float, label: str) -> alt.LayerChart:
    # The value sits in the spec itself (a datum), not in a dataset: the rule is the policy, drawn as data.
    one = pd.DataFrame({"_": [0]})
    rule = alt.Chart(one).mark_rule(color="#de2d26", strokeDash=[6, 4]).encode(y=alt.datum(value))
    text = alt.Chart(one).mark_text(align="left", dx=4, dy=-6, color="#de2d26").encode(
        y=alt.datum(value), text=alt.value(label), x=alt.value(0))
    return rule + text


def _events(marks: pd.DataFrame) -> list[alt.Chart]:
    """Alerts (red) and rollbacks (black, dashed) as vertical rules; fixed colors leave `color` to the series."""
    rules = []
    for event, (color, dash) in EVENT_STYLES.items():
        part = marks[marks["event"] == event]
        if not part.empty:
            rules.append(alt.Chart(part).mark_rule(strokeWidth=2, color=color, strokeDash=dash).encode(
                x="time:T", detail="event:N", tooltip=["time:T", "event:N", "label:N"]))
    return rules


def metric_chart(frame: pd.DataFrame, *, y: str, title: str, threshold: float | None, rule: str,
                 marks: pd.DataFrame) -> alt.LayerChart:
    """One window metric over time, its policy threshold drawn, alerts and rollbacks marked."""
    base = alt.Chart(frame).mark_line(point=True).encode(
        x=alt.X("time:T", title="window start"), y=alt.Y(f"{y}:Q", title=None, axis=alt.Axis(format=".3~g")),
        tooltip=["time:T", alt.Tooltip(f"{y}:Q", format=".4g"), "samples:Q"])
    layers: list[alt.Chart] = [base]
    if threshold is not None:
        layers.append(_threshold(threshold, f"{rule} {threshold:g}"))
    layers += _events(marks)
    return alt.layer(*layers).properties(title=title, height=CHART_HEIGHT)


def layer_chart(frame: pd.DataFrame, *, title: str, threshold: float | None, marks: pd.DataFrame) -> alt.LayerChart:
    """A per-layer window maximum over time (one line per layer), threshold and events as in `metric_chart`."""
    base = alt.Chart(frame).mark_line(point=True).encode(
        x=alt.X("time:T", title="window start"), y=alt.Y("value:Q", title=None, axis=alt.Axis(format=".3~g")),
        color=alt.Color("layer:N", title=None, legend=alt.Legend(orient="bottom", columns=2, labelLimit=320)),
        tooltip=["time:T", "layer:N", alt.Tooltip("value:Q", format=".4g")])
    layers: list[alt.Chart] = [base]
    if threshold is not None:
        layers.append(_threshold(threshold, f"≤ {threshold:g}"))
    layers += _events(marks)
    return alt.layer(*layers).properties(title=title, height=CHART_HEIGHT + 60)


def precision_heatmap(long: pd.DataFrame) -> alt.Chart:
    """Ops (rows, in plan order) x tensor (weights / activations / KV cache), colored by effective format."""
    order = list(dict.fromkeys(long["op"]))
    return alt.Chart(long).mark_rect(stroke="white").encode(
        x=alt.X("tensor:N", sort=["weights", "activations", "kv_cache"], title=None, axis=alt.Axis(orient="top")),
        y=alt.Y("op:N", sort=order, title=None, axis=alt.Axis(labelLimit=360, labelFontSize=10, labelOverlap=False)),
        color=alt.Color("format:N", scale=_scale(FORMAT_COLORS, list(long["format"].unique()))),
        tooltip=["op:N", "kind:N", "tensor:N", "format:N"],
    ).properties(height=max(200, 16 * len(order)), width=300)


def support_heatmap(pivot: pd.DataFrame) -> alt.Chart:
    """Accelerators x formats colored native / emulated / unsupported."""
    long = pivot.reset_index().melt(id_vars="accelerator", var_name="format", value_name="support").dropna()
    base = alt.Chart(long).encode(
        x=alt.X("format:N", sort=list(pivot.columns), title=None, axis=alt.Axis(orient="top", labelAngle=0)),
        y=alt.Y("accelerator:N", title=None))
    cells = base.mark_rect(stroke="white").encode(
        color=alt.Color("support:N", scale=_scale(SUPPORT_COLORS, list(long["support"].unique()))),
        tooltip=["accelerator:N", "format:N", "support:N"])
    return (cells + base.mark_text(fontSize=11).encode(text="support:N")).properties(height=40 * len(pivot) + 30)


def bytes_chart(frame: pd.DataFrame) -> alt.Chart:
    return alt.Chart(frame).mark_bar().encode(
        x=alt.X("bytes:Q", title="bytes"), y=alt.Y("class:N", title=None, sort=None),
        tooltip=["class:N", alt.Tooltip("bytes:Q", format=",")]).properties(height=120)


def coverage_chart(frame: pd.DataFrame, dimension: str) -> alt.Chart:
    """Calibration vs traffic shares for one dimension (length buckets or scripts), bars side by side."""
    part = frame[frame["dimension"] == dimension]
    return alt.Chart(part).mark_bar().encode(
        x=alt.X("key:N", sort=None, title=dimension), xOffset="source:N",
        y=alt.Y("share:Q", axis=alt.Axis(format="%"), title="share of texts"),
        color=alt.Color("source:N", scale=alt.Scale(domain=["calibration", "traffic"], range=["#2171b5", "#fd8d3c"])),
        tooltip=["key:N", "source:N", alt.Tooltip("share:Q", format=".1%")]).properties(height=CHART_HEIGHT)


def slice_chart(frame: pd.DataFrame, key: str, metric: str) -> alt.Chart:
    return alt.Chart(frame).mark_bar().encode(
        x=alt.X(f"{key}:N", sort=None), y=alt.Y(f"{metric}:Q"),
        tooltip=[f"{key}:N", alt.Tooltip(f"{metric}:Q", format=".4g"), "samples:Q"]).properties(height=CHART_HEIGHT)
