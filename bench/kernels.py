"""Benchmark of the low-precision kernels on one CUDA GPU against baselines timed in the same run.

    python bench/kernels.py --out bench/results/kernels-h100.json --md bench/results/kernels-h100.md

Every time is the median of ``triton.testing.do_bench`` (warm-up first, L2 flushed before each
repetition) over inputs rotated between repetitions, on fresh random data. Baselines: bf16
``torch.matmul``, ``torch._scaled_mm`` with rowwise scales and fast accumulation (fp8),
``torch._int_mm`` (int8; it refuses M <= 16) and a device-to-device copy. Floors: bytes moved
over the measured copy bandwidth, FLOPs over the datasheet dense rate.
"""
import argparse
import json
import math
import os
import platform
import sys
import time

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.timing import CHECK_FAILURES, best_config, check, graph_us, median_us, rel_err, rounds_us  # noqa: E402
import kernels.gemm_w4a16 as w4_mod  # noqa: E402
import kernels._w8a8 as w8a8_mod  # noqa: E402
from kernels._launch import pdl_args  # noqa: E402
from kernels.act_quant import act_quant, act_quant_reference, act_quant_triton  # noqa: E402
from kernels.gemm_fp8 import gemm_fp8  # noqa: E402
from kernels.gemm_int8 import gemm_int8, gemm_int8_reference  # noqa: E402
from kernels.gemm_w4a16 import dequantize_w4_triton, gemm_w4a16, quantize_w4_reference  # noqa: E402

# Datasheet dense rates of the H100 SXM (TFLOP/s), for the FLOP floor.
PEAK_TFLOPS = {"bf16": 989.0, "fp8": 1979.0, "int8": 1979.0}
L2_BYTES = 50 * 2**20
DEV = "cuda"

# Llama-3 linear shapes (M tokens, N outputs, K inputs). Pruned from {4096, 8192, 14336, 28672}^2
# x {1, 16, 128, 2048, 8192} to fit the lease: every M at K = N = 8192 (8192^3 included),
# the 8B layers (qkv/o 4096x4096, up 14336x4096, down 4096x14336) and 70B's mlp at decode
# and prefill sizes.
GEMM_SHAPES = (
    [(m, 8192, 8192) for m in (1, 16, 64, 128, 2048, 8192)]
    + [(m, n, k) for m in (1, 16, 2048) for n, k in ((4096, 4096), (14336, 4096), (4096, 14336))]
    + [(m, n, k) for m in (16, 2048) for n, k in ((28672, 8192), (8192, 28672))]
)
W4_SHAPES = [(m, 8192, 8192) for m in (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 2048)] + [
    (m, n, k) for m in (1, 16) for n, k in ((4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192))
]
ACT_SHAPES = [(1, 4096), (16, 4096), (16, 8192), (2048, 4096), (8192, 4096), (16384, 4096), (8192, 8192)]


def n_sets(bytes_per_set: int) -> int:
    """Enough rotating input sets to exceed twice the L2, at most 8."""
    return max(1, min(8, math.ceil(2 * L2_BYTES / max(bytes_per_set, 1))))


def measure_ceilings() -> dict:
    """Device-to-device copy bandwidth and the bf16 / fp8 GEMM rates at 8192^3."""
    src = torch.randn(2**28, device=DEV)  # 1 GiB
    dst = torch.empty_like(src)
    t = median_us(lambda a, b: b.copy_(a), [(src, dst)])
    copy_tbps = 2 * src.numel() * 4 / (t * 1e-6) / 1e12
    del src, dst
    a = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=DEV, dtype=torch.bfloat16)
    t = median_us(lambda x, y: x @ y.t(), [(a, b)])
    return {"copy_tbps": copy_tbps, "bf16_8192_tflops": 2 * 8192**3 / (t * 1e-6) / 1e12}


def floor_us(flops: float, nbytes: float, peak_tflops: float, copy_tbps: float) -> float:
    return max(flops / (peak_tflops * 1e12), nbytes / (copy_tbps * 1e12)) * 1e6


