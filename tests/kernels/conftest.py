"""Kernel test setup: Triton's CPU interpreter where there is no GPU, poisoned allocations.

TRITON_INTERPRET must be set before a kernel is decorated: @triton.jit reads it then. Kernel
modules imported earlier in the same process (through runtime/, say) are reloaded so their
kernels are re-decorated for the interpreter; reloading refills each module's own namespace,
so functions other modules imported from it call the new kernels.
"""
import importlib
import math
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
    _ORDER = ["kernels._launch", "kernels.packing", "kernels._w8a8"]
    # kernels.ops holds no Triton kernel (its ops call the public functions, which the reloads
    # refill) and registers torch.library ops: reloading it would define them a second time,
    # destroying the first definitions that modules imported earlier still call.
    _KEEP = {"kernels.ops"}
    _loaded = [name for name in _ORDER if name in sys.modules]
    _loaded += sorted(n for n in sys.modules if n.startswith("kernels.") and n not in _ORDER and n not in _KEEP)
    for _name in _loaded:
        importlib.reload(sys.modules[_name])

from kernels import _launch  # noqa: E402
from kernels._launch import interpreting  # noqa: E402

# Compiling every autotune config of every specialisation takes minutes on the GPU; the tests
# check numerics, bench/kernels.py checks each tuned config's output.
_launch.ONE_CONFIG = True

# Tensors on which the Triton path runs here: CPU tensors through the interpreter, CUDA tensors
# on a GPU. Tests take the `device` fixture and run once per available one.
DEVICES = [
    pytest.param("cpu", id="interpreter"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
]


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param == "cpu" and not interpreting():
        pytest.skip("the CPU interpreter runs only where no GPU is present (TRITON_INTERPRET=1)")
    return request.param


@pytest.fixture(autouse=True)
def poisoned_empty(monkeypatch):
    """Every torch.empty in a kernel test starts as NaN (floats) or 0x5A bytes (integers), so
    an output element a kernel forgot to write fails the comparison instead of passing by luck."""
    real_empty = torch.empty

    def empty(*size, **kwargs):
        t = real_empty(*size, **kwargs)
        if t.dtype.is_floating_point:
            t.fill_(math.nan)
        elif t.dtype != torch.bool:
            t.fill_(0x5A)
        return t

    monkeypatch.setattr(torch, "empty", empty)
    yield
