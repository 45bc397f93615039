"""Timing and output checks shared by the benchmarks (bench/kernels.py, bench/decode_attention.py, ...).

Every time is a median: ``median_us`` under ``triton.testing.do_bench`` (warm-up, L2 flushed before
each repetition, inputs rotated), ``graph_us`` as device time replayed from a CUDA graph (no host
launch cost, as a decode step runs in a serving stack).
"""
import itertools
import json
import os
import platform
import time
from datetime import date

import torch
import triton
from triton.testing import do_bench, do_bench_cudagraph

# Outputs that strayed from their baseline; a benchmark records them in its results and reports them.
CHECK_FAILURES: list[str] = []


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative Frobenius error (NaN if either side is not finite)."""
    a, b = a.float(), b.float()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("nan")
    return float((a - b).norm() / b.norm())


def check(name: str, err: float, bound: float) -> float:
    """Records an output that strays from its baseline by more than ``bound``."""
    if not err <= bound:
        CHECK_FAILURES.append(f"{name}: rel err {err:.2e} > {bound:.0e}")
        print(f"CHECK FAILED {name}: rel err {err:.2e} > {bound:.0e}", flush=True)
    return err


def median_us(fn_of_inputs, input_sets, warmup=25, rep=100) -> float:
    """Median time in µs of ``fn_of_inputs(*inputs)`` under do_bench, cycling through ``input_sets``."""
    cycle = itertools.cycle(input_sets)
    return do_bench(lambda: fn_of_inputs(*next(cycle)), warmup=warmup, rep=rep, return_mode="median") * 1e3


def graph_us(fn_of_inputs, input_sets) -> float:
    """Median device time in µs per call, replayed from a CUDA graph that calls ``fn_of_inputs``
    once per input set (the sets together exceed the L2, which do_bench_cudagraph does not flush)."""
    ms = do_bench_cudagraph(lambda: [fn_of_inputs(*s) for s in input_sets], rep=50, return_mode="median")
    return ms * 1e3 / len(input_sets)


def rounds_us(fns: dict, input_sets, rounds: int = 3) -> dict:
    """``{name: {"do_bench": µs, "graph": µs, "rounds": {...}}}``: each ``fns[name]`` timed by
    :func:`median_us` and :func:`graph_us` in ``rounds`` interleaved rounds, the order reversed every
    other round, medians over rounds. On the H100 the large GEMMs run at the board's power cap, where
    the SM clock swings between ~1.1 and ~2.0 GHz (bench/gemm_power.py): one measurement each, or the
    same order every round, moved a 56 µs GEMM by ~2 µs with its place in the round."""
    times = {name: {"do_bench": [], "graph": []} for name in fns}
    for r in range(rounds):
        for name in list(fns) if r % 2 == 0 else list(reversed(fns)):
            times[name]["do_bench"].append(median_us(fns[name], input_sets))
            times[name]["graph"].append(graph_us(fns[name], input_sets))
    return {name: {**{t: sorted(v)[len(v) // 2] for t, v in ts.items()}, "rounds": ts} for name, ts in times.items()}


def best_config(kernel) -> str | None:
    """The config the autotuner picked for the last launch of ``kernel``."""
    cfg = getattr(kernel, "best_config", None)
    return None if cfg is None else f"{cfg.kwargs} warps={cfg.num_warps} stages={cfg.num_stages}"


def write_results(name: str, **fields) -> str:
    """Writes ``bench/results/<name>``: the GPU, torch and triton versions, the date and ``fields``."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", name)
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "date": date.today().isoformat(), **fields}
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print("wrote", path)
    return path


def interleaved_us(device: str):
    """time_us(fns) -> median microseconds per call of each fn, measured in interleaved rounds."""
    if device == "cuda":
        return lambda fns: [do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3 for fn in fns]

    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter

    def cpu(fns, rounds: int = 7, min_s: float = 0.02):
        # With one torch thread the clock is this thread's CPU time: on a shared machine the time
        # spent descheduled is not the layer's cost. Rounds that time every variant back to back,
        # then a median per variant, keep the comparison fair while load drifts.
        for fn in fns:
            fn()
        reps = []
        for fn in fns:
            t0, n = clock(), 0
            while clock() - t0 < min_s:
                fn()
                n += 1
            reps.append(max(1, n))
        samples = [[] for _ in fns]
        for _ in range(rounds):
            for i, fn in enumerate(fns):
                t0 = clock()
                for _ in range(reps[i]):
                    fn()
                samples[i].append((clock() - t0) / reps[i] * 1e6)
        return [sorted(v)[len(v) // 2] for v in samples]
    return cpu


def write_env_and_rows(out: str | None, device: str, started: float, rows: list[dict], **env) -> None:
    """Writes ``{"env", "rows"}`` to ``out`` (when given) for a benchmark that runs on the CPU or CUDA: the
    device, torch, threads, python, the seconds since ``started`` and ``env``'s own fields (clock, note)."""
    if not out:
        return
    env = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
           "seconds": round(time.time() - started, 1), "date": date.today().isoformat(), **env}
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as fh:
        json.dump({"env": env, "rows": rows}, fh, indent=1)
    print(f"wrote {out}")
