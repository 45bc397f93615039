"""Evaluation: a candidate against its reference precision, per slice and length bucket, with gates."""
from runtime.evaluation.evaluate import SQNR_CEILING_DB, EvaluationReport, evaluate
from runtime.evaluation.gates import GATE_METRICS, Gate, GateResult, apply_gates, parse_gates
from runtime.evaluation.metrics import (
    Metrics,
    kl_divergence,
    perplexity,
    sqnr_db,
    token_nll,
    top1_agreement,
    top1_match,
)

__all__ = [
    "GATE_METRICS", "SQNR_CEILING_DB", "EvaluationReport", "Gate", "GateResult", "Metrics", "apply_gates",
    "evaluate", "kl_divergence", "parse_gates", "perplexity", "sqnr_db", "token_nll", "top1_agreement", "top1_match",
]
