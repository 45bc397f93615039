"""Latency budgets for the search: the decode latency model, the conversion to bytes, and its refusals."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from runtime.accelerators import get_profile
from runtime.accelerators.profiles import H100_DECODE
from runtime.errors import InputError
from runtime.search import CANDIDATES, Budget, OpSensitivity, Sensitivity, allocate, allocate_for_latency, predict_us
from runtime.search.allocation import Allocation, OpAllocation
from runtime.search.latency import floor_us, op_us, part_us

NAMES = ("int4_g128", "bf16")
CANDS = {c: CANDIDATES[c] for c in NAMES}


def _synthetic(n_ops=3, out=512, k=4096, seed=0):
    """Decode-sized ops (bytes, not fixed costs, dominate on an L4) with lognormal row sensitivities."""
    rng = np.random.default_rng(seed)
    ops = []
    for i in range(n_ops):
        base = rng.lognormal(size=out) * 1e-4
        rows = {"int4_g128": base, "bf16": base * 1e-4}
        ops.append(OpSensitivity(name=f"op{i}", in_features=k, out_features=out, is_lm_head=False,
                                 candidates=list(NAMES), rows=rows, op={c: float(v.sum()) for c, v in rows.items()},
                                 fisher_rows=rows, fisher_op={c: float(v.sum()) for c, v in rows.items()}))
    return Sensitivity(ops=ops, samples=1, tokens=1, seq_len=1, draws=1, measure="none", corpus_hash="sha256:x",
                       seconds=0.0)


def _measured_w4a16_row(n, k):
    rows = json.loads((Path(__file__).parents[2] / "bench/results/kernels-h100.json").read_text())["w4a16"]
    return next(r for r in rows if (r["m"], r["n"], r["k"]) == (1, n, k))


def test_h100_model_reproduces_the_measured_decode_gemms():
    """The fitted model against the committed CUDA-graph measurements (bench/results/kernels-h100.json)."""
    bf16 = H100_DECODE.gemm("matmul", stored_bytes=14336 * 4096 * 2, weights=14336 * 4096)
    assert bf16 == pytest.approx(_measured_w4a16_row(14336, 4096)["bf16_graph_us"], rel=0.05)
    w4 = H100_DECODE.gemm("kernels.gemm_w4a16", stored_bytes=28672 * 8192 / 2 + 28672 * 64 * 4, weights=28672 * 8192)
    assert w4 == pytest.approx(_measured_w4a16_row(28672, 8192)["paths"]["gemv"]["graph_us"], rel=0.05)
    # Emulated weights write and read a bf16 copy: slower than bf16 itself at decode.
    deq = H100_DECODE.gemm("dequantize+matmul", stored_bytes=8192 * 8192, weights=8192 * 8192)
    assert deq > H100_DECODE.gemm("matmul", stored_bytes=8192 * 8192 * 2, weights=8192 * 8192)
    # Other GPUs: the datasheet bandwidth at the same efficiency.
    l4 = get_profile("l4").latency
    assert l4.bandwidth_gbps["matmul"] / H100_DECODE.bandwidth_gbps["matmul"] == pytest.approx(300 / 3350)


def test_a_mixed_op_pays_a_gemm_and_a_scatter_per_part():
    profile = get_profile("l4")
    model = profile.latency
    whole = OpAllocation("op", 4096, 1024, ["int4_g128"] * 1024)
    mixed = OpAllocation("op", 4096, 1024, ["int4_g128"] * 1000 + ["bf16"] * 24)
    part = lambda c, n: model.gemm(  # noqa: E731
        "kernels.gemm_w4a16" if c == "int4_g128" else "matmul", stored_bytes=n * CANDS[c].row_bits(4096) / 8,
        weights=n * 4096)
    assert op_us(whole, CANDS, profile) == pytest.approx(part("int4_g128", 1024))
    index_us = 24 * 2 / (model.copy_gbps * 1e3)
    assert op_us(mixed, CANDS, profile) == pytest.approx(
        part("int4_g128", 1000) + part("bf16", 24) + 2 * model.scatter_us + index_us)
    assert op_us(mixed, CANDS, profile) - op_us(whole, CANDS, profile) > model.gemm_us["matmul"]


def test_sibling_ops_whole_in_one_format_cost_one_gemm():
    # The runtime runs q/k/v (and gate/up) of one format as one GEMM on a GPU: one fixed cost, not three.
    profile = get_profile("h100")
    model = profile.latency
    attn = "model.layers.0.self_attn"
    q, k, v = (OpAllocation(f"{attn}.{leaf}", 4096, n, ["int4_g128"] * n)
               for leaf, n in (("q_proj", 4096), ("k_proj", 1024), ("v_proj", 1024)))
    o = OpAllocation(f"{attn}.o_proj", 4096, 4096, ["int4_g128"] * 4096)

    def predicted(*ops):
        allocation = Allocation(granularity="op", ops=list(ops), budget=Budget(bits_per_weight=4.0), budget_bits=0.0,
                                weights=1, bits=0.0, predicted_kl=0.0, upgrades=0)
        return predict_us(allocation, CANDS, profile)

    one_gemm = part_us(model, profile, CANDS["int4_g128"], rows=6144, in_features=4096)
    assert predicted(q, k, v, o) == pytest.approx(one_gemm + op_us(o, CANDS, profile))
    alone = sum(op_us(x, CANDS, profile) for x in (q, k, v))
    assert alone - one_gemm == pytest.approx(2 * model.gemm_us["kernels.gemm_w4a16"])
    # A member in another format, or split across two, and each op is its own GEMM again.
    k_wide = OpAllocation(k.name, 4096, 1024, ["bf16"] * 1024)
    k_mixed = OpAllocation(k.name, 4096, 1024, ["int4_g128"] * 1000 + ["bf16"] * 24)
    for other in (k_wide, k_mixed):
        assert predicted(q, other, v) == pytest.approx(sum(op_us(x, CANDS, profile) for x in (q, other, v)))
    # The floor a latency budget is refused below counts the group as the runtime runs it.
    shapes = {x.name: (4096, x.out_features) for x in (q, k, v)}
    floor = floor_us(shapes, {name: [CANDS["int4_g128"], CANDS["bf16"]] for name in shapes}, profile)
    assert floor == pytest.approx(predicted(*(OpAllocation(x.name, 4096, x.out_features, [c] * x.out_features)
                                              for x, c in zip((q, k, v), ["int4_g128"] * 3))))


def test_latency_budget_is_monotone_and_met():
    sens = _synthetic()
    profile = get_profile("l4")
    shapes = {o.name: (o.in_features, o.out_features) for o in sens.ops}
    floor = floor_us(shapes, {o.name: [CANDS[c] for c in o.candidates] for o in sens.ops}, profile)
    widest = predict_us(allocate(sens, CANDS, Budget(bits_per_weight=16.1), "channel"), CANDS, profile)
    assert floor < widest
    previous = None
    for target in np.linspace(floor * 1.001, widest * 1.01, 7):
        alloc = allocate_for_latency(sens, CANDS, Budget(latency_us=float(target)), "channel", profile)
        assert alloc.predicted_latency_us == pytest.approx(predict_us(alloc, CANDS, profile))
        assert alloc.predicted_latency_us <= target
        assert alloc.budget.latency_us == target and alloc.bits <= alloc.budget_bits
        if previous is not None:  # a looser target never buys less: more bytes, no more KL
            assert alloc.budget_bits >= previous.budget_bits
            assert alloc.predicted_kl <= previous.predicted_kl
        previous = alloc
    assert previous.predicted_kl == pytest.approx(sum(o.op["bf16"] for o in sens.ops))  # all wide once it fits
    mid = allocate_for_latency(sens, CANDS, Budget(latency_us=float((floor + widest) / 2)), "channel", profile)
    assert 4.2 < mid.bits_per_weight < 16  # in between, bits went to the most sensitive rows


def test_infeasible_latency_names_the_field_and_the_floor():
    sens = _synthetic()
    profile = get_profile("l4")
    shapes = {o.name: (o.in_features, o.out_features) for o in sens.ops}
    floor = floor_us(shapes, {o.name: [CANDS[c] for c in o.candidates] for o in sens.ops}, profile)
    at_least = math.ceil(floor * 10) / 10
    with pytest.raises(InputError, match=rf"{floor:.1f} µs per decoded token \(the floor\); raise latency_us to "
                                         rf"at least {at_least:g}$") as exc:
        allocate_for_latency(sens, CANDS, Budget(latency_us=floor * 0.9), "op", profile)
    assert exc.value.errors[0]["loc"] == ("budget", "latency_us")
    with pytest.raises(InputError, match="has no decode latency model") as exc:
        allocate_for_latency(sens, CANDS, Budget(latency_us=1000.0), "op", get_profile("cpu"))
    assert exc.value.errors[0]["loc"] == ("budget", "latency_us")
    with pytest.raises(InputError, match="must be positive") as exc:
        Budget(latency_us=-1)
    assert exc.value.errors[0]["loc"] == ("budget", "latency_us")
    with pytest.raises(InputError, match="exactly one of"):
        Budget(bits_per_weight=4.5, latency_us=10)
    with pytest.raises(InputError, match="converted to bytes against an accelerator profile"):
        allocate(sens, CANDS, Budget(latency_us=100.0))


def test_search_with_a_latency_budget(tiny_llama, tiny_tokenizer, tiny_corpus):
    """End to end on the tiny model: slower-than-wide formats are excluded, the target is met or refused."""
    from runtime.search import search

    fast = {"samples": 8, "seq_len": 32, "batch_size": 4, "draws": 2}
    cands = ("int4_g32", "int8", "bf16")
    with pytest.raises(InputError, match="no decode latency model") as exc:
        search(tiny_llama, tiny_tokenizer, tiny_corpus, profile=get_profile("cpu"), budget=Budget(latency_us=500),
               candidates=cands, **fast)
    assert exc.value.errors[0]["loc"] == ("budget", "latency_us")
    with pytest.raises(InputError, match="the floor") as exc:  # refused before any sensitivity is measured
        search(tiny_llama, tiny_tokenizer, tiny_corpus, profile=get_profile("l4"), budget=Budget(latency_us=1),
               candidates=cands, **fast)
    assert exc.value.errors[0]["loc"] == ("budget", "latency_us")
    result = search(tiny_llama, tiny_tokenizer, tiny_corpus, profile=get_profile("l4"),
                    budget=Budget(latency_us=120.0), candidates=cands, **fast)
    # int8 weight-only dequantizes to bf16 first on an L4: slower than keeping bf16, so never useful here.
    assert "slower than keep-wide" in result.excluded["int8"]
    metrics = result.metrics()
    assert metrics["latency_budget_us"] == 120.0 and 0 < metrics["predicted_latency_us"] <= 120.0
    assert result.recipe.description.startswith("searched per channel for 120 µs decode latency")


def test_pops_search_takes_a_latency_budget(tiny_llama_dir, tiny_corpus_path):
    import json

    from typer.testing import CliRunner

    from runtime.cli import EXIT_BAD_INPUT, app

    args = ["search", "-m", str(tiny_llama_dir), "-c", str(tiny_corpus_path), "--candidate", "int4_g32",
            "--samples", "8", "--seq-len", "32", "--json"]
    r = CliRunner().invoke(app, args + ["--latency-us", "150", "-a", "cpu"])
    assert r.exit_code == EXIT_BAD_INPUT and "budget.latency_us: accelerator 'cpu' has no decode latency model" in r.output
    r = CliRunner().invoke(app, args + ["--latency-us", "150", "--bits", "5"])
    assert r.exit_code == EXIT_BAD_INPUT and "exactly one of bits_per_weight, total_bytes and latency_us" in r.output
    r = CliRunner().invoke(app, args + ["--latency-us", "150", "-a", "l4"])
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.stdout)["metrics"]
    assert metrics["latency_budget_us"] == 150 and metrics["predicted_latency_us"] <= 150
