"""`pops` commands that work on local files: corpora, recipes, calibration, plans, engines, evaluation.

Exit codes scripts can rely on: 0 ok, 1 a gate failed, 2 bad input.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from runtime.errors import InputError

app = typer.Typer(help="PrecisionOps: per-operator precision contracts for LLM inference.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
corpus_app = typer.Typer(help="Calibration and evaluation corpora.", no_args_is_help=True)
recipe_app = typer.Typer(help="Precision recipes.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")
app.add_typer(recipe_app, name="recipe")

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)
if not out.is_terminal:  # piped or captured: don't squeeze tables into 80 columns
    out.width = 200

EXIT_OK, EXIT_GATE_FAILED, EXIT_BAD_INPUT = 0, 1, 2
DEFAULT_HOME = Path(".pops")

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
ModelOpt = Annotated[Path, typer.Option("--model", "-m", help="Local transformers causal-LM folder.")]
RecipeOpt = Annotated[str, typer.Option("--recipe", "-r", help="Recipe file (.yaml/.json) or preset name.")]


@contextmanager
def _input_errors():
    """Turns bad input into a listing of the offending fields and exit code 2."""
    try:
        yield
    except InputError as exc:
        for e in exc.errors:
            loc = ".".join(map(str, e["loc"])) or "<input>"
            console.print(f"[red]error[/red] {loc}: {e['msg']}")
        raise typer.Exit(EXIT_BAD_INPUT) from None


@contextmanager
def _progress(label: str):
    """A progress bar on stderr; yields a progress(done, total) callback."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def load_recipe_arg(value: str):
    """A recipe from a file path, or a preset by name."""
    from runtime.recipes import PRESETS, load_recipe, preset

    path = Path(value)
    if path.is_file():
        return load_recipe(str(path))
    if value in PRESETS:
        return preset(value)
    raise InputError(f"{value!r} is neither a recipe file nor a preset ({', '.join(PRESETS)})", loc=("recipe",))


def _emit(as_json: bool, payload, table: Table | None = None) -> None:
    if as_json:
        out.print_json(json.dumps(payload, default=str))
    elif table is not None:
        out.print(table)


# --- corpus -------------------------------------------------------------------------------
@corpus_app.command("add")
def corpus_add(
    path: Annotated[Path, typer.Argument(help="JSONL file: one {text, slice?, tags?} per line.")],
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Tokenizer for token-length buckets.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Corpus name (default: file stem).")] = None,
    home: Annotated[Path, typer.Option(help="Local store.")] = DEFAULT_HOME,
    as_json: JsonOpt = False,
):
    """Registers a corpus in the local store (content-addressed) and prints its coverage profile."""
    from runtime.corpora import Corpus, coverage_profile

    with _input_errors():
        corpus = Corpus.load(path, name=name or path.stem)
        tokenizer = _tokenizer(model) if model else None
        profile = coverage_profile(corpus, tokenizer)
        digest = corpus.content_hash.split(":", 1)[1]
        dest = home / "corpora" / f"{digest}.jsonl"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            tmp = dest.with_suffix(".tmp")
            shutil.copyfile(path, tmp)
            tmp.replace(dest)
    payload = {"name": corpus.name, "content_hash": corpus.content_hash, "path": str(dest),
               "profile": profile.model_dump()}
    table = Table(title=f"corpus {corpus.name} ({corpus.content_hash[:19]}…)")
    table.add_column("measure")
    table.add_column("value")
    table.add_row("samples", str(profile.samples))
    table.add_row("max tokens" if tokenizer else "max chars", str(profile.max_tokens))
    table.add_row("length buckets", ", ".join(f"{k}: {v:.0%}" for k, v in profile.length_buckets.items() if v))
    table.add_row("scripts", ", ".join(f"{k}: {v:.0%}" for k, v in profile.scripts.items() if v))
    table.add_row("slices", ", ".join(f"{k}: {v:.0%}" for k, v in profile.slices.items() if v))
    table.add_row("stored at", str(dest))
    _emit(as_json, payload, table)


