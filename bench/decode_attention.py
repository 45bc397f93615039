"""Decode attention on one CUDA GPU: the Triton kernel on bf16 and fp8 KV caches against SDPA.

The split-KV Triton kernel reads a bf16 or an fp8 (per-head scales) cache; torch SDPA reads the
bf16 one. Llama-3-8B heads (Hq 32, Hkv 8, D 128), batch 1 to 32, context 1k to 32k.

    python bench/decode_attention.py --out bench/results/decode-attention-h100.json \\
        --md bench/results/decode-attention-h100.md
    python bench/decode_attention.py --quick    # one batch and one context, for a smoke run

Times are medians of ``triton.testing.do_bench`` (warm-up, L2 flushed before each repetition)
and of CUDA-graph replay (``do_bench_cudagraph``: device time without host launch cost, as a
serving stack runs decode), over input sets rotated between calls that together exceed the L2.
Every sequence of a batch is ``ctx`` long, so SDPA needs no mask. Bytes are those the work must
read (K and V of every sequence, q) and write (the output); TB/s = bytes / time. Outputs are
checked against ``decode_attention_reference`` (fp32) on the first input set; a failed check is
recorded, printed, and makes the script exit 1 after the results are written.
"""
import argparse
import json
import math
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.timing import CHECK_FAILURES, best_config, check, graph_us, median_us, rel_err  # noqa: E402
import kernels.decode_attention as da_mod  # noqa: E402
from kernels.decode_attention import (  # noqa: E402
    decode_attention,
    decode_attention_reference,
    decode_attention_triton,
    num_splits_for,
    quantize_kv_reference,
)

HQ, HKV, D = 32, 8, 128  # Llama-3-8B
BATCHES = [1, 8, 32]
CONTEXTS = [1024, 4096, 16384, 32768]
QUICK_BATCHES, QUICK_CONTEXTS = [8], [4096]
SPLIT_SWEEP = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128]
L2_BYTES = 50 * 2**20
MAX_SETS = 64
DEV = "cuda"
# Relative error bounds against the fp32 reference on the same cache: bf16 rounds the softmax
# weights and the output (2**-8 relative each); fp8 against the bf16 cache adds the e4m3
# rounding of K and V (<= 2**-4 relative per element).
BOUND_SAME_CACHE = 1.5e-2
BOUND_FP8_VS_BF16 = 8e-2











def attention_config() -> str | None:
    """The config the autotuner picked for the last launch of the attention kernel."""
    return best_config(da_mod._decode_attention_kernel)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """transformers' ``repeat_kv``: [B, Hkv, S, D] -> [B, Hkv * n_rep, S, D], materialized."""
    b, hkv, s, d = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(b, hkv, n_rep, s, d).reshape(b, hkv * n_rep, s, d)


def sdpa_has_enable_gqa() -> bool:
    """True where SDPA takes ``enable_gqa`` (torch >= 2.5); transformers then skips repeat_kv
    when there is no mask, as here."""
    q = torch.randn(1, 4, 1, 64, device=DEV, dtype=torch.bfloat16)
    k = torch.randn(1, 2, 8, 64, device=DEV, dtype=torch.bfloat16)
    try:
        F.scaled_dot_product_attention(q, k, k, enable_gqa=True)
    except TypeError:
        return False
    return True


def sdpa_gqa(q, k, v):
    return F.scaled_dot_product_attention(q[:, :, None, :], k, v, enable_gqa=True)[:, :, 0]


def sdpa_repeat_kv(q, k, v):
    n_rep = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q[:, :, None, :], repeat_kv(k, n_rep), repeat_kv(v, n_rep))[:, :, 0]


def measure_copy_tbps() -> float:
    """Device-to-device copy bandwidth (bytes read + written) of a 1 GiB tensor."""
    src = torch.randn(2**28, device=DEV)
    dst = torch.empty_like(src)
    t = median_us(lambda a, b: b.copy_(a), [(src, dst)])
    return 2 * src.numel() * 4 / (t * 1e-6) / 1e12


def make_sets(b: int, ctx: int) -> list[dict]:
    """Input sets for one shape: enough that the fp8 caches of all of them exceed twice the L2."""
    fp8_bytes = 2 * b * HKV * ctx * D
    n = max(1, min(MAX_SETS, math.ceil(2 * L2_BYTES / fp8_bytes)))
    sets = []
    for _ in range(n):
        k = torch.randn(b, HKV, ctx, D, device=DEV, dtype=torch.bfloat16)
        v = torch.randn(b, HKV, ctx, D, device=DEV, dtype=torch.bfloat16)
        k8, ks = quantize_kv_reference(k)
        v8, vs = quantize_kv_reference(v)
        sets.append({
            "q": torch.randn(b, HQ, D, device=DEV, dtype=torch.bfloat16),
            "k": k, "v": v, "k8": k8, "v8": v8, "ks": ks, "vs": vs,
            "lens": torch.full((b,), ctx, dtype=torch.int32, device=DEV),
        })
    return sets


