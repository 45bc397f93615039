"""Numeric formats, granularities and quantize/dequantize references."""
from runtime.formats.quantize import QTensor, QuantStats, fake_quantize, quantize, reduce_amax
from runtime.formats.spec import (
    FORMAT_NAMES,
    FORMATS,
    WIDE_FORMATS,
    Format,
    Granularity,
    PerChannel,
    PerGroup,
    PerTensor,
    PerToken,
    get_format,
)

__all__ = [
    "FORMATS", "FORMAT_NAMES", "WIDE_FORMATS", "Format", "Granularity", "PerChannel", "PerGroup",
    "PerTensor", "PerToken", "QTensor", "QuantStats", "fake_quantize", "get_format", "quantize", "reduce_amax",
]
