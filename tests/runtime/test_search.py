"""Mixed-precision search: sensitivity finds damage, allocation keeps the budget and the profile, recipes build."""
import itertools

import numpy as np
import pytest
import torch

from runtime.accelerators import get_profile
from runtime.engines import build, load_engine
from runtime.errors import InputError
from runtime.models import linear_ops
from runtime.recipes import Recipe
from runtime.search import (
    CANDIDATES, Budget, OpSensitivity, Sensitivity, allocate, get_candidates, measure_sensitivity, recombine,
    search, stored_bits,
)
from runtime.search.allocation import _hull

# tiny_llama has in_features 64 and 128: int4 needs groups of 32 or 64 here.
TINY = ("int4_g32", "int8", "fp8_e4m3", "bf16")
FAST = {"samples": 8, "seq_len": 48, "batch_size": 4, "draws": 2}
DAMAGED = "model.layers.1.mlp.down_proj"
DAMAGED_ROWS = list(range(1, 64, 4))  # 16 of the 64 output features


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matmuls gain nothing from threads, and on a loaded 2-core machine two threads spin 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _damage(model):
    """Outliers in a few rows of one op: int4 groups there lose almost all their resolution."""
    w = model.get_submodule(DAMAGED).weight
    with torch.no_grad():
        big = 8 * w.abs().max()
        for r in DAMAGED_ROWS:
            w[r] *= 3  # rows that carry more of the residual stream...
            w[r, [3, 35, 70, 100]] = torch.stack([big, -big, big, -big])  # ...and one outlier per group of 32
    return model


def _per_op(model, names=TINY):
    cands = get_candidates(list(names))
    return {op.name: [c for c in cands if c.fits(op.in_features)] for op in linear_ops(model) if not op.is_lm_head}


# --- sensitivity ------------------------------------------------------------------------------
def test_sensitivity_ranks_a_damaged_layer_and_its_rows_first(tiny_llama, tiny_tokenizer, tiny_corpus):
    # More label draws than the other tests: the proxy alone must find the damage too.
    sens = measure_sensitivity(_damage(tiny_llama), tiny_tokenizer, tiny_corpus, _per_op(tiny_llama),
                               **{**FAST, "draws": 8}, measure="all")
    at_int4 = {o.name: o.op["int4_g32"] for o in sens.ops}
    assert max(at_int4, key=at_int4.get) == DAMAGED
    proxy = {o.name: o.fisher_op["int4_g32"] for o in sens.ops}
    assert max(proxy, key=proxy.get) == DAMAGED  # the proxy alone finds it too
    rows = sens.op(DAMAGED).rows["int4_g32"]
    assert set(np.argsort(-rows)[: len(DAMAGED_ROWS)].tolist()) == set(DAMAGED_ROWS)
    for o in sens.ops:  # wider formats cost less KL than narrower ones, op by op
        assert o.op["int8"] < o.op["int4_g32"] and o.op["bf16"] < o.op["int8"]
        assert all((v >= 0).all() for v in o.rows.values())


def test_fisher_proxy_agrees_with_direct_measurement(tiny_llama, tiny_tokenizer, tiny_corpus):
    sens = measure_sensitivity(tiny_llama, tiny_tokenizer, tiny_corpus, _per_op(tiny_llama),
                               **{**FAST, "draws": 8}, measure="all", measure_samples=8)
    for o in sens.ops:
        for c, m in o.measured.items():
            # Same tokens for both: the second-order proxy is within a factor of 2 of the measured KL.
            assert 0.5 < o.fisher_rows[c].sum() / m < 2.0, (o.name, c)
            # After rescaling, an op's rows add up to what was measured.
            assert o.rows[c].sum() == pytest.approx(m, rel=1e-9)


def test_cheapest_measurement_rescales_every_format_by_one_ratio(tiny_llama, tiny_tokenizer, tiny_corpus):
    sens = measure_sensitivity(tiny_llama, tiny_tokenizer, tiny_corpus, _per_op(tiny_llama), **FAST)
    o = sens.op("model.layers.0.mlp.up_proj")
    assert set(o.measured) == {"int4_g32"} and o.scale > 0
    np.testing.assert_allclose(o.rows["int8"], o.fisher_rows["int8"] * o.scale)


