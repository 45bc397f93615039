"""Serving with shadow canaries: OpenAI-style completions, engine routing and hot swap, reference re-runs off the
request path, canary samples batched to the control plane (over HTTP only), Prometheus metrics."""
from runtime.serving.config import ServeConfig
from runtime.serving.handles import ReferencePool, ServedEngine
from runtime.serving.router import Router, Routes, Slot, unit_hash
from runtime.serving.server import create_app
from runtime.serving.service import ServingService
from runtime.serving.shadow import CanarySample, ShadowJob, ShadowWorker, measure

__all__ = ["CanarySample", "ReferencePool", "Router", "Routes", "ServeConfig", "ServedEngine", "ServingService",
           "ShadowJob", "ShadowWorker", "Slot", "create_app", "measure", "unit_hash"]
