"""Loading engines: swap quantized modules into the architecture and load the saved tensors."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from runtime.engines.build import MANIFEST, WEIGHTS
from runtime.errors import InputError
from runtime.formats import WIDE_FORMATS
from runtime.models import attention_layers, linear_ops
from runtime.modules import KVCacheQuant, MixedLinear, QuantLinear, attach, kv_geometry
from runtime.modules.attention import use_decode_kernel
from runtime.modules.fused_linear import fuse_siblings
from runtime.modules.gated_mlp import fuse_gated_mlps
from runtime.modules.quant_linear import prepare_w4a16
from runtime.plans import Plan


@dataclass
class LoadedEngine:
    model: nn.Module
    tokenizer: object
    manifest: dict
    plan: Plan

    @property
    def engine_id(self) -> str:
        return self.manifest["engine_id"]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def load_engine(path: str | os.PathLike, device: str | torch.device = "cpu",
                dtype: torch.dtype | None = None, fuse: bool | None = None) -> LoadedEngine:
    """Loads an engine folder into a model that generates; wide tensors run in `dtype` (fp32 on CPU, bf16 on GPU).

    `fuse` runs sibling ops of the same numerics (q/k/v, gate/up) as one GEMM each (runtime.modules.fused_linear);
    by default on CUDA, where the ops run kernels whose narrow GEMMs and launches that saves. The CPU's reference
    paths widen a group's weights at once, and at Llama-3-8B shapes that ran slower fused, not faster
    (bench/results/fused-siblings-cpu-llama8b.json). A fused int4 gate and up also apply their MLP's SiLU and
    product in the GEMM (runtime.modules.gated_mlp). On CUDA int4 GEMMs also keep group-major copies of
    their scales and zeros for the tensor-core and mma kernels, and note whether their zeros are integers
    (runtime.modules.quant_linear.prepare_w4a16)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise InputError(f"no engine at {str(path)!r} (manifest.json missing)", loc=("engine_path",))
    manifest = json.loads((path / MANIFEST).read_text())
    plan = Plan.model_validate(manifest["plan"])
    dtype = dtype or (torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32)
    config = AutoConfig.from_pretrained(str(path))
    config.tie_word_embeddings = False  # the engine stores the output projection on its own
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = load_file(str(path / WEIGHTS))
    ops = {o.name: o for o in plan.linear_ops()}
    for lin in linear_ops(model):
        op = ops[lin.name]
        _set_module(model, lin.name, (MixedLinear if op.parts else QuantLinear).empty_like_state(op, state, f"{lin.name}."))
    for o in plan.ops:
        if o.op_kind != "kv_cache" or o.kv_cache in WIDE_FORMATS:
            continue
        attn_name = o.name[: -len(".kv_cache")]
        attn = model.get_submodule(attn_name)
        heads, head_dim = kv_geometry(attn, config)
        dynamic = o.scale_source == "dynamic"
        kvq = KVCacheQuant(o.kv_cache, heads, head_dim, dynamic=dynamic,
                           k_scale=None if dynamic else state[f"{attn_name}.kv_quant.k_scale"].tolist(),
                           v_scale=None if dynamic else state[f"{attn_name}.kv_quant.v_scale"].tolist())
        attach(attn, kvq)
    # Linear ops and KV quantizers took their tensors from `state` above; the rest (embeddings, norms)
    # load here, in the serving dtype.
    quantized = set(ops) | {f"{name}.parts.{i}" for name, o in ops.items() for i in range(len(o.parts))}
    wide = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()
            if k.rsplit(".", 1)[0] not in quantized and ".kv_quant." not in k}
    _, unexpected = model.load_state_dict(wide, strict=False, assign=True)
    if unexpected:
        raise InputError(f"engine tensors the model does not have: {unexpected[:5]}", loc=("engine_path",))
    # Non-persistent buffers (rotary inv_freq) are not in the file: materialise them from the config.
    _init_nonpersistent(model, config, dtype)
    still_meta = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if still_meta:
        raise InputError(f"engine is missing tensors: {still_meta[:5]}", loc=("engine_path",))
    for lin in linear_ops(model):
        q = model.get_submodule(lin.name)
        if q.bias is not None:
            q.bias = q.bias.to(dtype)
    model.to(device).eval()
    if (fuse if fuse is not None else torch.device(device).type == "cuda"):
        fuse_siblings(model)
        fuse_gated_mlps(model)
    if torch.device(device).type == "cuda":
        prepare_w4a16(model)
    if torch.device(device).type == "cuda" and getattr(config, "_attn_implementation", None) in (None, "sdpa"):
        use_decode_kernel(model)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return LoadedEngine(model, tokenizer, manifest, plan)


def _init_nonpersistent(model: nn.Module, config, dtype: torch.dtype) -> None:
    for name, mod in list(model.named_modules()):
        meta = [leaf for leaf, b in mod.named_buffers(recurse=False) if b.is_meta]
        if not meta:
            continue
        # Modules holding non-persistent buffers (rotary embeddings) rebuild them from the config.
        with torch.device("cpu"):
            fresh = type(mod)(config=config)
        for leaf in meta:
            src = getattr(fresh, leaf)
            mod.register_buffer(leaf, src.clone(), persistent=False)
        for attr in ("original_inv_freq",):
            if hasattr(fresh, attr):
                setattr(mod, attr, getattr(fresh, attr))
