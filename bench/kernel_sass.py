"""Instructions per weight in the inner loop of the W4A16 kernels (and per cached element in the decode
attention kernel's), read from sm_90 SASS on the CPU.

    python bench/kernel_sass.py                      # the installed Triton
    PYTHONPATH=/path/to/triton-3.6 python bench/kernel_sass.py   # the H100 host's version

No GPU needed: Triton compiles for an sm_90 target and disassembles with the nvdisasm it ships.
The decode kernels are bound by issue and L1 rather than HBM (see kernels/gemm_w4a16.py), so the
count of SASS instructions per weight in the loop body, the global loads in it and any barriers
predict most of a change before it costs device time.
"""
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import triton  # noqa: E402

from bench import sm90_compile as sm90  # noqa: E402
from kernels import decode_attention as da  # noqa: E402
from kernels import gemm_w4a16 as w4  # noqa: E402
from kernels import w4a16_mma  # noqa: E402

INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_.]+)([^;]*);")
NVDISASM = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
POINTERS = {"x_ptr": "*bf16", "p_ptr": "*u8", "s_ptr": "*bf16", "z_ptr": "*bf16", "bias_ptr": "*bf16"}


def loop_body(sass: str) -> list[str]:
    """Opcodes of the longest loop (a backward branch to a label) in nvdisasm output."""
    lines = sass.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"\s*\.(L_x_\d+):", line))}
    best: list[str] = []
    for i, line in enumerate(lines):
        m = INSTRUCTION.search(line)
        target = re.search(r"\.(L_x_\d+)", m.group(4)) if m and m.group(3).startswith("BRA") else None
        if target and labels.get(target.group(1), i) < i:
            ops = [x.group(3) for x in map(INSTRUCTION.search, lines[labels[target.group(1)]:i + 1]) if x]
            best = max(best, ops, key=len)
    return best


compile_sm90 = sm90.compile_sm90_aligned


def report(name: str, kernel, weights_per_thread: float, unit: str = "weight") -> None:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        sass = subprocess.run([NVDISASM, "-c", f.name], capture_output=True, text=True, check=True).stdout
    ops = loop_body(sass)
    count = Counter(op.split(".")[0] for op in ops)
    top = ", ".join(f"{op} {n}" for op, n in count.most_common(6))
    print(f"{name}: {len(ops)} instructions a loop iteration, {len(ops) / weights_per_thread:.2f} per {unit}; "
          f"LDG {count.get('LDG', 0)}, BAR {count.get('BAR', 0)}; {top}")


def main() -> None:
    print(f"Triton {triton.__version__}, sm_90")
    gemv_sig = {**POINTERS, "out_ptr": "*bf16", "N": "i32", "K": "i32", "stride_pn": "i32", "stride_sn": "i32",
                "GROUP": "constexpr", "HAS_BIAS": "constexpr", "X_BF16": "constexpr", "PAIRED": "constexpr",
                "GATED": "constexpr", "BLOCK_N": "constexpr", "QUADS": "constexpr", "EARLY_DEPENDENTS": "constexpr",
                "PDL": "constexpr"}
    for cfg in w4._CONFIGS_GEMV:
        bn, quads, warps = cfg.kwargs["BLOCK_N"], cfg.kwargs["QUADS"], cfg.num_warps
        constexprs = {"GROUP": 128, "HAS_BIAS": False, "X_BF16": True, "PAIRED": True, "GATED": False, "BLOCK_N": bn,
                      "QUADS": quads, "EARLY_DEPENDENTS": False, "PDL": True}
        k = compile_sm90(w4._w4a16_gemv_kernel.fn, gemv_sig, constexprs, warps, cfg.num_stages)
        # Four row sets of BLOCK_N rows, QUADS x 32 codes each per step, two steps per loop
        # iteration, over warps x 32 threads.
        report(f"gemv BLOCK_N={bn} QUADS={quads} warps={warps}", k, 2 * 4 * bn * quads * 32 / (warps * 32))
    tc_sig = {**POINTERS, "out_ptr": "*bf16", "part_ptr": "*fp32", "lock_ptr": "*i32", "M": "i32", "N": "i32",
              "K": "i32", "stride_xm": "i32", "stride_pn": "i32", "stride_sn": "i32", "stride_sg": "constexpr",
              "stride_om": "i32", "GROUP": "constexpr", "HAS_BIAS": "constexpr", "X_FP32": "constexpr",
              "GATED": "constexpr", "BLOCK_M": "constexpr",
              "BLOCK_N": "constexpr", "SPLIT_K": "constexpr", "GROUPS_PER_STEP": "constexpr",
              "REG_PREFETCH": "constexpr", "SERIAL": "constexpr", "PDL": "constexpr"}
    for cfg in w4._CONFIGS_TC:
        kw = cfg.kwargs
        # Row-major scales: Triton specializes stride_sg = 1 as a constant.
        k = compile_sm90(w4._w4a16_tc_kernel.fn, tc_sig, {"GROUP": 128, "HAS_BIAS": False, "X_FP32": False,
                                                          "GATED": False, "stride_sg": 1, "BLOCK_M": 16, "PDL": True,
                                                          "SERIAL": True, **kw},
                         cfg.num_warps, cfg.num_stages)
        report(f"tc M=16 {kw} warps={cfg.num_warps}", k,
               kw["BLOCK_N"] * kw["GROUPS_PER_STEP"] * 128 / (cfg.num_warps * 32))
    for tiles in (1, 2):
        for cfg in w4a16_mma._CONFIGS:
            kw = cfg.kwargs
            k = sm90.compile_mma_sm90(cfg, tiles)
            # A chunk a loop iteration: per row block, 32 codes of each of a lane's two rows.
            report(f"mma M<={8 * tiles} {kw} warps={cfg.num_warps}", k, kw["ROW_BLOCKS"] * kw["STEP_CHUNKS"] * 64)
    attn_sig = {"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "lens_ptr": "*i32", "ks_ptr": "*fp32",
                "vs_ptr": "*fp32", "out_ptr": "*bf16", "m_ptr": "*fp32", "l_ptr": "*fp32", "acc_ptr": "*fp32",
                "qk_scale": "fp32", **dict.fromkeys(("S_MAX", "CHUNK", "B_BUCKET", "NUM_KV_HEADS", "stride_qb",
                                                      "stride_qh", "stride_kb", "stride_kh", "stride_ks", "stride_vb",
                                                      "stride_vh", "stride_vs", "stride_ob", "stride_oh"), "i32"),
                **dict.fromkeys(("GROUP", "BLOCK_G", "HEAD_DIM", "KV_FP8", "Q_FP32", "DIRECT", "BLOCK_N", "PDL"),
                                "constexpr")}
    for kv in ("bf16", "fp8e4nv"):
        cfg = da._CONFIGS[0]
        bn = cfg.kwargs["BLOCK_N"]
        k = compile_sm90(da._decode_attention_kernel.fn, {**attn_sig, "k_ptr": f"*{kv}", "v_ptr": f"*{kv}"},
                         {"GROUP": 4, "BLOCK_G": 16, "HEAD_DIM": 128, "KV_FP8": kv != "bf16", "Q_FP32": False,
                          "DIRECT": False, "BLOCK_N": bn, "PDL": True}, cfg.num_warps, cfg.num_stages)
        # A BLOCK_N x 128 tile each of K and V a loop iteration, over warps x 32 threads.
        report(f"decode attention q bf16, {kv} cache, BLOCK_N={bn} warps={cfg.num_warps}", k,
               2 * bn * 128 / (cfg.num_warps * 32), unit="cached element")


if __name__ == "__main__":
    main()
