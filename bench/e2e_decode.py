"""End-to-end decode on one CUDA GPU: a Llama-shaped stack in bf16 vs fp8 W8A8 vs int4 W4A16.

    python bench/e2e_decode.py --layers 4 --out bench/results/e2e-h100.json

The stack has Llama-3-8B layer shapes (hidden 4096, MLP 14336, 32 query / 8 KV heads of 128)
with random weights, a few layers and a small byte-level vocabulary (so the lm_head, which the
plan keeps wide, does not dominate a few-layer stack). Each variant is a real engine: built by
``runtime.engines.build`` from a saved model folder under the ``h100`` profile, loaded with
``runtime.engines.load_engine`` onto the GPU, and decoded at batch 1 (``--batch B``: B sequences a
step, whose linear layers then take the W4A16 tensor-core and swapped W8A8 paths) through a static
KV cache.
Decode steps replay a CUDA graph (as a serving stack would; eager launches would time Python),
and the eager time is recorded beside it. Time to first token is the prefill forward plus the
first argmax, after a warm-up prefill of the same length.

Engines load as serving loads them: on CUDA sibling ops (q/k/v, gate/up) run as one GEMM each
(runtime.modules.fused_linear). ``--compare-unfused`` also measures every variant loaded with
``fuse=False`` in the same run, under ``unfused``, with ``fusion_speedup_graph`` (fused over unfused
tokens/s, plain and compiled).
"""
import argparse
import gc
import json
import os
import re
import statistics
import sys
import tempfile
import time
from inspect import signature
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.timing import rel_err  # noqa: E402

RECIPES = ["bf16", "fp8_w8a8", "int4_w4a16_g128"]
TEXT = ["the quick brown fox jumps over the lazy dog", "precision is deployment state",
        "calibration records the range of every activation", "def add(a, b): return a + b"]


def make_model_dir(path: Path, layers: int, vocab: int) -> None:
    """Saves a random Llama-3-8B-shaped model with `layers` layers and a byte-level BPE tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXT * 8, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    torch.cuda.empty_cache()


# Kernel name patterns by stage of a decode step (the first match wins).
STAGES = [
    # torch.compile's fused kernels are named after every op they absorbed (a norm fused with the
    # quantization that follows it reads "..._act_quant_..."): all of them count as "other".
    ("other", re.compile(r"^triton_(poi|red|per)_fused")),
    ("act_quant", re.compile(r"act_quant")),
    ("linear", re.compile(r"w4a16|w8a8|gemm|gemv|nvjet|xmma|cutlass|splitK|dequant_w4", re.I)),
    ("attention", re.compile(r"flash|fmha|attention|sdpa|softmax", re.I)),
    ("other", re.compile(r".")),
]


def kernel_breakdown(step, pos, prompt_len: int, steps: int = 8) -> dict:
    """Device time per decode step by stage, from the profiler's kernel records of eager steps
    (kernel durations are the same as in a graph replay; the launch gaps are not counted)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(steps):
            pos.fill_(prompt_len + i)
            step()
        torch.cuda.synchronize()
    stages = {name: {"us": 0.0, "kernels": 0} for name, _ in STAGES}
    top = []
    for evt in prof.key_averages():
        total = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0.0)
        if not total or evt.key.startswith("ProfilerStep"):
            continue
        stage = next(name for name, pattern in STAGES if pattern.search(evt.key))
        stages[stage]["us"] += total / steps
        stages[stage]["kernels"] += evt.count / steps
        top.append((total / steps, evt.count / steps, evt.key[:90]))
    top.sort(reverse=True)
    return {"stages": stages, "total_us": sum(v["us"] for v in stages.values()),
            "top_kernels": [{"us": round(t, 2), "per_step": round(c, 2), "name": k} for t, c, k in top[:15]]}


def add_speedups(row: dict, base: dict) -> None:
    """speedup_graph / speedup_eager: ``row``'s decode tokens/s over ``base``'s."""
    for key in ("decode_tokens_per_s_graph", "decode_tokens_per_s_eager"):
        if row[key] and base[key]:
            row[key.replace("decode_tokens_per_s", "speedup")] = row[key] / base[key]


def _ratio(fused: dict, unfused: dict) -> float | None:
    a, b = fused["decode_tokens_per_s_graph"], unfused["decode_tokens_per_s_graph"]
    return a / b if a and b else None


