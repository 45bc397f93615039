"""The committed corpora parse, carry their documented slices and hold what they claim."""

from __future__ import annotations

import json
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORPORA = ROOT / "assets" / "corpora"
MODEL_DIR = ROOT / "assets" / "models" / "pops-llama-tiny"
LANGS = ["zh", "ja", "ru", "ar", "el", "hi"]
EXPECTED_SLICES = {
    "calib-en-short.jsonl": {"en-short"},
    "eval-en.jsonl": {"en-short", "en-long", "code"},
    "traffic-multiscript.jsonl": {f"{lang}-{size}" for lang in LANGS for size in ("short", "long")}
    | {"code-mixed"},
}
HAN = [(0x4E00, 0x9FFF)]
KANA = [(0x3040, 0x309F), (0x30A0, 0x30FF)]
SCRIPT_RANGES = {
    "zh": HAN,
    "ja": HAN + KANA,
    "ru": [(0x0400, 0x04FF)],
    "ar": [(0x0600, 0x06FF)],
    "el": [(0x0370, 0x03FF), (0x1F00, 0x1FFF)],
    "hi": [(0x0900, 0x097F)],
}


def in_ranges(char: str, ranges) -> bool:
    return any(lo <= ord(char) <= hi for lo, hi in ranges)


def letters(text: str) -> list[str]:
    """Letters and combining marks (Devanagari vowel signs are marks, not letters)."""
    return [c for c in text if unicodedata.category(c)[0] in "LM"]


def load(name: str) -> list[dict]:
    rows = []
    for number, line in enumerate((CORPORA / name).read_text(encoding="utf-8").splitlines(), 1):
        row = json.loads(line)
        assert set(row) == {"text", "slice", "tags"}, f"{name}:{number}"
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def n_tokens():
    from transformers import AutoTokenizer

    backend = AutoTokenizer.from_pretrained(MODEL_DIR).backend_tokenizer
    return lambda text: len(backend.encode(text).ids)  # <s> included, as the runtime counts


@pytest.mark.parametrize("name", sorted(EXPECTED_SLICES))
def test_corpus_parses_with_the_documented_slices(name):
    rows = load(name)
    assert 100 <= len(rows) <= 300
    for row in rows:
        assert isinstance(row["text"], str) and row["text"].strip()
        assert isinstance(row["tags"], list) and all(isinstance(t, str) for t in row["tags"])
    assert {row["slice"] for row in rows} == EXPECTED_SLICES[name]
    assert len({row["text"] for row in rows}) == len(rows)


def test_corpora_stay_small():
    assert sum(p.stat().st_size for p in CORPORA.glob("*.jsonl")) < 2_000_000


def test_calibration_is_short_english(n_tokens):
    rows = load("calib-en-short.jsonl")
    assert len(rows) == 256
    for row in rows:
        assert n_tokens(row["text"]) <= 128
        chars = letters(row["text"])
        assert sum(c.isascii() for c in chars) >= 0.95 * len(chars)
        assert "lang:en" in row["tags"]


def test_eval_is_held_out_with_mixed_lengths(n_tokens):
    rows = load("eval-en.jsonl")
    assert len(rows) == 128
    lengths = {s: [n_tokens(r["text"]) for r in rows if r["slice"] == s] for s in EXPECTED_SLICES["eval-en.jsonl"]}
    assert max(lengths["en-short"]) <= 128
    assert all(256 <= n <= 1024 for n in lengths["en-long"])
    assert all(n <= 1024 for n in lengths["code"]) and max(lengths["code"]) > 512
    # The train/held-out split is by source file: no source feeds both corpora.
    sources = lambda corpus: {t for r in corpus for t in r["tags"] if t.startswith("source:")}  # noqa: E731
    calib = load("calib-en-short.jsonl")
    assert not sources(rows) & sources(calib)
    assert not {r["text"] for r in rows} & {r["text"] for r in calib}


@pytest.mark.parametrize("lang", LANGS)
def test_traffic_text_is_in_the_script_its_slice_claims(lang):
    rows = [r for r in load("traffic-multiscript.jsonl") if r["slice"].startswith(f"{lang}-")]
    assert len(rows) >= 10
    for row in rows:
        chars = letters(row["text"])
        assert sum(in_ranges(c, SCRIPT_RANGES[lang]) for c in chars) >= 0.95 * len(chars), row["slice"]
        assert f"lang:{lang}" in row["tags"]
        kana = sum(in_ranges(c, KANA) for c in chars)
        if lang == "ja":
            assert kana >= 0.2 * len(chars)  # kana, not only Han, tells Japanese from Chinese
        if lang == "zh":
            assert kana == 0


def test_code_mixed_traffic_holds_every_tagged_script():
    rows = [r for r in load("traffic-multiscript.jsonl") if r["slice"] == "code-mixed"]
    assert len(rows) >= 30
    for row in rows:
        assert "def " in row["text"] and "lang:python" in row["tags"]
        langs = [t.split(":", 1)[1] for t in row["tags"] if t.startswith("lang:") and t != "lang:python"]
        assert langs
        for lang in langs:
            assert sum(in_ranges(c, SCRIPT_RANGES[lang]) for c in row["text"]) >= 10, lang


def test_traffic_is_long(n_tokens):
    rows = load("traffic-multiscript.jsonl")
    lengths = [n_tokens(r["text"]) for r in rows]
    assert sum(n > 512 for n in lengths) >= len(rows) // 2
    assert max(lengths) < 4096  # fits max_position_embeddings
    for lang in LANGS:
        longest = max(n for r, n in zip(rows, lengths) if r["slice"] == f"{lang}-long")
        assert longest > 2048, lang


def test_traffic_rebuilds_identically(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import build_corpora

    try:
        rebuilt = build_corpora.build_traffic(build_corpora.TokenCounter(MODEL_DIR))
    finally:
        sys.modules.pop("build_corpora", None)
        sys.modules.pop("train_reference_model", None)
    assert rebuilt == load("traffic-multiscript.jsonl")
