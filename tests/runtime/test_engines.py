"""Build -> load round trips on Llama-style and GPT-2-style models, atomic writes, content addressing."""
import json

import pytest
import torch

from runtime.accelerators import get_profile
from runtime.engines import build, load_engine
from runtime.errors import InputError
from runtime.recipes import Recipe, preset

# Relative error of engine logits against the fp32 model on random weights; bounds leave ~3x headroom.
RECIPES = [
    ("bf16", preset("bf16"), 0.02),
    ("fp8_w8a8", preset("fp8_w8a8"), 0.15),
    ("int8_w8a8", preset("int8_w8a8"), 0.05),
    ("int4_g32", Recipe.from_dict({"name": "int4g32", "default": {"weights": {
        "format": "int4", "strategy": "group", "group_size": 32}}}), 0.5),
    ("fp8_weight_only", preset("fp8_weight_only"), 0.15),
]


def _save(model, tokenizer, path):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("name, recipe, bound", RECIPES, ids=[r[0] for r in RECIPES])
def test_build_load_round_trip(request, tmp_path, tiny_tokenizer, arch, name, recipe, bound):
    model = request.getfixturevalue(arch)
    src = _save(model, tiny_tokenizer, tmp_path / arch)
    engine = build(src, recipe, get_profile("cpu"), out_root=tmp_path / "engines")
    loaded = load_engine(engine.path)
    ids = torch.randint(3, len(tiny_tokenizer), (2, 24))
    with torch.no_grad():
        ref = model(ids).logits
        out = loaded.model(ids).logits
    assert torch.isfinite(out).all()
    rel = _rel(out, ref)
    assert 0 < rel < bound, f"{arch}/{name}: relative logit error {rel:.4f}"
    gen = loaded.model.generate(ids[:1, :5], max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert gen.shape == (1, 11)
    m = loaded.manifest
    assert m["engine_id"] == engine.engine_id == engine.path.name
    assert m["bytes"]["total"] == sum(m["bytes"][k] for k in ("weights", "scales", "wide"))
    assert m["recipe"]["content_hash"] == recipe.content_hash()


def test_bytes_shrink_with_bits(tmp_path, tiny_llama, tiny_tokenizer):
    src = _save(tiny_llama, tiny_tokenizer, tmp_path / "m")
    sizes = {}
    for name, recipe, _ in RECIPES[:4]:
        sizes[name] = build(src, recipe, get_profile("cpu"), out_root=tmp_path / "e").manifest["bytes"]
    assert sizes["bf16"]["weights"] == 0
    assert sizes["int4_g32"]["weights"] * 2 == sizes["int8_w8a8"]["weights"] == sizes["fp8_w8a8"]["weights"]
    assert sizes["int4_g32"]["total"] < sizes["int8_w8a8"]["total"] < sizes["bf16"]["total"]
    assert sizes["int4_g32"]["linear_ops"] < sizes["int8_w8a8"]["linear_ops"] < sizes["bf16"]["linear_ops"]


def test_manifest_records_fallbacks_scale_sources_and_casts(tmp_path, tiny_llama, tiny_tokenizer):
    src = _save(tiny_llama, tiny_tokenizer, tmp_path / "m")
    recipe = Recipe.from_dict({"name": "fp8kv", "default": preset("fp8_w8a8").default.model_dump(),
                               "kv_cache_scheme": {"format": "fp8_e4m3", "dynamic": True}})
    m = build(src, recipe, get_profile("a100"), out_root=tmp_path / "e").manifest
    assert m["fallbacks"] and all(f["reason"] for f in m["fallbacks"])
    assert {f["field"] for f in m["fallbacks"]} == {"input_activations", "compute"}
    assert m["scale_sources"]["model.layers.0.self_attn.kv_cache"] == "kv: dynamic per-head amax"
    assert m["casts_per_forward"]["kv_quantize"] == 4 and m["casts_per_forward"]["activation_quantize"] == 0
    # 2 layers x (k, v) x 2 KV heads x head dim 16 x 1 byte
    assert m["bytes"]["kv_cache_per_token"] == 2 * 2 * 2 * 16


def test_kv_cache_quantization_changes_attention_but_stays_close(tmp_path, tiny_llama, tiny_tokenizer):
    src = _save(tiny_llama, tiny_tokenizer, tmp_path / "m")
    recipe = Recipe.from_dict({"name": "kv", "kv_cache_scheme": {"format": "fp8_e4m3", "dynamic": True}})
    loaded = load_engine(build(src, recipe, get_profile("cpu"), out_root=tmp_path / "e").path)
    ids = torch.randint(3, len(tiny_tokenizer), (1, 32))
    with torch.no_grad():
        rel = _rel(loaded.model(ids).logits, tiny_llama(ids).logits)
    assert 0 < rel < 0.1
    kvq = loaded.model.model.layers[0].self_attn.kv_quant
    assert kvq.numel > 0


def test_same_inputs_give_same_engine_and_no_rewrite(tmp_path, tiny_llama, tiny_tokenizer):
    src = _save(tiny_llama, tiny_tokenizer, tmp_path / "m")
    a = build(src, preset("int8_w8a8"), get_profile("h100"), out_root=tmp_path / "e")
    mtime = (a.path / "model.safetensors").stat().st_mtime_ns
    b = build(src, preset("int8_w8a8"), get_profile("h100"), out_root=tmp_path / "e")
    assert a.engine_id == b.engine_id and (b.path / "model.safetensors").stat().st_mtime_ns == mtime
    c = build(src, preset("int8_w8a8"), get_profile("a100"), out_root=tmp_path / "e")
    assert c.engine_id != a.engine_id


def test_failed_build_leaves_nothing_visible(tmp_path, tiny_llama, tiny_tokenizer):
    src = _save(tiny_llama, tiny_tokenizer, tmp_path / "m")

    def crash(done, total):
        if done == 3:
            raise RuntimeError("worker died")

    with pytest.raises(RuntimeError, match="worker died"):
        build(src, preset("fp8_w8a8"), get_profile("cpu"), out_root=tmp_path / "e", progress=crash)
    assert list((tmp_path / "e").iterdir()) == []


def test_static_activations_without_calibration_are_refused(tmp_path, tiny_llama, tiny_tokenizer):
    src = _save(tiny_llama, tiny_tokenizer, tmp_path / "m")
    recipe = Recipe.from_dict({"name": "static", "calibration": {"corpus": "c"}, "default": {
        "weights": {"format": "fp8_e4m3", "strategy": "channel"}, "input_activations": {"format": "fp8_e4m3"}}})
    with pytest.raises(InputError, match="needs a calibrated fp8_e4m3 input scale"):
        build(src, recipe, get_profile("cpu"), out_root=tmp_path / "e")
    assert list((tmp_path / "e").iterdir()) == []


def test_load_refuses_a_folder_without_manifest(tmp_path):
    with pytest.raises(InputError, match="manifest.json missing"):
        load_engine(tmp_path)


def test_manifest_is_plain_json(tmp_path, tiny_llama, tiny_tokenizer):
    src = _save(tiny_llama, tiny_tokenizer, tmp_path / "m")
    e = build(src, preset("int8_w8a8"), get_profile("cpu"), out_root=tmp_path / "e")
    doc = json.loads((e.path / "manifest.json").read_text())
    assert doc["plan"]["accelerator"] == "cpu" and doc["model"]["architecture"] == "LlamaForCausalLM"


def test_orphaned_temporary_folders_of_dead_builds_are_swept(tmp_path, tiny_llama, tiny_tokenizer):
    import os
    import socket
    import subprocess

    src = _save(tiny_llama, tiny_tokenizer, tmp_path / "m")
    out = tmp_path / "e"
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    orphan = out / f".tmp-abc-{host}-{dead.pid}-x1y2"
    live = out / f".tmp-abc-{host}-{os.getpid()}-z3"
    for d in (orphan, live):
        d.mkdir(parents=True)
    engine = build(src, preset("int8_w8a8"), get_profile("cpu"), out_root=out)
    assert not orphan.exists() and live.exists()
    assert oct(engine.path.stat().st_mode & 0o777) == "0o755"
