"""Loading registered models for validation and tokenizing, with a small cache (loads are slow)."""
from __future__ import annotations

import threading
from collections import OrderedDict

from controlplane.errors import Conflict, InvalidInput
from controlplane.model_registry.models import RegisteredModel
from runtime.errors import InputError
from runtime.models import LoadedModel, load_model

_CACHE_SIZE = 2  # a model held in memory per entry: keep it small
_cache: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
_lock = threading.Lock()


def load(model: RegisteredModel, *, loc: tuple = ("body", "model_id")) -> LoadedModel:
    """The registered model loaded on the CPU; Conflict if its folder changed since registration."""
    key = (model.path, model.content_hash)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    try:
        loaded = load_model(model.path)
    except InputError:
        raise
    except Exception as exc:  # transformers raises many types for a broken folder; the caller gets a 422
        raise InvalidInput(f"model {model.name!r} at {model.path} cannot be loaded: "
                           f"{type(exc).__name__}: {exc}", loc=loc) from None
    if loaded.content_hash != model.content_hash:
        raise Conflict(f"model {model.name!r} changed on disk since registration "
                       f"({model.content_hash} -> {loaded.content_hash}); register it under a new name", loc=loc)
    with _lock:
        _cache[key] = loaded
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return loaded
