"""Evaluations: an engine measured against its reference, with gates and a verdict (rows written by jobs)."""
