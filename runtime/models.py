"""Loading transformers causal LMs and taking inventory of the ops a recipe can address."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from runtime.errors import InputError

# Files whose bytes define a model; anything else in the folder (READMEs, logs) does not change its hash.
_MODEL_FILES = (".json", ".safetensors", ".bin", ".model", ".txt")


@dataclass
class LinearOp:
    """One matmul a recipe can address: an nn.Linear or a GPT-2 Conv1D (whose weight is [in, out])."""

    name: str
    module: nn.Module
    in_features: int
    out_features: int
    transposed: bool  # Conv1D stores its weight as [in, out]
    is_lm_head: bool

    @property
    def class_name(self) -> str:
        return "Linear"


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    path: str
    content_hash: str


def _is_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf")


def linear_ops(model: nn.Module) -> list[LinearOp]:
    """Every linear op of a causal LM, in module order; the output projection is flagged as the logits op."""
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    ops = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            ops.append(LinearOp(name, m, m.in_features, m.out_features, False, m is out_emb))
        elif _is_conv1d(m):
            ops.append(LinearOp(name, m, m.weight.shape[0], m.nf, True, False))
        elif getattr(m, "is_quantized_linear", False):
            ops.append(LinearOp(name, m, m.in_features, m.out_features, False, m.is_lm_head))
    return ops


# Linear ops that transformers' decoder layers call one after another on the same input, by leaf name.
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def sibling_names(names: Iterable[str]) -> list[list[str]]:
    """Groups of op names that SIBLINGS pairs (one parent, every leaf present), in the order its layer calls them."""
    present = list(dict.fromkeys(names))
    known = set(present)
    groups = []
    for name in present:
        parent, _, leaf = name.rpartition(".")
        prefix = f"{parent}." if parent else ""
        for leaves in SIBLINGS:
            group = [prefix + x for x in leaves]
            if leaf == leaves[0] and all(n in known for n in group):
                groups.append(group)
    return groups


def sibling_groups(model: nn.Module) -> list[list[str]]:
    """Names of a model's sibling linear ops (SIBLINGS), a group per parent module."""
    return sibling_names(op.name for op in linear_ops(model))


def norm_ops(model: nn.Module) -> list[str]:
    """Names of normalisation modules (kept wide: sensitive ops)."""
    return [n for n, m in model.named_modules()
            if n and ("norm" in type(m).__name__.lower() or n.split(".")[-1].startswith("ln_"))]


def attention_layers(model: nn.Module) -> list[str]:
    """Names of attention modules, each of which owns a KV cache."""
    names = []
    for n, m in model.named_modules():
        tn = type(m).__name__
        if tn.endswith("Attention") and n:
            names.append(n)
    return names


def content_hash(path: str | os.PathLike) -> str:
    """sha256 over the model folder's defining files, by relative name and bytes."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in _MODEL_FILES):
        h.update(str(f.relative_to(root)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def load_model(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Loads a local transformers causal-LM folder with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor loading bars drown the progress that matters
    p = Path(path)
    if not (p / "config.json").is_file():
        raise InputError(f"no transformers model at {str(path)!r} (config.json missing)", loc=("model_path",))
    model = AutoModelForCausalLM.from_pretrained(str(p), dtype=dtype)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(p))
    return LoadedModel(model, tokenizer, str(p), content_hash(p))
