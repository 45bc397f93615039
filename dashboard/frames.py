"""API payloads shaped into tables (pandas): what the pages lay out. Pure functions, no Streamlit, no HTTP."""
from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pandas as pd

# What the Rollouts page offers per stage; the server's transition table has the final word.
ACTIONS_BY_STAGE: dict[str, tuple[str, ...]] = {
    "shadow": ("promote", "pause", "rollback"),
    "canary": ("promote", "traffic", "pause", "rollback"),
    "paused": ("resume", "rollback"),
    "active": ("rollback",),
    "rolled_back": (),
    "retired": (),
}
ACTION_LABELS = {
    "promote": "Approve and promote",
    "traffic": "Change canary traffic",
    "pause": "Pause",
    "resume": "Resume",
    "rollback": "Roll back",
}
OPEN_STAGES = ("shadow", "canary", "paused", "active")
SUPPORT_ORDER = ("native", "emulated", "unsupported")


def parse_time(value: str | None) -> pd.Timestamp | None:
    return pd.Timestamp(value) if value else None


# --- rollouts ---------------------------------------------------------------------------------

def pending_approval(deployment: dict) -> str:
    """What the deployment waits for from an approver, or '' when nothing."""
    stage = deployment["stage"]
    if stage == "shadow":
        return "promote to canary"
    if stage == "canary":
        return f"promote to active (serving {deployment['traffic_share']:.0%} now)"
    if stage == "paused":
        return f"resume to {deployment['paused_from']}"
    return ""


def gate_summary(evaluations: list[dict], corpus_names: dict[int, str]) -> str:
    """One line per evaluation of an engine: its verdict and how many gates passed, newest first."""
    lines = []
    for e in evaluations:
        gates = e.get("gates") or []
        passed = sum(1 for g in gates if g.get("passed"))
        corpus = corpus_names.get(e["corpus_id"], f"corpus {e['corpus_id']}")
        lines.append(f"#{e['id']} {corpus}: {e['verdict']} ({passed}/{len(gates)} gates)")
    return "; ".join(lines) or "not evaluated"


def engine_label(engine: dict | None, recipes: dict[int, dict], accelerators: dict[int, str] | None = None) -> str:
    """`#id recipe vN @ accelerator` (without the accelerator when none are given)."""
    if engine is None:
        return "?"
    recipe = recipes.get(engine["recipe_id"])
    name = f"{recipe['name']} v{recipe['version']}" if recipe else f"recipe {engine['recipe_id']}"
    if accelerators is None:
        return f"#{engine['id']} {name}"
    return f"#{engine['id']} {name} @ {accelerators.get(engine['accelerator_id'], engine['accelerator_id'])}"


def deployments_frame(deployments: list[dict], *, engines: dict[int, dict], recipes: dict[int, dict],
                      accelerators: dict[int, str], evaluations: dict[int, list[dict]],
                      corpus_names: dict[int, str]) -> pd.DataFrame:
    """One row per deployment: stage, traffic, engine, recipe, gate verdicts and what awaits approval."""
    rows = []
    for d in deployments:
        engine = engines.get(d["engine_id"])
        recipe = recipes.get(engine["recipe_id"]) if engine else None
        rows.append({
            "id": d["id"],
            "endpoint": d["endpoint"],
            "stage": d["stage"] if d["stage"] != "paused" else f"paused ({d['paused_from']})",
            "traffic": d["traffic_share"],
            "engine": f"#{d['engine_id']} {engine['content_hash'][:12]}" if engine else f"#{d['engine_id']}",
            "recipe": f"{recipe['name']} v{recipe['version']}" if recipe else "?",
            "accelerator": accelerators.get(engine["accelerator_id"], "?") if engine else "?",
            "gates": gate_summary(evaluations.get(d["engine_id"], []), corpus_names),
            "awaiting approval": pending_approval(d),
            "last known-good": f"#{d['last_known_good_engine_id']}" if d["last_known_good_engine_id"] else "",
            "version": d["version"],
            "updated": parse_time(d["updated_at"]),
        })
    columns = ["id", "endpoint", "stage", "traffic", "engine", "recipe", "accelerator", "gates", "awaiting approval",
               "last known-good", "version", "updated"]
    return pd.DataFrame(rows, columns=columns)


def approvals_frame(approvals: list[dict]) -> pd.DataFrame:
    columns = ["at", "approver", "action", "from", "to", "reason"]
    return pd.DataFrame([{"at": parse_time(a["created_at"]), "approver": a["approver"], "action": a["action"],
                          "from": a["from_stage"], "to": a["to_stage"], "reason": a["reason"]} for a in approvals],
                        columns=columns)


# --- drift ------------------------------------------------------------------------------------

