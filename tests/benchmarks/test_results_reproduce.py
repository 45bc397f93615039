"""The committed GPU results: each markdown summary is what its benchmark script writes from the
committed JSON, and the targets it lists are recomputed from the JSON rows, not typed in.

The benchmarks themselves need a CUDA GPU; these checks need only their summary code, so a
refactor of a benchmark script that would break its report fails here, on the CPU.
"""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


def _script(name: str):
    """Loads bench/<name>.py by path (the scripts put the repository root on sys.path themselves)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


@pytest.mark.parametrize("script, stem", [("kernels", "kernels-h100"), ("decode_attention", "decode-attention-h100")])
def test_markdown_summary_is_generated_from_the_json(script, stem):
    module = _script(script)
    result = _load(f"{stem}.json")
    assert module.summarize(result) == (RESULTS / f"{stem}.md").read_text()


def test_kernel_targets_are_recomputed_from_the_rows():
    targets = _script("kernels").targets
    result = _load("kernels-h100.json")
    assert targets(result) == result["targets"]
    assert result["check_failures"] == []  # every kernel output matched its baseline in that run


def test_attention_targets_are_recomputed_from_the_rows():
    targets = _script("decode_attention").targets
    result = _load("decode-attention-h100.json")
    assert targets(result["rows"]) == result["targets"]
    assert result["check_failures"] == []
