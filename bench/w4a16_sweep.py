"""Config sweep of the W4A16 kernels against bf16 cuBLAS, by CUDA-graph device time.

    python bench/w4a16_sweep.py            # on the GPU; writes bench/results/w4a16-gemv-sweep-h100.json
    python bench/w4a16_sweep.py --tc       # the tensor-core kernel's configs at M = 16, 64 and 128
                                           # (writes bench/results/w4a16-tc-sweep-h100.json)
    python bench/w4a16_sweep.py --tc --mma-v2 --tokens 16 32 64 --shapes 8192x8192 4096x14336 14336x4096
                                           # the autotune configs against one- and two-warp configs,
                                           # which Triton lowers to mma.sync
                                           # (writes bench/results/w4a16-tc-mma-v2-sweep-h100.json)

For each Llama-3 linear shape a decode step runs (8B: q/o 4096x4096, k/v 1024x4096, gate/up
14336x4096, down 4096x14336; 70B-sized 8192x8192 and 28672x8192) and each candidate
(BLOCK_N rows per set, QUADS per step, warps) of kernels/gemm_w4a16.py's GEMV, the device time
replayed from a CUDA graph over rotating weight sets larger than the L2 (as bench/kernels.py's
graph rows and a decode step see it), next to bf16 ``x @ w.t()`` timed the same way and the
config the autotuner picks. Every candidate's output is checked against the fp32 reference.
With --tc, the candidates are the tensor-core kernel's autotune configs and, beside them, configs
that put more programs on each SM (more split-K, fewer stages), at 16 and 64 tokens.
With --mma-v2, in place of the extra configs, configs of one or two warps: Triton lowers their dot
to Ampere's mma.sync rather than Hopper's wgmma, which takes a dequantized register operand only
by waiting on each MMA. On sm_90 SASS (Triton 3.9) they take 4.3-4.6 instructions per weight at
M = 16 against 6.0, yet on the H100 they ran 25-60% slower than the autotune list's best
(bench/results/w4a16-tc-mma-v2-sweep-h100.json).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402

import kernels.gemm_w4a16 as w4  # noqa: E402
from kernels._launch import gemv_early_dependents, only_config, pdl_args  # noqa: E402
from bench.timing import best_config, graph_us, rel_err, write_results  # noqa: E402

GROUP = 128
SHAPES = [(1024, 4096), (4096, 4096), (14336, 4096), (4096, 14336), (8192, 8192), (28672, 8192)]
L2_BYTES = 50 * 2**20


def candidates():
    """(BLOCK_N, QUADS, warps) whose [BLOCK_N, QUADS, 4] word tile gives each thread 1..4 quads."""
    out = []
    for warps in (1, 2, 4, 8):
        for bn in (1, 2, 4, 8):
            for quads in (16, 32, 64, 128):
                if 32 * warps <= bn * quads <= 128 * warps:
                    out.append((bn, quads, warps))
    return out


def weight_sets(n, k):
    per_set = n * k // 2
    sets = []
    for _ in range(max(1, min(8, -(-2 * L2_BYTES // per_set)))):
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        packed, scales, zeros = w4.quantize_w4_reference(w, GROUP)
        sets.append((w, packed, scales, zeros))
    return sets


TC_SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (8192, 8192), (28672, 8192)]
TC_TOKENS = [16, 64]
# More, smaller programs per SM than the autotune list has: the kernel at M = 16 runs ~3x longer
# than its instructions or its bytes take (docs/experiments/w4a16-tc-register-operand.patch).
TC_EXTRA = [w4._tc_config(64, 8, 4, 3), w4._tc_config(128, 8, 8, 3), w4._tc_config(64, 16, 4, 2),
            w4._tc_config(32, 8, 4, 3), w4._tc_config(32, 16, 4, 2), w4._tc_config(64, 4, 4, 2),
            w4._tc_config(128, 4, 8, 2, reg_prefetch=True)]
# Fewer than four warps: mma.sync instead of wgmma (see the module docstring).
TC_MMA_V2 = [w4._tc_config(bn, split, warps, stages, groups_per_step=gps, reg_prefetch=rp)
             for bn, split, warps, stages, gps, rp in [
                 (64, 8, 2, 3, 1, True), (64, 4, 2, 3, 1, True), (64, 8, 2, 3, 1, False), (64, 16, 2, 3, 1, True),
                 (64, 4, 2, 2, 2, False), (32, 8, 1, 3, 1, True), (32, 4, 1, 3, 1, True), (32, 16, 1, 3, 1, True),
                 (32, 8, 2, 3, 1, True), (128, 4, 2, 3, 1, True), (128, 8, 2, 3, 1, False), (64, 8, 1, 3, 1, True),
                 (64, 2, 2, 3, 1, True), (64, 1, 2, 3, 1, True)]]


def tc_with_config(cfg):
    """The W4A16 tensor-core path as the launcher runs it (serial or atomic split-K by token count),
    with one config: ``launch(x, packed, scales, zeros)``. The autotuner is given only ``cfg`` for
    the call, and its own configs and tuned picks back after it."""
    kernel = w4._w4a16_tc_kernel

    def launch(x, p, s, z):
        with only_config(kernel, cfg):
            return w4.gemm_w4a16_triton(x, p, s, z, GROUP, path="tc")
    return launch


def _config_name(cfg) -> str:
    return f"{cfg.kwargs} warps={cfg.num_warps} stages={cfg.num_stages}"


def _row(label: str, timed: list, bf16_us: float, auto_us: float, auto_cfg, **shape) -> dict:
    """A shape's sweep result, candidates (µs, config) fastest first, and one printed line."""
    timed.sort()
    best_us, best = timed[0]
    print(f"{label}: bf16 {bf16_us:6.1f} auto {auto_us:6.1f} ({auto_cfg}) best {best_us:6.1f} {best} "
          f"-> {bf16_us / best_us:.2f}x bf16; next " + ", ".join(f"{c} {t:.1f}" for t, c in timed[1:4]), flush=True)
    return {**shape, "bf16_graph_us": bf16_us, "auto_graph_us": auto_us, "auto_config": auto_cfg,
            "best_config": best, "best_graph_us": best_us, "best_vs_bf16": bf16_us / best_us,
            "auto_vs_bf16": bf16_us / auto_us, "all": [{"config": c, "us": t} for t, c in timed]}


