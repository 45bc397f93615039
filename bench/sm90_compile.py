"""Compiles every Triton kernel the GPU would run, in every autotune config, for sm_90: on the CPU.

    python bench/sm90_compile.py            # the installed Triton
    PYTHONPATH=/path/to/triton-3.6 python bench/sm90_compile.py   # the H100 host's version

CI has no GPU, and its tests run the kernels under Triton's interpreter, which never compiles them:
inline assembly, the bf16 paths and most autotune configs are never built there. This script calls
the kernels' launchers with small CPU tensors, records each launch instead of running it, and
compiles the launched kernel for an sm_90 target in every config its autotuner holds (Triton
ships ptxas; no driver is needed). tests/kernels/test_sm90_compile.py runs it.

Run it without TRITON_INTERPRET: under the interpreter the kernels are not compiled at all and
their autotuners hold the interpreter's single config.
"""
import argparse
import json
import itertools
import os
import re
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.autotuner import Autotuner, Heuristics  # noqa: E402
from triton.runtime.jit import JITFunction, mangle_type  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)


def compile_sm90(fn, signature: dict, constexprs: dict, warps: int, stages: int, attrs: dict | None = None,
                 maxnreg: int | None = None):
    """``fn`` (a JITFunction) compiled for sm_90 with this signature, constexprs, warps, stages and
    register cap (None: ptxas chooses)."""
    options = {"num_warps": warps, "num_stages": stages}
    if maxnreg is not None:
        options["maxnreg"] = maxnreg
    return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs or {}),
                          target=TARGET, options=options)


class Recorder:
    """Replaces launching: every ``kernel[grid](...)`` is recorded (kernel, bound arguments) and not run."""

    def __init__(self):
        self.launches: list[tuple[object, dict]] = []

    def __enter__(self):
        recorder = self
        self._saved = JITFunction.run, Autotuner.run, Heuristics.run

        def record(kernel, *args, grid=None, warmup=False, **kwargs):
            fn = _jit(kernel)
            named = dict(zip(fn.arg_names, args))
            named.update(kwargs)
            recorder.launches.append((kernel, named))

        JITFunction.run = Autotuner.run = Heuristics.run = record
        return self

    def __exit__(self, *exc):
        JITFunction.run, Autotuner.run, Heuristics.run = self._saved


def _jit(kernel) -> JITFunction:
    while not isinstance(kernel, JITFunction):
        kernel = kernel.fn
    return kernel


def _heuristics(kernel) -> list[dict]:
    out = []
    while not isinstance(kernel, JITFunction):
        if isinstance(kernel, Heuristics):
            out.append(kernel.values)
        kernel = kernel.fn
    return out


def variants(kernel, named: dict):
    """(signature, constexprs, warps, stages, maxnreg) for each config the launch's autotuner holds (one without)."""
    fn = _jit(kernel)
    configs = kernel.configs if isinstance(kernel, Autotuner) else [None]
    if isinstance(kernel, Autotuner) and kernel.early_config_prune is not None:
        configs = kernel.early_config_prune(configs, named)  # configs a launch like this one may take
    for config in configs:
        args = dict(named)
        warps, stages, maxnreg = args.pop("num_warps", 4), args.pop("num_stages", 3), args.pop("maxnreg", None)
        if config is not None:
            args.update(config.kwargs)  # the meta-parameters; launch options are the config's attributes
            warps, stages, maxnreg = config.num_warps, config.num_stages, config.maxnreg
        for values in _heuristics(kernel):
            for name, rule in values.items():
                args[name] = rule(args)
        signature, constexprs = {}, {}
        for param in fn.params:
            value = args[param.name] if param.name in args else param.default
            if param.is_constexpr:
                signature[param.name] = "constexpr"
                constexprs[param.name] = value
            else:
                signature[param.name] = mangle_type(value)
        if "PDL" in constexprs:
            constexprs["PDL"] = True  # as an sm_90 GPU launches it (kernels._launch.pdl_args); CPU tensors say False
        yield signature, constexprs, warps, stages, maxnreg


