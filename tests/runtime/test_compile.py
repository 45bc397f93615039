"""The kernels as custom ops: torch.compile traces a quantized layer whole and gets eager's answer."""
import pytest
import torch

from kernels.gemm_w4a16 import quantize_w4_reference
from kernels.ops import act_quant_op, gemm_w4a16_op, gemm_w8a8_op
from runtime.modules import QuantLinear
from runtime.plans import OpPlan
from runtime.recipes import QuantArgs

INT4_G32 = {"format": "int4", "strategy": "group", "group_size": 32, "symmetric": False}
FP8_W = {"format": "fp8_e4m3", "strategy": "channel"}
INT8_W = {"format": "int8", "strategy": "channel"}
FP8_A = {"format": "fp8_e4m3", "strategy": "token", "dynamic": True}
INT8_A_STATIC = {"format": "int8", "strategy": "tensor", "dynamic": False}


def _plan(k, n, weights, acts):
    w = QuantArgs(**weights)
    a = QuantArgs(**acts) if acts else None
    return OpPlan(name="op", op_kind="linear", weight=w.format, activation=a.format if a else "bf16",
                  weight_args=w, activation_args=a, kernel="reference", rule="rules[0]", reason="test",
                  in_features=k, out_features=n)


# opcheck's schema test re-runs ops in a mode that has no CPU fp8 arithmetic; fp8 cases check the
# fake implementation and the compiled-graph path only.
FP8_CHECKS = ("test_faketensor", "test_aot_dispatch_dynamic")


def test_custom_ops_pass_opcheck():
    # Schema (int8), fake (shape-only) implementation against the real one, no aliasing of inputs.
    x = torch.randn(5, 64) * 3
    torch.library.opcheck(act_quant_op, (x, "int8", torch.tensor([0.05])))
    torch.library.opcheck(act_quant_op, (x, "fp8_e4m3", None), test_utils=FP8_CHECKS)
    for fmt in ("int8", "fp8_e4m3"):
        xq, xs, _, _ = act_quant_op(x, fmt, None)
        wq, ws, _, _ = act_quant_op(torch.randn(24, 64), fmt, None)
        args = (xq, xs, wq, ws, torch.randn(24), torch.bfloat16)
        if fmt == "fp8_e4m3":
            torch.library.opcheck(gemm_w8a8_op, args, test_utils=FP8_CHECKS)
        else:
            torch.library.opcheck(gemm_w8a8_op, args)
    packed, scales, zeros = quantize_w4_reference(torch.randn(24, 64), 32, False)
    torch.library.opcheck(gemm_w4a16_op, (x, packed, scales, zeros, 32, None))
    # Group-major views, as CUDA engines pass the tensor-core path (QuantLinear.keep_group_major_scales).
    torch.library.opcheck(gemm_w4a16_op, (x, packed, scales.t().contiguous().t(), zeros.t().contiguous().t(), 32, None))


def test_act_quant_op_names_a_bad_format_while_tracing():
    # Dynamo wraps the fake implementation's ValueError; its message names the argument.
    with pytest.raises(Exception, match="fmt must be one of"):
        torch.compile(lambda x: act_quant_op(x, "fp4", None), backend="aot_eager", fullgraph=True)(torch.randn(2, 8))


@pytest.mark.parametrize("weights, acts, group_major", [(INT4_G32, None, False), (INT4_G32, None, True),
                                                       (FP8_W, FP8_A, False), (INT8_W, INT8_A_STATIC, False)],
                         ids=["int4-w4a16", "int4-w4a16-group-major-scales", "fp8-dynamic", "int8-static"])
def test_compiled_quant_linear_is_one_graph_with_eager_numerics(weights, acts, group_major):
    torch.manual_seed(0)
    k, n = 96, 40
    weight, bias = torch.randn(n, k), torch.randn(n)
    layer = QuantLinear.from_float(weight, bias, _plan(k, n, weights, acts),
                                   input_scale=0.03 if acts and not acts["dynamic"] else None)
    if group_major:
        layer.keep_group_major_scales()

    def block(x):
        # Element-wise work on both sides of the layer, as in a decoder block (norm, residual).
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
        return layer(h) + 0.5 * layer(h).relu()

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)  # fullgraph: a break fails
    for m in (1, 7):
        x = torch.randn(2, m, k) * 4
        assert torch.equal(compiled(x), block(x))
