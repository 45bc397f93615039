"""Which engine answers a request, and swapping engines without dropping requests in flight.

Routes are an immutable snapshot. A request takes the snapshot once and keeps its engine to the
end; a swap loads the new engines first and then replaces the one reference, so requests in flight
finish on the old engine while new ones start on the new.
"""
from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from runtime.serving.handles import ServedEngine

CANARY_SALT = "canary"
SHADOW_SALT = "shadow"


def unit_hash(key: str, salt: str) -> float:
    """A deterministic number in [0, 1) for `key`: the same request id always routes the same way."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


class NoEngine(Exception):
    """No engine can answer: nothing loaded yet, or the endpoint only has a shadow deployment."""


@dataclass(frozen=True)
class Slot:
    """An engine in a role: the deployment it serves (None when standalone)."""

    engine: ServedEngine
    deployment_id: int | None = None


@dataclass(frozen=True)
class Routes:
    """The engines of an endpoint: `active` serves the rest, `canary` serves `canary_share`, `shadow` serves nobody."""

    active: Slot | None = None
    canary: Slot | None = None
    canary_share: float = 0.0
    shadow: Slot | None = None
    sample_share: float = 0.0  # shadow-sampling share of requests the active engine serves
    canary_sample_share: float = 0.0
    version: int = field(default=0, compare=False)

    def slots(self) -> list[tuple[str, Slot]]:
        """(role, slot) for each filled role."""
        return [(role, slot) for role, slot in (("active", self.active), ("canary", self.canary),
                                                ("shadow", self.shadow)) if slot is not None]

    def engines(self) -> list[ServedEngine]:
        return [slot.engine for _, slot in self.slots()]

    def pick(self, request_id: str) -> tuple[str, Slot]:
        """(route, slot) of the engine that answers `request_id`; the canary alone serves when there is no active."""
        if self.canary is not None and (self.active is None or unit_hash(request_id, CANARY_SALT) < self.canary_share):
            return "canary", self.canary
        if self.active is not None:
            return "active", self.active
        raise NoEngine("no engine serves this endpoint yet" + (
            " (its only deployment is in shadow, which serves nobody)" if self.shadow is not None else ""))

    def shadow_targets(self, request_id: str, route: str, slot: Slot) -> list[tuple[str, Slot]]:
        """(role, slot) of each engine this request is re-run against in reference precision.

        The serving engine for its role's sampled share; a shadow deployment for every request.
        """
        share = self.canary_sample_share if route == "canary" else self.sample_share
        targets = [(route, slot)] if unit_hash(request_id, SHADOW_SALT) < share else []
        if self.shadow is not None:
            targets.append(("shadow", self.shadow))
        return targets


class Router:
    """Holds the current Routes; `swap` replaces them atomically and tells listeners."""

    def __init__(self, routes: Routes | None = None):
        self._routes = routes or Routes()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[Routes, Routes], None]] = []

    @property
    def routes(self) -> Routes:
        return self._routes  # one reference read: atomic under the GIL

    def on_swap(self, listener: Callable[[Routes, Routes], None]) -> None:
        """Calls `listener(old, new)` after every swap."""
        self._listeners.append(listener)

    def swap(self, routes: Routes) -> bool:
        """Installs `routes` (engines already loaded); False when nothing changed."""
        with self._lock:
            old = self._routes
            if routes == old:
                return False
            self._routes = replace(routes, version=old.version + 1)
            new = self._routes
        for listener in self._listeners:
            listener(old, new)
        return True
