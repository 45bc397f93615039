"""Engines: built, content-addressed artifacts with their plan manifest (rows written by jobs)."""