def launches() -> list[tuple[object, dict]]:
    """Records the launches of every kernel path on small CPU tensors: each format, dtype and path."""
    from kernels import decode_attention as da
    from kernels._w8a8 import w8a8_gemm_triton
    from kernels.act_quant import act_quant_triton
    from kernels.gemm_w4a16 import dequantize_w4_triton, gemm_w4a16_triton, quantize_w4_reference

    g = torch.Generator().manual_seed(0)
    rec = Recorder()
    with rec:
        for m in (1, 16, 4096):
            for fmt in ("fp8_e4m3", "int8"):
                x = torch.randn(m, 256, generator=g).bfloat16()
                act_quant_triton(x, fmt)
                act_quant_triton(x, fmt, torch.tensor([0.05]))
        for qdtype in (torch.float8_e4m3fn, torch.int8):
            wq = torch.zeros(512, 256, dtype=qdtype)
            ws = torch.rand(512, 1, generator=g) + 0.5
            for m, path in ((1, "gemv"), (4, "swap"), (256, "tiled"), (256, "persistent")):
                xq = torch.zeros(m, 256, dtype=qdtype)
                xs = torch.rand(m, 1, generator=g) + 0.5
                for bias in (None, torch.randn(512, generator=g)):
                    w8a8_gemm_triton(xq, xs, wq, ws, bias, torch.bfloat16, qdtype, path=path)
        packed, scales, zeros = quantize_w4_reference(torch.randn(512, 256, generator=g), 128, False)
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            s, z = scales.to(dtype), zeros.to(dtype)
            # 16 tokens: the tensor-core kernel's serial split-K; 64: its atomic split-K.
            for m, path in ((1, "gemv"), (16, "tc"), (64, "tc")):
                gemm_w4a16_triton(torch.randn(m, 256, generator=g).to(dtype), packed, s, z, 128, path=path)
            # A gated MLP's fused gate and up: silu(gate) * up as the GEMV and tensor-core kernels store it.
            for m, path in ((1, "gemv"), (16, "tc")):
                gemm_w4a16_triton(torch.randn(m, 256, generator=g).to(dtype), packed, s, z, 128, path=path, gated=True)
            if dtype != torch.float32:  # the mma kernel: up to 8 and up to 16 tokens, plain and gated
                for m, gated in ((1, False), (16, False), (3, True)):
                    gemm_w4a16_triton(torch.randn(m, 256, generator=g).to(dtype), packed, s, z, 128, path="mma",
                                      gated=gated)
                # fp32 scales and zeros with 16-bit activations (a reference-quantized fp32 weight)
                gemm_w4a16_triton(torch.randn(2, 256, generator=g).to(dtype), packed, scales, zeros, 128, path="mma")
            dequantize_w4_triton(packed, s, z, 128, dtype)
        for kv in (torch.bfloat16, torch.float16, torch.float8_e4m3fn):
            for q_dtype in (torch.float32, torch.float16 if kv == torch.float16 else torch.bfloat16):
                k = torch.randn(2, 2, 256, 128, generator=g).to(kv)
                scale = torch.ones(2) if kv == torch.float8_e4m3fn else None
                for splits in (1, 2):
                    da.decode_attention_triton(torch.randn(2, 8, 128, generator=g).to(q_dtype), k, k,
                                               torch.tensor([256, 100], dtype=torch.int32), k_scale=scale,
                                               v_scale=scale, num_splits=splits)
                    if kv != torch.float8_e4m3fn:  # the step's RoPE and cache write, into 16-bit caches
                        kv_new = torch.randn(2, 2, 128, generator=g).to(q_dtype)
                        rope = torch.randn(2, 128, generator=g).to(q_dtype)
                        da.decode_attention_update_triton(torch.randn(2, 8, 128, generator=g).to(q_dtype), kv_new,
                                                          kv_new, rope, rope, k.clone(), k.clone(),
                                                          torch.tensor([255, 99]),
                                                          fill=torch.zeros((), dtype=torch.int64), num_splits=splits)
    return rec.launches