def print_stages(label: str, stages: dict) -> None:
    print(f"  {label}device µs per step {stages['total_us']:.1f}: " + ", ".join(
        f"{k} {v['us']:.1f} ({v['kernels']:.0f} kernels)" for k, v in stages["stages"].items()), flush=True)


def decode_rates(step, token, pos, prompt_len: int, new_tokens: int, prefill):
    """Greedy decode tokens/s (over all of ``token``'s sequences) of ``step``: eager, and replayed
    from a CUDA graph (None and the error when capture fails); and how far apart the logits of one
    step from one cache state are, replayed twice and run once without the graph (``prefill``
    resets the cache and fills it with the prompt)."""
    # Eager decode (also warms the M = 1 kernels up before graph capture).
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(new_tokens):
        pos.fill_(prompt_len + i)
        token.copy_(step()[:, -1].argmax(-1).view(-1, 1))
    torch.cuda.synchronize()
    batch = token.shape[0]
    eager_tps = batch * new_tokens / (time.perf_counter() - t0)

    graph_tps, graph_error = None, None
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_logits = step()
        rates = []
        for _ in range(3):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for i in range(new_tokens):
                pos.fill_(prompt_len + i)
                graph.replay()
                token.copy_(static_logits[:, -1].argmax(-1).view(-1, 1))
            torch.cuda.synchronize()
            rates.append(batch * new_tokens / (time.perf_counter() - t0))
        graph_tps = statistics.median(rates)
        # One step from one cache state (the prompt's), replayed twice and run once without the
        # graph: the kernels are deterministic, so a difference between the replays is a read
        # that raced a write (launches overlap under programmatic dependent launch).
        runs = []
        for replayed in (True, True, False):
            prefill()
            pos.fill_(prompt_len)
            if replayed:
                graph.replay()
                runs.append(static_logits.float().clone())
            else:
                runs.append(step().float())
        first, again, direct = runs
        agreement = {"replay_vs_replay": rel_err(again, first), "replay_vs_no_graph": rel_err(direct, first)}
    except Exception as exc:  # recorded, not hidden: the eager number still stands
        graph_error = f"{type(exc).__name__}: {exc}"[:400]
        agreement = None
    return eager_tps, graph_tps, graph_error, agreement


def static_cache(config, max_len: int, batch: int):
    """transformers' StaticCache for ``batch`` sequences of up to ``max_len`` positions (versions
    that size it by its first write take no ``max_batch_size``)."""
    from transformers import StaticCache

    return StaticCache(config=config, max_cache_len=max_len,
                       **({"max_batch_size": batch} if "max_batch_size" in signature(StaticCache).parameters else {}))