def test_recombining_a_full_measurement_gives_the_cheaper_modes(tiny_llama, tiny_tokenizer, tiny_corpus):
    per_op = _per_op(tiny_llama)
    full = measure_sensitivity(tiny_llama, tiny_tokenizer, tiny_corpus, per_op, **FAST, measure="all")
    cheap = measure_sensitivity(tiny_llama, tiny_tokenizer, tiny_corpus, per_op, **FAST, measure="cheapest")
    table = {c.name: c for c in get_candidates(list(TINY))}
    again = recombine(full, table, "cheapest")
    for a, b in zip(again.ops, cheap.ops):
        assert a.measured == b.measured and a.scale == pytest.approx(b.scale)
        for c in a.candidates:
            np.testing.assert_allclose(a.rows[c], b.rows[c], rtol=1e-9)
    raw = recombine(full, table, "none")
    np.testing.assert_array_equal(raw.ops[0].rows["int8"], full.ops[0].fisher_rows["int8"])


def test_progress_counts_every_forward_pass(tiny_llama, tiny_tokenizer, tiny_corpus):
    seen = []
    measure_sensitivity(tiny_llama, tiny_tokenizer, tiny_corpus, _per_op(tiny_llama), **FAST,
                        progress=lambda d, t: seen.append((d, t)))
    total = seen[-1][1]
    assert [d for d, _ in seen] == list(range(1, total + 1)) and all(t == total for _, t in seen)
    # 2 Fisher batches, then 2 reference batches and 2 per op measured at its cheapest format (14 ops).
    assert total == 2 + 2 * (1 + 14)


def test_sensitivity_leaves_the_model_as_it_was(tiny_llama, tiny_tokenizer, tiny_corpus):
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    modules = {n: type(m) for n, m in tiny_llama.named_modules()}
    measure_sensitivity(tiny_llama, tiny_tokenizer, tiny_corpus, _per_op(tiny_llama), **FAST)
    assert {n: type(m) for n, m in tiny_llama.named_modules()} == modules
    assert all(torch.equal(before[k], v) for k, v in tiny_llama.state_dict().items())
    assert all(p.requires_grad for p in tiny_llama.parameters())


# --- allocation (synthetic sensitivities: no model needed) -------------------------------------
def _synthetic(n_ops=3, out=6, k=64, seed=0, names=("int4_g32", "int8", "bf16")):
    rng = np.random.default_rng(seed)
    ops = []
    for i in range(n_ops):
        base = rng.lognormal(size=out) * 1e-3
        rows = {"int4_g32": base, "int8": base * rng.uniform(0.005, 0.05, out), "bf16": base * 1e-4}
        rows = {c: rows[c] for c in names}
        ops.append(OpSensitivity(name=f"op{i}", in_features=k, out_features=out, is_lm_head=False,
                                 candidates=list(names), rows=rows, op={c: float(v.sum()) for c, v in rows.items()},
                                 fisher_rows=rows, fisher_op={c: float(v.sum()) for c, v in rows.items()}))
    return Sensitivity(ops=ops, samples=1, tokens=1, seq_len=1, draws=1, measure="none", corpus_hash="sha256:x",
                       seconds=0.0)


def test_hull_drops_dominated_and_non_convex_options():
    # (bits, KL, id): b costs more than a and saves nothing; c is above the a-d chord.
    hull = _hull([(4, 1.0, "a"), (5, 1.0, "b"), (6, 0.9, "c"), (8, 0.1, "d"), (16, 0.0, "e")])
    assert [h[2] for h in hull] == ["a", "d", "e"]


@pytest.mark.parametrize("granularity", ["op", "channel"])
@pytest.mark.parametrize("bits", [5.0, 5.5, 6.5, 9.0, 16.0])
def test_allocation_respects_the_budget_and_spends_it_where_it_saves_most(granularity, bits):
    sens = _synthetic()
    cands = {c: CANDIDATES[c] for c in ("int4_g32", "int8", "bf16")}
    alloc = allocate(sens, cands, Budget(bits_per_weight=bits), granularity)
    assert alloc.bits == sum(stored_bits(o, cands) for o in alloc.ops)
    assert alloc.bits <= bits * alloc.weights
    # More budget never predicts more KL.
    cheaper = allocate(sens, cands, Budget(bits_per_weight=bits - 0.5), granularity) if bits > 5.5 else None
    if cheaper is not None:
        assert alloc.predicted_kl <= cheaper.predicted_kl
    if bits == 16.0:
        assert alloc.predicted_kl == pytest.approx(sum(o.op["bf16"] for o in sens.ops))


