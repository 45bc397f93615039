"""Backend choice shared by every kernel: Triton on CUDA, the torch reference elsewhere.

Tests force the Triton path on the CPU by setting ``TRITON_INTERPRET=1`` before triton is
imported and passing ``backend="triton"``.
"""
import os

import torch

BACKENDS = ("auto", "triton", "reference")
# When True the autotuned kernels run the first config of their M bucket instead of timing all
# of them: GPU correctness tests set it to compile a fraction of the configs (bench/kernels.py
# checks every tuned config's output against a baseline instead).
ONE_CONFIG = False


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(x: torch.Tensor, backend: str = "auto") -> bool:
    """Decides whether a call on ``x`` runs the Triton kernel.

    Args:
        x: the leading input tensor; its device decides the ``auto`` backend.
        backend: ``auto`` (Triton on CUDA, reference elsewhere), ``triton`` (forced; on the
            CPU it needs ``TRITON_INTERPRET=1``) or ``reference``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return False
    if backend == "auto":
        return x.is_cuda
    if not x.is_cuda and not interpreting():
        raise ValueError("backend='triton' on a CPU tensor needs TRITON_INTERPRET=1 set before triton is imported")
    return True


def check_2d(name: str, t: torch.Tensor) -> None:
    """Raises ValueError naming ``name`` unless ``t`` is a matrix."""
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")


def check_dtype(name: str, t: torch.Tensor, *dtypes: torch.dtype) -> None:
    """Raises ValueError naming ``name`` unless ``t`` has one of ``dtypes``."""
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d) for d in dtypes)
        raise ValueError(f"{name} must have dtype {allowed}, got {t.dtype}")


def check_shape(name: str, t: torch.Tensor, *shapes: tuple[int, ...]) -> None:
    """Raises ValueError naming ``name`` unless ``t`` has one of ``shapes``."""
    if tuple(t.shape) not in shapes:
        allowed = " or ".join(str(list(s)) for s in shapes)
        raise ValueError(f"{name} must have shape {allowed}, got {list(t.shape)}")


def m_bucket(m: int) -> int:
    """Autotune key for the token count: the next power of two from 16, capped at 8192, so a
    decode step at M = 3 reuses the config tuned at M = 16 instead of tuning again."""
    return min(max(16, 1 << (max(m, 1) - 1).bit_length()), 8192)
