"""Calibrations: per-tensor statistics from a corpus run through a model (rows written by jobs)."""
