"""Quantized modules that execute a plan: linears and the KV cache."""
from runtime.modules.kv_cache import KVCacheQuant, attach, kv_geometry, kv_projections
from runtime.modules.mixed_linear import ChannelPart, MixedLinear
from runtime.modules.quant_linear import ActivationStats, QuantLinear

__all__ = ["ActivationStats", "ChannelPart", "KVCacheQuant", "MixedLinear", "QuantLinear", "attach", "kv_geometry",
           "kv_projections"]
