"""Drift analysis: canary samples -> sequential test and window analysis -> alert -> automatic rollback."""
