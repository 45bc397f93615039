"""A gated MLP's gate and up at one token: the W4A16 GEMV that applies silu(gate) * up as it stores,
against the plain GEMV followed by the compiled silu_mul, by CUDA-graph device time.

    python bench/gated_mlp.py      # on a CUDA GPU; writes bench/results/gated-mlp-h100.json

Shapes are the fused gate and up of Llama-3-8B (2 x 14336 rows, K 4096) and a narrow one (2 x
1024, K 4096). Each call reads its own weight set of a rotation
larger than the L2, as a decode step does; the two forms alternate over ROUNDS rounds and the
fastest round of each is kept. Both outputs are checked against the fp32 reference first.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import kernels.gemm_w4a16 as w4  # noqa: E402
from bench.timing import best_config, graph_us, rel_err, write_results  # noqa: E402
from bench.w4a16_sweep import GROUP, weight_sets  # noqa: E402
from kernels._launch import pdl_args  # noqa: E402

SHAPES = [(2 * 14336, 4096), (2 * 1024, 4096)]
ROUNDS = 3


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("bench/gated_mlp.py needs a CUDA GPU")
    torch.manual_seed(0)
    silu_mul = torch.compile(w4.silu_mul)  # one fused element-wise kernel, as inductor makes of the MLP
    rows = []
    for n, k in SHAPES:
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        sets = weight_sets(n, k)
        ref = w4.silu_mul(x.float() @ w4.dequantize_w4_reference(*sets[0][1:], GROUP).t())

        def gated(w, p, s, z):
            return w4.gemm_w4a16(x, p, s, z, GROUP, gated=True)

        def separate(w, p, s, z):
            return silu_mul(w4.gemm_w4a16(x, p, s, z, GROUP))

        errs = {"gated": rel_err(gated(*sets[0]), ref)}
        gated_cfg = best_config(w4._w4a16_gemv_kernel)  # the first call tuned it
        errs["separate"] = rel_err(separate(*sets[0]), ref)
        if not all(e < 1e-2 for e in errs.values()):
            raise SystemExit(f"{n}x{k}: rel err {errs}")
        times = {"gated": [], "separate": []}
        for _ in range(ROUNDS):
            times["gated"].append(graph_us(gated, sets))
            times["separate"].append(graph_us(separate, sets))
        g, sep = min(times["gated"]), min(times["separate"])
        print(f"gate+up {n}x{k}: gated {g:.2f} µs, GEMV + silu_mul {sep:.2f} µs ({sep / g:.3f}x); "
              f"gated config {gated_cfg}", flush=True)
        rows.append({"n": n, "k": k, "gated_us": times["gated"], "separate_us": times["separate"],
                     "speedup": sep / g, "rel_err": errs, "gated_config": gated_cfg})
    write_results("gated-mlp-h100.json", pdl=pdl_args(torch.device("cuda"))["PDL"], rounds=ROUNDS, rows=rows)


if __name__ == "__main__":
    main()
