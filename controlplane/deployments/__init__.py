"""Deployments: an engine serving an endpoint, moved through declared rollout stages."""