# --- recipe -------------------------------------------------------------------------------
@recipe_app.command("validate")
def recipe_validate(
    recipe: Annotated[str, typer.Argument(help="Recipe file (.yaml/.json) or preset name.")],
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Also check targets and group sizes.")] = None,
    as_json: JsonOpt = False,
):
    """Validates a recipe (and against a model, if given); errors name the offending field."""
    from runtime.models import load_model
    from runtime.recipes import validate_for_model

    try:
        r = load_recipe_arg(recipe)
        ops = validate_for_model(r, load_model(model).model) if model else None
    except InputError as exc:
        if as_json:
            out.print_json(json.dumps({"valid": False, "errors": exc.errors}, default=list))
            raise typer.Exit(EXIT_BAD_INPUT) from None
        with _input_errors():
            raise
    payload = {"valid": True, "name": r.name, "content_hash": r.content_hash(), "rules": len(r.rules),
               "ops_checked": len(ops) if ops is not None else None}
    if as_json:
        _emit(True, payload)
    else:
        out.print(f"[green]valid[/green] {r.name} {r.content_hash()}"
                  + (f" ({len(ops)} linear ops checked against {model})" if ops is not None else ""))


# --- plan -------------------------------------------------------------------------------
@app.command("plan")
def plan_cmd(model: ModelOpt, recipe: RecipeOpt,
             accelerator: Annotated[str, typer.Option("--accelerator", "-a")] = "cpu",
             as_json: JsonOpt = False):
    """Resolves a recipe against a model and an accelerator: every op, its formats, kernel and fallbacks."""
    from runtime.accelerators import get_profile
    from runtime.models import load_model
    from runtime.plans import resolve

    with _input_errors():
        plan = resolve(load_recipe_arg(recipe), load_model(model).model, get_profile(accelerator))
    table = Table(title=f"plan: {plan.recipe_name} on {plan.accelerator}")
    for col in ("op", "kind", "W", "A", "KV", "kernel", "rule", "fallbacks"):
        table.add_column(col)
    for op in plan.ops:
        if op.op_kind in ("norm", "embedding", "attention"):
            continue
        fbs = "; ".join(f"{f.field}: {f.requested}→{f.effective} ({f.reason})" for f in op.fallbacks)
        table.add_row(op.name, op.op_kind, op.weight if op.op_kind != "kv_cache" else "",
                      op.activation if op.op_kind != "kv_cache" else "", op.kv_cache or "", op.kernel, op.rule, fbs)
    _emit(as_json, plan.model_dump(mode="json"), table)
    if not as_json:
        out.print(f"{len(plan.fallbacks())} fallback(s); norms, softmax and embeddings stay wide.")


# --- calibrate ------------------------------------------------------------------------------
@app.command("calibrate")
def calibrate_cmd(model: ModelOpt,
                  corpus: Annotated[Path, typer.Option("--corpus", "-c", help="JSONL corpus.")],
                  out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for calibration.json.")],
                  recipe: Annotated[Optional[str], typer.Option("--recipe", "-r")] = None,
                  samples: Annotated[Optional[int], typer.Option(help="Samples to run (default 64).")] = None,
                  seq_len: Annotated[Optional[int], typer.Option(help="Tokens per sample (default 256).")] = None,
                  observer: Annotated[Optional[str], typer.Option(help="minmax|percentile|mse|amax_history")] = None,
                  as_json: JsonOpt = False):
    """Runs a corpus through the model and saves per-tensor statistics and scales."""
    from runtime.calibration import calibrate
    from runtime.models import load_model

    with _input_errors():
        loaded = load_model(model)
        r = load_recipe_arg(recipe) if recipe else None
        with _progress("calibrating") as progress:
            cal = calibrate(loaded.model, loaded.tokenizer, corpus, r, samples=samples, seq_len=seq_len,
                            observer=observer, model_hash=loaded.content_hash, progress=progress)
        cal.save(out_dir)
    outliers = {n: len(s.outlier_channels) for n, s in cal.tensors.items() if s.outlier_channels}
    payload = {"path": str(out_dir), "content_hash": cal.content_hash, "tensors": len(cal.tensors),
               "kv_layers": len(cal.kv_heads), "metadata": cal.metadata, "outlier_channels": outliers}
    table = Table(title=f"calibration {cal.content_hash[:19]}…")
    table.add_column("tensor")
    table.add_column("amax", justify="right")
    table.add_column("p99.99", justify="right")
    table.add_column("outlier ch.", justify="right")
    for n, s in cal.tensors.items():
        table.add_row(n, f"{s.amax:.3g}", f"{s.percentiles.get('99.99', float('nan')):.3g}",
                      str(len(s.outlier_channels)))
    _emit(as_json, payload, table)


