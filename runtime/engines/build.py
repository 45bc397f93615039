"""Building engines: quantize a model by its plan and write a content-addressed folder atomically."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from runtime.accelerators import AcceleratorProfile
from runtime.engines.manifest import FORMAT_VERSION, casts_per_forward, kv_bytes_per_token, scale_sources, tensor_bytes
from runtime.errors import InputError
from runtime.formats import WIDE_FORMATS, get_format
from runtime.models import attention_layers, linear_ops, load_model
from runtime.modules import KVCacheQuant, MixedLinear, QuantLinear, kv_geometry
from runtime.plans import Plan, resolve
from runtime.recipes import Recipe

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
# Files of the source model folder an engine carries so that it loads on its own.
_CARRIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "vocab.json", "merges.txt")


@dataclass
class Engine:
    path: Path
    engine_id: str
    manifest: dict


def engine_id(model_hash: str, recipe_hash: str, accelerator: str, calibration_hash: str | None) -> str:
    """Content address of an engine: what it was built from, and the build's format version."""
    key = json.dumps([FORMAT_VERSION, model_hash, recipe_hash, accelerator, calibration_hash])
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def _sweep_orphans(out_root: Path) -> None:
    """Removes temporary folders of builds that died on this host (their process is gone)."""
    host = socket.gethostname()
    for tmp in out_root.glob(".tmp-*"):
        parts = tmp.name.split("-")
        # .tmp-<engine id>-<host>-<pid>-<random>; the host may itself contain dashes.
        try:
            pid = int(parts[-2])
        except (ValueError, IndexError):
            continue
        if "-".join(parts[2:-2]) != host:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


def _activation_scale(calibration, op, fmax: float) -> float | None:
    if op.activation in WIDE_FORMATS or op.scale_source == "dynamic":
        return None
    if calibration is None:
        raise InputError(f"{op.name} needs a calibrated {op.activation} input scale; pass a calibration",
                         loc=("calibration",))
    return calibration.activation_scale(op.name, fmax)


def _fmax(fmt: str) -> float:
    return get_format(fmt).fmax if fmt not in WIDE_FORMATS else 0.0


def _linear_owners(plan: Plan) -> set[str]:
    """Module names whose tensors are a linear op's weights: the ops, and the parts of mixed ops."""
    return {o.name for o in plan.linear_ops()} | {f"{o.name}.parts.{i}" for o in plan.linear_ops()
                                                  for i in range(len(o.parts))}


def _quantized_state(model, plan: Plan, calibration, progress: Callable | None) -> dict[str, torch.Tensor]:
    ops = {o.name: o for o in plan.linear_ops()}
    state: dict[str, torch.Tensor] = {}
    linears = linear_ops(model)
    for i, lin in enumerate(linears):
        op = ops[lin.name]
        w = lin.module.weight.detach()
        w = w.t() if lin.transposed else w
        if op.parts:  # per-output-feature mixed op: each part quantizes its rows in its own formats
            scales = [_activation_scale(calibration, p, _fmax(p.activation)) for p in op.parts]
            q = MixedLinear.from_float(w, lin.module.bias, op, scales)
        else:
            q = QuantLinear.from_float(w, lin.module.bias, op, _activation_scale(calibration, op, _fmax(op.activation)))
        for k, t in q.state_dict().items():
            state[f"{lin.name}.{k}"] = t.contiguous()
        if progress:
            progress(i + 1, len(linears))
    linear_names = {lin.name for lin in linears}
    for k, t in model.state_dict().items():
        owner = k.rsplit(".", 1)[0]
        if owner in linear_names:
            continue
        # Norm weights stay fp32 (sensitive); other wide tensors are stored in bf16.
        keep = t.dtype if "norm" in k or "ln_" in k else torch.bfloat16
        state[k] = t.detach().to(keep).contiguous().clone()
    kv_ops = {o.name[: -len(".kv_cache")]: o for o in plan.ops if o.op_kind == "kv_cache"}
    for attn_name in attention_layers(model):
        op = kv_ops.get(attn_name)
        if op is None or op.kv_cache in WIDE_FORMATS or op.scale_source == "dynamic":
            continue
        if calibration is None:
            raise InputError(f"{attn_name}: a static {op.kv_cache} KV cache needs calibrated scales",
                             loc=("calibration",))
        fmax = get_format(op.kv_cache).fmax
        heads, _ = kv_geometry(model.get_submodule(attn_name), model.config)
        k_scale, v_scale = calibration.kv_scales(attn_name, fmax)
        if len(k_scale) != heads or len(v_scale) != heads:
            raise InputError(f"{attn_name}: calibration has {len(k_scale)} KV-head scales, the model {heads}",
                             loc=("calibration",))
        state[f"{attn_name}.kv_quant.k_scale"] = torch.tensor(k_scale, dtype=torch.float32)
        state[f"{attn_name}.kv_quant.v_scale"] = torch.tensor(v_scale, dtype=torch.float32)
    return state


