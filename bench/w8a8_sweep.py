"""Tile-config sweep of the tiled W8A8 GEMM against cuBLAS, on two kinds of operand data.

    python bench/w8a8_sweep.py            # on the GPU; writes bench/results/w8a8-sweep-h100.json
    python bench/w8a8_sweep.py --decode   # one token, the swapped kernel: w8a8-decode-sweep-h100.json
    python bench/w8a8_sweep.py --persistent   # the persistent TMA kernel against the tiled one:
                                              # w8a8-persistent-sweep-h100.json
    python bench/w8a8_sweep.py --persistent --more   # also warp-specialized and TMA-store variants:
                                                     # w8a8-persistent-more-sweep-h100.json
    python bench/w8a8_sweep.py --persistent-graph    # fp8 persistent configs, PDL on and off, by
                                                     # CUDA-graph time: w8a8-persistent-graph-h100.json
    python bench/w8a8_sweep.py --persistent-graph --picks   # the autotuner's picks, every large shape
    python bench/w8a8_sweep.py --timers   # fp8 at M >= 2048 through the launcher and launched
                                          # directly, both timers, bench/kernels.py's operand sets
                                          # and the sweep's: w8a8-timers-h100.json

For each large shape and each candidate (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, GROUP_M) of
kernels/_w8a8.py's tiled kernel, the do_bench median against torch._scaled_mm (fp8, rowwise,
fast accumulation) and torch._int_mm (int8), measured back to back on the same operands. Two
operand sets: "quantized" codes, which act_quant gives real activations and weights and which
span the code range (what bench/kernels.py times), and "small" codes (|q| of a few units), to
check whether the values toggled change the clock the H100 runs 8-bit MMAs at (on 2026-11-24
the two gave ratios within 4% of each other).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

import kernels._w8a8 as w8a8  # noqa: E402
from bench.timing import best_config, graph_us, rel_err, write_results  # noqa: E402
from kernels._launch import only_config, pdl_args, split_k_locks  # noqa: E402
from kernels.act_quant import act_quant  # noqa: E402

SHAPES = [(8192, 8192, 8192), (2048, 4096, 4096), (2048, 14336, 4096), (2048, 8192, 8192)]
# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, GROUP_M)
CONFIGS = [(128, 256, 128, 8, 3, 8), (128, 256, 128, 8, 4, 8), (256, 128, 128, 8, 3, 8), (256, 128, 128, 8, 4, 8),
           (128, 128, 128, 4, 4, 8), (128, 128, 128, 8, 4, 8), (128, 256, 64, 8, 4, 8), (128, 256, 64, 8, 5, 8),
           (256, 128, 64, 8, 5, 8), (128, 128, 256, 8, 3, 8), (128, 256, 128, 8, 3, 16), (256, 128, 128, 8, 3, 16)]
QDTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "int8": torch.int8}


def operands(m, n, k, fmt, data):
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    if data == "quantized":
        xq, xs, _, _ = act_quant(x, fmt)
        wq, ws, _, _ = act_quant(w, fmt)
        return xq, xs, wq, ws
    xq = (x * 4).round().clamp(-16, 16).to(QDTYPES[fmt])
    wq = (w * 200).round().clamp(-16, 16).to(QDTYPES[fmt])
    return xq, torch.ones(m, 1, device="cuda"), wq, torch.ones(n, 1, device="cuda")


def baseline(fmt, xq, xs, wq, ws):
    if fmt == "int8":
        return lambda: torch._int_mm(xq, wq.t())
    return lambda: torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws.t(), out_dtype=torch.bfloat16, use_fast_accum=True)


def run_config(cfg, fmt, xq, xs, wq, ws):
    bm, bn, bk, warps, stages, group_m = cfg
    m, k = xq.shape
    n = wq.shape[0]
    out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    kernel = w8a8._w8a8_gemm_kernel.fn.fn  # under the autotuner and the EVEN_K heuristic

    def launch():
        kernel[(triton.cdiv(m, bm) * triton.cdiv(n, bn), 1)](
            xq, wq, xs, ws, ws, out, m, n, k, w8a8.m_bucket(m), xq.stride(0), wq.stride(0), out.stride(0),
            XS_PER_TOKEN=True, HAS_BIAS=False, IS_INT8=fmt == "int8", BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
            GROUP_M=group_m, SPLIT_K=1, EVEN_K=k % bk == 0, num_warps=warps, num_stages=stages,
            **pdl_args(xq.device))
    launch()
    return launch, out


def time_tiled(configs, fmt, xq, xs, wq, ws, ref) -> list[tuple[float, tuple]]:
    """(do_bench µs, config) of the tiled kernel for each config, each output checked against ``ref``."""
    timed = []
    for cfg in configs:
        launch, out = run_config(cfg, fmt, xq, xs, wq, ws)
        err = rel_err(out, ref)
        if not err < 1e-2:
            raise SystemExit(f"{fmt} {xq.shape[0]}x{wq.shape[0]}x{xq.shape[1]} tiled {cfg}: rel err {err:.2e}")
        timed.append((do_bench(launch, return_mode="median") * 1e3, cfg))
    return timed


DECODE_SHAPES = [(1024, 4096), (4096, 4096), (14336, 4096), (4096, 14336), (8192, 8192)]


def decode_sweep() -> list[dict]:
    """One token: every config of the swapped kernel (split-K and not) by CUDA-graph device time
    over rotating weight sets larger than the L2, against the config its autotuner picks."""
    rows = []
    for n, k in DECODE_SHAPES:
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        xq, xs, _, _ = act_quant(x, "fp8_e4m3")
        sets = []
        for _ in range(max(1, min(8, -(-100 * 2**20 // (n * k))))):
            wq, ws, _, _ = act_quant(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02, "fp8_e4m3")
            sets.append((wq, ws))
        ref = (xq.float() * xs) @ (sets[0][0].float() * sets[0][1]).t()
        auto_us = graph_us(lambda wq, ws: w8a8.w8a8_gemm_triton(xq, xs, wq, ws, None, torch.bfloat16,
                                                                torch.float8_e4m3fn), sets)
        kernel = w8a8._w8a8_swap_kernel if w8a8.swap_split_k(n) else w8a8._w8a8_swap_direct_kernel
        auto_cfg = best_config(kernel)
        parts = torch.empty(8, 1, n, device="cuda")
        locks = split_k_locks(torch.device("cuda"), triton.cdiv(n, 32))
        timed = []
        for cfg in w8a8._CONFIGS_SWAP_SPLIT + w8a8._CONFIGS_SWAP_DIRECT:
            meta = cfg.kwargs
            if meta["SPLIT_K"] > 1 and not w8a8.swap_split_k(n):
                continue
            out = torch.empty(1, n, dtype=torch.bfloat16, device="cuda")

            def launch(wq, ws, meta=meta, cfg=cfg, out=out):
                w8a8._w8a8_swap_body[(triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])](
                    xq, wq, xs, ws, ws, out, parts, locks, 1, n, k, xq.stride(0), wq.stride(0), out.stride(0),
                    XS_PER_TOKEN=True, HAS_BIAS=False, IS_INT8=False, BLOCK_M=16, **meta,
                    num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl_args(xq.device))
                return out
            err = rel_err(launch(*sets[0]), ref)
            if not err < 1e-2:
                raise SystemExit(f"fp8 decode {n}x{k} {meta}: rel err {err:.2e}")
            timed.append((graph_us(launch, sets), f"{meta} warps={cfg.num_warps} stages={cfg.num_stages}"))
        timed.sort()
        bf16 = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(2 * len(sets))]
        bf16_us = graph_us(lambda w: x @ w.t(), [(w,) for w in bf16])
        del bf16
        rows.append({"m": 1, "n": n, "k": k, "bf16_graph_us": bf16_us, "auto_graph_us": auto_us, "auto_config": auto_cfg,
                     "best_graph_us": timed[0][0], "best_config": timed[0][1],
                     "all": [{"config": c, "us": t} for t, c in timed]})
        print(f"fp8 decode 1x{n}x{k}: bf16 {bf16_us:.1f} auto {auto_us:.1f} ({auto_cfg}) best {timed[0][0]:.1f} "
              f"({timed[0][1]}); next " + ", ".join(f"{t:.1f}" for t, _ in timed[1:4]), flush=True)
    return rows


PERSISTENT_SHAPES = [(8192, 8192, 8192), (2048, 4096, 4096), (2048, 14336, 4096), (2048, 4096, 14336),
                     (2048, 8192, 8192), (2048, 28672, 8192)]
# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, GROUP_M, FLATTEN)
PERSISTENT_CONFIGS = [(128, 256, 128, 8, 3, 8, True), (128, 256, 128, 8, 3, 8, False), (128, 256, 128, 8, 4, 8, True),
                      (128, 256, 128, 8, 3, 16, True), (128, 128, 128, 8, 4, 8, True), (128, 128, 128, 4, 4, 8, True),
                      (256, 128, 128, 8, 3, 8, True), (128, 256, 64, 8, 5, 8, True), (128, 128, 128, 8, 5, 8, True)]
# With --more: warp-specialized loops (not flattened, as Triton asks on Hopper) and TMA stores of the output.
PERSISTENT_MORE = [dict(warp_specialize=True, flatten=False), dict(tma_store=True),
                   dict(warp_specialize=True, flatten=False, tma_store=True)]
TILED_BEST = [(128, 256, 128, 8, 3, 16), (128, 256, 128, 8, 3, 8), (256, 128, 128, 8, 3, 16), (256, 128, 128, 8, 4, 8)]


def persistent_with_config(cfg, qdtype):
    """The persistent path as the launcher runs it, with the autotuner given only ``cfg``:
    ``launch(xq, xs, wq, ws)``; its own configs and tuned picks come back after each call."""
    kernel = w8a8._w8a8_persistent_kernel

    def launch(xq, xs, wq, ws):
        with only_config(kernel, cfg):
            return w8a8.w8a8_gemm_triton(xq, xs, wq, ws, None, torch.bfloat16, qdtype, path="persistent")
    return launch


def persistent_sweep(more: bool = False) -> list[dict]:
    """The persistent TMA kernel's candidates against the tiled kernel's best configs and cuBLAS,
    on quantized operands, by do_bench median."""
    rows = []
    for m, n, k in PERSISTENT_SHAPES:
        a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        t_bf16 = do_bench(lambda: a @ b.t(), return_mode="median") * 1e3
        for fmt, qdtype in QDTYPES.items():
            xq, xs, wq, ws = operands(m, n, k, fmt, "quantized")
            t_base = do_bench(baseline(fmt, xq, xs, wq, ws), return_mode="median") * 1e3
            ref = (xq.float() * xs) @ (wq.float() * ws).t()
            timed = [(us, ("tiled",) + cfg) for us, cfg in time_tiled(TILED_BEST, fmt, xq, xs, wq, ws, ref)]
            candidates = [(c, {}) for c in PERSISTENT_CONFIGS]
            if more:
                candidates += [(c[:6] + (opts.get("flatten", c[6]),), opts) for c in PERSISTENT_CONFIGS[:4]
                               for opts in PERSISTENT_MORE]
            for (bm, bn, bk, warps, stages, group_m, flatten), opts in candidates:
                cfg = w8a8._persistent_config(bm, bn, bk, warps, stages, group_m, flatten,
                                              opts.get("warp_specialize", False), opts.get("tma_store", False))
                launch = persistent_with_config(cfg, qdtype)
                name = ("persistent", bm, bn, bk, warps, stages, group_m, flatten) + tuple(sorted(opts))
                try:
                    err = rel_err(launch(xq, xs, wq, ws), ref)
                except Exception as e:  # a variant this Triton cannot compile is reported, not fatal
                    print(f"{fmt} {m}x{n}x{k} {name}: {type(e).__name__}: {str(e)[:160]}", flush=True)
                    continue
                if not err < 1e-2:
                    raise SystemExit(f"{fmt} {m}x{n}x{k} {name}: rel err {err:.2e}")
                us = do_bench(lambda launch=launch: launch(xq, xs, wq, ws), return_mode="median") * 1e3
                timed.append((us, name))
            timed.sort()
            tiled = min(t for t in timed if t[1][0] == "tiled")
            pers = min((t for t in timed if t[1][0] == "persistent"), default=(float("nan"), None))
            rows.append({"m": m, "n": n, "k": k, "fmt": fmt, "bf16_us": t_bf16, "baseline_us": t_base,
                         "tiled_us": tiled[0], "tiled_config": tiled[1], "persistent_us": pers[0],
                         "persistent_config": pers[1], "all": [{"config": c, "us": t} for t, c in timed]})
            print(f"{m}x{n}x{k} {fmt:8s}: bf16 {t_bf16:7.1f} base {t_base:7.1f} tiled {tiled[0]:7.1f} "
                  f"({t_bf16 / tiled[0]:.3f}x bf16) persistent {pers[0]:7.1f} ({t_bf16 / pers[0]:.3f}x bf16, "
                  f"{t_base / pers[0]:.3f}x base) {pers[1]}", flush=True)
    return rows


GRAPH_SHAPES = [(2048, 4096, 4096), (2048, 14336, 4096), (2048, 8192, 28672)]
# With --extra: 256 x 256 tiles (16 warps; 2048 x 4096 is 128 of them, one wave on 132 SMs) and a
# 4-stage form of the TMA-store config.
GRAPH_EXTRA = [w8a8._persistent_config(256, 256, 128, 16, 3), w8a8._persistent_config(256, 256, 64, 16, 4),
               w8a8._persistent_config(256, 256, 128, 16, 3, tma_store=True),
               w8a8._persistent_config(128, 256, 128, 8, 4, group_m=16, tma_store=True)]
# With --picks: the configs the autotuner picked in the last full runs (autotune list indices 0, 1
# and 4), every large shape, without PDL (as the launcher runs it now).
PICKS = [0, 1, 4]


def persistent_direct(cfg, pdl: bool):
    """The fp8 persistent kernel in ``cfg``, launched with PDL or without: ``launch(xq, xs, wq, ws)``."""
    kernel = w8a8._w8a8_persistent_kernel
    sms = torch.cuda.get_device_properties(0).multi_processor_count

    def launch(xq, xs, wq, ws):
        (m, k), n = xq.shape, wq.shape[0]
        out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
        w8a8._ensure_allocator()
        with only_config(kernel, cfg):
            kernel[lambda meta: (min(sms, triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"])),)](
                xq, wq, xs, ws, ws, out, m, n, k, w8a8.m_bucket(m), xq.stride(0), wq.stride(0), out.stride(0),
                XS_PER_TOKEN=True, HAS_BIAS=False, IS_INT8=False, NUM_SMS=sms, OUT_ALIGNED=True, PDL=pdl,
                **({"launch_pdl": True} if pdl else {}))
        return out
    return launch


def persistent_graph(extra: bool = False, picks: bool = False) -> list[dict]:
    """fp8 at M >= 2048 by CUDA-graph time over rotating operand sets larger than the L2 (as
    bench/kernels.py times it) and by do_bench (host-bound under ~100 µs here: each call forces its
    config): bf16, torch._scaled_mm and the persistent kernel in each config of its autotune list,
    with PDL and without (--picks: the picked configs, without PDL, every large shape); three
    interleaved rounds, medians."""
    rows = []
    all_configs = w8a8._w8a8_persistent_kernel.configs + (GRAPH_EXTRA if extra else [])
    for m, n, k in PERSISTENT_SHAPES + [(2048, 8192, 28672)] if picks else GRAPH_SHAPES:
        sets = sweep_sets(m, n, k)
        ref = torch._scaled_mm(sets[0][2], sets[0][4].t(), scale_a=sets[0][3], scale_b=sets[0][5].t(),
                               out_dtype=torch.bfloat16, use_fast_accum=True)
        fns = {"bf16": (lambda x, w, *r: x @ w.t(), None),
               "scaled_mm": (lambda x, w, xq, xs, wq, ws: torch._scaled_mm(
                   xq, wq.t(), scale_a=xs, scale_b=ws.t(), out_dtype=torch.bfloat16, use_fast_accum=True), None)}
        for i, cfg in enumerate(all_configs):
            if picks and i not in PICKS:
                continue
            for pdl in (False,) if picks else (True, False):
                launch = persistent_direct(cfg, pdl)
                try:
                    err = rel_err(launch(*sets[0][2:]), ref)
                except Exception as e:  # a variant this Triton cannot compile is reported, not fatal
                    print(f"{m}x{n}x{k} {cfg.kwargs}: {type(e).__name__}: {str(e)[:160]}", flush=True)
                    break
                if not err < 1e-2:
                    raise SystemExit(f"{m}x{n}x{k} {cfg.kwargs}: rel err {err:.2e}")
                fns[f"c{i} pdl={int(pdl)}"] = (lambda x, w, *r, launch=launch: launch(*r), cfg)
        times = {name: {"graph": [], "do_bench": []} for name in fns}
        for _ in range(3):
            for name, (fn, _) in fns.items():
                times[name]["graph"].append(graph_us(fn, sets))
                times[name]["do_bench"].append(do_bench(lambda fn=fn: fn(*sets[0]), return_mode="median") * 1e3)
        med = {name: {t: sorted(v)[1] for t, v in ts.items()} for name, ts in times.items()}
        configs = {name: f"{cfg.kwargs} warps={cfg.num_warps} stages={cfg.num_stages}"
                   for name, (_, cfg) in fns.items() if cfg is not None}
        rows.append({"m": m, "n": n, "k": k, "us": med, "rounds": times, "configs": configs})
        bf16 = med["bf16"]
        print(f"{m}x{n}x{k}: bf16 graph {bf16['graph']:.1f} do_bench {bf16['do_bench']:.1f}", flush=True)
        for name, t in med.items():
            print(f"  {name:14s} graph {t['graph']:7.1f} ({bf16['graph'] / t['graph']:.3f}x) do_bench "
                  f"{t['do_bench']:7.1f} ({bf16['do_bench'] / t['do_bench']:.3f}x) {configs.get(name, '')}", flush=True)
    return rows

TIMER_SHAPES = [(2048, 4096, 4096), (8192, 8192, 8192)]


def sweep_sets(m, n, k, int8: bool = False):
    """Rotating operand sets as --persistent-graph makes them: bf16 and fp8 operands (and int8 with
    ``int8``), enough sets that operands and outputs together exceed 100 MiB, at least 2."""
    sets = []
    for _ in range(max(2, -(-100 * 2**20 // (m * k + n * k + 2 * m * n)))):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        ops = (x, w) + tuple(act_quant(x, "fp8_e4m3")[:2]) + tuple(act_quant(w, "fp8_e4m3")[:2])
        if int8:
            ops += tuple(act_quant(x, "int8")[:2]) + tuple(act_quant(w, "int8")[:2])
        sets.append(ops)
    return sets


def timers() -> list[dict]:
    """Why bench/kernels.py and --persistent-graph read the fp8 persistent GEMM differently: on
    each shape, each kind of operand set, bf16, torch._scaled_mm, gemm_fp8 (the launcher: its
    checks, its fast launch) and the same kernel launched directly (persistent_direct, without
    PDL), timed by do_bench over the rotated sets (bench/kernels.py's median_us) and by CUDA-graph
    replay; five interleaved rounds, the order reversed every other one (bench.timing.rounds_us),
    medians."""
    from bench.kernels import w8a8_sets
    from bench.timing import rounds_us
    from kernels.gemm_fp8 import gemm_fp8

    rows = []
    direct = persistent_direct(w8a8.FP8_PERSISTENT, False)
    fns = {"bf16": lambda x, w, *r: x @ w.t(),
           "scaled_mm": lambda x, w, xq, xs, wq, ws, *r: torch._scaled_mm(
               xq, wq.t(), scale_a=xs, scale_b=ws.t(), out_dtype=torch.bfloat16, use_fast_accum=True),
           "launcher": lambda x, w, xq, xs, wq, ws, *r: gemm_fp8(xq, xs, wq, ws),
           "direct": lambda x, w, xq, xs, wq, ws, *r: direct(xq, xs, wq, ws)}
    for m, n, k in TIMER_SHAPES:
        for kind, make in (("kernels", w8a8_sets), ("sweep", sweep_sets)):
            sets = make(m, n, k)
            ref = fns["scaled_mm"](*sets[0])
            for name in ("launcher", "direct"):
                err = rel_err(fns[name](*sets[0]), ref)
                if not err < 1e-2:
                    raise SystemExit(f"{m}x{n}x{k} {name}: rel err {err:.2e}")
            # Both paths must have run one compiled kernel: Triton's cache holds one per specialization.
            compiled = {c.hash for cache in w8a8._w8a8_persistent_kernel.fn.device_caches.values()
                        for c in cache[0].values()}
            timed = rounds_us(fns, sets, rounds=5)
            med = {name: {t: v[t] for t in ("do_bench", "graph")} for name, v in timed.items()}
            times = {name: v["rounds"] for name, v in timed.items()}
            rows.append({"m": m, "n": n, "k": k, "sets": kind, "n_sets": len(sets), "us": med, "rounds": times,
                         "compiled_kernels": sorted(compiled)})
            bf16 = med["bf16"]
            print(f"{m}x{n}x{k} {kind} sets ({len(sets)}), {len(compiled)} compiled kernel(s):", flush=True)
            for name, t in med.items():
                print(f"  {name:10s} do_bench {t['do_bench']:7.1f} ({bf16['do_bench'] / t['do_bench']:.3f}x bf16) "
                      f"graph {t['graph']:7.1f} ({bf16['graph'] / t['graph']:.3f}x bf16) "
                      f"rounds {[round(v, 1) for v in times[name]['do_bench']]} / "
                      f"{[round(v, 1) for v in times[name]['graph']]}", flush=True)
            del sets, ref
    return rows


def main() -> None:
    if "--timers" in sys.argv:
        write_results("w8a8-timers-h100.json", rows=timers())
        return
    if "--persistent-graph" in sys.argv:
        extra, picks = "--extra" in sys.argv, "--picks" in sys.argv
        name = "-extra" if extra else "-picks" if picks else ""
        write_results(f"w8a8-persistent-graph{name}-h100.json", rows=persistent_graph(extra, picks))
        return
    if "--persistent" in sys.argv:
        more = "--more" in sys.argv
        name = "w8a8-persistent-more-sweep-h100.json" if more else "w8a8-persistent-sweep-h100.json"
        write_results(name, rows=persistent_sweep(more))
        return
    if "--decode" in sys.argv:
        write_results("w8a8-decode-sweep-h100.json", rows=decode_sweep())
        return
    rows = []
    for m, n, k in SHAPES:
        a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        t_bf16 = do_bench(lambda: a @ b.t(), return_mode="median") * 1e3
        for fmt in QDTYPES:
            for data in ("quantized", "small"):
                xq, xs, wq, ws = operands(m, n, k, fmt, data)
                t_base = do_bench(baseline(fmt, xq, xs, wq, ws), return_mode="median") * 1e3
                ref = (xq.float() * xs) @ (wq.float() * ws).t()
                timed = time_tiled(CONFIGS, fmt, xq, xs, wq, ws, ref)
                timed.sort()
                best_us, best = timed[0]
                row = {"m": m, "n": n, "k": k, "fmt": fmt, "data": data, "bf16_us": t_bf16, "baseline_us": t_base,
                       "best_config": best, "best_us": best_us, "best_vs_baseline": t_base / best_us,
                       "best_vs_bf16": t_bf16 / best_us, "all": [{"config": c, "us": t} for t, c in timed]}
                rows.append(row)
                print(f"{m}x{n}x{k} {fmt:8s} {data:9s}: bf16 {t_bf16:7.1f} base {t_base:7.1f} best {best_us:7.1f} "
                      f"{best} -> {row['best_vs_baseline']:.3f}x base, {row['best_vs_bf16']:.2f}x bf16", flush=True)
    write_results("w8a8-sweep-h100.json", rows=rows)


if __name__ == "__main__":
    main()
