"""kernels._launch.launch: a tuned, compiled kernel launched directly against Triton's own launch.

The direct path is sound only while its key separates every call Triton would compile apart; the
CPU test checks that against Triton's specializer. On the GPU each launcher runs twice on fresh
inputs: the second call must not go through Triton, and must give Triton's result.
"""
import inspect
import itertools

import pytest
import torch
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend
from triton.runtime.jit import JITFunction

import kernels._w8a8 as w8a8_mod
import kernels.act_quant as act_quant_mod
import kernels.decode_attention as attention_mod
import kernels.gemm_w4a16 as w4a16_mod
from kernels import _launch
from kernels._launch import only_config, specialization
from kernels.act_quant import act_quant
from kernels.gemm_fp8 import gemm_fp8, gemm_fp8_reference
from kernels.gemm_w4a16 import quantize_w4_reference
from tests.kernels.test_kernels_triton import rel_err

INTS = [0, 1, 2, 15, 16, 17, 32, -1, -16, -17, (1 << 31) - 16, (1 << 31) - 1, 1 << 31, -(1 << 31), -(1 << 31) - 16,
        1 << 40, (1 << 40) + 1, (1 << 63) - 16, 1 << 63, (1 << 64) - 16]


def _tensors():
    buf = torch.zeros(512, dtype=torch.uint8)
    views = []
    for dtype, size in ((torch.int8, 1), (torch.float16, 2), (torch.float32, 4)):
        typed = buf.view(dtype)
        views += [typed[offset // size:] for offset in (0, size * 1, 8, 16, 48) if offset % size == 0]
    return views


def test_specialization_separates_what_triton_specializes():
    backend = CUDABackend(GPUTarget("cuda", 90, 32))
    values = INTS + [True, False, 0.5, 1.0, None] + _tensors()
    for a, b in itertools.product(values, repeat=2):
        if specialization(a) == specialization(b):
            assert native_specialize_impl(backend, a, False, True, True) == \
                native_specialize_impl(backend, b, False, True, True), (a, b)
    # And it is no coarser in the cases the kernels meet: a misaligned view, an M of 1.
    t = _tensors()[0]
    assert specialization(t) != specialization(t[1:])
    assert specialization(1) != specialization(2) != specialization(16)


def test_triton_calls_its_launcher_as_launch_does():
    # launch() calls a compiled kernel's launcher with the arguments JITFunction.run passes it after
    # a cache hit. CI has no GPU to run the direct path on: a Triton that changes them fails here.
    source = " ".join(inspect.getsource(JITFunction.run).split())
    assert ("kernel.run(grid_0, grid_1, grid_2, stream, kernel.function, kernel.packed_metadata, launch_metadata, "
            "knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook, *bound_args.values())") in source


def test_a_tensor_keyword_takes_triton_path():
    # Keyword arguments are keyed by value: a tensor among them would key each call apart.
    assert _launch.launch_key(w8a8_mod._w8a8_gemm_kernel, (), {"BLOCK_M": torch.zeros(1)}) is None


# --- on the GPU ------------------------------------------------------------------------------

KERNELS = [w8a8_mod._w8a8_gemv_kernel, w8a8_mod._w8a8_swap_kernel, w8a8_mod._w8a8_swap_direct_kernel,
           w8a8_mod._w8a8_persistent_kernel, w8a8_mod._w8a8_gemm_kernel, act_quant_mod._act_quant_kernel,
           w4a16_mod._w4a16_gemv_kernel, w4a16_mod._w4a16_tc_kernel, w4a16_mod._dequant_w4_kernel,
           attention_mod._decode_attention_kernel]


@pytest.fixture
def triton_launches(monkeypatch):
    """The kernels each call launched through Triton's own path (``kernel.run``)."""
    launched = []
    for kernel in KERNELS:
        def run(*args, _kernel=kernel, _run=kernel.run, **kwargs):
            launched.append(_kernel)
            return _run(*args, **kwargs)
        monkeypatch.setattr(kernel, "run", run)
    return launched


def _cases():
    """Name, token count and launcher of each kernel path, with fixed weights."""
    k, n = 4096, 1000
    w = (torch.randn(2 * n, k, device="cuda") * k**-0.5).bfloat16()
    fp8 = act_quant(w, "fp8_e4m3")[:2]
    int8 = act_quant(w, "int8")[:2]
    w4 = quantize_w4_reference(w, 128, True)
    cache = torch.randn(2, 8, 1024, 128, device="cuda").bfloat16()
    seq_lens = torch.tensor([1000, 37], dtype=torch.int32, device="cuda")
    # The update path writes the same key and value at the same positions on every call.
    k_cache, v_cache = cache.clone(), cache.clone()
    kv_new = torch.randn(2, 8, 128, device="cuda").bfloat16()
    cos, sin = torch.randn(2, 2, 128, device="cuda").bfloat16()
    positions = torch.tensor([999, 36], device="cuda")

    def w8a8(path, fmt="fp8_e4m3"):
        def run(x):
            xq, xs = act_quant(x, fmt)[:2]
            wq, ws = fp8 if fmt == "fp8_e4m3" else int8
            return w8a8_mod.w8a8_gemm_triton(xq, xs, wq, ws, None, torch.bfloat16, xq.dtype, path=path)
        return run

    def w4a16(path, gated=False):
        return lambda x: w4a16_mod.gemm_w4a16_triton(x, *w4, 128, gated=gated, path=path)

    return [
        ("act_quant", 16, lambda x: torch.cat([act_quant(x, "fp8_e4m3")[0].float(), act_quant(x, "int8")[1]], 1)),
        ("w8a8 int8 gemv", 1, w8a8("gemv", "int8")),
        ("w8a8 swap, serial split-K", 16, w8a8("swap")),
        ("w8a8 tiled, split-K pre-hook", 64, w8a8("tiled")),
        ("w8a8 persistent", 300, w8a8("persistent")),
        ("w4a16 gemv", 1, w4a16("gemv")),
        ("w4a16 gemv gated", 1, w4a16("gemv", gated=True)),
        ("w4a16 tc serial", 16, w4a16("tc")),
        ("w4a16 tc", 200, w4a16("tc")),
        ("w4a16 dequant", 300, w4a16("dequant")),
        ("decode attention", 2, lambda x: attention_mod.decode_attention(x.view(2, 32, 128), cache, cache, seq_lens)),
        ("decode attention update", 2, lambda x: attention_mod.decode_attention_update(
            x.view(2, 32, 128), kv_new, kv_new, cos, sin, k_cache, v_cache, positions)),
    ]


@pytest.mark.gpu
def test_direct_launch_matches_triton(monkeypatch, triton_launches):
    for name, m, run in _cases():
        run(torch.randn(m, 4096, device="cuda").bfloat16())  # tunes and compiles
        triton_launches.clear()
        x = torch.randn(m, 4096, device="cuda").bfloat16()
        direct = run(x)
        assert triton_launches == [], name
        monkeypatch.setenv("PRECISIONOPS_FAST_LAUNCH", "0")
        through_triton = run(x)
        monkeypatch.delenv("PRECISIONOPS_FAST_LAUNCH")
        assert triton_launches, name
        # Split-K programs add in whatever order they finish: the same up to one rounding of the
        # bf16 output (at most 2^-7 relative), not bit for bit.
        a, b = direct.float(), through_triton.float()
        assert ((a - b).abs() <= b.abs() / 128 + 1e-5 * b.abs().max()).all(), name


@pytest.mark.gpu
def test_direct_launch_rekeys_misaligned_views_and_replaced_configs(triton_launches):
    k, n = 4096, 1000
    wq, ws = act_quant((torch.randn(n, k, device="cuda") * k**-0.5).bfloat16(), "fp8_e4m3")[:2]
    x = torch.randn(300, k, device="cuda").bfloat16()
    xq, xs = act_quant(x, "fp8_e4m3")[:2]
    gemm_fp8(xq, xs, wq, ws)
    triton_launches.clear()
    # Rows at an odd byte offset: Triton compiles a kernel that does not assume 16-byte alignment
    # (the tiled one: TMA cannot read them), so the direct path must not reuse the aligned one.
    odd = torch.empty(300 * k + 1, dtype=torch.uint8, device="cuda")[1:].view(torch.float8_e4m3fn).view(300, k)
    odd.copy_(xq)
    out = gemm_fp8(odd, xs, wq, ws)
    assert triton_launches == [w8a8_mod._w8a8_gemm_kernel]
    assert rel_err(out, gemm_fp8_reference(xq, xs, wq, ws)) < 1e-2
    # A config forced for a while, then the tuned ones back: each change goes through Triton.
    kernel = w8a8_mod._w8a8_persistent_kernel
    for config in (w8a8_mod._CONFIGS_PERSISTENT[-1], None):
        triton_launches.clear()
        if config is None:
            out = gemm_fp8(xq, xs, wq, ws)
        else:
            with only_config(kernel, config):
                out = gemm_fp8(xq, xs, wq, ws)
                assert kernel.best_config is config
        assert triton_launches == [kernel]
        assert rel_err(out, gemm_fp8_reference(xq, xs, wq, ws)) < 1e-2
