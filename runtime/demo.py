"""The runtime demo: the whole chain on the reference model, one row per recipe."""
from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from runtime.accelerators import get_profile
from runtime.calibration import calibrate
from runtime.corpora import Corpus
from runtime.engines import build, load_engine
from runtime.evaluation import evaluate
from runtime.models import load_model
from runtime.plans import resolve
from runtime.recipes import Recipe, preset

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_MODEL = ROOT / "assets" / "models" / "pops-llama-tiny"
CALIBRATION_CORPUS = ROOT / "assets" / "corpora" / "calib-en-short.jsonl"
EVALUATION_CORPUS = ROOT / "assets" / "corpora" / "eval-en.jsonl"


def demo_recipes() -> list[Recipe]:
    """bf16 baseline, the uniform presets, a calibrated static fp8 recipe, and a mixed recipe with reasons."""
    static_fp8 = Recipe.from_dict({
        "name": "fp8_w8a8_static",
        "description": "fp8 per-channel weights, static per-tensor activations and fp8 KV cache from calibration",
        "default": {"weights": {"format": "fp8_e4m3", "strategy": "channel"},
                    "input_activations": {"format": "fp8_e4m3", "strategy": "tensor", "observer": "minmax"}},
        "kv_cache_scheme": {"format": "fp8_e4m3"},
        "calibration": {"corpus": "calib-en-short", "samples": 64, "seq_len": 128},
    })
    return [preset("bf16"), preset("fp8_w8a8"), preset("int8_w8a8"), preset("int4_w4a16_g128"), static_fp8,
            preset("mixed_fp8_int4")]


def run_demo(*, home: Path, max_samples: int = 48, seq_len: int = 256, console: Console | None = None,
             model_path: Path = REFERENCE_MODEL) -> list[dict]:
    """Calibrates, builds, loads and evaluates each demo recipe; returns one row per recipe."""
    console = console or Console(stderr=True)
    home = Path(home)
    reference = load_model(model_path)
    calib, evalset = Corpus.load(CALIBRATION_CORPUS), Corpus.load(EVALUATION_CORPUS)
    console.print(f"reference model {model_path.name} {reference.content_hash[:19]}…, "
                  f"calibration corpus {len(calib)} samples, evaluation corpus {len(evalset)} samples")
    calibration = None
    rows = []
    for recipe in demo_recipes():
        t0 = time.perf_counter()
        if recipe.calibration is not None and calibration is None:
            console.print("calibrating on", calib.name)
            calibration = calibrate(reference.model, reference.tokenizer, calib, recipe,
                                    model_hash=reference.content_hash)
            calibration.save(home / "calibration")
        cal = calibration if recipe.calibration is not None else None
        engine = build(model_path, recipe, get_profile("cpu"), calibration=cal, out_root=home / "engines")
        loaded = load_engine(engine.path)
        report = evaluate(reference.model, loaded.model, reference.tokenizer, evalset,
                          max_samples=max_samples, seq_len=seq_len)
        m = report.metrics
        fallbacks = {acc: len(resolve(recipe, reference.model, get_profile(acc)).fallbacks()) for acc in ("h100", "a100")}
        rows.append({
            "recipe": recipe.name, "engine_id": engine.engine_id,
            "kl_mean": m.kl_mean, "top1_agreement": m.top1_agreement,
            "ppl_reference": m.ppl_reference, "ppl_engine": m.ppl_candidate, "ppl_delta": m.ppl_delta,
            "linear_weight_bytes": engine.manifest["bytes"]["linear_ops"],
            "engine_bytes": engine.manifest["bytes"]["total"],
            "kv_bytes_per_token": engine.manifest["bytes"]["kv_cache_per_token"],
            "fallbacks_h100": fallbacks["h100"], "fallbacks_a100": fallbacks["a100"],
            "seconds": round(time.perf_counter() - t0, 1),
        })
        console.print(f"  {recipe.name}: KL {m.kl_mean:.4f}, top-1 {m.top1_agreement:.3f} ({rows[-1]['seconds']} s)")
    home.mkdir(parents=True, exist_ok=True)
    (home / "demo-report.json").write_text(json.dumps(rows, indent=2))
    console.print(f"report: {home / 'demo-report.json'}")
    return rows


def demo_table(rows: list[dict]) -> Table:
    """The demo's table: quality against bytes, per recipe."""
    table = Table(title="PrecisionOps demo: reference model vs engines (CPU reference paths)")
    for col in ("recipe", "KL mean", "top-1", "ppl ref", "ppl eng", "Δppl", "linear bytes", "KV B/token",
                "fallbacks h100/a100"):
        table.add_column(col, justify="left" if col == "recipe" else "right")
    base = next((r["linear_weight_bytes"] for r in rows if r["recipe"] == "bf16"), None)
    for r in rows:
        ratio = f" ({r['linear_weight_bytes'] / base:.2f}×)" if base else ""
        table.add_row(r["recipe"], f"{r['kl_mean']:.4f}", f"{r['top1_agreement']:.3f}", f"{r['ppl_reference']:.2f}",
                      f"{r['ppl_engine']:.2f}", f"{r['ppl_delta']:+.3f}", f"{r['linear_weight_bytes']:,}{ratio}",
                      str(r["kv_bytes_per_token"]), f"{r['fallbacks_h100']}/{r['fallbacks_a100']}")
    return table
