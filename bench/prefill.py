"""Where an engine's time to first token goes: one eager prefill of a Llama-shaped stack, profiled.

    python bench/prefill.py --layers 8 --prompt-len 512     # writes bench/results/prefill-<gpu>.json

Builds the same engines as bench/e2e_decode.py (bf16, fp8 W8A8, int4 W4A16; random Llama-3-8B
layer shapes) and, after a warm-up prefill (tuning and compilation), times ``--repeats`` prefills
wall-clock, then profiles one: the device time its kernels take (summed; where it is far below the
wall time the host's launches bound the prefill), the kernels by device time, the host's
operators by their own CPU time and the Python functions by theirs (cProfile). Then the same
prefill captured in a CUDA graph and replayed: the time to first token without launch costs.
"""
import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.e2e_decode import RECIPES, make_model_dir, static_cache  # noqa: E402


def profile_prefill(prefill) -> dict:
    """Device µs of one prefill by kernel, and host µs by operator (self time), from the profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        prefill()
        torch.cuda.synchronize()
    kernels, host = [], []
    for evt in prof.key_averages():
        device = getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0.0)
        if device and evt.device_type == torch.autograd.DeviceType.CUDA:
            kernels.append((device, evt.count, evt.key[:100]))
        elif evt.self_cpu_time_total:
            host.append((evt.self_cpu_time_total, evt.count, evt.key[:100]))
    kernels.sort(reverse=True)
    host.sort(reverse=True)
    return {"device_us": sum(t for t, _, _ in kernels), "launches": sum(c for _, c, _ in kernels),
            "top_kernels": [{"us": round(t, 1), "count": c, "name": k} for t, c, k in kernels[:12]],
            "top_host_ops": [{"self_us": round(t, 1), "count": c, "name": k} for t, c, k in host[:12]]}


def python_profile(prefill, top: int = 25) -> list[dict]:
    """The Python functions one prefill spends its host time in (cProfile; cumulative µs)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    prefill()
    torch.cuda.synchronize()
    prof.disable()
    stats = pstats.Stats(prof).stats
    rows = [(cum, tot, calls, f"{os.path.relpath(f) if f.startswith(os.getcwd()) else os.path.basename(f)}:{line}({fn})")
            for (f, line, fn), (_, calls, tot, cum, _) in stats.items()]
    rows.sort(reverse=True)
    return [{"cum_us": round(c * 1e6, 1), "self_us": round(t * 1e6, 1), "calls": n, "name": k}
            for c, t, n, k in rows[:top]]


def graph_prefill_ms(prefill, repeats: int) -> tuple[float | None, str | None]:
    """The same prefill captured in a CUDA graph (as a server would for a bucketed prompt length)
    and replayed: wall ms per replay, the time to first token without the host's launches; or the
    capture's error."""
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            prefill()
        graph.replay()
        times = []
        for _ in range(repeats):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            graph.replay()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
        del graph
        return statistics.median(times), None
    except Exception as exc:  # recorded, not hidden: the eager numbers still stand
        return None, f"{type(exc).__name__}: {exc}"[:300]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--out", default=None, help="default: bench/results/prefill-<gpu>.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/prefill.py needs a CUDA GPU")
    from runtime.accelerators import get_profile
    from runtime.engines import build, load_engine
    from runtime.recipes import preset

    gpu = torch.cuda.get_device_name()
    out = args.out or f"bench/results/prefill-{gpu.split()[1].lower() if len(gpu.split()) > 1 else 'gpu'}.json"
    work = Path(tempfile.mkdtemp(prefix="pops-prefill-"))
    make_model_dir(work / "model", args.layers, args.vocab)
    result = {"gpu": gpu, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "layers": args.layers,
              "prompt_len": args.prompt_len, "batch": args.batch, "variants": {}}
    for name in args.recipes.split(","):
        engine = build(work / "model", preset(name), get_profile("h100"), out_root=work / "engines")
        loaded = load_engine(engine.path, device="cuda")
        model = loaded.model
        prompt = torch.randint(3, model.config.vocab_size, (args.batch, args.prompt_len), device="cuda")
        positions = torch.arange(args.prompt_len, device="cuda")
        # A static KV cache, as bench/e2e_decode.py's time to first token: the prefill writes it.
        cache = static_cache(model.config, args.prompt_len + 32, args.batch)

        def prefill():
            cache.reset()
            logits = model(input_ids=prompt, cache_position=positions, past_key_values=cache, use_cache=True).logits
            return logits[:, -1].argmax(-1)

        with torch.inference_mode():
            prefill()  # warm-up: autotuning and compilation for this M
            times = []
            for _ in range(args.repeats):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                prefill()
                torch.cuda.synchronize()
                times.append((time.perf_counter() - t0) * 1e3)
            graph_ms, graph_error = graph_prefill_ms(prefill, args.repeats)
            row = {"ttft_ms": statistics.median(times), "ttft_ms_all": times, "graph_ttft_ms": graph_ms,
                   "graph_error": graph_error, **profile_prefill(prefill), "python": python_profile(prefill)}
        result["variants"][name] = row
        graphed = f"{graph_ms:.2f} ms" if graph_ms is not None else graph_error
        print(f"{name}: wall {row['ttft_ms']:.2f} ms, device {row['device_us'] / 1e3:.2f} ms in "
              f"{row['launches']} kernels, replayed from a CUDA graph {graphed}", flush=True)
        for k in row["top_kernels"][:8]:
            print(f"    {k['us']:9.1f} µs x{k['count']:<4d} {k['name']}", flush=True)
        for k in row["top_host_ops"][:8]:
            print(f"    host {k['self_us']:9.1f} µs x{k['count']:<4d} {k['name']}", flush=True)
        for k in row["python"]:
            print(f"    python {k['cum_us']:9.1f} µs (self {k['self_us']:8.1f}) x{k['calls']:<5d} {k['name']}", flush=True)
        del loaded, model, cache
        gc.collect()
        torch.cuda.empty_cache()
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print("wrote", out)


if __name__ == "__main__":
    main()
