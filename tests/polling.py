"""Free ports and polling with a deadline, for tests that start real servers and workers."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from controlplane.demo.targets import free_port, wait

__all__ = ["free_port", "wait_for"]


def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str = "condition", interval: float = 0.1) -> Any:
    """Polls until `predicate()` is truthy and returns it; fails the test naming `what` after `timeout` seconds."""
    return wait(predicate, timeout=timeout, what=what, interval=interval, error=pytest.fail.Exception)
