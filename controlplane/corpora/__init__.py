"""Corpora: content-addressed JSONL text sets with a coverage profile."""