def windows_frame(windows: list[dict]) -> pd.DataFrame:
    """Canary windows in time order: KL mean/std/max, top-1 agreement and sample counts."""
    rows = [{"time": parse_time(w["window_start"]), "engine": w["engine_id"], "samples": w["sample_count"],
             "kl_mean": w["kl_mean"], "kl_std": w["kl_std"], "kl_max": w["kl_max"],
             "top1_agreement": w["top1_agreement"], "top1_min": w["top1_min"]} for w in windows]
    frame = pd.DataFrame(rows, columns=["time", "engine", "samples", "kl_mean", "kl_std", "kl_max", "top1_agreement",
                                        "top1_min"])
    return frame.sort_values("time", ignore_index=True)


def layer_frame(windows: list[dict], field: str) -> pd.DataFrame:
    """Long form (time, layer, value) of a per-layer window maximum: `saturation_max` or `amax_ratio_max`."""
    rows = [{"time": parse_time(w["window_start"]), "layer": layer, "value": value}
            for w in windows for layer, value in (w.get(field) or {}).items()]
    return pd.DataFrame(rows, columns=["time", "layer", "value"]).sort_values(["time", "layer"], ignore_index=True)


def top_layers(frame: pd.DataFrame, n: int) -> list[str]:
    """The `n` layers with the largest peak value (where drift shows first)."""
    if frame.empty:
        return []
    return list(frame.groupby("layer")["value"].max().sort_values(ascending=False).head(n).index)


def event_marks(alerts: list[dict], approvals: list[dict], analyses: Iterable[dict] = ()) -> pd.DataFrame:
    """Vertical markers for the drift charts: alerts raised and rollbacks (manual or automatic)."""
    rows = [{"time": parse_time(a["created_at"]), "event": "alert", "label": f"alert #{a['id']}: {a['metric']}"}
            for a in alerts]
    rows += [{"time": parse_time(a["created_at"]), "event": "rollback",
              "label": f"{a['action']} by {a['approver']}"}
             for a in approvals if a["to_stage"] == "rolled_back"]
    return pd.DataFrame(rows, columns=["time", "event", "label"]).sort_values("time", ignore_index=True)


def policy_frame(policy: dict) -> pd.DataFrame:
    """The drift policy's thresholds, one row per metric, as the charts draw them."""
    rows = [
        ("KL mean (window)", "≤", policy["kl_mean_max"]),
        ("KL p95 (window)", "≤", policy["kl_p95_max"]),
        ("top-1 agreement (window)", "≥", policy["top1_agreement_min"]),
        ("saturation (any layer)", "≤", policy["saturation_max"]),
        ("amax ratio (any layer)", "≤", policy["amax_ratio_max"]),
        ("window", "", f"{policy['window_seconds']} s, at least {policy['min_samples']} samples"),
        ("sequential test", "", f"false-alarm rate {policy['false_alarm_rate']:g}, "
                                f"{policy['consecutive_failure_limit']} failing windows in a row"),
    ]
    return pd.DataFrame([{"metric": m, "rule": r, "threshold": str(t)} for m, r, t in rows])


def alerts_frame(alerts: list[dict]) -> pd.DataFrame:
    columns = ["id", "at", "metric", "severity", "status", "message", "engine"]
    return pd.DataFrame([{"id": a["id"], "at": parse_time(a["created_at"]), "metric": a["metric"],
                          "severity": a["severity"], "status": a["status"], "message": a["message"],
                          "engine": a["engine_id"]} for a in alerts], columns=columns)


def analyses_frame(analyses: list[dict]) -> pd.DataFrame:
    """Drift analysis outcomes, newest first: what was decided, why, on how many samples, and what was done."""
    def over(checks: list[dict]) -> str:
        return ", ".join(f"{c['name']}{' ' + c['layer'] if c.get('layer') else ''}={c['value']:.4g} > {c['limit']:g}"
                         if c["direction"] == "max" else f"{c['name']}={c['value']:.4g} < {c['limit']:g}"
                         for c in checks if c.get("status") == "over" and c.get("value") is not None)

    rows = [{"id": a["id"], "at": parse_time(a["created_at"]), "outcome": a["outcome"], "action": a["action"],
             "reason": a["reason"], "over limit": over(a.get("checks") or []), "samples": a["sample_count"],
             "failures in a row": a["consecutive_failures"], "alert": a["alert_id"], "trigger": a["trigger"]}
            for a in analyses]
    frame = pd.DataFrame(rows, columns=["id", "at", "outcome", "action", "reason", "over limit", "samples",
                                        "failures in a row", "alert", "trigger"])
    return frame.astype({"alert": "Int64"})  # most analyses raise none


