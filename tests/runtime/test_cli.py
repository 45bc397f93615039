"""The `pops` runtime commands: tables for people, --json for scripts, exit codes scripts rely on."""
import json

import pytest
from typer.testing import CliRunner

from runtime import cli
from runtime.cli import EXIT_BAD_INPUT, app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _wide_tables(monkeypatch):
    """Tables are sized to the terminal; the test runner has none, so give them room."""
    monkeypatch.setattr(cli.out, "width", 300)


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_recipe_validate_preset_ok():
    r = _run("recipe", "validate", "fp8_w8a8", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["content_hash"].startswith("sha256:")


def test_recipe_validate_names_field_and_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndefault:\n  weights: {format: fp6}\n")
    r = _run("recipe", "validate", bad, "--json")
    assert r.exit_code == EXIT_BAD_INPUT
    errors = json.loads(r.stdout)["errors"]
    assert errors[0]["loc"] == ["default", "weights", "format"]


def test_recipe_validate_against_model(tmp_path, tiny_llama_dir):
    rec = tmp_path / "g128.yaml"
    rec.write_text("name: g128\ndefault:\n  weights: {format: int4, strategy: group, group_size: 128}\n")
    r = _run("recipe", "validate", rec, "--model", tiny_llama_dir)
    assert r.exit_code == EXIT_BAD_INPUT
    assert "group_size 128 does not divide the input dimension 64" in r.output


def test_unknown_recipe_is_bad_input():
    r = _run("recipe", "validate", "no-such-recipe")
    assert r.exit_code == EXIT_BAD_INPUT and "neither a recipe file nor a preset" in r.output


def test_plan_json_lists_fallbacks(tiny_llama_dir):
    r = _run("plan", "-m", tiny_llama_dir, "-r", "fp8_w8a8", "-a", "a100", "--json")
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    op = next(o for o in plan["ops"] if o["name"] == "model.layers.0.mlp.up_proj")
    assert op["activation"] == "bf16" and op["fallbacks"][0]["requested"] == "fp8_e4m3"


def test_plan_table_for_people(tiny_llama_dir):
    r = _run("plan", "-m", tiny_llama_dir, "-r", "int8_w8a8", "-a", "h100")
    assert r.exit_code == 0 and "kernels.gemm_int8" in r.stdout and "0 fallback(s)" in r.stdout


def test_corpus_add_stores_content_addressed(tmp_path, tiny_corpus_path, tiny_llama_dir):
    r = _run("corpus", "add", tiny_corpus_path, "--model", tiny_llama_dir, "--home", tmp_path / "home", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["path"].endswith(doc["content_hash"].split(":")[1] + ".jsonl")
    assert doc["profile"]["samples"] > 0


def test_corpus_add_refuses_non_jsonl(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text("not json\n")
    r = _run("corpus", "add", f, "--home", tmp_path / "home")
    assert r.exit_code == EXIT_BAD_INPUT and "line" in r.output


def test_calibrate_then_build_static_engine(tmp_path, tiny_llama_dir, tiny_corpus_path):
    rec = tmp_path / "static.yaml"
    rec.write_text("name: static\ncalibration: {corpus: tiny, samples: 4, seq_len: 32}\n"
                   "default:\n  weights: {format: fp8_e4m3, strategy: channel}\n"
                   "  input_activations: {format: fp8_e4m3}\nkv_cache_scheme: {format: fp8_e4m3}\n")
    cal = tmp_path / "cal"
    r = _run("calibrate", "-m", tiny_llama_dir, "-c", tiny_corpus_path, "-o", cal, "-r", rec, "--json")
    assert r.exit_code == 0, r.output
    r = _run("build", "-m", tiny_llama_dir, "-r", rec, "--calibration", cal, "--out-root", tmp_path / "e", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["casts_per_forward"]["kv_quantize"] == 4
    r = _run("build", "-m", tiny_llama_dir, "-r", rec, "--out-root", tmp_path / "e2")
    assert r.exit_code == EXIT_BAD_INPUT and "needs a calibrated fp8_e4m3 input scale" in r.output