def bench_act_quant(copy_tbps: float) -> list[dict]:
    rows = []
    for m, k in ACT_SHAPES:
        nbytes = m * k * (2 + 1) + m * 8  # read bf16, write fp8, scale + amax
        sets = [(torch.randn(m, k, device=DEV, dtype=torch.bfloat16) * 3,) for _ in range(n_sets(nbytes))]
        x0 = sets[0][0]
        for fmt in ("fp8_e4m3", "int8"):
            got, ref = act_quant(x0, fmt), act_quant_reference(x0, fmt)
            check(f"act_quant {fmt} {m}x{k}", rel_err(got[0].float() * got[1], ref[0].float() * ref[1]), 0.0)
        t_dyn = median_us(lambda x: act_quant(x, "fp8_e4m3"), sets)
        static = torch.tensor([[0.02]], device=DEV)
        t_static = median_us(lambda x: act_quant(x, "fp8_e4m3", static), sets)
        t_int8 = median_us(lambda x: act_quant(x, "int8"), sets)
        t_ref = median_us(lambda x: act_quant_reference(x, "fp8_e4m3"), sets)
        # The copy baseline moves the same tensor through memory: read 2 bytes, write 2.
        dst = torch.empty_like(sets[0][0])
        t_copy = median_us(lambda x: dst.copy_(x), sets)
        floor = nbytes / (copy_tbps * 1e12) * 1e6
        by_warps = {w: median_us(lambda x: act_quant_triton(x, "fp8_e4m3", num_warps=w), sets) for w in (2, 4, 8, 16)}
        # Tokens per program (warps from the heuristic): the launcher packs rows from M = 64 up.
        by_rows = {r: median_us(lambda x: act_quant_triton(x, "fp8_e4m3", rows=r), sets)
                   for r in (1, 2, 4, 8)} if m > 64 else {}
        # Device time too: below ~60 µs do_bench measures the host's launch path, not the kernel.
        t_graph = graph_us(lambda x: act_quant(x, "fp8_e4m3"), sets)
        rows.append({
            "kernel": "act_quant", "m": m, "k": k, "input_mib": m * k * 2 / 2**20,
            "fp8_dynamic_us": t_dyn, "fp8_static_us": t_static, "int8_dynamic_us": t_int8,
            "torch_reference_us": t_ref, "copy_same_tensor_us": t_copy,
            "byte_floor_us": floor, "fraction_of_copy_bw": floor / t_dyn,
            "speedup_vs_reference": t_ref / t_dyn, "fp8_dynamic_graph_us": t_graph,
            "fraction_of_copy_bw_graph": floor / t_graph,
            "fp8_dynamic_us_by_num_warps": by_warps, "fp8_dynamic_us_by_rows_per_program": by_rows,
            "copy_same_tensor_tbps": 2 * m * k * 2 / (t_copy * 1e-6) / 1e12,
        })
        print(f"act_quant {m}x{k}: fp8 {t_dyn:.1f}us static {t_static:.1f} int8 {t_int8:.1f} ref {t_ref:.1f} "
              f"floor {floor:.1f} ({100 * floor / t_dyn:.0f}% of copy bw) graph {t_graph} by warps "
              f"{ {w: round(t, 1) for w, t in by_warps.items()} } by rows { {r: round(t, 1) for r, t in by_rows.items()} }",
              flush=True)
    return rows


def _quantized_weights(n, k, fmt):
    w = torch.randn(n, k, device=DEV, dtype=torch.bfloat16) * 0.02
    if fmt == "bf16":
        return (w,)
    q, s, _, _ = act_quant(w, fmt)
    return q, s


def w8a8_sets(m: int, n: int, k: int) -> list[tuple]:
    """Rotating W8A8 operand sets, each (x, w, fp8 xq, xs, wq, ws, int8 xq, xs, wq, ws) of one draw,
    enough to exceed twice the L2 by their 8-bit operands (the smallest of a set), at most 8."""
    sets = []
    for _ in range(n_sets(m * k + n * k)):
        x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
        w = torch.randn(n, k, device=DEV, dtype=torch.bfloat16) * 0.02
        sets.append((x, w) + tuple(act_quant(x, "fp8_e4m3")[:2]) + tuple(act_quant(w, "fp8_e4m3")[:2])
                    + tuple(act_quant(x, "int8")[:2]) + tuple(act_quant(w, "int8")[:2]))
    return sets