def test_greedy_is_optimal_up_to_one_step():
    """greedy(B) <= optimum(B - the largest step): the bound of greedy on the convex hull, checked by brute force."""
    sens = _synthetic(n_ops=2, out=3, k=64, seed=3)
    cands = {c: CANDIDATES[c] for c in ("int4_g32", "int8", "bf16")}
    units = [(o, j) for o in sens.ops for j in range(o.out_features)]
    # Per-channel costs, as the allocation charges them: int4 is the base; a moved row pays a 16-bit index.
    cost = {c: cands[c].row_bits(64) + (0 if c == "int4_g32" else 16) for c in cands}
    max_step = max(cost.values()) - min(cost.values())

    def optimum(budget_bits):
        best = np.inf
        for combo in itertools.product(cands, repeat=len(units)):
            if sum(cost[c] for c in combo) <= budget_bits:
                best = min(best, sum(o.rows[c][j] for (o, j), c in zip(units, combo)))
        return best

    for bits in (5.2, 6.0, 7.0, 9.0, 12.0):
        alloc = allocate(sens, cands, Budget(bits_per_weight=bits), "channel")
        budget_bits = bits * alloc.weights
        assert optimum(budget_bits) <= alloc.predicted_kl + 1e-15
        assert alloc.predicted_kl <= optimum(budget_bits - max_step) + 1e-15


def test_budget_below_the_cheapest_allocation_names_the_field():
    cands = {c: CANDIDATES[c] for c in ("int4_g32", "int8", "bf16")}
    with pytest.raises(InputError, match="below the cheapest allocation") as exc:
        allocate(_synthetic(), cands, Budget(bits_per_weight=4.0))
    assert exc.value.errors[0]["loc"] == ("budget",)
    with pytest.raises(InputError, match="exactly one of"):
        Budget()
    with pytest.raises(InputError, match="must be positive") as exc:
        Budget(total_bytes=0)
    assert exc.value.errors[0]["loc"] == ("budget", "total_bytes")


def test_total_bytes_budget_is_the_same_as_bits():
    cands = {c: CANDIDATES[c] for c in ("int4_g32", "int8", "bf16")}
    sens = _synthetic()
    a = allocate(sens, cands, Budget(bits_per_weight=6.0))
    b = allocate(sens, cands, Budget(total_bytes=int(6.0 * a.weights / 8)))
    assert [o.choice for o in a.ops] == [o.choice for o in b.ops]


# --- the search end to end ------------------------------------------------------------------------
def test_search_keeps_to_the_profile_and_says_why(tiny_llama, tiny_tokenizer, tiny_corpus):
    result = search(tiny_llama, tiny_tokenizer, tiny_corpus, profile=get_profile("a100"),
                    budget=Budget(bits_per_weight=7.0), candidates=("int4_g32", "fp8_e4m3", "int8"), **FAST)
    assert "fp8_e4m3" in result.excluded and "sm_80 has no fp8 tensor cores" in result.excluded["fp8_e4m3"]
    assert result.candidates == ["int4_g32", "int8", "bf16"]  # keep wide is always there
    used = set().union(*(o.counts() for o in result.allocation.ops))
    assert used <= {"int4_g32", "int8", "bf16"}
    with pytest.raises(InputError, match="unknown candidate formats") as exc:
        search(tiny_llama, tiny_tokenizer, tiny_corpus, profile=get_profile("cpu"), budget=Budget(bits_per_weight=5),
               candidates=("int3",), **FAST)
    assert exc.value.errors[0]["loc"] == ("candidates",)


# A whole op moves at once, so the per-op search needs more headroom to reach the damaged op: at
# 5.5 bits/weight the v and o projections (fewer weights, more KL per bit) take the budget first.
@pytest.mark.parametrize("granularity, bits", [("op", 6.0), ("channel", 5.5)])
def test_searched_recipe_validates_builds_and_keeps_the_budget(tmp_path, tiny_llama, tiny_tokenizer, tiny_corpus,
                                                                 granularity, bits):
    _damage(tiny_llama)
    tiny_llama.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    budget = Budget(bits_per_weight=bits)
    result = search(tiny_llama, tiny_tokenizer, tiny_corpus, profile=get_profile("h100"), budget=budget,
                    granularity=granularity, candidates=TINY, **FAST)
    recipe = result.recipe
    assert Recipe.from_yaml(recipe.to_yaml()).content_hash() == recipe.content_hash()
    reasons = [r.reason for r in recipe.rules] + [c.reason for r in recipe.rules for c in r.output_channels] \
        + [i.reason for i in recipe.ignore]
    assert reasons and all("sensitivity" in r and "rank" in r for r in reasons)
    engine = build(tmp_path / "m", recipe, get_profile("h100"), out_root=tmp_path / "e")
    assert engine.manifest["fallbacks"] == []
    # The engine stores exactly the bits the allocation counted, and they fit the budget.
    lm_head_bytes = tiny_llama.lm_head.weight.numel() * 2
    assert (engine.manifest["bytes"]["linear_ops"] - lm_head_bytes) * 8 == result.allocation.bits
    assert result.allocation.bits <= budget.bits_per_weight * result.allocation.weights
    damaged = result.allocation.op(DAMAGED)
    if granularity == "channel":
        # Bits went to the damaged rows first, and the op became a mixed layer.
        assert all(damaged.choice[r] != "int4_g32" for r in DAMAGED_ROWS)
        assert any(r.output_channels for r in recipe.rules)
    else:
        assert damaged.main() != "int4_g32"
    loaded = load_engine(engine.path)
    ids = torch.randint(3, len(tiny_tokenizer), (1, 12))
    with torch.no_grad():
        assert torch.isfinite(loaded.model(ids).logits).all()


