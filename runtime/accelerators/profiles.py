"""Accelerator profiles: which formats a device class runs natively, emulates, or cannot run."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from runtime.errors import InputError
from runtime.formats import FORMAT_NAMES, WIDE_FORMATS


class Support(str, Enum):
    native = "native"  # a kernel consumes the format directly
    emulated = "emulated"  # stored in the format, dequantized to a wide dtype before the matmul
    unsupported = "unsupported"  # cannot be used; the plan falls back and says why


ROLES = ("weight", "activation", "kv_cache")

# (weight format, activation format or None for wide) -> kernel that consumes both natively.
GEMM_KERNELS: dict[tuple[str, str | None], str] = {
    ("fp8_e4m3", "fp8_e4m3"): "kernels.gemm_fp8",
    ("int8", "int8"): "kernels.gemm_int8",
    ("int4", None): "kernels.gemm_w4a16",
}
DEQUANT_KERNEL = "dequantize+matmul"
WIDE_KERNEL = "matmul"


@dataclass(frozen=True)
class AcceleratorProfile:
    """A target device class. `support[role][format]` is (Support, reason)."""

    name: str
    description: str
    min_capability: int | None  # CUDA compute capability as 10*major+minor; None for the CPU
    support: dict[str, dict[str, tuple[Support, str]]] = field(hash=False)
    reference_only: bool = False  # every path is the pure-torch reference (the CPU)

    def check(self, fmt: str, role: str) -> tuple[Support, str]:
        """(supported, reason) for a format in a role (weight, activation, kv_cache)."""
        if role not in ROLES:
            raise InputError(f"unknown role {role!r}; known: {', '.join(ROLES)}", loc=("role",))
        if fmt not in FORMAT_NAMES:
            raise InputError(f"unknown format {fmt!r}", loc=("format",))
        if fmt in WIDE_FORMATS:
            return Support.native, f"{fmt} runs natively"
        return self.support[role].get(fmt, (Support.unsupported, f"{self.name} has no path for {fmt} {role}s"))

    def kernel(self, weight: str | None, activation: str | None) -> str:
        """Kernel name for a (weight, activation) format pair the profile supports; wide formats are None."""
        if (weight, activation) in GEMM_KERNELS and (self.reference_only or self.check(weight, "weight")[0] == Support.native):
            name = GEMM_KERNELS[(weight, activation)]
        elif weight is None and activation is None:
            name = WIDE_KERNEL
        else:
            name = DEQUANT_KERNEL
        return f"reference:{name}" if self.reference_only else name


_REGISTRY: dict[str, AcceleratorProfile] = {}


def register_profile(profile: AcceleratorProfile, *, replace: bool = False) -> AcceleratorProfile:
    """Adds a profile; a name already taken needs `replace=True`."""
    if profile.name in _REGISTRY and not replace:
        raise InputError(f"accelerator profile {profile.name!r} already exists", loc=("name",))
    _REGISTRY[profile.name] = profile
    return profile


def get_profile(name: str) -> AcceleratorProfile:
    """Looks a profile up by name; an unknown name lists the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown accelerator {name!r}; known: {', '.join(_REGISTRY)}", loc=("accelerator",)) from None


def list_profiles() -> list[AcceleratorProfile]:
    return list(_REGISTRY.values())


def _hopper_like(name: str, cap: int, description: str, int8_act: bool = True) -> AcceleratorProfile:
    n, e = Support.native, Support.emulated
    return AcceleratorProfile(
        name=name, description=description, min_capability=cap,
        support={
            "weight": {
                "fp8_e4m3": (n, f"sm_{cap} fp8 tensor cores (kernels.gemm_fp8)"),
                "fp8_e5m2": (e, "no e5m2 GEMM kernel: e5m2 weights are dequantized to bf16 before the matmul"),
                "int8": (n, f"sm_{cap} int8 tensor cores (kernels.gemm_int8)"),
                "int4": (n, "int4 weight-only GEMM (kernels.gemm_w4a16)"),
            },
            "activation": {
                "fp8_e4m3": (n, f"sm_{cap} fp8 tensor cores"),
                "fp8_e5m2": (Support.unsupported, "no GEMM kernel reads e5m2 activations; e5m2 is for gradients"),
                "int8": (n if int8_act else Support.unsupported, f"sm_{cap} int8 tensor cores"),
            },
            "kv_cache": {
                # TODO(kernels): an fp8-KV decode attention kernel would make these native.
                "fp8_e4m3": (e, "fp8 KV storage with per-head scales; attention dequantizes to bf16"),
                "fp8_e5m2": (e, "fp8 KV storage with per-head scales; attention dequantizes to bf16"),
                "int8": (e, "int8 KV cache dequantized to bf16 before attention"),
            },
        },
    )


