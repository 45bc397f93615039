"""Recipes: immutable, versioned precision contracts."""
