"""Canary samples: requests re-run in reference precision, ingested in batches and aggregated per window."""
