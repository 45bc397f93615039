"""Accelerator profiles and the compatibility matrix, synced from the runtime."""