def plan(quick: bool) -> list[tuple[str, JITFunction, dict, dict, int, int, int | None]]:
    """(label, fn, signature, constexprs, warps, stages, maxnreg) to compile, without repeats. ``quick``: every config
    of each kernel's first launch, and the first config of its other launches (dtypes, bias, paths)."""
    seen, out, kernels_seen = set(), [], set()
    for kernel, named in launches():
        fn = _jit(kernel)
        first_launch = fn.__name__ not in kernels_seen
        kernels_seen.add(fn.__name__)
        for i, (signature, constexprs, warps, stages, maxnreg) in enumerate(variants(kernel, named)):
            if quick and not first_launch and i > 0:
                break
            key = (fn.__name__, tuple(signature.items()), repr(sorted(constexprs.items())), warps, stages, maxnreg)
            if key not in seen:
                seen.add(key)
                label = f"{fn.__name__} {constexprs} warps={warps} stages={stages}"
                out.append((label + (f" maxnreg={maxnreg}" if maxnreg else ""), fn, signature, constexprs,
                            warps, stages, maxnreg))
    return out


def gemv_trigger_order() -> dict:
    """For each one-token GEMV compiled for sm_90 (first config), with its PDL trigger late (the
    default) and early: the PTX line numbers of ``griddepcontrol.wait`` and ``.launch_dependents``,
    and of the last weight load (the loops' loads evict first) and the last branch (a loop's end)."""
    order = {}
    for _, fn, signature, constexprs, warps, stages, maxnreg in plan(quick=True):
        name = fn.__name__
        if name not in ("_w4a16_gemv_kernel", "_w8a8_gemv_kernel") or name in order:
            continue
        order[name] = {}
        for early in (False, True):
            ptx = compile_sm90(fn, signature, {**constexprs, "EARLY_DEPENDENTS": early}, warps, stages,
                               maxnreg=maxnreg).asm["ptx"].splitlines()
            lines = {key: [i for i, line in enumerate(ptx) if re.search(pattern, line)] for key, pattern in (
                ("wait", r"griddepcontrol\.wait"), ("launch", r"griddepcontrol\.launch_dependents"),
                ("weight_loads", r"ld\.global.*evict_first"), ("branches", r"\bbra(\.uni)?\b"))}
            order[name]["early" if early else "late"] = {
                "wait": lines["wait"], "launch": lines["launch"],
                "last_weight_load": max(lines["weight_loads"]), "last_branch": max(lines["branches"])}
    return order


def compile_sm90_aligned(fn, signature: dict, constexprs: dict, warps: int, stages: int):
    """:func:`compile_sm90` as Triton specializes a launch on aligned tensors: 16-divisible pointers
    and ints (M aside)."""
    aligned = [i for i, (name, kind) in enumerate(signature.items())
               if (kind.startswith("*") or kind.startswith("i")) and name != "M"]
    return compile_sm90(fn, signature, constexprs, warps, stages,
                        attrs={(i,): [["tt.divisibility", 16]] for i in aligned})


def compile_mma_sm90(config, tiles: int, int_zeros: bool = False):
    """The mma.sync W4A16 kernel (kernels/w4a16_mma.py) in ``config`` for 1 or 2 tiles of 8 tokens:
    bf16 activations, row-major bf16 scales, no bias, aligned tensors (``int_zeros``: INT_ZEROS)."""
    from kernels import w4a16_mma

    fn = w4a16_mma._w4a16_mma_kernel.fn
    signature = {"x_ptr": "*bf16", "p_ptr": "*u8", "s_ptr": "*bf16", "z_ptr": "*bf16", "bias_ptr": "*bf16",
                 "out_ptr": "*bf16", **dict.fromkeys(("M", "N", "K", "stride_xm", "stride_pn", "stride_sn"), "i32"),
                 "stride_sg": "constexpr", "stride_om": "i32"}
    signature.update({p.name: "constexpr" for p in fn.params if p.name not in signature})
    constexprs = {"GROUP": 128, "HAS_BIAS": False, "X_BF16": True, "SCALE_FP32": False, "GATED": False,
                  "stride_sg": 1, "TILES": tiles, "INT_ZEROS": int_zeros, "PDL": True, **config.kwargs}
    return compile_sm90_aligned(fn, signature, constexprs, config.num_warps, config.num_stages)