def profile_coverage(profile: dict) -> tuple[dict, dict] | None:
    """(calibration coverage, recent traffic) from a deployment's traffic profile, in corpus-coverage shape."""
    calibration = profile.get("calibration")
    if not calibration or not profile.get("samples"):
        return None
    return ({"length_buckets": calibration["length_buckets"], "scripts": calibration["scripts"]},
            {"length_buckets": profile["length_buckets"], "scripts": profile["scripts"]})


# --- engines ----------------------------------------------------------------------------------

def _ops(manifest: dict) -> list[dict]:
    return manifest.get("plan", {}).get("ops", [])


def precision_map(manifest: dict) -> pd.DataFrame:
    """Layers x (weights, activations, KV cache): the effective format of every op, with its kernel and rule."""
    rows = []
    for op in _ops(manifest):
        is_kv = op["op_kind"] == "kv_cache"
        rows.append({
            "op": op["name"], "kind": op["op_kind"],
            "weights": None if is_kv or op["op_kind"] in ("attention", "norm") else op["weight"],
            "activations": None if is_kv else op["activation"],
            "kv_cache": op["kv_cache"] if is_kv else None,
            "kernel": op["kernel"], "support": op.get("support"), "rule": op["rule"],
            "fallbacks": len(op.get("fallbacks") or []),
            "mixed": ", ".join(f"{p['weight']}/{p['activation']}×{len(p.get('channels') or [])}"
                               for p in op.get("parts") or []),
        })
    return pd.DataFrame(rows, columns=["op", "kind", "weights", "activations", "kv_cache", "kernel", "support", "rule",
                                       "fallbacks", "mixed"])


def precision_long(map_frame: pd.DataFrame) -> pd.DataFrame:
    """The precision map in long form (op, tensor, format) for a heatmap; cells with no tensor are left out."""
    long = map_frame.melt(id_vars=["op", "kind"], value_vars=["weights", "activations", "kv_cache"],
                          var_name="tensor", value_name="format")
    return long.dropna(subset=["format"]).reset_index(drop=True)


def fallbacks_frame(manifest: dict) -> pd.DataFrame:
    return pd.DataFrame([{"op": f["op"], "field": f.get("field"), "requested": f.get("requested"),
                          "effective": f.get("effective"), "reason": f.get("reason")}
                         for f in manifest.get("fallbacks") or []],
                        columns=["op", "field", "requested", "effective", "reason"])


def scale_sources_frame(manifest: dict) -> pd.DataFrame:
    return pd.DataFrame([{"op": op, "scales": source} for op, source in (manifest.get("scale_sources") or {}).items()],
                        columns=["op", "scales"])


def bytes_frame(manifest: dict) -> pd.DataFrame:
    """Bytes per tensor class (low-precision weights, scales, tensors kept wide)."""
    counts = manifest.get("bytes") or {}
    return pd.DataFrame([{"class": c, "bytes": counts.get(c, 0)} for c in ("weights", "scales", "wide")],
                        columns=["class", "bytes"])


_PLAN_FIELDS = ("weights", "activations", "kv_cache", "kernel")


def plan_diff(left: dict, right: dict) -> pd.DataFrame:
    """Ops whose effective precision or kernel differs between two plans, side by side."""
    a = precision_map(left).set_index("op")
    b = precision_map(right).set_index("op")
    rows = []
    for op in list(a.index) + [o for o in b.index if o not in a.index]:
        la = a.loc[op] if op in a.index else None
        rb = b.loc[op] if op in b.index else None
        changed = [f for f in _PLAN_FIELDS if la is None or rb is None or _value(la[f]) != _value(rb[f])]
        if changed:
            row = {"op": op, "changed": ", ".join(changed)}
            for f in _PLAN_FIELDS:
                row[f"left {f}"] = _value(la[f]) if la is not None else "(absent)"
                row[f"right {f}"] = _value(rb[f]) if rb is not None else "(absent)"
            rows.append(row)
    columns = ["op", "changed"] + [f"{side} {f}" for f in _PLAN_FIELDS for side in ("left", "right")]
    return pd.DataFrame(rows, columns=columns)


def _value(v: Any) -> Any:
    return None if v is None or (isinstance(v, float) and pd.isna(v)) else v


def flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    """A nested document as `a.b[0].c -> value` (lists by index), for field-by-field comparison."""
    out: dict[str, Any] = {}
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(doc, list) and doc:
        for i, v in enumerate(doc):
            out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = doc
    return out


def spec_diff(left: dict, right: dict) -> pd.DataFrame:
    """Field-by-field differences of two recipe documents (any names), in the server diff's shape."""
    a, b = flatten(left), flatten(right)
    rows = []
    for path in sorted(set(a) | set(b)):
        if path not in b:
            rows.append({"path": path, "op": "removed", "before": a[path], "after": None})
        elif path not in a:
            rows.append({"path": path, "op": "added", "before": None, "after": b[path]})
        elif a[path] != b[path]:
            rows.append({"path": path, "op": "changed", "before": a[path], "after": b[path]})
    return changes_frame(rows)