# --- build ----------------------------------------------------------------------------------
@app.command("build")
def build_cmd(model: ModelOpt, recipe: RecipeOpt,
              accelerator: Annotated[str, typer.Option("--accelerator", "-a")] = "cpu",
              calibration: Annotated[Optional[Path], typer.Option(help="Folder written by `pops calibrate`.")] = None,
              out_root: Annotated[Path, typer.Option(help="Engines folder.")] = DEFAULT_HOME / "engines",
              as_json: JsonOpt = False):
    """Builds a content-addressed engine folder (packed weights, scales, manifest)."""
    from runtime.accelerators import get_profile
    from runtime.calibration import Calibration
    from runtime.engines import build

    with _input_errors():
        cal = Calibration.load(calibration) if calibration else None
        with _progress("building") as progress:
            engine = build(model, load_recipe_arg(recipe), get_profile(accelerator), calibration=cal,
                           out_root=out_root, progress=progress)
    m = engine.manifest
    payload = {"engine_id": engine.engine_id, "path": str(engine.path), "bytes": m["bytes"],
               "fallbacks": m["fallbacks"], "casts_per_forward": m["casts_per_forward"], "summary": m["summary"]}
    table = Table(title=f"engine {engine.engine_id}")
    table.add_column("measure")
    table.add_column("value")
    table.add_row("path", str(engine.path))
    for k, v in m["bytes"].items():
        table.add_row(f"bytes.{k}", f"{v:,}")
    table.add_row("casts per forward", str(m["casts_per_forward"]["total"]))
    table.add_row("fallbacks", str(len(m["fallbacks"])))
    _emit(as_json, payload, table)


# --- evaluate ------------------------------------------------------------------------------
@app.command("evaluate")
def evaluate_cmd(engine: Annotated[Path, typer.Option("--engine", "-e", help="Engine folder.")],
                 corpus: Annotated[Path, typer.Option("--corpus", "-c", help="JSONL corpus.")],
                 reference: Annotated[Optional[Path], typer.Option(
                     help="Reference model folder (default: the engine's source model).")] = None,
                 gate: Annotated[Optional[list[str]], typer.Option(
                     help="Gate like 'kl_mean<=0.05' or 'top1_agreement>=0.9@code' (repeatable).")] = None,
                 max_samples: int = 64, seq_len: int = 256, as_json: JsonOpt = False):
    """Measures an engine against its reference precision; exit 1 when a gate fails."""
    from runtime.corpora import Corpus
    from runtime.engines import load_engine
    from runtime.evaluation import evaluate, parse_gates
    from runtime.models import load_model

    with _input_errors():
        gates = parse_gates(gate_spec(g, i) for i, g in enumerate(gate or []))
        cand = load_engine(engine)
        ref = load_model(reference or cand.manifest["model"]["path"])
        with _progress("evaluating") as progress:
            report = evaluate(ref.model, cand.model, ref.tokenizer, Corpus.load(corpus), gates=gates,
                              max_samples=max_samples, seq_len=seq_len, progress=progress)
    if as_json:
        _emit(True, report.model_dump(mode="json"))
    else:
        out.print(render_report(report))
    if not report.passed:
        raise typer.Exit(EXIT_GATE_FAILED)


_GATE = re.compile(r"^\s*(?P<metric>[a-z0-9_]+)\s*(?P<op><=|>=)\s*(?P<value>[-+0-9.eE]+)\s*"
                   r"(?:@(?:(?P<bucket>bucket=)?(?P<where>[^\s]+)))?\s*$")


def gate_spec(text: str, index: int = 0) -> dict:
    """'kl_mean<=0.05', 'top1_agreement>=0.9@code' (a slice) or 'kl_mean<=0.1@bucket=512-2048'."""
    m = _GATE.match(text)
    if not m:
        raise InputError(f"cannot read gate {text!r}; write metric<=value or metric>=value, optionally @slice "
                         "or @bucket=LOW-HIGH", loc=("gates", index))
    spec = {"metric": m["metric"], "max" if m["op"] == "<=" else "min": float(m["value"])}
    if m["where"]:
        spec["bucket" if m["bucket"] else "slice"] = m["where"]
    return spec


