"""int4 ops keep group-major copies of their scales and zeros for the W4A16 tensor-core and mma
kernels, and note whether their zeros are integers (the mma kernel's exact subtraction)."""
import pytest
import torch

from runtime.engines import load_engine
from runtime.modules import QuantLinear
from runtime.modules.quant_linear import prepare_w4a16
from runtime.recipes import Recipe

INT4 = Recipe.from_dict({"name": "int4g32", "default": {"weights": {
    "format": "int4", "strategy": "group", "group_size": 32}}})


@pytest.fixture
def int4_engine(tiny_engine):
    return tiny_engine(INT4)


def _int4_ops(model) -> list[QuantLinear]:
    return [m for m in model.modules() if isinstance(m, QuantLinear) and m.weight_format == "int4"]


@pytest.mark.parametrize("fuse", [False, True])
def test_group_major_copies_give_the_same_logits_and_are_not_saved(int4_engine, fuse):
    plain = load_engine(int4_engine, fuse=fuse).model
    model = load_engine(int4_engine, fuse=fuse).model
    ops = _int4_ops(model)
    # Fused, the copies belong to each group's GEMM (the members' own tensors are the group's rows).
    gemms = {id(g): g for g in (m.siblings.fused if m.siblings is not None else m for m in ops)}
    assert not any(g.integer_zeros for g in gemms.values())
    assert prepare_w4a16(model) == len(gemms)
    assert all(g.integer_zeros for g in gemms.values())
    assert len(gemms) < len(ops) if fuse else len(gemms) == len(ops)
    for m in ops:
        gemm = m.siblings.fused if m.siblings is not None else m
        assert gemm.weight_scale_gm.shape == gemm.weight_scale.t().shape
        assert gemm.weight_scale_gm.is_contiguous() and torch.equal(gemm.weight_scale_gm.t(), gemm.weight_scale)
        assert torch.equal(gemm.weight_zero_gm.t(), gemm.weight_zero)
        assert m.siblings is None or getattr(m, "weight_scale_gm", None) is None
    assert not any(k.endswith(("weight_scale_gm", "weight_zero_gm")) for k in model.state_dict())
    # 2 x 19 tokens take the tensor-core path's scales; one token the GEMV's (the stored layout).
    for shape in ((2, 19), (1, 1)):
        ids = torch.randint(3, 300, shape)
        with torch.no_grad():
            assert torch.equal(model(ids).logits, plain(ids).logits), shape


def test_only_tensor_core_calls_read_the_group_major_copy(int4_engine):
    op = _int4_ops(load_engine(int4_engine).model)[0]
    op.keep_group_major_scales()
    x = torch.randn(5, op.in_features)
    s, z = op._w4_scales(x)
    assert s.stride() == (1, op.weight_scale.shape[0]) and torch.equal(s, op.weight_scale.to(s.dtype))
    assert z.stride() == s.stride()
    s1, _ = op._w4_scales(x[:1])
    assert s1.stride() == op.weight_scale.stride()


def test_integer_zeros_are_checked_not_assumed(int4_engine):
    op = _int4_ops(load_engine(int4_engine).model)[0]
    assert op.check_integer_zeros()  # the runtime's quantizer rounds zeros into 0..15
    op.weight_zero = op.weight_zero + 0.5  # as an imported engine's fractional zeros might be
    assert not op.check_integer_zeros() and not op.integer_zeros
    op.weight_zero = op.weight_zero + 15.5  # integers, but past int4's codes
    assert not op.check_integer_zeros()


@pytest.mark.gpu
def test_cuda_engines_keep_group_major_scales_and_match_the_stored_layout(int4_engine):
    model = load_engine(int4_engine, device="cuda").model
    gemms = [m for m in model.modules()
             if isinstance(m, QuantLinear) and getattr(m, "weight_scale_gm", None) is not None]
    assert gemms
    ids = torch.randint(3, 300, (2, 19), device="cuda")
    with torch.no_grad():
        with_copies = model(ids).logits.float()
        for m in gemms:
            m.weight_scale_gm = None
            m.weight_zero_gm = None
        stored = model(ids).logits.float()
    assert torch.isfinite(with_copies).all() and ((with_copies - stored).norm() / stored.norm()).item() < 1e-3
