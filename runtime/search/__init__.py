"""Automatic mixed-precision search: spend bits where KL to the reference says they matter (issue 7)."""
from runtime.search.allocation import Allocation, Budget, OpAllocation, allocate, stored_bits
from runtime.search.candidates import CANDIDATES, DEFAULT_CANDIDATES, Candidate, admissible, get_candidates
from runtime.search.emit import emit_recipe
from runtime.search.latency import allocate_for_latency, predict_us
from runtime.search.search import SearchResult, op_candidates, search
from runtime.search.sensitivity import OpSensitivity, Sensitivity, measure_sensitivity, quantized_module, recombine

__all__ = [
    "CANDIDATES", "DEFAULT_CANDIDATES", "Allocation", "Budget", "Candidate", "OpAllocation", "OpSensitivity",
    "SearchResult", "Sensitivity", "admissible", "allocate", "allocate_for_latency", "emit_recipe", "get_candidates",
    "measure_sensitivity", "op_candidates", "predict_us", "quantized_module", "recombine", "search", "stored_bits",
]