def _f(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def render_report(report) -> Table:
    """Overall, per-slice and per-bucket metrics with gate verdicts, as a table."""
    table = Table(title="evaluation" + ("" if report.passed else " — GATE FAILED"))
    for col in ("scope", "KL mean", "KL p95", "top-1", "ppl ref", "ppl eng", "Δppl", "tokens"):
        table.add_column(col, justify="right" if col != "scope" else "left")

    def row(scope, m):
        table.add_row(scope, _f(m.kl_mean, ".4f"), _f(m.kl_p95, ".4f"), _f(m.top1_agreement, ".3f"),
                      _f(m.ppl_reference, ".2f"), _f(m.ppl_candidate, ".2f"), _f(m.ppl_delta, "+.2f"), str(m.tokens))

    row("overall", report.metrics)
    for name, m in report.by_slice.items():
        row(f"slice {name}", m)
    for name, m in report.by_bucket.items():
        row(f"bucket {name}", m)
    for g in report.gate_results:
        table.caption = (table.caption or "") + f"\n{'PASS' if g.passed else 'FAIL'} {g.message}"
    return table


# --- search -----------------------------------------------------------------------------------
@app.command("search")
def search_cmd(model: ModelOpt,
               corpus: Annotated[Path, typer.Option("--corpus", "-c", help="Calibration JSONL corpus.")],
               bits: Annotated[Optional[float], typer.Option(
                   "--bits", help="Budget: average stored bits per weight of the searched ops.")] = None,
               total_bytes: Annotated[Optional[int], typer.Option(
                   "--bytes", help="Budget: total stored bytes of the searched ops.")] = None,
               latency_us: Annotated[Optional[float], typer.Option(
                   "--latency-us", help="Budget: batch-1 decode µs per token of the searched ops on the "
                                        "accelerator (its decode latency model; not the cpu).")] = None,
               accelerator: Annotated[str, typer.Option("--accelerator", "-a")] = "cpu",
               granularity: Annotated[str, typer.Option(help="op | channel (per output feature)")] = "channel",
               candidate: Annotated[Optional[list[str]], typer.Option(
                   "--candidate", help="Candidate format (repeatable; default int4_g128, int4_g128_asym, int8, "
                                       "fp8_e4m3; bf16 is always one).")] = None,
               samples: Annotated[int, typer.Option(help="Calibration samples.")] = 64,
               seq_len: Annotated[int, typer.Option(help="Tokens per sample.")] = 128,
               measure: Annotated[str, typer.Option(help="none | cheapest | all (direct KL measurements)")] = "cheapest",
               name: Annotated[Optional[str], typer.Option(help="Recipe name.")] = None,
               out_path: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the recipe here (.yaml/.json).")] = None,
               as_json: JsonOpt = False):
    """Searches a mixed-precision recipe that minimises KL to the reference within a bit or latency budget."""
    from runtime.accelerators import get_profile
    from runtime.corpora import Corpus
    from runtime.models import load_model
    from runtime.search import DEFAULT_CANDIDATES, Budget, search

    with _input_errors():
        budget = Budget(bits_per_weight=bits, total_bytes=total_bytes, latency_us=latency_us)
        profile = get_profile(accelerator)
        loaded = load_model(model)
        with _progress("searching") as progress:
            result = search(loaded.model, loaded.tokenizer, Corpus.load(corpus), profile=profile, budget=budget,
                            granularity=granularity, candidates=candidate or DEFAULT_CANDIDATES, samples=samples,
                            seq_len=seq_len, measure=measure, name=name, model_name=str(model), progress=progress)
    recipe = result.recipe
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(recipe.to_json() if out_path.suffix == ".json" else recipe.to_yaml())
    a = result.allocation
    payload = {**result.to_dict(), "path": str(out_path) if out_path else None}
    payload["sensitivity"] = {k: v for k, v in payload["sensitivity"].items() if k != "ops"}  # per-op numbers: --out
    if as_json:
        _emit(True, payload)
        return
    table = Table(title=f"search {recipe.name} ({recipe.content_hash()[:19]}…)")
    table.add_column("measure")
    table.add_column("value")
    table.add_row("budget", f"{a.budget.label()} ({a.budget_bits / a.weights:.3f} bits/weight)")
    table.add_row("allocated", f"{a.bits_per_weight:.3f} bits/weight over {len(a.ops)} ops")
    table.add_row("predicted KL", f"{a.predicted_kl:.3e} nats/token")
    if a.predicted_latency_us is not None:
        table.add_row("predicted decode latency", f"{a.predicted_latency_us:.1f} µs/token on {result.accelerator}")
    table.add_row("weights per format", ", ".join(f"{c}: {n / a.weights:.1%}" for c, n in
                                                  sorted(a.weights_by_candidate().items(), key=lambda t: -t[1])))
    table.add_row("rules / mixed ops / ignored", f"{len(recipe.rules)} / "
                  f"{sum(bool(r.output_channels) for r in recipe.rules)} / {len(recipe.ignore)}")
    for c, why in result.excluded.items():
        table.add_row(f"excluded {c}", why)
    table.add_row("seconds", f"{result.seconds:.1f}")
    out.print(table)
    if out_path is None:
        out.print(recipe.to_yaml(), markup=False, highlight=False)


# --- demo -------------------------------------------------------------------------------------
@app.command("demo")
def demo_cmd(home: Annotated[Path, typer.Option(help="Where engines and reports go.")] = DEFAULT_HOME / "demo",
             max_samples: int = 48, seq_len: int = 256, as_json: JsonOpt = False):
    """Runs the chain on the reference model: bf16, fp8 W8A8, int8 W8A8, int4 g128, fp8 static, mixed."""
    from runtime.demo import run_demo

    with _input_errors():
        rows = run_demo(home=home, max_samples=max_samples, seq_len=seq_len, console=console)
    if as_json:
        _emit(True, rows)
        return
    from runtime.demo import demo_table

    out.print(demo_table(rows))


# --- serve ------------------------------------------------------------------------------------
@app.command("serve")
def serve_cmd(
    endpoint: Annotated[str, typer.Option(help="Endpoint name: whose deployments are served; `model` in requests.")]
    = "default",
    control_plane: Annotated[Optional[str], typer.Option(
        "--control-plane", help="Control plane URL; the endpoint's active, canary and shadow engines follow it.")] = None,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", envvar="POPS_SERVE_API_KEY", help="Control plane API key (submitter role or higher).")] = None,
    engine: Annotated[Optional[list[Path]], typer.Option(
        "--engine", "-e", help="Engine folder (repeatable). Standalone: the first serves; with a control plane: "
                               "local copies of its engines, matched by content hash.")] = None,
    canary: Annotated[Optional[Path], typer.Option(help="Standalone: an engine folder serving --canary-share.")] = None,
    canary_share: Annotated[float, typer.Option(help="Standalone: the canary's share of requests.")] = 0.0,
    shadow: Annotated[Optional[Path], typer.Option(
        help="Standalone: an engine compared on every request, serving none.")] = None,
    reference: Annotated[Optional[Path], typer.Option(
        help="Reference model folder (default: each engine's source model).")] = None,
    sample_share: Annotated[float, typer.Option(help="Share of active-engine requests re-run in reference precision.")]
    = 0.01,
    canary_sample_share: Annotated[float, typer.Option(help="Share of canary requests re-run in reference precision.")]
    = 0.1,
    poll_interval: Annotated[float, typer.Option(help="Seconds between deployment polls.")] = 5.0,
    samples_out: Annotated[Optional[Path], typer.Option(help="Also append every canary sample to this JSONL file.")]
    = None,
    device: Annotated[str, typer.Option(help="torch device for engines and the reference.")] = "cpu",
    fuse_siblings: Annotated[Optional[bool], typer.Option(
        "--fuse-siblings/--no-fuse-siblings",
        help="Run q/k/v and gate/up of one format as one GEMM each (default: on CUDA only).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
):
    """Serves OpenAI-style /v1/completions with shadow canaries; /healthz and /metrics beside it."""
    import uvicorn
    from pydantic import ValidationError

    from runtime.serving import ServeConfig, create_app

    with _input_errors():
        try:
            config = ServeConfig(endpoint=endpoint, control_plane_url=control_plane, api_key=api_key,
                                 engine_paths=engine or [], canary_path=canary, canary_share=canary_share,
                                 shadow_path=shadow, reference_path=reference, sample_share=sample_share,
                                 canary_sample_share=canary_sample_share, poll_interval_s=poll_interval,
                                 samples_out=samples_out, device=device, fuse_siblings=fuse_siblings)
        except ValidationError as exc:
            raise InputError.from_pydantic(exc) from None
    uvicorn.run(create_app(config), host=host, port=port, log_level="info")


def _tokenizer(model: Path):
    from transformers import AutoTokenizer

    if not (model / "config.json").is_file() and not (model / "tokenizer.json").is_file():
        raise InputError(f"no tokenizer at {str(model)!r}", loc=("model",))
    return AutoTokenizer.from_pretrained(str(model))


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
