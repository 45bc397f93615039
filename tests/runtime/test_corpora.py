import json

import pytest

from runtime.corpora import (
    Corpus,
    CoverageProfile,
    Sample,
    check_coverage,
    coverage_profile,
    is_code,
    length_bucket,
    text_script,
)
from runtime.errors import InputError


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_reads_samples_slices_and_tags(tiny_corpus):
    assert len(tiny_corpus) == 8
    assert tiny_corpus.name == "tiny"
    assert tiny_corpus.slices() == ["english", "russian", "code"]
    assert tiny_corpus.samples[0].tags == ("prose",)
    assert tiny_corpus.samples[1].tags == ()


def test_balanced_takes_every_slice(tiny_corpus):
    picked = tiny_corpus.balanced(5)
    assert [s.slice for s in picked] == ["english", "russian", "code", "english", "russian"]
    assert picked[0] is tiny_corpus.samples[0] and picked[3] is tiny_corpus.samples[1]
    assert tiny_corpus.balanced(100) == list(tiny_corpus.samples)
    assert [s.slice for s in tiny_corpus.balanced(8)].count("english") == 4


def test_missing_slice_is_default(tmp_path):
    corpus = Corpus.load(_write(tmp_path / "c.jsonl", ['{"text": "hello"}']))
    assert corpus.samples[0].slice == "default"


def test_content_hash_is_canonical_and_content_only(tmp_path):
    a = Corpus.load(_write(tmp_path / "a.jsonl", ['{"text": "hi", "slice": "s", "tags": ["x"]}', "", '{"text": "yo"}']))
    # Same content: other key order, spacing, spelled-out default slice, another name.
    b = Corpus.load(_write(tmp_path / "b.jsonl", ['{"tags":["x"],"slice":"s","text":"hi"}',
                                                  '{"text":"yo","slice":"default","tags":[]}']))
    c = Corpus.load(_write(tmp_path / "c.jsonl", ['{"text": "hi", "slice": "s", "tags": ["x"]}', '{"text": "yo!"}']))
    assert a.content_hash.startswith("sha256:") and len(a.content_hash) == 7 + 64
    assert a.content_hash == b.content_hash
    assert a.content_hash != c.content_hash


def test_save_round_trips(tmp_path, tiny_corpus):
    again = Corpus.load(tiny_corpus.save(tmp_path / "out" / "copy.jsonl"))
    assert again.content_hash == tiny_corpus.content_hash
    assert again.samples == tiny_corpus.samples


@pytest.mark.parametrize("line, message", [
    ('{"text": "ok", ', "invalid JSON"),
    ('["not", "an", "object"]', "expected a JSON object"),
    ('{"slice": "s"}', "'text'"),
    ('{"text": 5}', "'text'"),
    ('{"text": "   "}', "text is empty"),
    ('{"text": "ok", "tags": "x"}', "'tags'"),
    ('{"text": "ok", "slcie": "typo"}', "'slcie'"),
])
def test_bad_line_names_line_and_problem(tmp_path, line, message):
    path = _write(tmp_path / "bad.jsonl", ['{"text": "fine"}', "", line])
    with pytest.raises(InputError, match=message) as info:
        Corpus.load(path)
    assert info.value.errors[0]["loc"] == ("line", 3)