def bench_shape(b: int, ctx: int, copy_tbps: float, gqa: bool) -> dict:
    sets = make_sets(b, ctx)
    s0 = sets[0]

    def bf16(s):
        return decode_attention(s["q"], s["k"], s["v"], s["lens"])

    def fp8(s):
        return decode_attention(s["q"], s["k8"], s["v8"], s["lens"], k_scale=s["ks"], v_scale=s["vs"])

    sdpa = sdpa_gqa if gqa else sdpa_repeat_kv
    name = f"B={b} ctx={ctx}"
    # The first calls also autotune, outside any timing or graph capture.
    out_bf16 = bf16(s0)
    cfg_bf16 = attention_config()
    out_fp8 = fp8(s0)
    cfg_fp8 = attention_config()
    ref_bf16 = decode_attention_reference(s0["q"], s0["k"], s0["v"], s0["lens"])
    ref_fp8 = decode_attention_reference(s0["q"], s0["k8"], s0["v8"], s0["lens"], k_scale=s0["ks"], v_scale=s0["vs"])
    errs = {
        "bf16_rel_err": check(f"triton bf16 {name}", rel_err(out_bf16, ref_bf16), BOUND_SAME_CACHE),
        "fp8_rel_err": check(f"triton fp8 {name}", rel_err(out_fp8, ref_fp8), BOUND_SAME_CACHE),
        "fp8_vs_bf16_cache_rel_err": check(f"triton fp8 vs bf16 cache {name}", rel_err(out_fp8, ref_bf16),
                                           BOUND_FP8_VS_BF16),
        "sdpa_rel_err": check(f"sdpa {name}", rel_err(sdpa(s0["q"], s0["k"], s0["v"]), ref_bf16), BOUND_SAME_CACHE),
        "sdpa_repeat_kv_rel_err": check(f"sdpa repeat_kv {name}",
                                        rel_err(sdpa_repeat_kv(s0["q"], s0["k"], s0["v"]), ref_bf16), BOUND_SAME_CACHE),
    }
    del out_bf16, out_fp8, ref_bf16, ref_fp8

    t = {
        "triton_bf16_us": median_us(bf16, [(s,) for s in sets]),
        "triton_fp8_us": median_us(fp8, [(s,) for s in sets]),
        "sdpa_us": median_us(lambda s: sdpa(s["q"], s["k"], s["v"]), [(s,) for s in sets]),
        "sdpa_repeat_kv_us": median_us(lambda s: sdpa_repeat_kv(s["q"], s["k"], s["v"]), [(s,) for s in sets]),
        "triton_bf16_graph_us": graph_us(bf16, [(s,) for s in sets]),
        "triton_fp8_graph_us": graph_us(fp8, [(s,) for s in sets]),
        "sdpa_graph_us": graph_us(lambda s: sdpa(s["q"], s["k"], s["v"]), [(s,) for s in sets]),
    }
    # Bytes the work must move: K and V read, q read, the output written (split partials and
    # the per-head scales are extra traffic the kernel adds, not counted).
    io = 2 * b * HQ * D * 2
    bytes_bf16 = 2 * b * HKV * ctx * D * 2 + io
    bytes_fp8 = 2 * b * HKV * ctx * D + io
    row = {
        "b": b, "ctx": ctx, "hq": HQ, "hkv": HKV, "d": D, "input_sets": len(sets),
        "num_splits": num_splits_for(b, HKV, ctx, torch.device(DEV)),
        "bf16_config": cfg_bf16, "fp8_config": cfg_fp8, **errs, **t,
        "bytes_bf16": bytes_bf16, "bytes_fp8": bytes_fp8,
        "triton_bf16_tbps": bytes_bf16 / (t["triton_bf16_us"] * 1e-6) / 1e12,
        "triton_fp8_tbps": bytes_fp8 / (t["triton_fp8_us"] * 1e-6) / 1e12,
        "sdpa_tbps": bytes_bf16 / (t["sdpa_us"] * 1e-6) / 1e12,
        "triton_bf16_graph_tbps": bytes_bf16 / (t["triton_bf16_graph_us"] * 1e-6) / 1e12,
        "triton_fp8_graph_tbps": bytes_fp8 / (t["triton_fp8_graph_us"] * 1e-6) / 1e12,
        "fp8_speedup_vs_bf16": t["triton_bf16_us"] / t["triton_fp8_us"],
        "fp8_speedup_vs_bf16_graph": t["triton_bf16_graph_us"] / t["triton_fp8_graph_us"],
        "bf16_speedup_vs_sdpa": t["sdpa_us"] / t["triton_bf16_us"],
        "fp8_speedup_vs_sdpa": t["sdpa_us"] / t["triton_fp8_us"],
        "fp8_speedup_vs_sdpa_graph": t["sdpa_graph_us"] / t["triton_fp8_graph_us"],
        # The byte floor at the measured copy bandwidth (a read-mostly kernel may beat it a little).
        "bf16_floor_us": bytes_bf16 / (copy_tbps * 1e12) * 1e6,
        "fp8_floor_us": bytes_fp8 / (copy_tbps * 1e12) * 1e6,
    }
    print(f"{name}: triton bf16 {t['triton_bf16_us']:.1f}us ({row['triton_bf16_tbps']:.2f} TB/s) "
          f"fp8 {t['triton_fp8_us']:.1f}us ({row['triton_fp8_tbps']:.2f} TB/s, {row['fp8_speedup_vs_bf16']:.2f}x bf16) "
          f"sdpa {t['sdpa_us']:.1f}us repeat_kv {t['sdpa_repeat_kv_us']:.1f}us | graph bf16 "
          f"{t['triton_bf16_graph_us']:.1f} fp8 {t['triton_fp8_graph_us']:.1f} sdpa {t['sdpa_graph_us']:.1f} | "
          f"splits {row['num_splits']} | {cfg_bf16} | {cfg_fp8}", flush=True)
    return row


