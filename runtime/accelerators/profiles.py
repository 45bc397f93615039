"""Accelerator profiles: which formats a device class runs natively, emulates, or cannot run,
and (for GPUs) a small model of what a linear op costs at batch-1 decode."""
from __future__ import annotations

from collections.abc import Mapping
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
class DecodeLatency:
    """Batch-1 decode time of one linear op: decode reads every weight once per token, so it is weight-read bound.

    One GEMM over a token costs a fixed `gemm_us[kernel]` (launch, ramp-up and tail of a
    GEMV-shaped kernel) plus its stored weight bytes (values, scales, zero points) over the
    kernel's effective weight-read bandwidth `bandwidth_gbps[kernel]`. A W8A8 GEMM also runs
    its activation-quantization kernel (`act_quant_us`). The emulated path ("dequantize+matmul")
    writes a bf16 copy of the weight (read stored, write 2 bytes per weight at `copy_gbps`) and
    then runs the wide matmul over it. A mixed (per-output-feature) op runs one GEMM per part,
    and each part scatters its columns into the one output (`scatter_us`).
    """

    bandwidth_gbps: Mapping[str, float] = field(hash=False)  # kernel -> GB/s of stored weight bytes read
    gemm_us: Mapping[str, float] = field(hash=False)  # kernel -> fixed cost per GEMM
    copy_gbps: float
    act_quant_us: float
    scatter_us: float
    source: str  # where the numbers come from

    def gemm(self, kernel: str, *, stored_bytes: float, weights: int, act_quant: bool = False) -> float:
        """Predicted µs of one batch-1 GEMM by `kernel` over `weights` weights stored in `stored_bytes`."""
        if kernel == DEQUANT_KERNEL:
            wide_bytes = 2.0 * weights  # the bf16 copy the matmul reads
            return (self.gemm_us[DEQUANT_KERNEL] + (stored_bytes + wide_bytes) / (self.copy_gbps * 1e3)
                    + self.gemm(WIDE_KERNEL, stored_bytes=wide_bytes, weights=weights))
        if kernel not in self.bandwidth_gbps:
            raise InputError(f"no decode latency figure for kernel {kernel!r}", loc=("kernel",))
        us = self.gemm_us[kernel] + stored_bytes / (self.bandwidth_gbps[kernel] * 1e3)  # GB/s = 1e3 bytes/µs
        return us + (self.act_quant_us if act_quant else 0.0)

    def scaled(self, datasheet_gbps: float, source: str) -> "DecodeLatency":
        """The same kernels on a device with another HBM bandwidth: every effective bandwidth scaled by
        the same efficiency (measured / datasheet) as on the H100; fixed costs kept."""
        ratio = datasheet_gbps / H100_DATASHEET_GBPS
        return DecodeLatency(bandwidth_gbps={k: v * ratio for k, v in self.bandwidth_gbps.items()},
                             gemm_us=dict(self.gemm_us), copy_gbps=self.copy_gbps * ratio,
                             act_quant_us=self.act_quant_us, scatter_us=self.scatter_us, source=source)


@dataclass(frozen=True)
class AcceleratorProfile:
    """A target device class. `support[role][format]` is (Support, reason)."""

    name: str
    description: str
    min_capability: int | None  # CUDA compute capability as 10*major+minor; None for the CPU
    support: dict[str, dict[str, tuple[Support, str]]] = field(hash=False)
    reference_only: bool = False  # every path is the pure-torch reference (the CPU)
    latency: DecodeLatency | None = field(default=None, hash=False)  # None: no performance model (the CPU)

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