def test_empty_corpus_is_an_error(tmp_path):
    with pytest.raises(InputError, match="no samples") as info:
        Corpus.load(_write(tmp_path / "empty.jsonl", ["", "  "]))
    assert info.value.errors[0]["loc"] == ("path",)
    with pytest.raises(InputError, match="no samples"):
        Corpus([])


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        Corpus.load(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("n, label", [(0, "0-128"), (127, "0-128"), (128, "128-512"), (511, "128-512"),
                                      (512, "512-2048"), (2047, "512-2048"), (2048, "2048+"), (10**6, "2048+")])
def test_length_bucket_edges(n, label):
    assert length_bucket(n) == label


@pytest.mark.parametrize("text, script", [
    ("The quick brown fox jumps over the lazy dog.", "Latin"),
    ("Ça coûte très cher, n'est-ce pas?", "Latin"),
    ("Быстрая коричневая лиса.", "Cyrillic"),
    ("Η γρήγορη καφέ αλεπού.", "Greek"),
    ("敏捷的棕色狐狸跳过了懒狗。", "CJK"),
    ("ひらがなとカタカナ", "CJK"),
    ("빠른 갈색 여우", "Hangul"),
    ("القط يجلس على السجادة", "Arabic"),
    ("नमस्ते दुनिया, आप कैसे हैं", "Devanagari"),
    ("שלום עולם", "other"),
    ("12345 67890 !!!", "other"),
    ("Mostly English with один word.", "Latin"),
    ("def add(a, b):\n    return a + b\n", "code"),
    ("for (int i = 0; i < n; i++) {\n  total += x[i];\n}\n", "code"),
    ("import numpy as np\nx = np.zeros((3, 4))\nprint(x.shape)\n", "code"),
])
def test_text_script(text, script):
    assert text_script(text) == script


def test_prose_with_parentheses_is_not_code():
    prose = ("The model (a small one) was calibrated on Monday; results follow.\n"
             "Accuracy rose (slightly) after the change, as expected.")
    assert not is_code(prose)


def test_coverage_profile_shares(tiny_corpus, tiny_tokenizer):
    profile = coverage_profile(tiny_corpus, tiny_tokenizer)
    assert isinstance(profile, CoverageProfile)
    assert profile.samples == 8
    assert list(profile.length_buckets) == ["0-128", "128-512", "512-2048", "2048+"]
    assert sum(profile.length_buckets.values()) == pytest.approx(1.0)
    assert sum(profile.scripts.values()) == pytest.approx(1.0)
    assert profile.scripts["Latin"] == pytest.approx(4 / 8)
    assert profile.scripts["Cyrillic"] == pytest.approx(2 / 8)
    assert profile.scripts["code"] == pytest.approx(2 / 8)
    assert profile.slices == {"english": 4 / 8, "russian": 2 / 8, "code": 2 / 8}
    assert profile.tags == {"c": 1 / 8, "prose": 1 / 8, "python": 1 / 8}
    lengths = [len(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in tiny_corpus.texts]
    assert profile.max_tokens == max(lengths)
    assert profile.mean_tokens == pytest.approx(sum(lengths) / len(lengths))


def test_coverage_profile_of_bare_texts_with_token_counts():
    profile = coverage_profile(["hello", "world", "мир", "long"], token_counts=[5, 200, 600, 3000])
    assert profile.length_buckets == {"0-128": 0.25, "128-512": 0.25, "512-2048": 0.25, "2048+": 0.25}
    assert profile.max_tokens == 3000
    assert profile.slices == {} and profile.tags == {}
    with pytest.raises(InputError, match="token_counts has 1 entries for 4 texts"):
        coverage_profile(["a", "b", "c", "d"], token_counts=[1])
    with pytest.raises(InputError, match="tokenizer"):
        coverage_profile(["a"])


def test_check_coverage_names_length_and_script_gaps():
    calibration = coverage_profile(
        [Sample(text="English text here", tags=("web",))] * 3 + [Sample(text="More English")],
        token_counts=[40, 100, 300, 500])
    traffic_texts = ["English"] * 47 + ["Русский текст"] * 22 + ["English again"] * 31
    traffic_counts = [60] * 47 + [90] * 22 + [3000] * 31
    traffic = coverage_profile(traffic_texts, token_counts=traffic_counts)
    gaps = check_coverage(calibration, traffic)
    messages = [str(g) for g in gaps]
    assert messages == [
        "no calibration sample longer than 500 tokens; 31% of traffic is longer than 2048 tokens",
        "no calibration sample in script Cyrillic; 22% of traffic is Cyrillic",
    ]
    assert [(g.kind, g.key) for g in gaps] == [("length", "2048+"), ("script", "Cyrillic")]
    assert gaps[0].traffic_share == pytest.approx(0.31)


def test_check_coverage_min_share_and_inner_bucket():
    calibration = coverage_profile(["a b c"] * 2, token_counts=[50, 700])
    traffic = coverage_profile(["x"] * 200, token_counts=[300] * 1 + [60] * 199)
    assert check_coverage(calibration, traffic) == []  # 0.5% of traffic is under the 1% floor
    gaps = check_coverage(calibration, traffic, min_share=0.001)
    assert [str(g) for g in gaps] == ["no calibration sample of 128-512 tokens; 0.5% of traffic is 128-512 tokens long"]


def test_check_coverage_tags_and_code():
    calibration = coverage_profile([Sample(text="plain prose", tags=("domain:docs", "source:a.py"))],
                                   token_counts=[10])
    traffic = coverage_profile(
        [Sample(text="def f(x):\n    return x\n", tags=("python", "domain:code", "source:b.py")),
         Sample(text="plain", tags=("domain:docs",))], token_counts=[10, 10])
    messages = [str(g) for g in check_coverage(calibration, traffic)]
    assert messages == ["no calibration sample in code; 50% of traffic is code",
                        "no calibration sample tagged 'domain:code'; 50% of traffic is tagged 'domain:code'"]
    every_tag = [str(g) for g in check_coverage(calibration, traffic, tag_prefixes=("",))]
    assert "no calibration sample tagged 'python'; 50% of traffic is tagged 'python'" in every_tag
    assert "no calibration sample tagged 'source:b.py'; 50% of traffic is tagged 'source:b.py'" in every_tag


def test_python_code_without_braces_is_code():
    source = ("from contextlib import contextmanager\nimport sys\n\n"
              "def source_hash(source_bytes):\n    \"Return the hash.\"\n"
              "    return _imp.source_hash(_RAW_MAGIC_NUMBER, source_bytes)\n\n"
              "def resolve_name(name, package):\n    if not name.startswith('.'):\n        return name\n")
    assert text_script(source) == "code"
    assert text_script("class to add info() and geturl() methods to an open file.") == "Latin"
    assert text_script("import the module first, then call it.") == "Latin"


def test_profile_round_trips_json(tiny_corpus, tiny_tokenizer):
    profile = coverage_profile(tiny_corpus, tiny_tokenizer)
    assert CoverageProfile.model_validate_json(profile.model_dump_json()) == profile
    assert json.loads(profile.model_dump_json())["samples"] == 8


def test_shipped_corpora_gaps():
    """The repository's calibration corpus is short English; its traffic corpus is long and multiscript."""
    from pathlib import Path

    from transformers import AutoTokenizer

    root = Path(__file__).resolve().parents[2] / "assets"
    tokenizer = AutoTokenizer.from_pretrained(root / "models" / "pops-llama-tiny")
    calibration = coverage_profile(Corpus.load(root / "corpora" / "calib-en-short.jsonl"), tokenizer)
    traffic = coverage_profile(Corpus.load(root / "corpora" / "traffic-multiscript.jsonl"), tokenizer)
    assert calibration.scripts["Latin"] == 1.0 and calibration.length_buckets["0-128"] == 1.0
    gaps = check_coverage(calibration, traffic)
    assert {g.key for g in gaps if g.kind == "script"} == {"CJK", "Cyrillic", "Arabic", "Greek", "Devanagari", "code"}
    assert {g.key for g in gaps if g.kind == "length"} == {"128-512", "512-2048", "2048+"}
    assert all(str(g).startswith("no calibration sample") for g in gaps)
