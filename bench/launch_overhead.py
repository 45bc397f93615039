"""Host time per call of the W8A8 launcher against torch's GEMMs, and what it does to eager timing.

    python bench/launch_overhead.py     # on the GPU; writes bench/results/w8a8-launch-overhead-h100.json

For the prefill shapes where a GEMM takes ~50-250 µs, each path (the tiled and the persistent
Triton kernels, each launched directly once tuned (kernels._launch.launch) and through Triton's
autotuner and launcher every call (``/triton``: PRECISIONOPS_FAST_LAUNCH=0), ``torch._scaled_mm``
or ``torch._int_mm``, bf16 ``x @ w.t()``) is timed three ways,
three times each: ``triton.testing.do_bench`` (an L2 flush, then the call, timed by CUDA events),
CUDA-graph replay (device time only), and enqueue time (50 calls without a sync, per call: the
host's cost where it exceeds the kernel's). Where the enqueue time exceeds the flush that precedes
each do_bench call, the GPU waits on the host and do_bench reports that wait as kernel time.

Then each decode-sized launcher (fp8 activation quantization, the W8A8 swapped-operand GEMM, the
W4A16 GEMV and tensor-core kernel, decode attention) is timed by enqueue time alone, launched
directly and through Triton, alternated ``REPEATS`` times: at these sizes the host's time is the
call's time whenever it runs eagerly.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from triton.testing import do_bench  # noqa: E402

import kernels._w8a8 as w8a8  # noqa: E402
from bench.timing import graph_us, rel_err, write_results  # noqa: E402
from kernels.act_quant import act_quant  # noqa: E402
from kernels.decode_attention import decode_attention  # noqa: E402
from kernels.gemm_fp8 import gemm_fp8  # noqa: E402
from kernels.gemm_w4a16 import gemm_w4a16, quantize_w4_reference  # noqa: E402

SHAPES = [(2048, 4096, 4096), (2048, 14336, 4096), (8192, 8192, 8192)]
REPEATS = 3


def enqueue_us(fn, calls: int = 50) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    per_call = (time.perf_counter() - start) / calls * 1e6
    torch.cuda.synchronize()
    return per_call


def main() -> None:
    rows = []
    for m, n, k in SHAPES:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        for fmt, qdtype in (("fp8_e4m3", torch.float8_e4m3fn), ("int8", torch.int8)):
            xq, xs, _, _ = act_quant(x, fmt)
            wq, ws, _, _ = act_quant(w, fmt)
            fns = {name: (lambda p=name.split("/")[0]: w8a8.w8a8_gemm_triton(xq, xs, wq, ws, None, torch.bfloat16,
                                                                                 qdtype, path=p))
                   for name in ("tiled", "persistent", "tiled/triton", "persistent/triton")}
            if fmt == "int8":
                fns["torch"] = lambda: torch._int_mm(xq, wq.t())
            else:
                fns["torch"] = lambda: torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws.t(),
                                                        out_dtype=torch.bfloat16, use_fast_accum=True)
            fns["bf16"] = lambda: x @ w.t()
            ref = (xq.float() * xs) @ (wq.float() * ws).t()
            for path in ("tiled", "persistent"):
                err = rel_err(fns[path](), ref)
                if not err < 1e-2:
                    raise SystemExit(f"{fmt} {m}x{n}x{k} {path}: rel err {err:.2e}")
            for name, fn in fns.items():
                os.environ["PRECISIONOPS_FAST_LAUNCH"] = "0" if name.endswith("/triton") else "1"
                fn()
                row = dict(m=m, n=n, k=k, fmt=fmt, path=name,
                           do_bench_us=[do_bench(fn, return_mode="median") * 1e3 for _ in range(REPEATS)],
                           graph_us=[graph_us(lambda *r, fn=fn: fn(), [()]) for _ in range(REPEATS)],
                           enqueue_us=[enqueue_us(fn) for _ in range(REPEATS)])
                rows.append(row)
                print(f"{m}x{n}x{k} {fmt:8s} {name:10s}: do_bench {min(row['do_bench_us']):7.1f}-"
                      f"{max(row['do_bench_us']):7.1f}  graph {min(row['graph_us']):7.1f}-{max(row['graph_us']):7.1f}"
                      f"  enqueue {min(row['enqueue_us']):6.1f}-{max(row['enqueue_us']):6.1f}", flush=True)
    os.environ.pop("PRECISIONOPS_FAST_LAUNCH")
    write_results("w8a8-launch-overhead-h100.json", command="python bench/launch_overhead.py", rows=rows,
                  decode_launchers=decode_launchers())


def decode_launchers() -> list[dict]:
    """Enqueue µs per call of each decode launcher, direct and through Triton."""
    k = 4096
    x = torch.randn(16, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(k, k, device="cuda", dtype=torch.bfloat16) * k**-0.5
    xq, xs, _, _ = act_quant(x, "fp8_e4m3")
    wq, ws, _, _ = act_quant(w, "fp8_e4m3")
    w4 = quantize_w4_reference(w, 128, True)
    cache = torch.randn(1, 8, 4096, 128, device="cuda", dtype=torch.bfloat16)
    seq_lens = torch.tensor([2000], dtype=torch.int32, device="cuda")
    calls = {
        "act_quant fp8 1x4096": lambda: act_quant(x[:1], "fp8_e4m3"),
        "gemm_fp8 16x4096x4096 (swap)": lambda: gemm_fp8(xq, xs, wq, ws),
        "gemm_w4a16 1x4096x4096 (gemv)": lambda: gemm_w4a16(x[:1], *w4, 128),
        "gemm_w4a16 16x4096x4096 (tc)": lambda: gemm_w4a16(x, *w4, 128),
        "decode_attention 1x32 heads, 2000 positions": lambda: decode_attention(x[:1].view(1, 32, 128), cache, cache,
                                                                                seq_lens),
    }
    rows = []
    for name, fn in calls.items():
        row = {"launcher": name, "direct_us": [], "triton_us": []}
        for _ in range(REPEATS):
            for launch, key in (("1", "direct_us"), ("0", "triton_us")):
                os.environ["PRECISIONOPS_FAST_LAUNCH"] = launch
                fn()
                row[key].append(enqueue_us(fn, calls=200))
        os.environ.pop("PRECISIONOPS_FAST_LAUNCH")
        rows.append(row)
        print(f"{name:45s}: direct {min(row['direct_us']):6.1f}-{max(row['direct_us']):6.1f} µs, through Triton "
              f"{min(row['triton_us']):6.1f}-{max(row['triton_us']):6.1f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