def build(model_path: str | os.PathLike, recipe: Recipe, profile: AcceleratorProfile, *,
          out_root: str | os.PathLike, calibration=None, progress: Callable[[int, int], None] | None = None) -> Engine:
    """Builds (or finds, by content hash) the engine of a model under a recipe for an accelerator."""
    loaded = load_model(model_path)
    model = loaded.model
    plan = resolve(recipe, model, profile)
    cal_hash = getattr(calibration, "content_hash", None)
    eid = engine_id(loaded.content_hash, recipe.content_hash(), profile.name, cal_hash)
    out_root = Path(out_root)
    final = out_root / eid
    if (final / MANIFEST).is_file():
        return Engine(final, eid, json.loads((final / MANIFEST).read_text()))
    out_root.mkdir(parents=True, exist_ok=True)
    state = _quantized_state(model, plan, calibration, progress)
    heads, head_dim = kv_geometry(model.get_submodule(attention_layers(model)[0]), model.config) \
        if attention_layers(model) else (0, 0)
    cal_label = None
    if calibration is not None:
        meta = getattr(calibration, "metadata", None) or {}
        cal_label = f"corpus {meta.get('corpus_hash', meta.get('corpus', '?'))} ({cal_hash})"
    manifest = {
        "engine_id": eid,
        "format_version": FORMAT_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {"path": str(model_path), "content_hash": loaded.content_hash,
                  "architecture": type(model).__name__},
        "recipe": {"name": recipe.name, "content_hash": recipe.content_hash(), "document": recipe.to_dict()},
        "accelerator": profile.name,
        "calibration": None if calibration is None else {"content_hash": cal_hash, "label": cal_label},
        "plan": plan.model_dump(mode="json"),
        "fallbacks": [{"op": name, **fb.model_dump()} for name, fb in plan.fallbacks()],
        "scale_sources": scale_sources(plan, cal_label),
        # What calibration saw at each op's input: serving divides observed amax by it (the amax ratio).
        "calibrated_amax": {} if calibration is None else {
            o.name: calibration.tensors[o.name].observer_amax for o in plan.linear_ops() if o.name in calibration.tensors},
        "bytes": {**tensor_bytes(state, _linear_owners(plan)), "kv_cache_per_token": kv_bytes_per_token(plan, heads, head_dim)},
        "casts_per_forward": casts_per_forward(plan),
        "summary": plan.summary(),
    }
    # Write everything under a temporary name in the same folder, then rename: a crash never leaves half an engine.
    _sweep_orphans(out_root)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{eid}-{socket.gethostname()}-{os.getpid()}-", dir=out_root))
    os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; engines are read by servers running as other users
    try:
        save_file(state, str(tmp / WEIGHTS), metadata={"engine_id": eid})
        for name in _CARRIED:
            src = Path(model_path) / name
            if src.is_file():
                shutil.copy2(src, tmp / name)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MANIFEST).is_file():  # lost a race only if the other builder finished
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return Engine(final, eid, json.loads((final / MANIFEST).read_text()))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Engine(final, eid, manifest)
