"""Alerts raised on a deployment, with their evidence."""
