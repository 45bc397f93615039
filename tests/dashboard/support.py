"""Small helpers the dashboard tests share: the repository root, free ports and polling with a deadline."""
from __future__ import annotations

from pathlib import Path

from tests.polling import free_port, wait_for  # noqa: F401 (re-exported for the dashboard tests)

REPO = Path(__file__).resolve().parents[2]
