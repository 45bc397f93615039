"""Decode attention: the split-KV Triton kernel against its fp32 torch reference.

Runs on the CPU through Triton's interpreter and, marked `gpu`, on CUDA. bf16 arithmetic is
wrong under the interpreter, so bf16 queries and caches run on the GPU only. Every
torch.empty here starts as NaN (tests/kernels/conftest.py): an output row or a split partial
the kernels forget to write fails the comparison.
"""
import math

import pytest
import torch

import kernels.decode_attention as da_mod
from kernels.decode_attention import (
    decode_attention,
    decode_attention_reference,
    decode_attention_triton,
    decode_attention_update,
    decode_attention_update_reference,
    decode_attention_update_triton,
    num_splits_for,
    quantize_kv_reference,
)

# (Hq, Hkv, S_max, seq_lens): GQA ratios 1 and 4; lengths 1, 0, full, and none a multiple of
# any BLOCK_N; batches with different lengths.
CASES = [
    (2, 2, 64, [1]),
    (8, 2, 256, [256]),
    (2, 2, 200, [37, 1, 200]),
    (8, 2, 160, [100, 0, 7, 159]),
]
D_CPU = 64
# Relative error against the reference on the same cache, by query dtype: fp32 runs ieee dots;
# fp16 / bf16 round the softmax weights to q's dtype before the PV product and the output
# at the end (2**-11 / 2**-8 relative each).
BOUND = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative Frobenius error in float64; NaN or inf anywhere makes every bound fail."""
    a, b = a.double().cpu(), b.double().cpu()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("nan")
    return float((a - b).norm() / b.norm())


def with_outliers(shape, device: str, outliers: bool = True) -> torch.Tensor:
    """Gaussian values with ~2% of entries 100x larger, as outlier channels in K and V."""
    x = torch.randn(*shape, device=device)
    if outliers:
        idx = torch.randint(0, x.numel(), (max(1, x.numel() // 50),), device=device)
        x.view(-1)[idx] *= 100.0
    return x


def make_cache(k: torch.Tensor, v: torch.Tensor, fmt: str):
    """(k_cache, v_cache, k_scale, v_scale) in ``fmt`` from fp32 K and V."""
    if fmt == "fp8_e4m3":
        kq, ks = quantize_kv_reference(k)
        vq, vs = quantize_kv_reference(v)
        return kq, vq, ks, vs
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[fmt]
    return k.to(dtype), v.to(dtype), None, None


def cache_formats(device: str):
    return ["fp16", "fp8_e4m3"] + (["bf16"] if device == "cuda" else [])


def q_dtypes(fmt: str, device: str):
    """fp32 queries with any cache; 16-bit ones with their own cache dtype or fp8."""
    if fmt == "fp16":
        return [torch.float32, torch.float16]
    if fmt == "bf16":
        return [torch.float32, torch.bfloat16]
    return [torch.float32, torch.float16] + ([torch.bfloat16] if device == "cuda" else [])


def exact_attention(q, k, v, seq_lens) -> torch.Tensor:
    """float64 attention on unquantized K and V, for the quantization error alone."""
    b, hq, d = q.shape
    g = hq // k.shape[1]
    out = torch.zeros(b, hq, d, dtype=torch.float64)
    for i, n in enumerate(seq_lens.tolist()):
        ki = k[i, :, :n].double().cpu().repeat_interleave(g, dim=0)
        vi = v[i, :, :n].double().cpu().repeat_interleave(g, dim=0)
        p = torch.softmax((q[i].double().cpu()[:, None, :] @ ki.transpose(1, 2)) / math.sqrt(d), dim=-1)
        out[i] = (p @ vi)[:, 0]
    return out


def _run_case(device, hq, hkv, s_max, lens, fmt, d, num_splits=None, k_outliers=True):
    b = len(lens)
    k = with_outliers((b, hkv, s_max, d), device, outliers=k_outliers)
    v = with_outliers((b, hkv, s_max, d), device)
    k_cache, v_cache, ks, vs = make_cache(k, v, fmt)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    for dtype in q_dtypes(fmt, device):
        q = torch.randn(b, hq, d, device=device).to(dtype)
        out = decode_attention_triton(q, k_cache, v_cache, seq_lens, k_scale=ks, v_scale=vs, num_splits=num_splits)
        ref = decode_attention_reference(q, k_cache, v_cache, seq_lens, k_scale=ks, v_scale=vs)
        assert out.dtype == dtype and out.shape == (b, hq, d)
        assert torch.isfinite(out).all()
        assert rel_err(out, ref) < BOUND[dtype], (fmt, dtype)
        # Length-0 sequences (padded batch slots) attend to nothing and get zeros.
        assert (out[seq_lens == 0] == 0).all()


@pytest.mark.parametrize("hq, hkv, s_max, lens", CASES)
@pytest.mark.parametrize("fmt", ["fp16", "fp8_e4m3", "bf16"])
@pytest.mark.parametrize("k_outliers", [True, False], ids=["k_outliers", "k_gaussian"])
def test_decode_attention_matches_reference(device, hq, hkv, s_max, lens, fmt, k_outliers):
    # 100x key outliers make the softmax nearly one-hot; Gaussian keys spread it over many
    # positions, so the online rescaling and the split reduction carry real weight.
    if fmt not in cache_formats(device):
        pytest.skip("bf16 arithmetic is wrong under the CPU interpreter")
    _run_case(device, hq, hkv, s_max, lens, fmt, D_CPU, k_outliers=k_outliers)


@pytest.mark.parametrize("num_splits", [2, 3, 7])
def test_decode_attention_ragged_splits(device, monkeypatch, num_splits):
    # Unaligned split boundaries: chunks of 29, 20 or 9 positions cut tiles in the middle, and
    # with 7 splits of the 64-long cache the short sequences leave whole splits empty.
    monkeypatch.setattr(da_mod, "SPLIT_ALIGN", 1)
    # One split a load in the reduction: its running max carries over loads, past empty splits.
    monkeypatch.setattr(da_mod, "REDUCE_TILE", 4 * D_CPU)
    for fmt in ("fp16", "fp8_e4m3"):
        _run_case(device, 8, 2, 57, [57, 1, 30, 0], fmt, D_CPU, num_splits=num_splits, k_outliers=False)


def _fp8_cache(device, lens: list[int], hkv: int = 2, d: int = D_CPU):
    """fp32 K (Gaussian) and V (with outliers), their fp8 caches and scales, and the lengths, max(lens) long."""
    shape = (len(lens), hkv, max(lens), d)
    k = with_outliers(shape, device, outliers=False)
    v = with_outliers(shape, device)
    k_cache, v_cache, ks, vs = make_cache(k, v, "fp8_e4m3")
    return k, v, k_cache, v_cache, ks, vs, torch.tensor(lens, dtype=torch.int32, device=device)


def test_fp8_cache_error_against_unquantized(device):
    # The same attention on the fp32 K and V the fp8 cache was made from: only the e4m3
    # rounding (3 mantissa bits, <= 6.25% per element) and the per-head scaling remain.
    # K without outliers: a 100x key outlier turns its logit error into a softmax flip.
    b, hq, d = 2, 8, D_CPU
    k, v, k_cache, v_cache, ks, vs, seq_lens = _fp8_cache(device, [200, 77])
    q = torch.randn(b, hq, d, device=device)
    out = decode_attention(q, k_cache, v_cache, seq_lens, k_scale=ks, v_scale=vs, backend="triton")
    exact = exact_attention(q, k, v, seq_lens)
    # Each dequantized element is within half an e4m3 step, 2**-4 relative, of its original.
    assert rel_err(out, exact) < 2.0**-4
    # The per-head scales matter: one shared scale would be off by the heads' amax ratio.
    wrong = decode_attention(q, k_cache, v_cache, seq_lens, k_scale=ks, v_scale=vs.flip(0) * 3, backend="triton")
    assert rel_err(wrong, exact) > 0.5


def test_fp8_cache_with_query_heads_of_any_magnitude(device):
    # Over an fp8 cache the 16-bit dots run in fp16, each query row scaled by its own power of
    # two: heads from 1e-4 to 1e3 (fp16 queries; bf16 ones from 1e-20, under fp16's range, to
    # 1e8, over it) must each keep their own logit scale.
    b, hq, d = 2, 8, D_CPU
    _, _, k_cache, v_cache, ks, vs, seq_lens = _fp8_cache(device, [150, 61])
    for dtype in q_dtypes("fp8_e4m3", device):
        lo, hi = (-4, 3) if dtype == torch.float16 else (-20, 8)
        magnitudes = torch.logspace(lo, hi, hq, device=device)[None, :, None]
        q = (torch.randn(b, hq, d, device=device) * magnitudes).to(dtype)
        out = decode_attention_triton(q, k_cache, v_cache, seq_lens, k_scale=ks, v_scale=vs, num_splits=2)
        ref = decode_attention_reference(q, k_cache, v_cache, seq_lens, k_scale=ks, v_scale=vs)
        assert rel_err(out, ref) < BOUND[dtype], dtype
        for head in range(hq):  # a small head's error would hide under a large one's in the norm
            assert rel_err(out[:, head], ref[:, head]) < BOUND[dtype], (dtype, head)


def test_sm_scale_and_noncontiguous_q(device):
    b, hq, hkv, s, d = 2, 4, 1, 96, D_CPU
    # Gaussian keys: with 100x outliers the softmax is one-hot at any scale and the last check
    # below could not tell the scales apart.
    k, v = with_outliers((b, hkv, s, d), device, outliers=False).half(), with_outliers((b, hkv, s, d), device).half()
    seq_lens = torch.tensor([96, 50], dtype=torch.int32, device=device)
    q = torch.randn(b, d, hq, device=device).transpose(1, 2)  # [B, Hq, D], D not contiguous
    out = decode_attention(q, k, v, seq_lens, sm_scale=0.3, backend="triton")
    ref = decode_attention_reference(q, k, v, seq_lens, sm_scale=0.3)
    assert rel_err(out, ref) < BOUND[torch.float32]
    assert rel_err(ref, decode_attention_reference(q, k, v, seq_lens)) > 0.01  # the scale is used


def test_num_splits_fill_the_gpu(monkeypatch):
    # H100 (132 SMs), Llama-3-8B's 8 KV heads: batch 1 must split each sequence so that the
    # programs cover every SM; a large batch needs no split; a short cache is not over-split.
    monkeypatch.setattr(da_mod, "_sm_count", lambda device: 132)
    dev = torch.device("cuda")
    for b, s_max in [(1, 32768), (1, 4096), (8, 16384)]:
        splits = num_splits_for(b, 8, s_max, dev)
        assert b * 8 * splits >= 132
        assert s_max / splits >= da_mod.MIN_CHUNK
    assert num_splits_for(64, 8, 32768, dev) == 2
    assert num_splits_for(1, 8, 1024, dev) * da_mod.MIN_CHUNK <= 1024
    assert num_splits_for(1024, 8, 32768, dev) == 1


def test_auto_backend_on_cpu_is_the_reference():
    q = torch.randn(1, 2, 16)
    k = v = torch.randn(1, 2, 8, 16, dtype=torch.float16)
    lens = torch.tensor([5], dtype=torch.int32)
    assert torch.equal(decode_attention(q, k, v, lens), decode_attention_reference(q, k, v, lens))


def _valid(device):
    q = torch.randn(2, 4, 16, device=device, dtype=torch.float16)
    k = torch.randn(2, 2, 8, 16, device=device, dtype=torch.float16)
    return dict(q=q, k_cache=k, v_cache=k.clone(), seq_lens=torch.tensor([3, 8], dtype=torch.int32, device=device))


def _fp8(args):
    kq, ks = quantize_kv_reference(args["k_cache"].float())
    return dict(args, k_cache=kq, v_cache=kq, k_scale=ks, v_scale=ks)


INVALID = [
    (lambda a: dict(a, q=a["q"][0]), "q must be 3-D"),
    (lambda a: dict(a, q=a["q"].to(torch.int32)), "q must have dtype"),
    (lambda a: dict(a, k_cache=a["k_cache"][0]), "k_cache must be 4-D"),
    (lambda a: dict(a, k_cache=a["k_cache"].float(), v_cache=a["v_cache"].float()), "k_cache must have dtype"),
    (lambda a: dict(a, q=a["q"][:, :3]), "multiple of k_cache's 2 KV heads"),
    (lambda a: dict(a, q=a["q"][:1]), r"k_cache must be \[B=1"),
    (lambda a: dict(a, v_cache=a["v_cache"][:, :, :4]), "v_cache must have k_cache's shape"),
    (lambda a: dict(a, v_cache=a["v_cache"].bfloat16()), "v_cache must have dtype"),
    (lambda a: dict(a, k_cache=a["k_cache"].bfloat16(), v_cache=a["v_cache"].bfloat16()), "must match q's"),
    (lambda a: dict(_fp8(a), k_scale=None), "k_scale is required"),
    (lambda a: dict(_fp8(a), v_scale=torch.ones(3, device=a["q"].device)), r"v_scale must have shape \[2\]"),
    (lambda a: dict(_fp8(a), k_scale=torch.ones(2, dtype=torch.float16, device=a["q"].device)), "k_scale must have dtype"),
    (lambda a: dict(a, k_scale=torch.ones(2, device=a["q"].device)), "k_scale applies to an fp8 cache only"),
    (lambda a: dict(a, seq_lens=a["seq_lens"].long()), "seq_lens must have dtype"),
    (lambda a: dict(a, seq_lens=a["seq_lens"][:1]), r"seq_lens must have shape \[2\]"),
    (lambda a: dict(a, sm_scale=-1.0), "sm_scale must be a positive"),
]


@pytest.mark.parametrize("make, message", INVALID)
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_invalid_inputs_name_the_argument(device, make, message, backend):
    with pytest.raises(ValueError, match=message):
        decode_attention(**make(_valid(device)), backend=backend)


def test_invalid_lengths_and_head_dim(device):
    args = _valid(device)
    bad = dict(args, seq_lens=torch.tensor([3, 9], dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match=r"seq_lens must lie in \[0, S_max=8\]"):
        decode_attention_reference(**bad)
    if device == "cpu":  # the CUDA kernel clamps instead of syncing to read the lengths
        with pytest.raises(ValueError, match="seq_lens must lie in"):
            decode_attention(**bad, backend="triton")
    q = torch.randn(2, 4, 48, device=device, dtype=torch.float16)
    k = torch.randn(2, 2, 8, 48, device=device, dtype=torch.float16)
    with pytest.raises(ValueError, match="head dim must be a power of two"):
        decode_attention(q, k, k, args["seq_lens"], backend="triton")
    with pytest.raises(ValueError, match="backend must be one of"):
        decode_attention(**args, backend="cuda")


# --- the step's own RoPE and cache write (decode_attention_update) ------------------------


def _rope_factors(b: int, d: int, device: str, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama's cos / sin rows (each half a copy of the other) at random angles up to 100 radians."""
    angles = torch.rand(b, d // 2, device=device) * 100
    return (torch.cat([angles.cos()] * 2, dim=-1).to(dtype), torch.cat([angles.sin()] * 2, dim=-1).to(dtype))


def _update_case(device, hq, hkv, s_max, positions, dtype, d, num_splits=None, broadcast=False):
    b = len(positions)
    q = with_outliers((b, hq, d), device).to(dtype)
    k_new = with_outliers((b, hkv, d), device).to(dtype)
    v_new = with_outliers((b, hkv, d), device).to(dtype)
    # With one position for the batch, one row of RoPE factors too (a stride-0 view), as a model
    # whose position ids have batch 1 passes them.
    cos, sin = (t.expand(b, d) for t in _rope_factors(1, d, device, dtype)) if broadcast else \
        _rope_factors(b, d, device, dtype)
    cache_dtype = torch.float16 if dtype == torch.float32 else dtype  # fp32 queries read a 16-bit cache
    k_cache = with_outliers((b, hkv, s_max, d), device, outliers=False).to(cache_dtype)
    v_cache = with_outliers((b, hkv, s_max, d), device).to(cache_dtype)
    pos = torch.tensor(positions[:1] if broadcast else positions, device=device)
    fill = torch.tensor(7, device=device)
    k_ref, v_ref, fill_ref = k_cache.clone(), v_cache.clone(), fill.clone()
    ref = decode_attention_update_reference(q, k_new, v_new, cos, sin, k_ref, v_ref, pos, fill=fill_ref)
    out = decode_attention_update_triton(q, k_new, v_new, cos, sin, k_cache, v_cache, pos, fill=fill,
                                         num_splits=num_splits)
    assert out.dtype == dtype and out.shape == (b, hq, d)
    # fp32: the kernel's RoPE (fused multiply-adds) differs from torch's by an ulp or so, which
    # logits of ~1e3 (the outliers) carry into the softmax: 1.7e-5 seen on the H100.
    assert rel_err(out, ref) < (1e-4 if dtype == torch.float32 else BOUND[dtype])
    # The new key (rotated) and value land at each sequence's position and nowhere else; the
    # fill grows by exactly one, however many programs ran.
    assert rel_err(k_cache, k_ref) < 2 ** -10 and torch.equal(v_cache, v_ref)
    rows = torch.arange(b, device=device)
    written = torch.zeros(b, s_max, dtype=torch.bool, device=device)
    written[rows, pos.long().expand(b)] = True
    untouched = (~written)[:, None, :].expand(b, hkv, s_max)
    assert torch.equal(k_cache[untouched], k_ref[untouched]) and torch.isfinite(k_cache).all()
    assert int(fill) == 8 == int(fill_ref)


@pytest.mark.parametrize("hq, hkv, s_max, positions", [
    (2, 2, 64, [0]), (8, 2, 256, [255]), (8, 2, 200, [36, 0, 199]), (4, 4, 100, [57, 57]),
])
def test_decode_attention_update_matches_reference(device, hq, hkv, s_max, positions):
    for dtype in (torch.float32, torch.float16) + ((torch.bfloat16,) if device == "cuda" else ()):
        _update_case(device, hq, hkv, s_max, positions, dtype, D_CPU)


@pytest.mark.parametrize("num_splits", [1, 2, 3, 7])
def test_decode_attention_update_ragged_splits(device, monkeypatch, num_splits):
    # The written position at a split's first, middle and last slot, chunks cut mid-tile, and
    # (with 7 splits) whole splits past the short sequences' ends.
    monkeypatch.setattr(da_mod, "SPLIT_ALIGN", 1)
    monkeypatch.setattr(da_mod, "REDUCE_TILE", 8 * D_CPU)  # two splits a load in the reduction
    _update_case(device, 8, 2, 57, [56, 0, 28, 9], torch.float16, D_CPU, num_splits=num_splits)


def test_decode_attention_update_one_position_for_the_batch(device):
    # positions [1] and one row of RoPE factors for every sequence (a static cache's cache_position).
    _update_case(device, 8, 2, 96, [40, 40, 40], torch.float16, D_CPU, num_splits=3, broadcast=True)


def _valid_update(device):
    args = _valid(device)
    q = args["q"]
    cos, sin = _rope_factors(2, 16, device, torch.float16)
    return dict(q=q, k=torch.randn(2, 2, 16, device=device, dtype=q.dtype), v=torch.randn(2, 2, 16, device=device,
                dtype=q.dtype), cos=cos, sin=sin, k_cache=args["k_cache"], v_cache=args["v_cache"],
                positions=torch.tensor([2, 7], device=device))


INVALID_UPDATE = [
    (lambda a: dict(a, k=a["k"][:, :1]), r"k must have shape \[2, 2, 16\]"),
    (lambda a: dict(a, v=a["v"].float()), "v must have dtype"),
    (lambda a: dict(a, cos=a["cos"][:, :8]), r"cos must have shape \[2, 16\]"),
    (lambda a: dict(a, sin=a["sin"].int()), "sin must have dtype"),
    (lambda a: dict(a, positions=a["positions"].float()), "positions must have dtype"),
    (lambda a: dict(a, positions=a["positions"][None]), "positions must have shape"),
    (lambda a: dict(a, k_cache=_fp8(a)["k_cache"], v_cache=_fp8(a)["v_cache"]), "to take the step's write"),
    (lambda a: dict(a, fill=torch.zeros(2, dtype=torch.int64, device=a["q"].device)), "fill must be one"),
]


@pytest.mark.parametrize("make, message", INVALID_UPDATE)
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_invalid_update_inputs_name_the_argument(device, make, message, backend):
    with pytest.raises(ValueError, match=message):
        decode_attention_update(**make(_valid_update(device)), backend=backend)


def test_update_positions_out_of_range(device):
    bad = dict(_valid_update(device), positions=torch.tensor([2, 8], device=device))
    with pytest.raises(ValueError, match=r"positions must lie in \[0, S_max=8\)"):
        decode_attention_update(**bad, backend="reference")
    if device == "cpu":  # the CUDA kernel skips the write instead of syncing to read the positions
        with pytest.raises(ValueError, match="positions must lie in"):
            decode_attention_update(**bad, backend="triton")


# --- GPU only: Llama-3-8B decode shapes, every cache format, the autotuned launch -------------


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("b, s_max", [(1, 16384), (4, 4096), (32, 1000)])
@pytest.mark.parametrize("fmt", ["bf16", "fp8_e4m3", "fp16"])
def test_decode_attention_llama_shapes_gpu(b, s_max, d, fmt):
    hq, hkv = 32, 8
    k, v = with_outliers((b, hkv, s_max, d), "cuda"), with_outliers((b, hkv, s_max, d), "cuda")
    k_cache, v_cache, ks, vs = make_cache(k, v, fmt)
    lens = torch.randint(1, s_max + 1, (b,), device="cuda", dtype=torch.int32)
    lens[0] = s_max
    q_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp8_e4m3": torch.bfloat16}[fmt]
    q = torch.randn(b, hq, d, device="cuda", dtype=q_dtype)
    out = decode_attention(q, k_cache, v_cache, lens, k_scale=ks, v_scale=vs)
    ref = decode_attention_reference(q, k_cache, v_cache, lens, k_scale=ks, v_scale=vs)
    assert rel_err(out, ref) < BOUND[q_dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("b, s_max", [(1, 16384), (1, 800), (4, 4096), (32, 1000)])
def test_decode_attention_update_llama_shapes_gpu(b, s_max):
    positions = torch.randint(0, s_max, (b,)).tolist()
    positions[0] = s_max - 1
    _update_case("cuda", 32, 8, s_max, positions, torch.bfloat16, 128)