MMA_LAYOUT = re.compile(r"#ttg\.blocked<\{sizePerThread = \[1, 1, 1\], threadsPerWarp = \[1, 1, 32\], "
                        r"warpsPerCTA = \[1, (\d+), 1\], order = \[2, 1, 0\]\}>")


def mma_operand_layouts() -> list[dict]:
    """For each config of the mma.sync W4A16 kernel (kernels/w4a16_mma.py), 8 and 16 tokens, compiled
    for sm_90 as a launch on aligned tensors: the layouts of its MMAs' operands in the TTGIR and the
    layout conversions and shared-memory copies inside its main loop. Each MMA reads its fragment
    from the lane that holds it, so every operand must be one element a lane, lane l of warp w
    holding element (., w, l) (``ok``), with nothing moved between lanes in the loop."""
    from kernels import w4a16_mma

    out = []
    for tiles, int_zeros in itertools.product((1, 2), (False, True)):
        for config in w4a16_mma._CONFIGS:
            ttgir = compile_mma_sm90(config, tiles, int_zeros).asm["ttgir"]
            layouts = dict(re.findall(r"^(#\w+) = (#ttg\.\w+<.*>)$", ttgir, re.M))
            used = set()
            for line in ttgir.splitlines():
                if "mma.sync" in line:
                    used |= set(re.findall(r"tensor<[0-9x]+x(?:i32|f32), (#\w+)>", line))
            start = ttgir.index("scf.for")
            depth, end = 0, len(ttgir)
            for m in re.finditer(r"[{}]", ttgir[start:]):
                depth += 1 if m.group() == "{" else -1
                if depth == 0:
                    end = start + m.end()
                    break
            loop = ttgir[start:end]
            warps = {int(m.group(1)) if (m := MMA_LAYOUT.fullmatch(layouts[name])) else None for name in used}
            out.append({"tiles": tiles, "INT_ZEROS": int_zeros, **config.kwargs,
                        "operand_layouts": sorted(layouts[n] for n in used),
                        "ok": bool(used) and warps == {config.kwargs["WARPS"]},
                        "loop_conversions": loop.count("ttg.convert_layout") + loop.count("ttg.local_alloc")})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="every config of each kernel once, and every launch variant in one config (CI)")
    ap.add_argument("--shard", default="0/1", help="i/n: compile every n-th variant from the i-th (parallel runs)")
    ap.add_argument("-k", dest="only", default="", help="only the kernels whose name contains this")
    ap.add_argument("--list", action="store_true", help="print each compiled kernel and config")
    ap.add_argument("--gemv-trigger", action="store_true",
                    help="print where the GEMVs' PDL wait and trigger sit in their PTX (JSON) and exit")
    ap.add_argument("--mma-layout", action="store_true",
                    help="print the layouts of the mma W4A16 kernel's MMA operands in every config (JSON) and exit")
    args = ap.parse_args()
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("unset TRITON_INTERPRET: the interpreter compiles nothing")
    if args.gemv_trigger:
        print(json.dumps(gemv_trigger_order()))
        return
    if args.mma_layout:
        print(json.dumps(mma_operand_layouts()))
        return
    index, count = (int(v) for v in args.shard.split("/"))
    start = time.perf_counter()
    todo = [t for t in plan(args.quick) if args.only in t[1].__name__][index::count]
    failures = []
    for label, fn, signature, constexprs, warps, stages, maxnreg in todo:
        try:
            if not compile_sm90(fn, signature, constexprs, warps, stages, maxnreg=maxnreg).asm["cubin"]:
                failures.append(f"{label}: empty cubin")
        except Exception as exc:  # every failure is listed, not just the first
            failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:500]}")
        if args.list:
            print(label, flush=True)
    print(f"Triton {triton.__version__}: {len(todo)} kernel variants compiled for sm_90 in "
          f"{time.perf_counter() - start:.0f} s, {len(failures)} failed", flush=True)
    for failure in failures:
        print("FAILED", failure)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
