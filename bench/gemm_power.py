"""SM clock and power of the large GEMMs while they run: what bounds fp8's speed-up over bf16.

    python bench/gemm_power.py     # on the GPU; writes bench/results/gemm-power-h100.json

For each prefill shape, each GEMM (bf16 ``x @ w.t()``, ``torch._scaled_mm`` fp8 rowwise with fast
accumulation, kernels.gemm_fp8, kernels.gemm_int8, ``torch._int_mm``) is replayed from a CUDA graph
over rotating operand sets for ``PHASE_S`` seconds while nvidia-smi samples the SM clock, the board
power and the throttle reasons every 100 ms. Per phase: µs per call (CUDA events over the phase),
the median clock and power of the samples inside it (the first ``SETTLE_S`` left out), TFLOP/s and
TFLOP/s per GHz of SM clock, the rate with the clock factored out. Where the GPU sits at its power
cap, a GEMM's speed is its work per clock times the clock the cap allows it, and the ratio of two
GEMMs splits into those two factors. Phases are interleaved over ``ROUNDS`` rounds, the order
reversed every other round; medians over rounds.
"""
import os
import subprocess
import sys
import time
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.timing import rel_err, write_results  # noqa: E402
from bench.w8a8_sweep import sweep_sets  # noqa: E402
from kernels.gemm_fp8 import gemm_fp8  # noqa: E402
from kernels.gemm_int8 import gemm_int8, gemm_int8_reference  # noqa: E402

SHAPES = [(2048, 4096, 4096), (2048, 14336, 4096), (8192, 8192, 8192)]
PHASE_S, SETTLE_S, ROUNDS = 2.0, 0.5, 3
# Throttle-reason bits (nvidia-smi clocks_event_reasons): the ones a GEMM meets.
REASONS = {0x1: "idle", 0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x20: "sw_thermal", 0x40: "hw_thermal",
           0x80: "hw_power_brake"}
GEMMS = {
    "bf16": lambda x, w, *r: x @ w.t(),
    "fp8_scaled_mm": lambda x, w, xq, xs, wq, ws, *r: torch._scaled_mm(
        xq, wq.t(), scale_a=xs, scale_b=ws.t(), out_dtype=torch.bfloat16, use_fast_accum=True),
    "fp8_triton": lambda x, w, xq, xs, wq, ws, *r: gemm_fp8(xq, xs, wq, ws),
    "int8_triton": lambda *r: gemm_int8(*r[6:10]),
    "int8_int_mm": lambda *r: torch._int_mm(r[6], r[8].t()),
}


class Sampler:
    """nvidia-smi in the background, sampling every 100 ms; ``between(t0, t1)`` the samples in a
    wall-clock window (nvidia-smi stamps each with the host's local time)."""

    def __init__(self):
        fields = "timestamp,clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active"
        self.proc = subprocess.Popen(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits",
                                      "-lms", "100"], stdout=subprocess.PIPE, text=True)

    def stop(self) -> list[tuple[float, float, float, float, int]]:
        self.proc.terminate()
        out, _ = self.proc.communicate()
        samples = []
        for line in out.splitlines():
            parts = [p.strip() for p in line.split(",")]
            try:
                stamp = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
                samples.append((stamp, float(parts[1]), float(parts[2]), float(parts[3]), int(parts[4], 16)))
            except (ValueError, IndexError):
                continue  # a header or a field this driver reports as N/A
        return samples


def phase(fn, sets) -> tuple[float, float, float]:
    """Replays ``fn`` over ``sets`` from a CUDA graph for about PHASE_S seconds: (µs per call,
    wall-clock start, end)."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for s in sets:  # warm-up: compiles, tunes and allocates outside the capture
            fn(*s)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for s in sets:
            fn(*s)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    replays = max(1, int(PHASE_S * 1e3 / start.elapsed_time(end)))
    t0 = time.time()
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    t1 = time.time()
    us = start.elapsed_time(end) * 1e3 / (replays * len(sets))
    del graph
    return us, t0, t1


def summarize(samples, t0, t1) -> dict:
    inside = [s for s in samples if t0 + SETTLE_S <= s[0] <= t1]
    if not inside:
        return {"samples": 0}
    med = lambda i: sorted(s[i] for s in inside)[len(inside) // 2]  # noqa: E731
    reasons = 0
    for s in inside:
        reasons |= s[4]
    return {"samples": len(inside), "sm_mhz": med(1), "power_w": med(2), "temp_c": med(3),
            "sm_mhz_min": min(s[1] for s in inside), "sm_mhz_max": max(s[1] for s in inside),
            "throttle": [name for bit, name in REASONS.items() if reasons & bit]}


def main() -> None:
    rows = []
    for m, n, k in SHAPES:
        sets = sweep_sets(m, n, k, int8=True)
        s0 = sets[0]
        ref_fp8 = GEMMS["fp8_scaled_mm"](*s0)
        for name, ref in (("fp8_triton", ref_fp8), ("int8_triton", gemm_int8_reference(*s0[6:10]))):
            err = rel_err(GEMMS[name](*s0), ref)
            if not err < 1e-2:
                raise SystemExit(f"{name} {m}x{n}x{k}: rel err {err:.2e}")
        del ref_fp8
        flops = 2 * m * n * k
        phases = {name: [] for name in GEMMS}
        sampler = Sampler()
        time.sleep(0.5)
        windows = []
        for r in range(ROUNDS):
            for name in (list(GEMMS) if r % 2 == 0 else list(reversed(GEMMS))):
                us, t0, t1 = phase(GEMMS[name], sets)
                windows.append((name, us, t0, t1))
        samples = sampler.stop()
        for name, us, t0, t1 in windows:
            phases[name].append({"us": us, **summarize(samples, t0, t1)})
        row = {"m": m, "n": n, "k": k, "n_sets": len(sets), "phases": phases, "median": {}}
        print(f"{m}x{n}x{k} ({len(sets)} sets, {len(samples)} samples):", flush=True)
        for name, ps in phases.items():
            mid = lambda key: sorted(p.get(key, float("nan")) for p in ps)[len(ps) // 2]  # noqa: E731
            us, mhz, watts = mid("us"), mid("sm_mhz"), mid("power_w")
            tflops = flops / (us * 1e-6) / 1e12
            row["median"][name] = {"us": us, "sm_mhz": mhz, "power_w": watts, "tflops": tflops,
                                   "tflops_per_ghz": tflops / (mhz / 1e3), "joules_per_call": watts * us * 1e-6,
                                   "throttle": sorted({t for p in ps for t in p.get("throttle", [])})}
            base = row["median"]["bf16"]
            print(f"  {name:14s} {us:8.1f} µs ({base['us'] / us:.3f}x bf16) {mhz:6.0f} MHz {watts:5.0f} W "
                  f"{tflops:7.1f} TFLOP/s {tflops / (mhz / 1e3):6.1f} per GHz "
                  f"({tflops / (mhz / 1e3) / base['tflops_per_ghz']:.3f}x bf16) "
                  f"{watts * us:8.0f} µJ {row['median'][name]['throttle']} "
                  f"clocks {[round(p.get('sm_mhz', 0)) for p in ps]}", flush=True)
        rows.append(row)
        del sets
    write_results("gemm-power-h100.json", phase_s=PHASE_S, settle_s=SETTLE_S, rows=rows)


if __name__ == "__main__":
    main()