def sweep_splits(b: int, ctx: int) -> list[dict]:
    """Time against num_splits, for both caches, so the heuristic can be judged (graph replay)."""
    sets = make_sets(b, ctx)
    rows = []
    seen = set()
    for n in SPLIT_SWEEP:
        # The launcher rounds chunks up to SPLIT_ALIGN: time each split count it can run once.
        chunk = triton.cdiv(triton.cdiv(ctx, n), da_mod.SPLIT_ALIGN) * da_mod.SPLIT_ALIGN
        n = triton.cdiv(ctx, chunk)
        if n in seen:
            continue
        seen.add(n)

        def bf16(s, n=n):
            return decode_attention_triton(s["q"], s["k"], s["v"], s["lens"], num_splits=n)

        def fp8(s, n=n):
            return decode_attention_triton(s["q"], s["k8"], s["v8"], s["lens"], k_scale=s["ks"], v_scale=s["vs"],
                                           num_splits=n)

        bf16(sets[0]), fp8(sets[0])  # autotune outside the graph
        row = {"b": b, "ctx": ctx, "num_splits": n, "chunk": chunk,
               "bf16_graph_us": graph_us(bf16, [(s,) for s in sets]),
               "fp8_graph_us": graph_us(fp8, [(s,) for s in sets])}
        rows.append(row)
        print(f"sweep B={b} ctx={ctx} splits={n}: bf16 {row['bf16_graph_us']:.1f}us fp8 {row['fp8_graph_us']:.1f}us",
              flush=True)
    del sets
    return rows


def targets(rows: list[dict]) -> list[dict]:
    """Issue 3's target for this kernel: the fp8 cache never slower than the bf16 one."""
    out = []
    for key, label in (("fp8_speedup_vs_bf16", "do_bench"), ("fp8_speedup_vs_bf16_graph", "CUDA graph")):
        worst = min(rows, key=lambda r: r[key])
        out.append({"target": f"fp8-KV decode never slower than bf16-KV at the same shape ({label})",
                    "measured": f"{worst[key]:.2f}x (worst, B={worst['b']} ctx={worst['ctx']})",
                    "met": bool(worst[key] >= 1.0)})
    return out


