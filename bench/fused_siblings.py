"""What running sibling ops as one GEMM saves: q/k/v and gate/up, alone against fused, per format.

    python bench/fused_siblings.py --out bench/results/fused-siblings-cpu.json     # CPU (reference paths)
    python bench/fused_siblings.py --device cuda --out bench/results/fused-siblings-h100.json

Each group is built twice from the same random weights as QuantLinear ops: once left alone, once
fused (runtime.modules.fused_linear.FusedSiblings), and both are called the way a decoder layer
calls them, each member in turn on one input. On the CPU the fused members' outputs are checked
equal to the lone ones'; on CUDA a wider GEMM may take another tile config or cuBLAS algorithm, so
it sums in another order, and the outputs are checked within a relative error of 1e-2. Shapes are
Llama-3-8B's (attention: 4096 -> 4096 + 1024 + 1024; MLP: 4096 -> 14336 + 14336) and, with
--small, the reference model's (256 -> 256 + 128 + 128; 256 -> 768 + 768).

CPU: every format runs its pure-torch reference; times are medians over interleaved rounds of the
thread's CPU time (bench.timing.interleaved_us). CUDA: device time replayed from a CUDA graph over
enough copies of the group that their weights exceed twice the L2 (bench.timing.graph_us).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.timing import CHECK_FAILURES, check, graph_us, interleaved_us, rel_err, write_env_and_rows  # noqa: E402
from runtime.modules import QuantLinear  # noqa: E402
from runtime.modules.fused_linear import FusedSiblings  # noqa: E402
from runtime.plans import OpPlan  # noqa: E402
from runtime.recipes import QuantArgs  # noqa: E402

FORMATS = {
    "bf16": (QuantArgs(format="bf16"), None),
    "fp8_w8a8": (QuantArgs(format="fp8_e4m3", strategy="channel"),
                 QuantArgs(format="fp8_e4m3", strategy="token", dynamic=True)),
    "int8_w8a8": (QuantArgs(format="int8", strategy="channel"),
                  QuantArgs(format="int8", strategy="token", dynamic=True)),
    "int4_g128": (QuantArgs(format="int4", strategy="group", group_size=128), None),
}
GROUPS = {
    "llama8b": {"qkv": (4096, [4096, 1024, 1024]), "gate_up": (4096, [14336, 14336])},
    "small": {"qkv": (256, [256, 128, 128]), "gate_up": (256, [768, 768])},
}
TOKENS = [1, 16]
L2_BYTES = 50 * 2**20
# The lone and fused GEMMs differ only in summation order; outputs are bf16 (8-bit mantissa).
CUDA_REL_ERR = 1e-2


def _op(fmt: str, n: int, k: int) -> OpPlan:
    w, a = FORMATS[fmt]
    return OpPlan(name="op", op_kind="linear", weight=w.format, activation=a.format if a else "bf16",
                  weight_args=None if w.is_wide else w, activation_args=a, kernel=fmt, rule="bench",
                  reason="bench", in_features=k, out_features=n)


def _group(fmt: str, weights: list[torch.Tensor], device: str) -> list[QuantLinear]:
    k = weights[0].shape[1]
    return [QuantLinear.from_float(w, None, _op(fmt, w.shape[0], k)).to(device).eval() for w in weights]


def _call_all(members: list[QuantLinear], x: torch.Tensor) -> list[torch.Tensor]:
    return [m(x) for m in members]


def _stored_bytes(members: list[QuantLinear]) -> int:
    return sum(b.numel() * b.element_size() for m in members for b in m.buffers())


def run(device: str, groups: dict, tokens: list[int]) -> list[dict]:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    cpu_time_us = interleaved_us("cpu")
    rows = []
    for group, (k, sizes) in groups.items():
        weights = [torch.randn(n, k, generator=gen) / k**0.5 for n in sizes]
        for fmt in FORMATS:
            alone = _group(fmt, weights, device)
            fused = _group(fmt, weights, device)
            FusedSiblings(fused)
            # Copies whose weights together exceed twice the L2, cycled so that no call finds its weights there.
            copies = 1 if device != "cuda" else max(1, -(-2 * L2_BYTES // _stored_bytes(alone)))
            alone_sets = [alone] + [_group(fmt, weights, device) for _ in range(copies - 1)]
            fused_sets = [fused] + [FusedSiblings(g).members for g in
                                    (_group(fmt, weights, device) for _ in range(copies - 1))]
            for m in tokens:
                x = torch.randn(m, k, generator=gen).to(device, dtype)
                with torch.no_grad():
                    pairs = list(zip(_call_all(alone, x), _call_all(fused, x)))
                    equal = all(torch.equal(a, b) for a, b in pairs)
                    err = max(rel_err(b, a) for a, b in pairs)
                    check(f"{group} {fmt} M={m}", err, 0.0 if device == "cpu" else CUDA_REL_ERR)
                    if device == "cuda":
                        t_alone = graph_us(_call_all, [(s, x) for s in alone_sets])
                        t_fused = graph_us(_call_all, [(s, x) for s in fused_sets])
                    else:
                        t_alone, t_fused = cpu_time_us([lambda: _call_all(alone, x), lambda: _call_all(fused, x)])
                rows.append({"group": group, "format": fmt, "m": m, "k": k, "n": sizes, "alone_us": t_alone,
                             "fused_us": t_fused, "speedup": t_alone / t_fused, "outputs_equal": equal,
                             "max_rel_err": err})
                print(f"{group:8s} {fmt:10s} M={m:3d} K={k} N={sizes}: alone {t_alone:9.1f} us, fused "
                      f"{t_fused:9.1f} us, x{t_alone / t_fused:.2f}, " + ("equal" if equal else f"rel err {err:.1e}"),
                      flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: time by thread CPU time)")
    ap.add_argument("--small", action="store_true", help="the reference model's shapes instead of Llama-3-8B's")
    ap.add_argument("--tokens", nargs="+", type=int, default=TOKENS, help="token counts M")
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    rows = run(args.device, GROUPS["small" if args.small else "llama8b"], args.tokens)
    write_env_and_rows(
        args.out, args.device, start, rows,
        clock="CUDA graph device time" if args.device == "cuda" else
              ("thread CPU time" if torch.get_num_threads() == 1 else "wall"),
        note="CPU: every format runs its pure-torch reference path" if args.device == "cpu" else
             "CUDA: the runtime's kernels (Triton W8A8 / W4A16, cuBLAS bf16)")
    if CHECK_FAILURES:
        sys.exit("fused outputs stray from the lone ones: " + "; ".join(CHECK_FAILURES))


if __name__ == "__main__":
    main()
