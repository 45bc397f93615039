"""Registered models: local transformers folders pinned by content hash."""
