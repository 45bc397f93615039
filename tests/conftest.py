import os
import random

import torch

# @triton.jit reads TRITON_INTERPRET when a kernel module is imported, and any test module may
# import kernels (through runtime/) before tests/kernels' conftest runs: set it before anything.
# Runtime code is unaffected: it dispatches to Triton only for CUDA tensors.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    """Fresh but reproducible random inputs per test."""
    random.seed(0)
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