def summarize(result: dict) -> str:
    lines = [
        f"# Decode attention benchmark — {result['gpu']}",
        "",
        f"torch {result['torch']}, Triton {result['triton']}, CUDA {result['cuda']}; {result['date']}. "
        f"Llama-3-8B heads (Hq {HQ}, Hkv {HKV}, D {D}), every sequence ctx long. SDPA: {result['sdpa_mode']}. "
        f"Measured copy bandwidth {result['copy_tbps']:.2f} TB/s. Reproduce: `python bench/decode_attention.py`.",
        "",
        "| B | ctx | splits | Triton bf16 µs | Triton fp8 µs | SDPA bf16 µs | SDPA repeat_kv µs | bf16 TB/s | fp8 TB/s "
        "| fp8 / bf16 | fp8 / SDPA | graph: bf16 µs | fp8 µs | SDPA µs | fp8 / bf16 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['b']} | {r['ctx']} | {r['num_splits']} | {r['triton_bf16_us']:.1f} | {r['triton_fp8_us']:.1f} | "
            f"{r['sdpa_us']:.1f} | {r['sdpa_repeat_kv_us']:.1f} | {r['triton_bf16_tbps']:.2f} | {r['triton_fp8_tbps']:.2f} | "
            f"{r['fp8_speedup_vs_bf16']:.2f}× | {r['fp8_speedup_vs_sdpa']:.2f}× | {r['triton_bf16_graph_us']:.1f} | "
            f"{r['triton_fp8_graph_us']:.1f} | {r['sdpa_graph_us']:.1f} | {r['fp8_speedup_vs_bf16_graph']:.2f}× |")
    if result["split_sweep"]:
        lines += ["", "Time against the split count (CUDA graph, µs):", "",
                  "| B | ctx | splits | bf16 | fp8 |", "| --- | --- | --- | --- | --- |"]
        for r in result["split_sweep"]:
            lines.append(f"| {r['b']} | {r['ctx']} | {r['num_splits']} | {r['bf16_graph_us']:.1f} | "
                         f"{r['fp8_graph_us']:.1f} |")
    lines += ["", "| target | measured | met |", "| --- | --- | --- |"]
    for t in result["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no'} |")
    if result["check_failures"]:
        lines += ["", "**Output checks failed:**", ""] + [f"- {f}" for f in result["check_failures"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/decode-attention-h100.json")
    parser.add_argument("--md", default="bench/results/decode-attention-h100.md")
    parser.add_argument("--quick", action="store_true", help=f"B={QUICK_BATCHES}, ctx={QUICK_CONTEXTS}, no sweep")
    parser.add_argument("--no-sweep", action="store_true", help="skip the num_splits sweep at B=1")
    parser.add_argument("--sweep-only", type=str, default=None, metavar="CTX,...",
                        help="only the num_splits sweep at B=1, at these contexts (decode-step sizes, e.g. 576)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/decode_attention.py needs a CUDA GPU")
    torch.manual_seed(0)
    start = time.time()
    batches, contexts = (QUICK_BATCHES, QUICK_CONTEXTS) if args.quick else (BATCHES, CONTEXTS)
    if args.sweep_only:
        batches, contexts = [], [int(c) for c in args.sweep_only.split(",")]
    gqa = sdpa_has_enable_gqa()
    result = {
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
        "sm_count": torch.cuda.get_device_properties(0).multi_processor_count,
        "sdpa_mode": "enable_gqa=True" if gqa else "repeat_kv (transformers' expansion; no enable_gqa)",
        "heuristic": {"waves": da_mod.WAVES, "min_chunk": da_mod.MIN_CHUNK, "split_align": da_mod.SPLIT_ALIGN},
        "quick": args.quick,
    }
    result["copy_tbps"] = copy_tbps = measure_copy_tbps()
    print(f"{result['gpu']}: copy {copy_tbps:.2f} TB/s; SDPA {result['sdpa_mode']}", flush=True)
    rows = []
    for b in batches:
        for ctx in contexts:
            rows.append(bench_shape(b, ctx, copy_tbps, gqa))
            torch.cuda.empty_cache()
    result["rows"] = rows
    sweep = []
    if not (args.quick or args.no_sweep):
        for ctx in contexts:
            sweep += sweep_splits(1, ctx)
            torch.cuda.empty_cache()
    result["split_sweep"] = sweep
    result["targets"] = targets(rows) if rows else []
    result["check_failures"] = CHECK_FAILURES
    result["seconds"] = time.time() - start
    for path in (args.out, args.md):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    with open(args.md, "w") as f:
        f.write(summarize(result))
    for t in result["targets"]:
        print(f"{'PASS' if t['met'] else 'MISS'} {t['target']}: {t['measured']}")
    print(f"done in {result['seconds']:.0f}s")
    if CHECK_FAILURES:
        sys.exit(f"{len(CHECK_FAILURES)} output checks failed: " + "; ".join(CHECK_FAILURES))
    print("all output checks passed")


if __name__ == "__main__":
    main()