# Batch-1 decode on one H100 80GB HBM3 (datasheet 3.35 TB/s), from bench/results/kernels-h100.md: device
# time of GEMMs replayed from a CUDA graph (as serving replays decode), a line fitted through the
# 1x4096x4096 and 1x8192x8192 points of each kernel (stored bytes -> µs):
#   bf16 matmul (cuBLAS)        16.3 / 47.0 µs -> 3280 GB/s + 6.1 µs  (1x14336x4096: 41.4 measured, 42.0 fitted)
#   fp8 W8A8 (kernels.gemm_fp8)   9.9 / 26.3 µs -> 3070 GB/s + 4.4 µs  (1x14336x4096: 24.3 measured, 23.6 fitted)
#   int8 W8A8 (kernels.gemm_int8) 9.3 / 26.3 µs -> 2960 GB/s + 3.6 µs  (1x14336x4096: 22.1 measured, 23.5 fitted)
#   int4 g128 W4A16 (GEMV)        5.5 / 16.7 µs -> 3137 GB/s + 4.2 µs  (least squares over the five
#     M = 1 shapes of the last full run: 28672x8192 1% over, 14336x4096 and 4096x14336 2-3% under,
#     8192x8192 7% under, 4096x4096 27% over)
# DESIGN.md's ceilings agree: the bf16 GEMV reads at 2.2 TB/s under do_bench (60 µs, host time
# included) and a device copy moves 3.0 TB/s (read + write), the figure used for the dequantize
# pass of emulated formats. Activation quantization at M <= 16 takes 1.6-2.1 µs of device time;
# a mixed op's scatter (index_copy_ of one token's columns) is an elementwise kernel of the same
# size class, taken as 2 µs. Past its fixed cost the int4 kernel reads at 94% of the datasheet
# bandwidth: the model says so rather than the 3.88x a perfect W4A16 GEMV would give.
H100_DATASHEET_GBPS = 3350.0
H100_DECODE = DecodeLatency(
    bandwidth_gbps={WIDE_KERNEL: 3280.0, "kernels.gemm_fp8": 3070.0, "kernels.gemm_int8": 2960.0,
                    "kernels.gemm_w4a16": 3137.0},
    gemm_us={WIDE_KERNEL: 6.1, "kernels.gemm_fp8": 4.4, "kernels.gemm_int8": 3.6, "kernels.gemm_w4a16": 4.2,
             DEQUANT_KERNEL: 6.1},
    copy_gbps=3000.0, act_quant_us=1.9, scatter_us=2.0,
    source="H100 80GB HBM3, CUDA-graph decode GEMMs (bench/results/kernels-h100.md)",
)


def _hopper_like(name: str, cap: int, description: str, int8_act: bool = True,
                 latency: DecodeLatency | None = None) -> AcceleratorProfile:
    n, e = Support.native, Support.emulated
    return AcceleratorProfile(
        name=name, description=description, min_capability=cap, latency=latency,
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
                # kernels.decode_attention reads fp8 KV with per-head scales and the runtime attends
                # through it on GPUs, but its cache still stores bf16 (KV quantization is emulated at
                # the k/v projections): native once the cache stores fp8.
                "fp8_e4m3": (e, "fp8 KV storage with per-head scales; attention dequantizes to bf16"),
                "fp8_e5m2": (e, "fp8 KV storage with per-head scales; attention dequantizes to bf16"),
                "int8": (e, "int8 KV cache dequantized to bf16 before attention"),
            },
        },
    )


H100 = register_profile(_hopper_like("h100", 90, "NVIDIA H100 (sm_90): fp8 and int8 tensor cores",
                                     latency=H100_DECODE))
# Not measured: the datasheet bandwidth (L4 300 GB/s GDDR6) at the H100's efficiency per kernel.
L4 = register_profile(_hopper_like("l4", 89, "NVIDIA L4 (sm_89, Ada): fp8 and int8 tensor cores",
                                   latency=H100_DECODE.scaled(300.0, "L4 datasheet 300 GB/s at the H100's "
                                                                     "measured efficiency per kernel")))
A100 = register_profile(AcceleratorProfile(
    name="a100", description="NVIDIA A100 (sm_80): int8 tensor cores, no fp8 tensor cores", min_capability=80,
    # Not measured: A100 80GB SXM's datasheet 2039 GB/s at the H100's efficiency per kernel.
    latency=H100_DECODE.scaled(2039.0, "A100 80GB datasheet 2039 GB/s at the H100's measured efficiency per kernel"),
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