H100 = register_profile(_hopper_like("h100", 90, "NVIDIA H100 (sm_90): fp8 and int8 tensor cores"))
L4 = register_profile(_hopper_like("l4", 89, "NVIDIA L4 (sm_89, Ada): fp8 and int8 tensor cores"))
A100 = register_profile(AcceleratorProfile(
    name="a100", description="NVIDIA A100 (sm_80): int8 tensor cores, no fp8 tensor cores", min_capability=80,
    support={
        "weight": {
            "fp8_e4m3": (Support.emulated, "sm_80 has no fp8 tensor cores: fp8 weights run weight-only, "
                                           "dequantized to bf16 before the matmul"),
            "fp8_e5m2": (Support.emulated, "sm_80 has no fp8 tensor cores: fp8 weights run weight-only, "
                                           "dequantized to bf16 before the matmul"),
            "int8": (Support.native, "sm_80 int8 tensor cores (kernels.gemm_int8)"),
            "int4": (Support.native, "int4 weight-only GEMM (kernels.gemm_w4a16)"),
        },
        "activation": {
            "fp8_e4m3": (Support.unsupported, "sm_80 has no fp8 tensor cores: fp8 activations are unsupported"),
            "fp8_e5m2": (Support.unsupported, "sm_80 has no fp8 tensor cores: fp8 activations are unsupported"),
            "int8": (Support.native, "sm_80 int8 tensor cores"),
        },
        "kv_cache": {
            "fp8_e4m3": (Support.emulated, "fp8 KV cache stored in fp8, dequantized to bf16 before attention on sm_80"),
            "fp8_e5m2": (Support.emulated, "fp8 KV cache stored in fp8, dequantized to bf16 before attention on sm_80"),
            "int8": (Support.emulated, "int8 KV cache dequantized to bf16 before attention"),
        },
    },
))
_CPU_REASON = "CPU: pure-torch reference path (quantize, dequantize, fp32 matmul)"
CPU = register_profile(AcceleratorProfile(
    name="cpu", description="CPU: every format through the pure-torch reference paths", min_capability=None,
    support={role: {f: (Support.emulated, _CPU_REASON) for f in FORMAT_NAMES if f not in WIDE_FORMATS} for role in ROLES},
    reference_only=True,
))
# int4 activations exist nowhere; the recipe schema already refuses them.
for _p in list_profiles():
    _p.support["activation"].pop("int4", None)


def compatibility_matrix(profiles: list[AcceleratorProfile] | None = None) -> list[dict]:
    """accelerator x format x op kind -> native / emulated / unsupported, with the kernel and the reason."""
    rows = []
    for p in profiles or list_profiles():
        for role in ROLES:
            for fmt in FORMAT_NAMES:
                if role == "activation" and fmt == "int4":
                    support, reason = Support.unsupported, "int4 activations are not supported anywhere"
                else:
                    support, reason = p.check(fmt, role)
                kernel = None
                if role == "weight" and support != Support.unsupported:
                    wide = fmt in WIDE_FORMATS
                    act = fmt if (fmt, fmt) in GEMM_KERNELS else None
                    kernel = p.kernel(None if wide else fmt, act)
                rows.append({"accelerator": p.name, "format": fmt, "op_kind": role, "support": support.value,
                             "kernel": kernel, "reason": reason})
    return rows