def tc_sweep(tokens=TC_TOKENS, mma_v2: bool = False, shapes=TC_SHAPES) -> None:
    rows = []
    for n, k in shapes:
        sets = weight_sets(n, k)
        for m in tokens:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            w0, p0, s0, z0 = sets[0]
            ref = x.float() @ w4.dequantize_w4_reference(p0, s0, z0, GROUP).t()
            bf16_us = graph_us(lambda w, *r: x @ w.t(), sets)
            auto_us = graph_us(lambda w, p, s, z: w4.gemm_w4a16(x, p, s, z, GROUP), sets)
            auto_cfg = best_config(w4._w4a16_tc_kernel)
            timed = []
            for cfg in w4._CONFIGS_TC + (TC_MMA_V2 if mma_v2 else TC_EXTRA):
                tc = tc_with_config(cfg)

                def launch(w, p, s, z, tc=tc):
                    return tc(x, p, s, z)
                err = rel_err(launch(*sets[0]), ref)
                if not err < 1e-2:
                    raise SystemExit(f"{n}x{k} M={m} {_config_name(cfg)}: rel err {err:.2e}")
                timed.append((graph_us(launch, sets), _config_name(cfg)))
            rows.append(_row(f"{n}x{k} M={m}", timed, bf16_us, auto_us, auto_cfg, n=n, k=k, m=m))
    name = "w4a16-tc-mma-v2-sweep-h100.json" if mma_v2 else "w4a16-tc-sweep-h100.json"
    write_results(name, group_size=GROUP, tokens=list(tokens), rows=rows)


def gemv_sweep() -> None:
    rows = []
    for n, k in SHAPES:
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        sets = weight_sets(n, k)
        w0, p0, s0, z0 = sets[0]
        ref = x.float() @ w4.dequantize_w4_reference(p0, s0, z0, GROUP).t()
        bf16_us = graph_us(lambda w, *r: x @ w.t(), sets)
        auto_us = graph_us(lambda w, p, s, z: w4.gemm_w4a16(x, p, s, z, GROUP), sets)
        auto_cfg = best_config(w4._w4a16_gemv_kernel)
        timed = []
        for bn, quads, warps in candidates():
            if quads * 32 > k:
                continue
            out = torch.empty(1, n, dtype=torch.bfloat16, device="cuda")

            def launch(w, p, s, z, bn=bn, quads=quads, warps=warps, out=out):
                w4._w4a16_gemv_kernel.fn[(triton.cdiv(n, 4 * bn),)](
                    x, p, s, z, s, out, n, k, p.stride(0), s.stride(0), GROUP=GROUP, HAS_BIAS=False,
                    X_BF16=True, PAIRED=True, GATED=False, BLOCK_N=bn, QUADS=quads,
                    EARLY_DEPENDENTS=gemv_early_dependents(), num_warps=warps, num_stages=1, **pdl_args(x.device))
                return out
            err = rel_err(launch(*sets[0]), ref)
            if not err < 1e-2:
                raise SystemExit(f"{n}x{k} BLOCK_N={bn} QUADS={quads} warps={warps}: rel err {err:.2e}")
            timed.append((graph_us(launch, sets), (bn, quads, warps)))
        nbytes = n * k // 2 + 2 * 2 * n * (k // GROUP) + 2 * k + 2 * n
        row = _row(f"{n}x{k}", timed, bf16_us, auto_us, auto_cfg, n=n, k=k)
        row["best_tbps"] = nbytes / (row["best_graph_us"] * 1e-6) / 1e12
        rows.append(row)
    write_results("w4a16-gemv-sweep-h100.json", group_size=GROUP, rows=rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tc", action="store_true", help="sweep the tensor-core kernel instead of the GEMV")
    ap.add_argument("--mma-v2", action="store_true", help="with --tc, also one- and two-warp (mma.sync) configs")
    ap.add_argument("--tokens", type=int, nargs="+", default=TC_TOKENS, help="with --tc, the token counts")
    ap.add_argument("--shapes", nargs="+", default=[f"{n}x{k}" for n, k in TC_SHAPES],
                    help="with --tc, the weight shapes as NxK")
    args = ap.parse_args()
    shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes]
    tc_sweep(args.tokens, args.mma_v2, shapes) if args.tc else gemv_sweep()


if __name__ == "__main__":
    main()