def bench_w8a8(ceil: dict) -> list[dict]:
    rows = []
    for m, n, k in GEMM_SHAPES:
        flops = 2 * m * n * k
        sets = w8a8_sets(m, n, k)
        x, w, xq8, xs8, wq8, ws8, xqi, xsi, wqi, wsi = sets[0]
        scaled = torch._scaled_mm(xq8, wq8.t(), scale_a=xs8, scale_b=ws8.t(), out_dtype=torch.bfloat16,
                                  use_fast_accum=True)
        kernel_for = {"gemv": w8a8_mod._w8a8_gemv_kernel,
                      "swap": w8a8_mod._w8a8_swap_kernel if w8a8_mod.swap_split_k(n) else w8a8_mod._w8a8_swap_direct_kernel,
                      "tiled": w8a8_mod._w8a8_gemm_kernel,
                      "persistent": w8a8_mod._w8a8_persistent_kernel}
        # Each format's config is read after its first call, which tunes it: later calls launch the
        # compiled kernel directly (kernels._launch.launch) and leave the autotuner's last pick as it
        # was, and fp8 and int8 share the kernels.
        err_fp8 = check(f"fp8 {m}x{n}x{k}", rel_err(gemm_fp8(xq8, xs8, wq8, ws8), scaled), 1e-2)
        cfg_fp8 = best_config(kernel_for[w8a8_mod.w8a8_path(m, torch.float8_e4m3fn)])
        err_int8 = check(f"int8 {m}x{n}x{k}", rel_err(gemm_int8(xqi, xsi, wqi, wsi),
                                                      gemm_int8_reference(xqi, xsi, wqi, wsi)), 1e-2)
        cfg_int8 = best_config(kernel_for[w8a8_mod.w8a8_path(m, torch.int8)])
        del x, w, xq8, xs8, wq8, ws8, xqi, xsi, wqi, wsi, scaled
        # Both timers, interleaved rounds (bench.timing.rounds_us). Decode-sized GEMMs run in a few µs
        # of device time, under the host's launch cost: CUDA-graph replay times them as a serving
        # stack runs them. Large ones too: do_bench flushes the L2 before each call, and a launch
        # path slower than that flush (~100 µs for Triton's autotuner and launcher against ~85 µs;
        # bench/launch_overhead.py) adds the difference to every call it times, at any size.
        fns = {
            "bf16": lambda x, w, *r: x @ w.t(),
            "fp8_triton": lambda x, w, xq, xs, wq, ws, *r: gemm_fp8(xq, xs, wq, ws),
            "scaled_mm": lambda x, w, xq, xs, wq, ws, *r: torch._scaled_mm(
                xq, wq.t(), scale_a=xs, scale_b=ws.t(), out_dtype=torch.bfloat16, use_fast_accum=True),
            "int8_triton": lambda *r: gemm_int8(r[6], r[7], r[8], r[9]),
        }
        if m > 16:
            fns["int_mm"] = lambda *r: torch._int_mm(r[6], r[8].t())
        timed = rounds_us(fns, sets)
        t_bf16, t_fp8, t_scaled, t_int8 = (timed[name]["do_bench"]
                                           for name in ("bf16", "fp8_triton", "scaled_mm", "int8_triton"))
        t_int_mm = timed["int_mm"]["do_bench"] if m > 16 else None
        graph = {f"{name}_graph_us": timed[name]["graph"] for name in fns}
        graph["int_mm_graph_us"] = graph.get("int_mm_graph_us")
        rounds = {name: timed[name]["rounds"] for name in fns}
        paths = {}
        if m <= 128:
            # Every kernel path the launcher has for this M, checked and timed (CUDA graph), so
            # the dispatch thresholds in kernels/_w8a8.py come from this table.
            for path in [p for p in ("gemv", "swap", "tiled") if p != "gemv" or m <= 8]:
                for fmt, qd, idx in (("fp8", torch.float8_e4m3fn, 2), ("int8", torch.int8, 6)):
                    s0 = sets[0]
                    got = w8a8_mod.w8a8_gemm_triton(*s0[idx:idx + 4], None, torch.bfloat16, qd, path=path)
                    ref = gemm_int8_reference(*s0[idx:idx + 4]) if fmt == "int8" else torch._scaled_mm(
                        s0[2], s0[4].t(), scale_a=s0[3], scale_b=s0[5].t(), out_dtype=torch.bfloat16, use_fast_accum=True)
                    check(f"{fmt} path {path} {m}x{n}x{k}", rel_err(got, ref), 1e-2)
                    paths[f"{fmt}_{path}_graph_us"] = graph_us(
                        lambda *r, i=idx, q=qd, p=path: w8a8_mod.w8a8_gemm_triton(*r[i:i + 4], None, torch.bfloat16, q, path=p),
                        sets)
                    kern = {"gemv": w8a8_mod._w8a8_gemv_kernel, "tiled": w8a8_mod._w8a8_gemm_kernel,
                            "swap": w8a8_mod._w8a8_swap_kernel if w8a8_mod.swap_split_k(n)
                            else w8a8_mod._w8a8_swap_direct_kernel}[path]
                    paths[f"{fmt}_{path}_config"] = best_config(kern)
        bytes8 = m * k + n * k + m * n * 2
        bytes16 = 2 * (m * k + n * k + m * n)
        row = {
            "kernel": "w8a8", "m": m, "n": n, "k": k,
            "fp8_rel_err_vs_scaled_mm": err_fp8, "int8_rel_err_vs_reference": err_int8,
            "path": w8a8_mod.w8a8_path(m, torch.float8_e4m3fn), "int8_path": w8a8_mod.w8a8_path(m, torch.int8),
            "fp8_config": cfg_fp8, "int8_config": cfg_int8, **graph, "rounds": rounds, "paths": paths,
            "bf16_matmul_us": t_bf16, "fp8_triton_us": t_fp8, "scaled_mm_us": t_scaled,
            "int8_triton_us": t_int8, "int_mm_us": t_int_mm,
            "fp8_tflops": flops / (t_fp8 * 1e-6) / 1e12, "int8_tops": flops / (t_int8 * 1e-6) / 1e12,
            "fp8_vs_scaled_mm": t_scaled / t_fp8, "fp8_vs_bf16": t_bf16 / t_fp8,
            "int8_vs_int_mm": (t_int_mm / t_int8) if t_int_mm else None, "int8_vs_bf16": t_bf16 / t_int8,
            "w8_floor_us": floor_us(flops, bytes8, PEAK_TFLOPS["fp8"], ceil["copy_tbps"]),
            "bf16_floor_us": floor_us(flops, bytes16, PEAK_TFLOPS["bf16"], ceil["copy_tbps"]),
        }
        rows.append(row)
        print(f"w8a8 {m}x{n}x{k}: bf16 {t_bf16:.1f}us | fp8 {t_fp8:.1f} vs scaled_mm {t_scaled:.1f} "
              f"({row['fp8_vs_scaled_mm']:.2f}x, {row['fp8_vs_bf16']:.2f}x bf16) | int8 {t_int8:.1f} vs int_mm "
              f"{t_int_mm if t_int_mm is None else round(t_int_mm, 1)} | floor {row['w8_floor_us']:.1f} | {cfg_fp8} | {cfg_int8}"
              f" | graph { {g: round(t, 1) for g, t in graph.items() if t} }"
              f" | paths { {p: (round(t, 1) if isinstance(t, float) else t) for p, t in paths.items()} }", flush=True)
        del sets
    return rows