def changes_frame(changes: list[dict]) -> pd.DataFrame:
    """Recipe changes with values as text (a column mixes numbers, strings and objects)."""
    def text(v: Any) -> str:
        return "" if v is None else v if isinstance(v, str) else json.dumps(v, sort_keys=True)

    return pd.DataFrame([{"path": c["path"], "change": c["op"], "left": text(c.get("before")),
                          "right": text(c.get("after"))} for c in changes], columns=["path", "change", "left", "right"])


# --- compatibility ----------------------------------------------------------------------------

def compat_pivot(entries: list[dict], op_kind: str) -> pd.DataFrame:
    """Accelerators (rows) x formats (columns) -> native / emulated / unsupported, for one tensor role."""
    rows = [e for e in entries if e["op_kind"] == op_kind]
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    formats = list(dict.fromkeys(e["format"] for e in entries))  # the API's order, shared across roles
    return frame.pivot(index="accelerator", columns="format", values="support").reindex(columns=formats)


def compat_details(entries: list[dict], *, op_kind: str | None = None, support: str | None = None) -> pd.DataFrame:
    rows = [e for e in entries if (op_kind is None or e["op_kind"] == op_kind)
            and (support is None or e["support"] == support)]
    return pd.DataFrame(rows, columns=["accelerator", "format", "op_kind", "support", "kernel", "reason"])


# --- evaluations ------------------------------------------------------------------------------

METRIC_COLUMNS = ("samples", "tokens", "kl_mean", "kl_p95", "kl_max", "top1_agreement", "ppl_reference",
                  "ppl_candidate", "ppl_delta_pct", "nonfinite_tokens")


def metrics_frame(by_key: dict[str, dict], key_name: str) -> pd.DataFrame:
    """Metrics per slice or length bucket, one row each."""
    rows = [{key_name: k, **{m: v.get(m) for m in METRIC_COLUMNS}} for k, v in by_key.items()]
    return pd.DataFrame(rows, columns=[key_name, *METRIC_COLUMNS])


def gates_frame(gates: list[dict]) -> pd.DataFrame:
    rows = [{"result": "pass" if g["passed"] else "FAIL", "metric": g["metric"],
             "scope": f"slice {g['slice']}" if g.get("slice") else f"bucket {g['bucket']}" if g.get("bucket") else "all",
             "rule": f"{'≤' if g['kind'] == 'max' else '≥'} {g['threshold']:g}", "value": g.get("value"),
             "message": g["message"]} for g in gates]
    return pd.DataFrame(rows, columns=["result", "metric", "scope", "rule", "value", "message"])


def coverage_frame(calibration: dict, traffic: dict) -> pd.DataFrame:
    """Length-bucket and script shares of a calibration corpus beside those of traffic (long form)."""
    rows = []
    for dimension, field in (("length (tokens)", "length_buckets"), ("script", "scripts")):
        keys = list(dict.fromkeys([*(traffic.get(field) or {}), *(calibration.get(field) or {})]))
        for key in keys:
            for source, profile in (("calibration", calibration), ("traffic", traffic)):
                rows.append({"dimension": dimension, "key": key, "source": source,
                             "share": (profile.get(field) or {}).get(key, 0.0)})
    return pd.DataFrame(rows, columns=["dimension", "key", "source", "share"])


def coverage_gaps(calibration: dict, traffic: dict) -> list[str]:
    """What traffic holds that calibration never saw (the runtime's rule, so the CLI and the page agree)."""
    from runtime.corpora.coverage import CoverageProfile, check_coverage

    def profile(coverage: dict) -> CoverageProfile:
        return CoverageProfile.model_validate({k: v for k, v in coverage.items() if k in CoverageProfile.model_fields})

    return [gap.message for gap in check_coverage(profile(calibration), profile(traffic))]


# --- audit ------------------------------------------------------------------------------------

def audit_frame(events: list[dict]) -> pd.DataFrame:
    def compact(v: Any) -> str:
        return "" if v is None else json.dumps(v, sort_keys=True, default=str)

    rows = [{"id": e["id"], "at": parse_time(e["at"]), "actor": e["actor"], "action": e["action"],
             "object": f"{e['object_type']} {e['object_id']}", "reason": e.get("reason") or "",
             "before": compact(e.get("before")), "after": compact(e.get("after"))} for e in events]
    return pd.DataFrame(rows, columns=["id", "at", "actor", "action", "object", "reason", "before", "after"])

