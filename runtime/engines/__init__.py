"""Engines: build (quantize by plan, write atomically) and load (swap modules in)."""
from runtime.engines.build import Engine, build, engine_id
from runtime.engines.load import LoadedEngine, load_engine

__all__ = ["Engine", "LoadedEngine", "build", "engine_id", "load_engine"]
