"""Tiny models, a tokenizer and corpora shared by the runtime tests.

`tiny_llama` is a LlamaForCausalLM (nn.Linear projections, grouped KV heads); `tiny_gpt2` is a
GPT2LMHeadModel (transformers Conv1D projections with [in, out] weights and a fused c_attn).
Both use `tiny_tokenizer`'s vocabulary and are rebuilt per test so a test may perturb them.
"""
from __future__ import annotations

import json

import pytest
import torch

# Several scripts and some code, so coverage and per-slice tests have something to find.
TRAINING_TEXTS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun.",
    "Calibration runs a corpus through the model and records the range of every activation.",
    "Precision is versioned deployment state, not a storage flag.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.",
    "敏捷的棕色狐狸跳过了懒狗。今天天气很好。",
    "빠른 갈색 여우가 게으른 개를 뛰어넘습니다.",
    "def add(a, b):\n    return a + b\n",
    "for (int i = 0; i < n; i++) { total += x[i]; }",
]



@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer (any text encodes, no unknowns) with <s>, </s>, <pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(TRAINING_TEXTS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture
def tiny_llama(tiny_tokenizer):
    """A 2-layer LlamaForCausalLM: hidden 64, 4 query heads, 2 KV heads of dim 16, fp32, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1234)
    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tiny_tokenizer.pad_token_id, bos_token_id=tiny_tokenizer.bos_token_id,
        eos_token_id=tiny_tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_gpt2(tiny_tokenizer):
    """A 2-layer GPT2LMHeadModel: n_embd 64, 4 heads, Conv1D projections, fp32, eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(4321)
    config = GPT2Config(
        vocab_size=len(tiny_tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=512,
        bos_token_id=tiny_tokenizer.bos_token_id, eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config).eval()


@pytest.fixture
def tiny_llama_dir(tmp_path, tiny_llama, tiny_tokenizer):
    """`tiny_llama` and `tiny_tokenizer` saved as a local model folder (loads with AutoModelForCausalLM)."""
    path = tmp_path / "tiny-llama"
    tiny_llama.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny_engine(tmp_path, tiny_llama_dir):
    """tiny_engine(recipe) -> the folder of `tiny_llama` built as an engine for the CPU profile."""
    from runtime.accelerators import get_profile
    from runtime.engines import build

    return lambda recipe: build(tiny_llama_dir, recipe, get_profile("cpu"), out_root=tmp_path / "engines").path


@pytest.fixture
def compiled_calls():
    """compiled_calls(model, ids, op) -> the calls of custom op `op` in torch.compile's graph of the model's
    logits, which must trace without a graph break and give eager's logits."""
    def run(model, ids, op):
        calls = []

        def backend(gm, example_inputs):
            calls.extend(n for n in gm.graph.nodes if n.op == "call_function" and n.target is op._opoverload)
            return gm

        torch._dynamo.reset()
        with torch.no_grad():
            explained = torch._dynamo.explain(lambda x: model(input_ids=x, use_cache=False).logits)(ids)
            assert explained.graph_break_count == 0
            compiled = torch.compile(lambda x: model(input_ids=x, use_cache=False).logits, backend=backend)
            assert torch.equal(compiled(ids), model(input_ids=ids, use_cache=False).logits)
        return calls
    return run


CORPUS_LINES = [
    {"text": "The quick brown fox jumps over the lazy dog.", "slice": "english", "tags": ["prose"]},
    {"text": "Calibration records the range of every activation in the model.", "slice": "english"},
    {"text": "Precision is deployment state; it is versioned and rolled out in stages.", "slice": "english"},
    {"text": "Быстрая коричневая лиса прыгает через ленивую собаку.", "slice": "russian"},
    {"text": "Ленивая собака спит на солнце весь день.", "slice": "russian"},
    {"text": "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n", "slice": "code", "tags": ["python"]},
    {"text": "for (int i = 0; i < n; i++) {\n  total += x[i];\n}\n", "slice": "code", "tags": ["c"]},
    {"text": " ".join(["the model keeps every activation in range"] * 12), "slice": "english"},
]


@pytest.fixture
def tiny_corpus_path(tmp_path):
    """A small JSONL corpus with three slices (english, russian, code) of mixed lengths."""
    path = tmp_path / "tiny.jsonl"
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in CORPUS_LINES), encoding="utf-8")
    return path


@pytest.fixture
def tiny_corpus(tiny_corpus_path):
    from runtime.corpora import Corpus

    return Corpus.load(tiny_corpus_path)
