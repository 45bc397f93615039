"""What programmatic dependent launch does to the decode GEMMs alone: CUDA-graph µs per call with
the runtime's PDL off and on, alternated, against bf16 cuBLAS in the same run.

    python bench/pdl_ab.py      # on an sm_90 GPU; writes bench/results/pdl-ab-h100.json

Two settings per shape: "chain", the calls back to back over rotating weight sets (each kernel
follows one of ours, which lets it launch early), and "after norm", each call after a torch
RMSNorm of its input (a kernel that does not), as in a decode step without inductor's PDL.
bench/e2e_decode.py measures the whole step.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import kernels.gemm_w4a16 as w4  # noqa: E402
from bench.timing import graph_us, rel_err, write_results  # noqa: E402
from bench.w4a16_sweep import GROUP, weight_sets  # noqa: E402
from kernels.act_quant import act_quant  # noqa: E402
from kernels.gemm_fp8 import gemm_fp8  # noqa: E402

W4_CASES = [(1, 4096, 4096), (1, 6144, 4096), (1, 28672, 4096), (1, 4096, 14336), (1, 8192, 8192),
            (16, 8192, 8192)]
FP8_CASES = [(1, 4096, 4096), (1, 8192, 8192)]
ROUNDS = 2


def _timed(call, sets, pdl: bool) -> float:
    os.environ["PRECISIONOPS_PDL"] = "1" if pdl else "0"
    call(*sets[0])  # compiles this PDL variant outside the capture
    return graph_us(call, sets)


def _ab(name: str, call, sets, bf16_us: float) -> dict:
    times = {"off": [], "on": []}
    for _ in range(ROUNDS):
        for mode in ("off", "on"):
            times[mode].append(_timed(call, sets, mode == "on"))
    off, on = min(times["off"]), min(times["on"])
    print(f"{name}: off {off:.2f} µs, on {on:.2f} µs ({off / on:.3f}x); bf16 {bf16_us:.2f} µs: "
          f"{bf16_us / off:.2f}x / {bf16_us / on:.2f}x", flush=True)
    return {"case": name, "off_us": times["off"], "on_us": times["on"], "bf16_us": bf16_us,
            "pdl_speedup": off / on, "vs_bf16_off": bf16_us / off, "vs_bf16_on": bf16_us / on}


def main() -> None:
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        sys.exit("bench/pdl_ab.py needs an sm_90 GPU")
    rows = []
    for m, n, k in W4_CASES:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        sets = weight_sets(n, k)
        ref = x.float() @ w4.dequantize_w4_reference(*sets[0][1:], GROUP).t()
        weight = torch.ones(k, device="cuda", dtype=torch.bfloat16)
        bf16_us = graph_us(lambda w, *r: x @ w.t(), sets)
        err = rel_err(w4.gemm_w4a16(x, *sets[0][1:], GROUP), ref)
        if not err < 1e-2:
            raise SystemExit(f"w4a16 {m}x{n}x{k}: rel err {err:.2e}")
        for setting, call in (
            ("chain", lambda w, p, s, z: w4.gemm_w4a16(x, p, s, z, GROUP)),
            ("after norm", lambda w, p, s, z: w4.gemm_w4a16(torch.nn.functional.rms_norm(x, (k,), weight), p, s, z,
                                                             GROUP)),
        ):
            norm_us = graph_us(lambda *r: torch.nn.functional.rms_norm(x, (k,), weight), sets) \
                if setting == "after norm" else 0.0
            row = _ab(f"w4a16 {m}x{n}x{k} {setting}", call, sets, bf16_us + norm_us)
            row["norm_us"] = norm_us
            rows.append(row)
    for m, n, k in FP8_CASES:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        sets = []
        for _ in range(max(1, min(8, -(-100 * 2**20 // (n * k))))):
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
            wq, ws, _, _ = act_quant(w, "fp8_e4m3")
            sets.append((w, wq, ws))
        bf16_us = graph_us(lambda w, *r: x @ w.t(), sets)

        def quant_gemm(w, wq, ws):
            xq, xs, _, _ = act_quant(x, "fp8_e4m3")
            return gemm_fp8(xq, xs, wq, ws)
        ref = x.float() @ sets[0][0].float().t()
        err = rel_err(quant_gemm(*sets[0]), ref)
        if not err < 5e-2:
            raise SystemExit(f"fp8 {m}x{n}x{k}: rel err {err:.2e}")
        rows.append(_ab(f"act quant + fp8 {m}x{n}x{k}", quant_gemm, sets, bf16_us))
    os.environ.pop("PRECISIONOPS_PDL", None)
    print(write_results("pdl-ab-h100.json", rounds=ROUNDS, timer="graph_us (min of rounds)", rows=rows))


if __name__ == "__main__":
    main()