def _engine_kl(tmp_path, model, tokenizer, corpus, recipe):
    """Mean KL per token of a built and loaded engine against the fp32 model, on the corpus."""
    engine = build(tmp_path / "m", recipe, get_profile("cpu"), out_root=tmp_path / "e")
    loaded = load_engine(engine.path)
    ids = tokenizer([s.text for s in corpus.samples], return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = torch.log_softmax(model(**ids).logits.float(), -1)
        out = torch.log_softmax(loaded.model(**ids).logits.float(), -1)
    kl = (ref.exp() * (ref - out)).sum(-1)
    return float((kl * ids["attention_mask"]).sum() / ids["attention_mask"].sum()), engine.manifest["bytes"]


def test_per_feature_search_beats_per_op_and_uniform_int4(tmp_path, tiny_llama, tiny_tokenizer, tiny_corpus):
    """Outlier rows wreck uniform int4; a quarter bit per weight moves them, measured through built engines."""
    _damage(tiny_llama)
    tiny_llama.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    uniform = Recipe.from_dict({"name": "int4", "default": {"weights": CANDIDATES["int4_g32"].weights.model_dump()}})
    kl_uniform, _ = _engine_kl(tmp_path, tiny_llama, tiny_tokenizer, tiny_corpus, uniform)
    budget = Budget(bits_per_weight=5.25)  # uniform int4 g32 is 5.0 here
    per_feature = search(tiny_llama, tiny_tokenizer, tiny_corpus, profile=get_profile("cpu"), budget=budget,
                         candidates=TINY, **FAST)
    per_op = search(tiny_llama, tiny_tokenizer, tiny_corpus, profile=get_profile("cpu"), budget=budget,
                    granularity="op", candidates=TINY, sensitivity=per_feature.sensitivity)
    kl_feature, _ = _engine_kl(tmp_path, tiny_llama, tiny_tokenizer, tiny_corpus, per_feature.recipe)
    kl_op, _ = _engine_kl(tmp_path, tiny_llama, tiny_tokenizer, tiny_corpus, per_op.recipe)
    assert per_feature.allocation.bits_per_weight <= 5.25 and per_op.allocation.bits_per_weight <= 5.25
    assert kl_feature < 0.6 * kl_op and kl_op < kl_uniform
    # The prediction (sum of unit sensitivities) is close to what the engine measures.
    assert 0.5 < per_feature.allocation.predicted_kl / kl_feature < 2.0


def test_pops_search_writes_a_recipe_and_names_bad_budgets(tmp_path, tiny_llama_dir, tiny_corpus_path):
    import json

    from typer.testing import CliRunner

    from runtime.cli import EXIT_BAD_INPUT, app

    runner = CliRunner()
    out = tmp_path / "searched.yaml"
    args = ["search", "-m", str(tiny_llama_dir), "-c", str(tiny_corpus_path), "--candidate", "int4_g32",
            "--candidate", "int8", "--samples", "8", "--seq-len", "48", "--out", str(out), "--json"]
    r = runner.invoke(app, args + ["--bits", "5.5"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    recipe = Recipe.from_yaml(out.read_text())
    assert doc["recipe_hash"] == recipe.content_hash() and doc["metrics"]["bits_per_weight"] <= 5.5
    assert doc["candidates"] == ["int4_g32", "int8", "bf16"]
    r = runner.invoke(app, args)
    assert r.exit_code == EXIT_BAD_INPUT and "budget: give exactly one of" in r.output
    r = runner.invoke(app, args + ["--bits", "3"])
    assert r.exit_code == EXIT_BAD_INPUT and "below the cheapest allocation" in r.output
