"""The demo's report: what the control plane recorded, as JSON, PNG plots and one self-contained HTML page."""
from __future__ import annotations

import base64
import html
import json
from datetime import datetime
from pathlib import Path
from typing import Any

STAGE_COLORS = {"shadow": "#bdbdbd", "canary": "#fdae6b", "active": "#74c476"}


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _collect(api, rollout_id: int) -> dict[str, Any]:
    """Everything the control plane holds about the rolled-out deployment."""
    path = f"/deployments/{rollout_id}"
    return {
        "deployment": api.call("GET", path),
        "policy": api.call("GET", f"{path}/drift-policy"),
        "windows": sorted(api.all(f"{path}/canary-windows"), key=lambda w: w["window_start"]),
        "analyses": api.all(f"{path}/analyses"),
        "approvals": sorted(api.all(f"{path}/approvals"), key=lambda a: a["created_at"]),
        "alerts": api.all("/alerts", deployment_id=rollout_id),
        "profile": api.call("GET", f"{path}/traffic-profile"),
    }


def drift_figure(data: dict[str, Any], path: Path) -> None:
    """KL, top-1, saturation and amax ratio per canary window, thresholds dashed, promotions, alert and rollback."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    windows, policy = data["windows"], data["policy"]
    times = [_time(w["window_start"]) for w in windows]
    series = [
        ("KL(ref ‖ engine), window mean", [w["kl_mean"] for w in windows], policy["kl_mean_max"], "max"),
        ("top-1 agreement, window mean", [w["top1_agreement"] for w in windows], policy["top1_agreement_min"], "min"),
        ("saturation, worst layer", [max(w["saturation_max"].values(), default=0.0) for w in windows],
         policy["saturation_max"], "max"),
        ("amax ratio (observed / calibrated), worst layer", [max(w["amax_ratio_max"].values(), default=0.0)
                                                             for w in windows], policy["amax_ratio_max"], "max"),
    ]
    fig, axes = plt.subplots(len(series), 1, figsize=(10, 11), sharex=True)
    for ax, (title, values, limit, kind) in zip(axes, series):
        ax.plot(times, values, marker="o", markersize=3, color="#2171b5")
        ax.axhline(limit, color="#de2d26", linestyle="--", linewidth=1,
                   label=f"policy {'≤' if kind == 'max' else '≥'} {limit:g}")
        for a in data["approvals"]:
            ax.axvline(_time(a["created_at"]), color="#636363" if a["to_stage"] != "rolled_back" else "black",
                       linestyle=":" if a["to_stage"] != "rolled_back" else "-", linewidth=1.2)
        for alert in data["alerts"]:
            ax.axvline(_time(alert["created_at"]), color="#de2d26", linewidth=2)
        ax.set_title(title, fontsize=10, loc="left")
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    for a in data["approvals"]:
        label = "rollback" if a["to_stage"] == "rolled_back" else f"→ {a['to_stage']}"
        axes[0].annotate(label, (_time(a["created_at"]), 1.0), xycoords=("data", "axes fraction"), fontsize=8,
                         rotation=90, va="top", ha="right")
    for alert in data["alerts"]:
        axes[0].annotate(f"alert #{alert['id']}", (_time(alert["created_at"]), 0.5), xycoords=("data", "axes fraction"),
                         fontsize=8, color="#de2d26", rotation=90, va="center", ha="right")
    fig.suptitle(f"deployment #{data['deployment']['id']} ({data['deployment']['endpoint']}): canary windows",
                 fontsize=12)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def candidates_figure(candidates: list[dict], chosen: dict, path: Path) -> None:
    """Each candidate's KL against its linear-weight bytes, passed in green, failed in red, the chosen one circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in candidates:
        color = "#31a354" if c["verdict"] == "passed" else "#de2d26"
        x, y = c["linear_bytes"] / 2**20, max(c["kl_mean"], 1e-6)
        ax.scatter([x], [y], color=color, s=60, zorder=3)
        ax.annotate(c["recipe"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=9)
        if c is chosen or c["engine_id"] == chosen["engine_id"]:
            ax.scatter([x], [y], s=260, facecolors="none", edgecolors="black", zorder=4)
    ax.set_yscale("log")
    ax.set_xlabel("linear-op weights (MiB)")
    ax.set_ylabel("KL(reference ‖ engine), held-out English")
    ax.set_title("candidates: green passed the gates, circled was rolled out", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return "" if value is None else str(value)


def _img(path: Path) -> str:
    return f'<img alt="{path.stem}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'


def write_report(api, out: Path, *, candidates: list[dict], chosen: dict, rollout_id: int, alert: dict,
                 events: list[dict], endpoint: str) -> dict:
    """Writes report.json, drift.png, candidates.png and index.html under `out`; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    data = _collect(api, rollout_id)
    drift_png, candidates_png = out / "drift.png", out / "candidates.png"
    drift_figure(data, drift_png)
    candidates_figure(candidates, chosen, candidates_png)
    rollback = next((a for a in data["approvals"] if a["to_stage"] == "rolled_back"), None)
    summary = {
        "endpoint": endpoint, "chosen": chosen, "candidates": candidates, "rollout_deployment": rollout_id,
        "alert": alert, "rollback": rollback, "policy": data["policy"], "approvals": data["approvals"],
        "analyses": data["analyses"], "windows": data["windows"], "traffic_profile": data["profile"],
        "events": events,
        "files": {"json": str(out / "report.json"), "html": str(out / "index.html"), "drift_png": str(drift_png),
                  "candidates_png": str(candidates_png)},
    }
    (out / "report.json").write_text(json.dumps(summary, indent=2, default=str))
    analyses = [{**a, "over": ", ".join(c["name"] for c in a["checks"] if c.get("status") == "over")}
                for a in data["analyses"]]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>PrecisionOps demo report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;font-size:13px;margin:1em 0}}td,th{{border:1px solid #ddd;padding:4px 8px;text-align:left}}
th{{background:#f4f4f4}}.alert{{border-left:4px solid #de2d26;padding:.5em 1em;background:#fff5f5}}img{{max-width:100%}}</style>
</head><body><h1>PrecisionOps: the whole story</h1>
<p>Endpoint <b>{html.escape(endpoint)}</b>. The best passing candidate, <b>{html.escape(chosen['recipe'])}</b>
(engine #{chosen['engine_id']}), went through shadow and canary to active, approved by the demo approver.
Long non-Latin traffic then drifted past its calibration; drift analysis raised alert #{alert['id']} and rolled it
back to the last known-good engine.</p>
<h2>Candidates</h2>{_img(candidates_png)}
{_table(candidates, ["recipe", "engine_id", "verdict", "kl_mean", "kl_p95", "top1_agreement", "ppl_delta_pct",
                     "linear_bytes", "failed_gates"])}
<h2>Drift</h2><div class="alert"><b>Alert #{alert['id']}</b> ({html.escape(alert['severity'])},
{html.escape(alert['metric'])}): {html.escape(alert['message'])}</div>{_img(drift_png)}
<h3>Drift policy</h3>{_table([data['policy']], [k for k in data['policy'] if k not in ('id', 'deployment_id')])}
<h3>Analyses</h3>{_table(analyses, ["id", "created_at", "outcome", "action", "sample_count", "over", "reason"])}
<h3>Approvals</h3>{_table(data['approvals'], ["created_at", "approver", "action", "from_stage", "to_stage", "reason"])}
<h2>Timeline</h2>{_table([{"at": datetime.fromtimestamp(e['at']).isoformat(timespec='seconds'), "what": e['what']}
                          for e in events], ["at", "what"])}
</body></html>"""
    (out / "index.html").write_text(page, encoding="utf-8")
    return summary
