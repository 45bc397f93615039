"""Per-browser-session plumbing: the API client for the key in the sidebar, and errors shown where they happen."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import streamlit as st

from dashboard.client import ApiError, PopsClient
from dashboard.settings import get_settings

T = TypeVar("T")

URL_KEY, API_KEY_KEY = "api_url", "api_key"


def sidebar_connection() -> None:
    """The sidebar's connection widgets, defaulted from the settings once per session."""
    settings = get_settings()
    st.session_state.setdefault(URL_KEY, settings.api_url)
    st.session_state.setdefault(API_KEY_KEY, settings.api_key.get_secret_value() if settings.api_key else "")
    with st.sidebar:
        st.text_input("Control plane URL", key=URL_KEY)
        st.text_input("API key", key=API_KEY_KEY, type="password",
                      help="Actions need the approver role (roll back, promote) or submitter (pause, resume); "
                           "the server checks it.")
        try:
            me = client().whoami()
        except ApiError as exc:
            st.warning(f"Not signed in: {exc.message}")
        else:
            st.caption(f"Signed in as **{me['owner']}** ({me['role']}, key {me['prefix']}…)")


def client() -> PopsClient:
    """The session's client for the URL and key in the sidebar (rebuilt when either changes)."""
    url = st.session_state.get(URL_KEY) or get_settings().api_url
    key = st.session_state.get(API_KEY_KEY) or None
    cached = st.session_state.get("_client")
    if cached is None or cached[0] != (url, key):
        if cached is not None:
            cached[1].close()
        cached = ((url, key), PopsClient(url, key, timeout_s=get_settings().timeout_s))
        st.session_state["_client"] = cached
    return cached[1]


def load(what: str, read: Callable[[], T]) -> T:
    """Runs one API read; on failure shows the server's reason and stops the page."""
    try:
        return read()
    except ApiError as exc:
        st.error(f"Could not load {what}: {exc.message}")
        st.stop()
        raise  # st.stop() raises; this keeps type checkers honest


@contextmanager
def action(done: str) -> Iterator[None]:
    """Wraps one write: success is flashed after the rerun, a refusal (role, version, stage) is shown now."""
    try:
        yield
    except ApiError as exc:
        st.error(f"Refused: {exc.message}")
        return
    st.session_state["_flash"] = done
    st.rerun()


def flash() -> None:
    """Shows the last action's success message once."""
    message = st.session_state.pop("_flash", None)
    if message:
        st.success(message)
