"""The committed reference model loads, has the documented shapes and is a trained LM."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "assets" / "models" / "pops-llama-tiny"
EVAL_CORPUS = ROOT / "assets" / "corpora" / "eval-en.jsonl"
SIZE_BUDGET_BYTES = 10_000_000
GROUP_SIZE = 128  # int4 group size: every Linear dim must be a multiple of it
PROMPT = 'def read_config(path):\n    """'


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(MODEL_DIR)


@pytest.fixture(scope="module")
def training_log():
    return json.loads((MODEL_DIR / "training_log.json").read_text())


def test_config_has_the_documented_architecture(reference):
    config = reference[0].config
    assert config.architectures == ["LlamaForCausalLM"]
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (256, 768, 4)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (8, 4, 32)
    assert config.vocab_size == 3072
    assert config.tie_word_embeddings is False
    assert config.max_position_embeddings >= 2048


def test_every_linear_dim_is_a_multiple_of_the_int4_group(reference):
    model = reference[0]
    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert len(linears) == 4 * 7 + 1  # q k v o gate up down per layer, plus lm_head
    for name, linear in linears.items():
        assert linear.in_features % GROUP_SIZE == 0, name
        assert linear.out_features % GROUP_SIZE == 0, name
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()


def test_folder_fits_the_budget_with_bf16_weights():
    from safetensors import safe_open

    total = sum(p.stat().st_size for p in MODEL_DIR.iterdir())
    assert total <= SIZE_BUDGET_BYTES
    with safe_open(MODEL_DIR / "model.safetensors", framework="pt") as weights:
        dtypes = {weights.get_slice(name).get_dtype() for name in weights.keys()}
    assert dtypes == {"BF16"}
    for name in ("README.md", "training_log.json", "tokenizer.json", "config.json"):
        assert (MODEL_DIR / name).is_file(), name


def test_tokenizer_specials_match_the_config_and_round_trip(reference):
    model, tokenizer = reference
    config = model.config
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        config.bos_token_id, config.eos_token_id, config.pad_token_id)
    assert tokenizer.unk_token == "<unk>"
    assert len(tokenizer) <= config.vocab_size
    for text in ["for key, value in items.items():\n\tpass", "Ünïcödé: 天气, погода, طقس, καιρός, मौसम"]:
        ids = tokenizer(text).input_ids
        assert ids[0] == tokenizer.bos_token_id
        assert tokenizer.decode(ids, skip_special_tokens=True) == text  # byte-level: lossless


def test_greedy_generation_is_deterministic(reference):
    model, tokenizer = reference
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    runs = [
        model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])
    completion = tokenizer.decode(runs[0][0, ids.shape[1]:], skip_special_tokens=True)
    assert runs[0].shape[1] > ids.shape[1] and completion.strip()


def _held_out_samples(tokenizer, per_slice: int = 2, max_tokens: int = 256) -> list[torch.Tensor]:
    rows = [json.loads(line) for line in EVAL_CORPUS.read_text(encoding="utf-8").splitlines()]
    samples = []
    for slice_ in ("en-short", "en-long", "code"):
        for row in [r for r in rows if r["slice"] == slice_][:per_slice]:
            samples.append(tokenizer(row["text"], return_tensors="pt").input_ids[0, :max_tokens])
    return samples


def test_heldout_perplexity_is_far_below_a_unigram_model(reference, training_log):
    model, tokenizer = reference
    # Add-one smoothed unigram over the train split's token counts, as the trainer computes it.
    counts = np.asarray(training_log["train_token_counts"], dtype=np.float64)
    log_unigram = torch.from_numpy(np.log(counts + 1) - np.log(counts.sum() + counts.size))
    model_nll = unigram_nll = 0.0
    n_targets = 0
    with torch.no_grad():
        for ids in _held_out_samples(tokenizer):
            logits = model(input_ids=ids[None, :-1]).logits[0].double()
            model_nll += float(F.cross_entropy(logits, ids[1:], reduction="sum"))
            unigram_nll -= float(log_unigram[ids[1:]].sum())
            n_targets += ids.numel() - 1
    model_ppl = math.exp(model_nll / n_targets)
    unigram_ppl = math.exp(unigram_nll / n_targets)
    assert n_targets > 500
    assert unigram_ppl / model_ppl > 10, (model_ppl, unigram_ppl)


def test_training_log_records_the_run(training_log):
    final = training_log["final"]
    assert final["unigram_ppl"] / final["heldout_ppl"] > 10
    assert training_log["steps"] >= 1000
    assert training_log["loss_curve"][-1]["train_loss"] < training_log["loss_curve"][0]["train_loss"]
    assert {"torch", "transformers", "tokenizers"} <= set(training_log["versions"])