W4_KERNELS = {"gemv": "_w4a16_gemv_kernel", "tc": "_w4a16_tc_kernel", "mma": "w4a16_mma._w4a16_mma_kernel"}


def _scales_as_runtime(path: str, s, z, s_gm, z_gm):
    """The scales and zeros the runtime passes to ``path``: CUDA engines keep group-major copies
    for the tensor-core and mma kernels (runtime.modules.quant_linear.prepare_w4a16), and pass
    integer_zeros=True (its quantizer rounds zeros; so does quantize_w4_reference)."""
    return (s_gm, z_gm) if path in w4_mod.GROUP_MAJOR_PATHS else (s, z)


def bench_w4a16(ceil: dict) -> list[dict]:
    rows = []
    for m, n, k in W4_SHAPES:
        w = torch.randn(n, k, device=DEV, dtype=torch.bfloat16) * 0.02
        packed, scales, zeros = quantize_w4_reference(w, 128, True)
        set_bytes = m * k * 2 + n * k // 2
        sets = []
        for i in range(n_sets(set_bytes)):
            x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
            if i == 0:
                sets.append((x, w, packed, scales, zeros))
            else:
                wi = torch.randn(n, k, device=DEV, dtype=torch.bfloat16) * 0.02
                sets.append((x, wi, *quantize_w4_reference(wi, 128, True)))
        # Each set also carries group-major views of its scales and zeros, made outside the timing.
        sets = [(*st, st[3].t().contiguous().t(), st[4].t().contiguous().t()) for st in sets]
        x0 = sets[0][0]
        expect = x0 @ dequantize_w4_triton(packed, scales, zeros, 128, torch.bfloat16).t()
        # Every path that serves this M: checked, timed with do_bench and, at decode sizes, as
        # CUDA-graph device time; the dispatch thresholds in kernels/gemm_w4a16.py come from it.
        paths = [p for p in ("gemv", "mma", "tc", "dequant")
                 if (p != "gemv" or m == 1) and (p != "tc" or m <= 256) and (p != "mma" or m <= 16)]
        per_path = {}
        for path in paths:
            def fn(x, w, p, *scales, path=path):
                return w4_mod.gemm_w4a16_triton(x, p, *_scales_as_runtime(path, *scales), 128, path=path,
                                                integer_zeros=True)
            err = check(f"w4a16 {path} {m}x{n}x{k}", rel_err(fn(*sets[0]), expect), 1e-2)
            entry = {"rel_err": err, "us": median_us(fn, sets)}
            if path in W4_KERNELS:
                owner, _, name = W4_KERNELS[path].rpartition(".")
                entry["config"] = best_config(getattr(getattr(w4_mod, owner) if owner else w4_mod, name))
            if m <= 128:
                entry["graph_us"] = graph_us(fn, sets)
            per_path[path] = entry
        chosen = w4_mod.w4a16_path(m, 128, n, k, torch.bfloat16)

        def dispatched(x, w, p, *scales):
            return gemm_w4a16(x, p, *_scales_as_runtime(chosen, *scales), 128, integer_zeros=True)
        err_disp = check(f"w4a16 dispatched {m}x{n}x{k}", rel_err(dispatched(*sets[0]), expect), 1e-2)
        del expect
        t_bf16 = median_us(lambda x, w, *r: x @ w.t(), sets)
        t_dispatch = median_us(dispatched, sets)
        graph = {}
        if m <= 128:
            graph = {"bf16_graph_us": graph_us(lambda x, w, *r: x @ w.t(), sets),
                     "dispatched_graph_us": per_path[chosen]["graph_us"]}
        flops = 2 * m * n * k
        nbytes = m * k * 2 + n * k // 2 + 2 * 2 * n * k // 128 + m * n * 2
        t_best_fused = min(per_path[p]["us"] for p in per_path if p != "dequant") if set(per_path) - {"dequant"} else None
        row = {
            "kernel": "w4a16_g128", "m": m, "n": n, "k": k, "path": chosen, "paths": per_path,
            "dispatched_rel_err": err_disp, **graph,
            "bf16_matmul_us": t_bf16, "dequant_cublas_us": per_path["dequant"]["us"],
            "dispatched_us": t_dispatch, "dispatch_vs_bf16": t_bf16 / t_dispatch,
            "floor_us": floor_us(flops, nbytes, PEAK_TFLOPS["bf16"], ceil["copy_tbps"]),
            "dispatched_weight_tbps": n * k / 2 / (min(t_dispatch, graph.get("dispatched_graph_us", t_dispatch)) * 1e-6) / 1e12,
            "best_fused_us": t_best_fused,
        }
        if graph:
            row["dispatch_vs_bf16_graph"] = graph["bf16_graph_us"] / graph["dispatched_graph_us"]
        rows.append(row)
        summary = {p: (round(e["us"], 1), round(e["graph_us"], 1) if "graph_us" in e else None) for p, e in per_path.items()}
        print(f"w4a16 {m}x{n}x{k}: bf16 {t_bf16:.1f}us graph {graph.get('bf16_graph_us')} | dispatched ({chosen}) "
              f"{t_dispatch:.1f} ({row['dispatch_vs_bf16']:.2f}x; graph {row.get('dispatch_vs_bf16_graph')}) | "
              f"paths (do_bench, graph) {summary} | floor {row['floor_us']:.1f} | "
              f"{ {p: e.get('config') for p, e in per_path.items() if e.get('config')} }", flush=True)
        del sets, w, packed, scales, zeros
    return rows


