"""A decode step's attention stage on one CUDA GPU: one fused kernel against transformers' sequence.

    python bench/decode_step.py --inductor-pdl --out bench/results/decode-step-h100.json

Llama-3-8B heads (Hq 32, Hkv 8, D 128), batch 1 and 8, contexts 800 (bench/e2e_decode.py's cache) to
32k, a bf16 static cache filled to its last position:

- ``sequence``: what a Llama layer does between its projections and o_proj over a static cache, as
  transformers writes it (rotate-half RoPE of q and k, ``index_copy_`` of k and v into the cache,
  the fill count's ``add_``, the lengths), compiled by torch.compile (inductor fuses the
  element-wise work into a few kernels), then ``kernels.decode_attention`` through its custom op;
- ``fused``: ``kernels.decode_attention.decode_attention_update``, the same work as one kernel.

Times are medians of CUDA-graph replay (device time, as a serving stack replays decode) over input
sets rotated between calls that together exceed the L2. Both variants' outputs and caches are
checked against each other (bf16 bound); a failed check is printed and exits 1 after writing.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.timing import CHECK_FAILURES, check, graph_us, rel_err  # noqa: E402
from kernels.ops import decode_attention_op, decode_attention_update_op  # noqa: E402

HQ, HKV, D = 32, 8, 128
SHAPES = [(1, 800), (1, 4096), (1, 32768), (8, 800), (8, 4096)]
L2_BYTES = 50 * 2**20
SM_SCALE = D ** -0.5


def sequence(q, k, v, cos, sin, k_cache, v_cache, position, fill):
    """transformers' Llama attention between the projections and o_proj, over a static cache."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    b = q.shape[0]
    q_rot, k_rot = apply_rotary_pos_emb(q[:, :, None], k[:, :, None], cos[:, None], sin[:, None])
    k_cache.index_copy_(2, position, k_rot)
    v_cache.index_copy_(2, position, v[:, :, None])
    fill.add_(1)
    seq_lens = (position[-1:] + 1).to(torch.int32).expand(b).contiguous()
    return decode_attention_op(q_rot[:, :, 0].contiguous(), k_cache, v_cache, seq_lens, None, None, SM_SCALE)


def fused(q, k, v, cos, sin, k_cache, v_cache, position, fill):
    return decode_attention_update_op(q, k, v, cos, sin, k_cache, v_cache, position, fill, SM_SCALE)


def make_sets(b: int, ctx: int) -> list[tuple]:
    cache_bytes = 2 * b * HKV * ctx * D * 2
    n = max(2, min(16, -(-2 * L2_BYTES // cache_bytes)))
    sets = []
    for _ in range(n):
        angles = torch.rand(b, D // 2, device="cuda") * 100
        sets.append((
            torch.randn(b, HQ, D, device="cuda").bfloat16(), torch.randn(b, HKV, D, device="cuda").bfloat16(),
            torch.randn(b, HKV, D, device="cuda").bfloat16(),
            torch.cat([angles.cos()] * 2, -1).bfloat16(), torch.cat([angles.sin()] * 2, -1).bfloat16(),
            torch.randn(b, HKV, ctx, D, device="cuda").bfloat16(),
            torch.randn(b, HKV, ctx, D, device="cuda").bfloat16(),
            torch.tensor([ctx - 1], device="cuda"), torch.zeros((), dtype=torch.int64, device="cuda"),
        ))
    return sets


def bench_shape(b: int, ctx: int, compiled_sequence) -> dict:
    sets = make_sets(b, ctx)
    # Both variants from the same state: the first set's caches copied, one step each.
    first = sets[0]
    mine = [t.clone() for t in first]
    theirs = [t.clone() for t in first]
    out_fused = fused(*mine)
    out_sequence = compiled_sequence(*theirs)
    checks = {
        "output": check(f"B={b} ctx={ctx} output", rel_err(out_fused, out_sequence), 1.5e-2),
        "k_cache": check(f"B={b} ctx={ctx} k_cache", rel_err(mine[5], theirs[5]), 1e-2),
        "v_cache": check(f"B={b} ctx={ctx} v_cache", rel_err(mine[6], theirs[6]), 0.0),
        "fill": check(f"B={b} ctx={ctx} fill", float(int(mine[8]) != int(theirs[8])), 0.0),
    }
    row = {"batch": b, "context": ctx, "input_sets": len(sets), "checks": checks,
           "sequence_graph_us": graph_us(compiled_sequence, sets), "fused_graph_us": graph_us(fused, sets)}
    row["speedup"] = row["sequence_graph_us"] / row["fused_graph_us"]
    print(f"B={b} ctx={ctx}: sequence {row['sequence_graph_us']:.2f} us, fused {row['fused_graph_us']:.2f} us, "
          f"x{row['speedup']:.2f}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/decode-step-h100.json")
    parser.add_argument("--inductor-pdl", action="store_true",
                        help="torch.compile's generated kernels use programmatic dependent launch too")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/decode_step.py needs a CUDA GPU")
    import triton
    from torch._inductor import config as inductor_config

    if args.inductor_pdl:
        inductor_config.triton.enable_pdl = True
    started = time.time()
    compiled_sequence = torch.compile(sequence, dynamic=False)
    rows = [bench_shape(b, ctx, compiled_sequence) for b, ctx in SHAPES]
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "date": time.strftime("%Y-%m-%d"), "heads": [HQ, HKV, D], "inductor_pdl": args.inductor_pdl,
              "timer": "CUDA-graph replay, median us per call", "seconds": time.time() - started, "rows": rows}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print("wrote", args.out)
    if CHECK_FAILURES:
        sys.exit(1)


if __name__ == "__main__":
    main()
