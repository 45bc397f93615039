"""What a per-output-feature mixed layer costs against a uniform layer of the same shape.

    python bench/mixed_layer.py --out bench/results/mixed-layer-cpu.json            # CPU (reference paths)
    python bench/mixed_layer.py --device cuda --out bench/results/mixed-layer-h100.json

A mixed layer (runtime.modules.MixedLinear) runs one GEMM per format over that format's rows
and scatters each result into its columns of one output. Against uniform layers of the same
shape in each part's format, timed in the same run, it reports:

* ``mixed``: the mixed layer's time;
* ``parts``: the sum of its parts run alone (the GEMMs the split cannot avoid);
* ``overhead``: mixed - parts (the scatter and the extra launches), and its share of ``mixed``;
* ``vs_uniform_narrow`` / ``vs_interpolated``: mixed over the uniform narrow layer, and over the
  row-weighted mix of the two uniform layers (what "the same bits, no split" would cost if time
  followed bytes).

On the CPU every format runs its pure-torch reference (int4 and int8 weights are dequantized per
call), so the numbers say what the split costs on the reference path, not on a GPU kernel.
Times are medians over interleaved rounds of the thread's CPU time (CPU, one torch thread: a
shared machine's descheduling is not the layer's cost) or of ``triton.testing.do_bench`` (CUDA).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.timing import interleaved_us, write_env_and_rows  # noqa: E402
from runtime.modules import MixedLinear, QuantLinear  # noqa: E402
from runtime.plans import OpPlan  # noqa: E402
from runtime.recipes import QuantArgs  # noqa: E402

FORMATS = {
    "int4_g128": (QuantArgs(format="int4", strategy="group", group_size=128), None),
    "int8": (QuantArgs(format="int8", strategy="channel"), None),
    "bf16": (QuantArgs(format="bf16"), None),
    "fp8_w8a8": (QuantArgs(format="fp8_e4m3", strategy="channel"),
                 QuantArgs(format="fp8_e4m3", strategy="token", dynamic=True)),
}
# (N, K): the reference model's shapes (hidden 256, MLP 768) and a 7B model's attention projection.
SHAPES = [(768, 256), (256, 768), (4096, 4096)]
TOKENS = [1, 16, 256]
# Share of rows in the wide part: MixLLM reports ~10-20% of output features kept at 8 bits.
WIDE_SHARES = [0.05, 0.1, 0.25]
MIXES = {"cpu": [("int4_g128", "int8"), ("int4_g128", "bf16")],
         "cuda": [("int4_g128", "int8"), ("int4_g128", "bf16"), ("int4_g128", "fp8_w8a8")]}


def _plan(name: str, n: int, k: int, fmt: str, rows: list[int] | None = None, kernel: str = "") -> OpPlan:
    w, a = FORMATS[fmt]
    return OpPlan(name=name, op_kind="linear", weight=w.format, activation=a.format if a else "bf16",
                  weight_args=None if w.is_wide else w, activation_args=a, kernel=kernel or fmt, rule="bench",
                  reason="bench", in_features=k, out_features=len(rows) if rows is not None else n, channels=rows)


def _mixed(weight: torch.Tensor, narrow: str, wide: str, share: float, gen: torch.Generator) -> MixedLinear:
    n, k = weight.shape
    wide_rows = torch.randperm(n, generator=gen)[: max(1, round(share * n))].sort().values.tolist()
    narrow_rows = sorted(set(range(n)) - set(wide_rows))
    parts = [_plan("op", n, k, narrow, narrow_rows), _plan("op", n, k, wide, wide_rows)]
    op = OpPlan(name="op", op_kind="linear", weight=parts[0].weight, kernel="mixed", rule="bench", reason="bench",
                in_features=k, out_features=n, parts=parts)
    return MixedLinear.from_float(weight, None, op)


def run(device: str, shapes, tokens, shares) -> list[dict]:
    time_us = interleaved_us(device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n, k in shapes:
        weight = torch.randn(n, k, generator=gen) / k**0.5
        for m in tokens:
            x = torch.randn(m, k, generator=gen).to(device, dtype)
            for narrow, wide in MIXES[device]:
                uniform = [QuantLinear.from_float(weight, None, _plan("op", n, k, f)).to(device) for f in (narrow, wide)]
                for share in shares:
                    layer = _mixed(weight, narrow, wide, share, gen).to(device)
                    fns = [lambda q=q: q(x) for q in uniform] + [lambda: layer(x)] + \
                          [lambda p=p: p(x) for p in layer.parts]
                    with torch.no_grad():
                        t_narrow, t_wide, t_mixed, *t_parts = time_us(fns)
                    t_parts = sum(t_parts)
                    n_wide = layer.parts[1].out_features
                    interp = (t_narrow * (n - n_wide) + t_wide * n_wide) / n
                    rows.append({
                        "m": m, "n": n, "k": k, "narrow": narrow, "wide": wide, "wide_share": n_wide / n,
                        "uniform_narrow_us": t_narrow, "uniform_wide_us": t_wide,
                        "mixed_us": t_mixed, "parts_us": t_parts, "overhead_us": t_mixed - t_parts,
                        "overhead_share": (t_mixed - t_parts) / t_mixed,
                        "vs_uniform_narrow": t_mixed / t_narrow, "vs_interpolated": t_mixed / interp,
                    })
                    r = rows[-1]
                    print(f"M={m:5d} N={n:6d} K={k:6d} {narrow}+{wide} {share:4.0%}: mixed {t_mixed:9.1f} us, "
                          f"parts {t_parts:9.1f}, uniform {narrow} {t_narrow:9.1f} / {wide} {t_wide:9.1f}; "
                          f"x{r['vs_uniform_narrow']:.2f} of uniform {narrow}, x{r['vs_interpolated']:.2f} of "
                          f"interpolated, overhead {r['overhead_share']:.0%}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: time by thread CPU time)")
    ap.add_argument("--quick", action="store_true", help="the reference model's shapes only")
    ap.add_argument("--shapes", nargs="+", default=None, help="N x K shapes to run instead, e.g. 4096x4096")
    ap.add_argument("--tokens", nargs="+", type=int, default=TOKENS, help="token counts M")
    ap.add_argument("--out", default=None, help="JSON file for the results")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = SHAPES[:2] if args.quick else SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in shape.lower().split("x")) for shape in args.shapes]
    start = time.time()
    rows = run(args.device, shapes, args.tokens, WIDE_SHARES)
    write_env_and_rows(
        args.out, args.device, start, rows,
        clock="thread CPU time" if args.device == "cpu" and torch.get_num_threads() == 1 else "wall",
        note="CPU: every format runs its pure-torch reference path" if args.device == "cpu" else
             "CUDA: int4 parts run kernels.gemm_w4a16 (Triton); int8 weight-only dequantizes per call")


if __name__ == "__main__":
    main()