def summarize(result: dict) -> str:
    """Markdown summary with the issue-3 targets."""
    c = result["ceilings"]
    lines = [
        f"# Kernel benchmark — {result['gpu']}",
        "",
        f"torch {result['torch']}, Triton {result['triton']}, CUDA {result['cuda']}; {result['date']}. "
        f"Medians of `triton.testing.do_bench` (L2 flushed, rotating random inputs). "
        f"Reproduce: `python bench/kernels.py` on the GPU.",
        "",
        f"Measured ceilings: copy {c['copy_tbps']:.2f} TB/s (read + write), bf16 GEMM 8192³ "
        f"{c['bf16_8192_tflops']:.0f} TFLOP/s.",
        "",
        "## Fused activation quantization (bf16 in, fp8 e4m3 out, per-token dynamic)",
        "",
        "| M × K | input MiB | fp8 dyn µs | fp8 dyn µs (graph) | fp8 static µs | int8 µs | torch ref µs | byte floor µs | % of copy bw | % of copy bw (graph) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["act_quant"]:
        g = f"{r['fp8_dynamic_graph_us']:.1f}" if r["fp8_dynamic_graph_us"] else "—"
        lines.append(f"| {r['m']}×{r['k']} | {r['input_mib']:.0f} | {r['fp8_dynamic_us']:.1f} | {g} | {r['fp8_static_us']:.1f} | "
                     f"{r['int8_dynamic_us']:.1f} | {r['torch_reference_us']:.1f} | {r['byte_floor_us']:.1f} | "
                     f"{100 * r['fraction_of_copy_bw']:.0f}% | {100 * r['fraction_of_copy_bw_graph']:.0f}% |")
    lines += [
        "",
        "## W8A8 GEMMs (bf16 out, per-token × per-channel scales)",
        "",
        "| M × N × K | bf16 µs | fp8 Triton µs | _scaled_mm µs | fp8 / _scaled_mm | fp8 / bf16 | fp8 TFLOP/s | int8 Triton µs | _int_mm µs | int8 / _int_mm | floor µs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["w8a8"]:
        int_mm = f"{r['int_mm_us']:.1f}" if r["int_mm_us"] else "refuses M ≤ 16"
        ratio = f"{r['int8_vs_int_mm']:.2f}×" if r["int8_vs_int_mm"] else "—"
        lines.append(f"| {r['m']}×{r['n']}×{r['k']} | {r['bf16_matmul_us']:.1f} | {r['fp8_triton_us']:.1f} | "
                     f"{r['scaled_mm_us']:.1f} | {r['fp8_vs_scaled_mm']:.2f}× | {r['fp8_vs_bf16']:.2f}× | "
                     f"{r['fp8_tflops']:.0f} | {r['int8_triton_us']:.1f} | {int_mm} | {ratio} | {r['w8_floor_us']:.1f} |")
    lines += [
        "",
        "W8A8 GEMMs replayed from a CUDA graph (device time, µs; rotating inputs; no host launch cost):",
        "",
        "| M × N × K | bf16 | fp8 Triton | _scaled_mm | fp8 / _scaled_mm | fp8 / bf16 | int8 Triton | _int_mm |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["w8a8"]:
        if "bf16_graph_us" not in r:
            continue
        im = f"{r['int_mm_graph_us']:.1f}" if r["int_mm_graph_us"] else "refuses M ≤ 16"
        lines.append(f"| {r['m']}×{r['n']}×{r['k']} | {r['bf16_graph_us']:.1f} | {r['fp8_triton_graph_us']:.1f} | "
                     f"{r['scaled_mm_graph_us']:.1f} | {r['scaled_mm_graph_us'] / r['fp8_triton_graph_us']:.2f}× | "
                     f"{r['bf16_graph_us'] / r['fp8_triton_graph_us']:.2f}× | {r['int8_triton_graph_us']:.1f} | {im} |")
    # Runs before the mma kernel (kernels/w4a16_mma.py) have no column for it.
    mma_head = "mma µs (graph) | " if "w4a16_mma_small_m" in result else ""
    w4_header = (f"## W4A16 group 128 (bf16 activations): GEMV up to M = {result['w4a16_gemv_max_m']}, "
                 + (f"the mma.sync kernel up to {result['w4a16_mma_small_m']} (and {result['w4a16_mma_max_m']} where "
                    "N >= K), " if mma_head else "")
                 + f"tensor cores up to {result['w4a16_tc_max_m']}, then dequant + cuBLAS")
    lines += [
        "",
        w4_header,
        "",
        "| M × N × K | path | bf16 µs | dispatched µs | dispatched / bf16 | bf16 µs (graph) | dispatched µs (graph) | "
        f"dispatched / bf16 (graph) | GEMV µs (graph) | {mma_head}TC µs (graph) | dequant+cuBLAS µs | floor µs |",
        "| --- " * (12 + bool(mma_head)) + "|",
    ]

    def path_col(r, p):
        e = r["paths"].get(p)
        return "—" if e is None or "graph_us" not in e else f"{e['graph_us']:.1f}"

    for r in result["w4a16"]:
        gb, gd = r.get("bf16_graph_us"), r.get("dispatched_graph_us")
        graph_cols = f"{gb:.1f} | {gd:.1f} | {gb / gd:.2f}×" if gb else "— | — | —"
        mma_col = f"{path_col(r, 'mma')} | " if mma_head else ""
        lines.append(f"| {r['m']}×{r['n']}×{r['k']} | {r['path']} | {r['bf16_matmul_us']:.1f} | {r['dispatched_us']:.1f} | "
                     f"{r['dispatch_vs_bf16']:.2f}× | {graph_cols} | {path_col(r, 'gemv')} | {mma_col}"
                     f"{path_col(r, 'tc')} | {r['dequant_cublas_us']:.1f} | {r['floor_us']:.1f} |")
    lines += [
        "",
        "W8A8 paths at decode sizes (CUDA-graph device time, µs; the dispatched one is marked *):",
        "",
        "| M × N × K | fp8 GEMV | fp8 swap | fp8 tiled | _scaled_mm | int8 GEMV | int8 swap | int8 tiled |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["w8a8"]:
        if not r.get("paths"):
            continue
        cols = []
        for fmt in ("fp8", "int8"):
            for p in ("gemv", "swap", "tiled"):
                t = r["paths"].get(f"{fmt}_{p}_graph_us")
                chosen = r["path"] if fmt == "fp8" else r["int8_path"]
                cols.append("—" if t is None else f"{t:.1f}{'*' if p == chosen else ''}")
        lines.append(f"| {r['m']}×{r['n']}×{r['k']} | {' | '.join(cols[:3])} | {r['scaled_mm_graph_us']:.1f} | {' | '.join(cols[3:])} |")
    lines += ["", "## Targets (issue 3)", "", "| target | measured | met |", "| --- | --- | --- |"]
    for t in result["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def targets(result: dict) -> list[dict]:
    """Evaluates the issue-3 targets from this run's rows: each against do_bench medians and,
    for decode sizes, also against CUDA-graph device times (host launch cost excluded)."""
    out = []

    def add(target, measured, met):
        out.append({"target": target, "measured": measured, "met": bool(met)})

    big = [r for r in result["act_quant"] if r["input_mib"] >= 64]
    worst = min(r["fraction_of_copy_bw"] for r in big)
    add("act-quant fp8 on >= 64 MiB: >= 85% of copy bandwidth (do_bench)", f"{100 * worst:.0f}% (worst)", worst >= 0.85)
    worst = min(r["fraction_of_copy_bw_graph"] for r in big)
    add("act-quant fp8 on >= 64 MiB: >= 85% of copy bandwidth (CUDA graph)", f"{100 * worst:.0f}% (worst)", worst >= 0.85)
    small = [r for r in result["act_quant"] if r["m"] <= 16]
    t = max(r["fp8_dynamic_us"] for r in small)
    add("act-quant fp8 at M <= 16: <= 10 µs (do_bench)", f"{t:.1f} µs (worst)", t <= 10)
    t = max(r["fp8_dynamic_graph_us"] for r in small)
    add("act-quant fp8 at M <= 16: <= 10 µs (CUDA graph)", f"{t:.1f} µs (worst)", t <= 10)
    w8 = {(r["m"], r["n"], r["k"]): r for r in result["w8a8"]}
    r = w8[(8192, 8192, 8192)]
    add("FP8 8192³ >= 0.95x _scaled_mm (do_bench)", f"{r['fp8_vs_scaled_mm']:.2f}x", r["fp8_vs_scaled_mm"] >= 0.95)
    v = r["scaled_mm_graph_us"] / r["fp8_triton_graph_us"]
    add("FP8 8192³ >= 0.95x _scaled_mm (CUDA graph)", f"{v:.2f}x", v >= 0.95)
    low = [x for x in result["w8a8"] if x["m"] <= 128]
    v = min(x["fp8_vs_scaled_mm"] for x in low)
    add("FP8 >= 1.0x _scaled_mm at M <= 128 (do_bench)", f"{v:.2f}x (worst)", v >= 1.0)
    v = min(x["scaled_mm_graph_us"] / x["fp8_triton_graph_us"] for x in low)
    add("FP8 >= 1.0x _scaled_mm at M <= 128 (CUDA graph)", f"{v:.2f}x (worst)", v >= 1.0)
    big_m = min(x["fp8_vs_bf16"] for x in result["w8a8"] if x["m"] >= 2048)
    add("FP8 >= 1.75x bf16 at M >= 2048 (do_bench)", f"{big_m:.2f}x (worst)", big_m >= 1.75)
    big_m = min(x["bf16_graph_us"] / x["fp8_triton_graph_us"] for x in result["w8a8"] if x["m"] >= 2048)
    add("FP8 >= 1.75x bf16 at M >= 2048 (CUDA graph)", f"{big_m:.2f}x (worst)", big_m >= 1.75)
    add("INT8 8192³ >= 1.15x _int_mm", f"{r['int8_vs_int_mm']:.2f}x", r["int8_vs_int_mm"] >= 1.15)
    dec = [x for x in result["w8a8"] if x["m"] <= 16]
    add("INT8 serves M <= 16", f"{len(dec)} shapes; worst {min(x['int8_vs_bf16'] for x in dec):.2f}x bf16 (do_bench), "
        f"{min(x['bf16_graph_us'] / x['int8_triton_graph_us'] for x in dec):.2f}x (graph)", True)
    w4 = {(x["m"], x["n"], x["k"]): x for x in result["w4a16"]}
    for m, goal in ((1, 3.0), (16, 2.0)):
        x = w4[(m, 8192, 8192)]
        add(f"W4A16 K=N=8192 M={m} >= {goal}x bf16 (do_bench)", f"{x['dispatch_vs_bf16']:.2f}x", x["dispatch_vs_bf16"] >= goal)
        g = x["dispatch_vs_bf16_graph"]
        add(f"W4A16 K=N=8192 M={m} >= {goal}x bf16 (CUDA graph)", f"{g:.2f}x", g >= goal)
    sq = [x for x in result["w4a16"] if x["m"] <= 64 and x["n"] == x["k"] == 8192]
    v = min(x["dispatch_vs_bf16"] for x in sq)
    add("W4A16 K=N=8192 never slower than bf16 up to M=64 (do_bench)", f"{v:.2f}x (worst)", v >= 1.0)
    v = min(x["dispatch_vs_bf16_graph"] for x in sq)
    add("W4A16 K=N=8192 never slower than bf16 up to M=64 (CUDA graph)", f"{v:.2f}x (worst)", v >= 1.0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/kernels-h100.json")
    parser.add_argument("--md", default="bench/results/kernels-h100.md")
    parser.add_argument("--only", choices=["act_quant", "w8a8", "w4a16"], action="append")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/kernels.py needs a CUDA GPU")
    torch.manual_seed(0)
    start = time.time()
    result = {
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"), "pdl": pdl_args(torch.device("cuda"))["PDL"],
        "w4a16_gemv_max_m": w4_mod.GEMV_MAX_M, "w4a16_mma_max_m": w4_mod.w4a16_mma.MAX_M,
        "w4a16_tc_max_m": w4_mod.TC_MAX_M, "w8a8_gemv_max_m": {str(q): v for q, v in w8a8_mod.GEMV_MAX_M.items()}, "w8a8_swap_max_m": w8a8_mod.SWAP_MAX_M,
    }
    result["ceilings"] = ceil = measure_ceilings()
    print(f"{result['gpu']}: copy {ceil['copy_tbps']:.2f} TB/s, bf16 8192^3 {ceil['bf16_8192_tflops']:.0f} TFLOP/s", flush=True)
    only = set(args.only or ["act_quant", "w8a8", "w4a16"])
    result["act_quant"] = bench_act_quant(ceil["copy_tbps"]) if "act_quant" in only else []
    result["w8a8"] = bench_w8a8(ceil) if "w8a8" in only else []
    result["w4a16"] = bench_w4a16(ceil) if "w4a16" in only else []
    if only == {"act_quant", "w8a8", "w4a16"}:
        result["targets"] = targets(result)
    result["check_failures"] = CHECK_FAILURES
    result["seconds"] = time.time() - start
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    if "targets" in result:
        with open(args.md, "w") as f:
            f.write(summarize(result))
        for t in result["targets"]:
            print(f"{'PASS' if t['met'] else 'MISS'} {t['target']}: {t['measured']}")
    print(f"{len(CHECK_FAILURES)} output checks failed" if CHECK_FAILURES else "all output checks passed")
    print(f"done in {result['seconds']:.0f}s")


if __name__ == "__main__":
    main()