def measure(loaded, prompt_len: int, new_tokens: int, vocab: int, compile_step: bool = True, batch: int = 1) -> dict:
    """TTFT, decode tokens/s (graph-replayed and eager, plain and through torch.compile) and peak
    memory of one loaded engine."""
    model = loaded.model
    # transformers may derive the write position from the cache's own fill level rather than
    # cache_position (seen with 5.17), so every step of every phase below (5 + 4 x new_tokens)
    # gets its own slot (the cache is reset before the compiled phase); attention over a static
    # cache costs the same at any fill level.
    cache = static_cache(model.config, prompt_len + 4 * new_tokens + 32, batch)
    prompt = torch.randint(3, vocab, (batch, prompt_len), device="cuda")
    positions = torch.arange(prompt_len, device="cuda")

    def prefill():
        cache.reset()
        logits = model(input_ids=prompt, cache_position=positions, past_key_values=cache, use_cache=True).logits
        return logits[:, -1].argmax(-1)

    with torch.inference_mode():
        prefill()  # warm-up: Triton autotuning and compilation for this M happen here
        ttft = []
        for _ in range(5):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            first = prefill()
            torch.cuda.synchronize()
            ttft.append(time.perf_counter() - t0)

        token = first.view(batch, 1).clone()
        pos = torch.tensor([prompt_len], device="cuda")

        def step():
            return model(input_ids=token, cache_position=pos, past_key_values=cache, use_cache=True).logits

        eager_tps, graph_tps, graph_error, agreement = decode_rates(step, token, pos, prompt_len, new_tokens, prefill)
        breakdown = kernel_breakdown(step, pos, prompt_len)
        compiled = None
        if compile_step:
            # The same step through torch.compile: the kernels stay whole as custom ops
            # (kernels/ops.py) and inductor fuses the element-wise work between them.
            # The cache's slots are used up by the steps above; the compiled phase starts afresh.
            cache.reset()
            t0 = time.perf_counter()
            compiled_step = torch.compile(step, dynamic=False)
            compiled_step()
            compile_s = time.perf_counter() - t0
            c_eager, c_graph, c_error, c_agreement = decode_rates(compiled_step, token, pos, prompt_len, new_tokens,
                                                                  prefill)
            compiled = {"compile_s": compile_s, "decode_tokens_per_s_graph": c_graph,
                        "decode_tokens_per_s_eager": c_eager, "graph_error": c_error,
                        "graph_logits_rel_diff": c_agreement,
                        "device_us_per_step_by_stage": kernel_breakdown(compiled_step, pos, prompt_len)}
    return {
        "device_us_per_step_by_stage": breakdown,
        "ttft_ms": 1e3 * statistics.median(ttft), "decode_tokens_per_s_graph": graph_tps,
        "decode_tokens_per_s_eager": eager_tps, "graph_error": graph_error, "graph_logits_rel_diff": agreement,
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30, "compiled": compiled,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1, help="sequences decoded together (tokens/s counts all)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default="bench/results/e2e-h100.json")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    parser.add_argument("--compare-unfused", action="store_true",
                        help="also measure each engine loaded with fuse=False (sibling ops as separate GEMMs)")
    parser.add_argument("--inductor-pdl", action="store_true",
                        help="torch.compile's generated kernels use programmatic dependent launch as well "
                             "(torch._inductor.config.triton.enable_pdl; off by default in torch)")
    parser.add_argument("--multi-kernel", action="store_true",
                        help="torch.compile generates reductions both persistent and looped, over up to 16x the "
                             "usual length, and keeps the faster (torch._inductor.config.triton.multi_kernel)")
    parser.add_argument("--coordinate-descent", action="store_true",
                        help="torch.compile tunes its generated kernels' block sizes "
                             "(torch._inductor.config.coordinate_descent_tuning)")
    parser.add_argument("--recipes", default=",".join(RECIPES),
                        help=f"comma-separated presets to measure; bf16, the baseline, always runs first ({RECIPES})")
    args = parser.parse_args()
    recipes = ["bf16"] + [r for r in args.recipes.split(",") if r and r != "bf16"]
    unknown = sorted(set(recipes) - set(RECIPES))
    if unknown:
        parser.error(f"--recipes: unknown {unknown}; choose from {RECIPES}")
    if not torch.cuda.is_available():
        sys.exit("bench/e2e_decode.py needs a CUDA GPU")
    import transformers
    import triton

    from torch._inductor import config as inductor_config

    if args.inductor_pdl:
        inductor_config.triton.enable_pdl = True
    if args.coordinate_descent:
        inductor_config.coordinate_descent_tuning = True
    if args.multi_kernel:
        inductor_config.triton.multi_kernel = 1

    from kernels._launch import pdl_args
    from runtime.accelerators import get_profile
    from runtime.engines import build, load_engine
    from runtime.modules.attention import FUSED_STEP_CLASSES
    from runtime.recipes import preset

    work = Path(args.workdir or tempfile.mkdtemp(prefix="pops-e2e-"))
    model_dir = work / "llama8b-shaped"
    t0 = time.perf_counter()
    make_model_dir(model_dir, args.layers, args.vocab)
    print(f"model folder ({args.layers} layers) in {time.perf_counter() - t0:.0f}s", flush=True)
    result = {
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
        "transformers": transformers.__version__, "date": time.strftime("%Y-%m-%d"),
        "model": {"layers": args.layers, "hidden": 4096, "intermediate": 14336, "heads": 32, "kv_heads": 8,
                  "vocab_requested": args.vocab, "weights": "random (normal, std 0.02)"},
        "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "batch": args.batch,
        # Programmatic dependent launch: the runtime's kernels (PRECISIONOPS_PDL, on by default on
        # sm_90) and torch.compile's generated ones (TORCHINDUCTOR_ENABLE_PDL, off by default).
        "pdl": {"kernels": pdl_args(torch.device("cuda"))["PDL"],
                "inductor": bool(getattr(inductor_config.triton, "enable_pdl", False))},
        "coordinate_descent_tuning": bool(inductor_config.coordinate_descent_tuning),
        "multi_kernel": int(inductor_config.triton.multi_kernel),
        "engine_path": "runtime.engines.build(profile=h100) -> runtime.engines.load_engine(device=cuda)",
        "variants": {},
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    for name in recipes:
        t0 = time.perf_counter()
        engine = build(model_dir, preset(name), get_profile("h100"), out_root=work / "engines")
        built_s = time.perf_counter() - t0
        torch.cuda.reset_peak_memory_stats()
        loaded = load_engine(engine.path, device="cuda")
        kernels = sorted({o.kernel for o in loaded.plan.linear_ops()})
        row = measure(loaded, args.prompt_len, args.new_tokens, loaded.model.config.vocab_size,
                      compile_step=not args.no_compile, batch=args.batch)
        # Attention layers whose decode step runs RoPE, the cache write and attention as one kernel
        # (runtime.modules.attention; PRECISIONOPS_FUSED_STEP=0 turns it off).
        row["fused_attention_steps"] = sum("forward" in vars(m) for m in loaded.model.modules()
                                           if type(m).__name__ in FUSED_STEP_CLASSES)
        row.update({"engine_id": engine.engine_id, "build_s": built_s, "linear_kernels": kernels,
                    "linear_weight_bytes": engine.manifest["bytes"].get("linear_ops")})
        if args.compare_unfused:
            del loaded
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            loaded = load_engine(engine.path, device="cuda", fuse=False)
            unfused = row["unfused"] = measure(loaded, args.prompt_len, args.new_tokens,
                                               loaded.model.config.vocab_size, compile_step=not args.no_compile,
                                               batch=args.batch)
            row["fusion_speedup_graph"] = _ratio(row, unfused)
            if row["compiled"] and unfused["compiled"]:
                row["compiled"]["fusion_speedup_graph"] = _ratio(row["compiled"], unfused["compiled"])
            print(f"  unfused: decode {unfused['decode_tokens_per_s_graph']} tok/s graph"
                  + (f", compiled {unfused['compiled']['decode_tokens_per_s_graph']}" if unfused["compiled"] else "")
                  + f"; fusion x{row['fusion_speedup_graph']}", flush=True)
        result["variants"][name] = row
        with open(args.out, "w") as f:  # partial results survive a later failure
            json.dump(result, f, indent=1)
        print(f"{name}: ttft {row['ttft_ms']:.1f} ms, decode {row['decode_tokens_per_s_graph']} tok/s graph, "
              f"{row['decode_tokens_per_s_eager']:.0f} eager, peak {row['peak_gpu_memory_gib']:.2f} GiB, "
              f"kernels {kernels}" + (f", graph error {row['graph_error']}" if row["graph_error"] else ""), flush=True)
        print_stages("", row["device_us_per_step_by_stage"])
        if row["compiled"]:
            c = row["compiled"]
            error = f", graph error {c['graph_error']}" if c["graph_error"] else ""
            print(f"  compiled ({c['compile_s']:.0f}s): decode {c['decode_tokens_per_s_graph']} tok/s graph, "
                  f"{c['decode_tokens_per_s_eager']:.0f} eager{error}; logits rel diff {c['graph_logits_rel_diff']}",
                  flush=True)
            print_stages("compiled ", c["device_us_per_step_by_stage"])
        del loaded
        gc.collect()
        torch.cuda.empty_cache()
    base = result["variants"]["bf16"]
    for row in result["variants"].values():
        add_speedups(row, base)
        # Compiled against compiled bf16: the fused element-wise work shortens every variant.
        if row["compiled"] and base["compiled"]:
            add_speedups(row["compiled"], base["compiled"])
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    for name, row in result["variants"].items():
        compiled = row["compiled"] or {}
        print(f"{name}: {row.get('speedup_graph')}x graph, {row.get('speedup_eager')}x eager vs bf16; "
              f"compiled {compiled.get('speedup_graph')}x graph vs compiled bf16")


if __name__ == "__main__":
    main()
