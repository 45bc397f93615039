"""The mma.sync W4A16 kernel against the GEMV (one token), the tl.dot tensor-core kernel (2..16
tokens) and bf16 cuBLAS, on Llama shapes, by CUDA-graph device time over rotating weight sets
larger than the L2 (as a decode step reads them).

    python bench/w4a16_mma.py            # -> bench/results/w4a16-mma-h100.json
    python bench/w4a16_mma.py --shapes 0,1,2 --out w4a16-mma-sweep-a-h100.json   # a part of SHAPES

Each of the sweep's configs is timed alone, with the L2_256B load hint and without, and the
launcher's pick, with the scales row- and group-major (the sweep: group-major, as the runtime keeps
them; integer zeros, as the runtime passes them); every output is checked against the fp32
reference of the dequantized weights.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import kernels.gemm_w4a16 as w4  # noqa: E402
from bench.timing import CHECK_FAILURES, check, graph_us, rel_err, write_results  # noqa: E402
from bench.w4a16_sweep import GROUP, weight_sets  # noqa: E402
from kernels import w4a16_mma  # noqa: E402
from kernels._launch import only_config  # noqa: E402

# (N, K, gated): Llama-3-8B's qkv, o, gate+up (gated: 2 x 14336 rows, 14336 outputs), down;
# 70B-like 8192 x 8192 and 28672 x 8192; then 70B's qkv and down, 14336 x 4096 unfused, 2048 rows.
SHAPES = [(8192, 8192, False), (6144, 4096, False), (4096, 4096, False), (28672, 4096, True),
          (4096, 14336, False), (28672, 8192, False), (1024, 4096, False), (10240, 8192, False),
          (8192, 28672, False), (14336, 4096, False), (2048, 4096, False)]
TOKENS = [8, 16]
# Every config the sweeps behind kernels/w4a16_mma.py's rule weighed (ROW_BLOCKS, WARPS, STEP_CHUNKS).
SWEEP = [(2, 8, 1), (2, 4, 1), (1, 8, 1), (1, 4, 1), (4, 8, 1), (4, 4, 1), (2, 8, 2), (2, 4, 2), (1, 8, 2), (1, 4, 2),
         (4, 8, 2), (4, 4, 2), (8, 4, 1), (8, 8, 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=None, help="comma-separated indices into SHAPES (default: all)")
    ap.add_argument("--out", default="w4a16-mma-h100.json")
    args = ap.parse_args()
    shapes = SHAPES if args.shapes is None else [SHAPES[int(i)] for i in args.shapes.split(",")]
    rows = []
    for n, k, gated in shapes:
        sets = weight_sets(n, k)
        # Group-major views of each set's scales and zeros (the layout the runtime keeps for the
        # tl.dot and mma kernels), made outside the timing.
        group_major = {s.data_ptr(): (s.t().contiguous().t(), z.t().contiguous().t()) for _, _, s, z in sets}
        for m in TOKENS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            w_ref = w4.dequantize_w4_reference(*sets[0][1:], GROUP)
            ref = x.float() @ w_ref.t()
            ref = w4.silu_mul(ref) if gated else ref
            label = f"{m}x{n}x{k}{' gated' if gated else ''}"

            def bf16(w, *_):
                y = x @ w.t()
                return w4.silu_mul(y.float()).to(y.dtype) if gated else y
            bf16_us = graph_us(bf16, sets)
            old_path = "gemv" if m == 1 else "tc"

            def old(w, p, s, z):
                return w4.gemm_w4a16_triton(x, p, s, z, GROUP, gated=gated, path=old_path)
            check(f"{label} {old_path}", rel_err(old(*sets[0]), ref), 1e-2)
            old_us = graph_us(old, sets)

            def mma(w, p, s, z):
                return w4.gemm_w4a16_triton(x, p, s, z, GROUP, gated=gated, path="mma", integer_zeros=True)
            err = check(f"{label} mma", rel_err(mma(*sets[0]), ref), 1e-2)
            mma_us = graph_us(mma, sets)
            picked = w4a16_mma._w4a16_mma_kernel.best_config

            def mma_group_major(w, p, s, z, gm=group_major):
                return w4.gemm_w4a16_triton(x, p, *gm[s.data_ptr()], GROUP, gated=gated, path="mma",
                                            integer_zeros=True)
            check(f"{label} mma group-major", rel_err(mma_group_major(*sets[0]), ref), 1e-2)
            mma_gm_us = graph_us(mma_group_major, sets)
            per_config = {}
            # Every config alone (the launcher picks one by rule: kernels/w4a16_mma.py).
            for cfg in [w4a16_mma._mma_config(*c, l2_256b=h) for c in SWEEP if not gated or c[0] % 2 == 0
                        for h in (True, False)]:
                with only_config(w4a16_mma._w4a16_mma_kernel, cfg):
                    check(f"{label} mma {cfg.kwargs}", rel_err(mma_group_major(*sets[0]), ref), 1e-2)
                    per_config[str(cfg.kwargs)] = round(graph_us(mma_group_major, sets), 2)
            rows.append(dict(m=m, n=n, k=k, gated=gated, bf16_graph_us=round(bf16_us, 2), old_path=old_path,
                             old_graph_us=round(old_us, 2), mma_graph_us=round(mma_us, 2), mma_rel_err=err,
                             mma_config=str(picked.kwargs), mma_per_config=per_config,
                             mma_group_major_scales_graph_us=round(mma_gm_us, 2),
                             old_x_bf16=round(bf16_us / old_us, 3), mma_x_bf16=round(bf16_us / mma_us, 3)))
            best = min(per_config, key=per_config.get)
            print(f"{label}: bf16 {bf16_us:6.1f} | {old_path} {old_us:6.1f} ({bf16_us / old_us:.2f}x) | mma "
                  f"{mma_us:6.1f} ({bf16_us / mma_us:.2f}x, {picked.kwargs}; best config {per_config[best]:.1f} "
                  f"{best}; group-major scales "
                  f"{mma_gm_us:.1f}) "
                  f"err {err:.1e}", flush=True)
    write_results(args.out, command=" ".join(["python bench/w4a16_mma.py"] + sys.argv[1:]), rows=rows,
                  check_failures=CHECK_FAILURES)


if __name__ == "__main__":
    main()
