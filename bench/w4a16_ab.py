"""W4A16 A/Bs on the H100, by CUDA-graph device time over rotating weight sets larger than the L2.

    python bench/w4a16_ab.py maxnreg        # GEMV configs uncapped and capped at 64 / 72 registers
                                            # -> bench/results/w4a16-gemv-maxnreg-h100.json
    python bench/w4a16_ab.py scale-layout   # tensor-core configs reading scales row- or group-major
                                            # -> bench/results/w4a16-tc-scale-layout-h100.json
    python bench/w4a16_ab.py mma-zeros      # mma kernel: integer zeros subtracted or summed, L2_256B
                                            # -> bench/results/w4a16-mma-zeros-h100.json
    python bench/w4a16_ab.py mma-rule       # mma kernel: the config rule before (6e888fd) and now
                                            # -> bench/results/w4a16-mma-rule-h100.json

maxnreg: Nsight Compute showed the one-token GEMV at 80 registers a thread, which caps an SM at
24 warps, with 40% of its cycles between issues stalled on L1TEX; each autotune config runs as it
is and capped (kernels/gemm_w4a16.py keeps the capped configs that won). scale-layout: the
tensor-core kernel at 16 and 64 tokens with the scales and zeros as stored ([N, G]) and as a
group-major view (one step's rows side by side; QuantLinear.keep_group_major_scales). mma-zeros:
the mma kernel in the config its rule picks, with the zeros summed by an all-ones MMA or (integer
zeros, as the runtime passes them) subtracted from the codes, and with the config's L2_256B load
hint and the other; three interleaved rounds, medians. Every output is checked against the fp32
reference.

The committed results came from one-off scripts with this logic, run on the H100 on 2026-11-24;
this form of them has not yet run on a GPU (no device time was left).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402

import kernels.gemm_w4a16 as w4  # noqa: E402
from bench.timing import graph_us, rel_err, write_results  # noqa: E402
from bench.w4a16_sweep import GROUP, tc_with_config, weight_sets  # noqa: E402
from kernels._launch import only_config  # noqa: E402

GEMV_SHAPES = [(8192, 8192), (6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (28672, 8192), (1024, 4096)]
TC_SHAPES = [(8192, 8192), (4096, 14336), (28672, 4096), (6144, 4096), (4096, 4096)]
TC_CONFIGS = [(128, 4, 8, 3, True), (64, 4, 4, 3, True), (64, 4, 4, 3, False), (64, 2, 4, 3, True),
              (128, 8, 8, 3, True), (64, 8, 4, 3, True), (64, 1, 4, 3, False), (128, 2, 8, 3, True)]


def with_group_major(sets):
    """Each weight set with group-major views of its scales and zeros appended."""
    return [(w, p, s, z, s.t().contiguous().t(), z.t().contiguous().t()) for w, p, s, z in sets]


def maxnreg() -> None:
    kernel = w4._w4a16_gemv_kernel
    rows = []
    for n, k in GEMV_SHAPES:
        sets = weight_sets(n, k)
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        ref = x.float() @ w4.dequantize_w4_reference(*sets[0][1:], GROUP).t()
        bf16_us = graph_us(lambda w, *r: x @ w.t(), sets)
        for cfg in [c for c in kernel.configs if c.maxnreg is None]:
            for reg in (None, 64, 72):
                capped = triton.Config(dict(cfg.kwargs), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                                       maxnreg=reg)
                with only_config(kernel, capped):
                    err = rel_err(w4.gemm_w4a16(x, *sets[0][1:], GROUP), ref)
                    if not err < 1e-2:
                        raise SystemExit(f"{n}x{k} {cfg.kwargs} maxnreg={reg}: rel err {err:.2e}")
                    us = graph_us(lambda w, p, s, z: w4.gemm_w4a16(x, p, s, z, GROUP), sets)
                rows.append(dict(n=n, k=k, bn=cfg.kwargs["BLOCK_N"], quads=cfg.kwargs["QUADS"],
                                 warps=cfg.num_warps, maxnreg=reg, us=us, bf16_us=bf16_us))
        mine = [r for r in rows if (r["n"], r["k"]) == (n, k)]
        best = min(mine, key=lambda r: r["us"])
        uncapped = min((r for r in mine if r["maxnreg"] is None), key=lambda r: r["us"])
        print(f"{n}x{k} bf16 {bf16_us:.1f}: best {best['us']:.1f} (maxnreg {best['maxnreg']}) against best "
              f"uncapped {uncapped['us']:.1f}", flush=True)
    write_results("w4a16-gemv-maxnreg-h100.json", group_size=GROUP, rows=rows)


def scale_layout() -> None:
    rows = []
    for n, k in TC_SHAPES:
        sets = with_group_major(weight_sets(n, k))
        for m in (16, 64):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = x.float() @ w4.dequantize_w4_reference(*sets[0][1:4], GROUP).t()
            bf16_us = graph_us(lambda w, *r: x @ w.t(), sets)
            for bn, split_k, warps, stages, prefetch in TC_CONFIGS:
                tc = tc_with_config(w4._tc_config(bn, split_k, warps, stages, reg_prefetch=prefetch))
                for layout in ("ng", "gn"):
                    def launch(w, p, s, z, s_gm, z_gm, layout=layout, tc=tc):
                        return tc(x, p, *((s, z) if layout == "ng" else (s_gm, z_gm)))
                    err = rel_err(launch(*sets[0]), ref)
                    if not err < 1e-2:
                        raise SystemExit(f"{n}x{k} M={m} {bn}/{split_k} {layout}: rel err {err:.2e}")
                    rows.append(dict(n=n, k=k, m=m, cfg=[bn, split_k, warps, stages, prefetch], layout=layout,
                                     us=graph_us(launch, sets), bf16_us=bf16_us))
            best = {lay: min((r for r in rows if (r["n"], r["k"], r["m"], r["layout"]) == (n, k, m, lay)),
                             key=lambda r: r["us"]) for lay in ("ng", "gn")}
            print(f"{n}x{k} M={m} bf16 {bf16_us:.1f}: " + " | ".join(
                f"{lay} best {r['us']:.1f} {r['cfg']}" for lay, r in best.items()), flush=True)
    write_results("w4a16-tc-scale-layout-h100.json", group_size=GROUP, rows=rows)


MMA_CASES = [(8192, 8192, 16), (8192, 8192, 8), (28672, 8192, 16), (28672, 8192, 8), (14336, 4096, 16),
             (4096, 4096, 16), (6144, 4096, 8), (4096, 14336, 8), (10240, 8192, 16), (10240, 8192, 8)]


def mma_zeros() -> None:
    from kernels import w4a16_mma

    kernel = w4a16_mma._w4a16_mma_kernel
    rows = []
    for n, k, m in MMA_CASES:
        sets = [s[:2] + s[4:] for s in with_group_major(weight_sets(n, k))]  # scales as the runtime passes them
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        ref = x.float() @ w4.dequantize_w4_reference(*sets[0][1:4], GROUP).t()
        rule = w4a16_mma.pick_config(n, 1 if m <= 8 else 2)
        variants = [(int_zeros, hint) for int_zeros in (False, True) for hint in (True, False)]
        times = {v: [] for v in variants}
        bf16 = []
        for round_ in range(3):
            bf16.append(graph_us(lambda w, *r: x @ w.t(), sets))
            for int_zeros, hint in variants:
                cfg = triton.Config({**rule.kwargs, "L2_256B": hint}, num_warps=rule.num_warps, num_stages=1)

                def launch(w, p, s, z, int_zeros=int_zeros):
                    return w4.gemm_w4a16_triton(x, p, s, z, GROUP, path="mma", integer_zeros=int_zeros)
                with only_config(kernel, cfg):
                    if round_ == 0:
                        err = rel_err(launch(*sets[0]), ref)
                        if not err < 1e-2:
                            raise SystemExit(f"{n}x{k} M={m} {cfg.kwargs} int_zeros={int_zeros}: rel err {err:.2e}")
                    times[(int_zeros, hint)].append(graph_us(launch, sets))
        bf16_us = sorted(bf16)[1]
        for (int_zeros, hint), ts in times.items():
            rows.append(dict(n=n, k=k, m=m, config={**rule.kwargs, "L2_256B": hint}, rule_hint=rule.kwargs["L2_256B"],
                             integer_zeros=int_zeros, us=sorted(ts)[1], rounds=ts, bf16_us=bf16_us, bf16_rounds=bf16))
        print(f"{n}x{k} M={m} bf16 {bf16_us:.1f} | rule {rule.kwargs} | " + " | ".join(
            f"zeros {'sub' if z else 'mma'} L2_256B {int(h)}: {sorted(t)[1]:.2f} ({bf16_us / sorted(t)[1]:.2f}x)"
            for (z, h), t in times.items()), flush=True)
    write_results("w4a16-mma-zeros-h100.json", group_size=GROUP, rows=rows)


def previous_rule(rows: int, k: int, tiles: int, sms: int) -> tuple:
    """(ROW_BLOCKS, WARPS, STEP_CHUNKS, L2_256B) of kernels/w4a16_mma.py's rule at 6e888fd (not gated)."""
    if tiles == 2:
        if rows >= 16384:
            return 4, 4, 1, True
        return (2, 4, 1, True) if 2 * sms < -(-rows // 32) <= 3 * sms else (2, 4, 2, False)
    if rows >= 16384:
        return 2, 4, 1, True
    return (1, 8, 2, False) if k >= 2 * rows else (2, 8, 1, True)


RULE_CASES = [(n, k, m) for n, k, _ in [(8192, 8192, 0), (6144, 4096, 0), (4096, 4096, 0), (4096, 14336, 0),
                                        (28672, 8192, 0), (1024, 4096, 0), (10240, 8192, 0), (8192, 28672, 0),
                                        (14336, 4096, 0), (2048, 4096, 0)] for m in (2, 8, 16)]


def mma_rule() -> None:
    """The mma kernel in the config of the rule before (6e888fd) and of the rule now, at 2, 8 and 16
    tokens on the Llama shapes; integer zeros and group-major scales, five interleaved rounds, medians."""
    from kernels import w4a16_mma

    kernel = w4a16_mma._w4a16_mma_kernel
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for n, k, m in RULE_CASES:
        sets = [s[:2] + s[4:] for s in with_group_major(weight_sets(n, k))]
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        ref = x.float() @ w4.dequantize_w4_reference(*sets[0][1:4], GROUP).t()
        tiles = 1 if m <= 8 else 2
        r, w, s_, hint = previous_rule(n, k, tiles, sms)
        configs = {"before": w4a16_mma._mma_config(r, w, s_, l2_256b=hint),
                   "now": w4a16_mma.pick_config(n, tiles, sms=sms)}

        def launch(w, p, s, z):
            return w4.gemm_w4a16_triton(x, p, s, z, GROUP, path="mma", integer_zeros=True)
        times = {name: [] for name in configs}
        bf16 = []
        for round_ in range(5):
            bf16.append(graph_us(lambda w, *r: x @ w.t(), sets))
            for name, cfg in configs.items():
                with only_config(kernel, cfg):
                    if round_ == 0:
                        err = rel_err(launch(*sets[0]), ref)
                        if not err < 1e-2:
                            raise SystemExit(f"{n}x{k} M={m} {cfg.kwargs}: rel err {err:.2e}")
                    times[name].append(graph_us(launch, sets))
        bf16_us = sorted(bf16)[2]
        us = {name: sorted(ts)[2] for name, ts in times.items()}
        rows.append(dict(n=n, k=k, m=m, configs={name: c.kwargs for name, c in configs.items()}, us=us,
                         rounds=times, bf16_us=bf16_us, bf16_rounds=bf16))
        print(f"{n}x{k} M={m} bf16 {bf16_us:.1f} | before {configs['before'].kwargs} {us['before']:.2f} "
              f"({bf16_us / us['before']:.2f}x) | now {configs['now'].kwargs} {us['now']:.2f} "
              f"({bf16_us / us['now']:.2f}x) | {us['before'] / us['now']:.2f}x faster", flush=True)
    write_results("w4a16-mma-rule-h100.json", group_size=GROUP, sms=sms, rows=rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", choices=["maxnreg", "scale-layout", "mma-zeros", "mma-rule"])
    args = ap.parse_args()
    {"maxnreg": maxnreg, "scale-layout": scale_layout, "mma-zeros": mma_zeros,
     "mma-rule": mma_rule}[args.experiment]()


if __name__ == "__main__":
    main()
