"""Parley served as an ASGI app (`streamlit run server.py`, as `make run` does).

`app.py` is the Streamlit script; this adds the sign-in cookie routes
(`parley/app_pages/routes.py`), the security headers on every response
(`parley/app_pages/security_headers.py`: a Content-Security-Policy that lets the browser load
nothing from elsewhere, nosniff, no referrer to other sites, no framing) and sets, in
code, the options that must hold wherever the app is started from (no tracebacks or
error details in the browser).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import streamlit as st
from starlette.middleware import Middleware
from streamlit import config

from parley.app_pages.client_address import trusted_proxy_headers
from parley.app_pages.operator_routes import ROUTES as OPERATOR_ROUTES
from parley.app_pages.routes import ROUTES
from parley.app_pages.security_headers import SecurityHeaders
from parley.app_pages.state import close_all
from parley.core.config import get_settings
from parley.core.errors import ParleyError
from parley.core.metrics import process_ended
from parley.retrieval.documents import MAX_FILE_BYTES
from parley.wiring.factories import streamlit_cookie_secret

config.set_option("client.showErrorDetails", "none")
config.set_option("client.toolbarMode", "minimal")
# Streamlit runs a full garbage collection after every script run (`runner.postScriptGC`):
# with the embedding runtime and Chroma loaded that is about a tenth of a second of CPU per
# rerun, several per answer (`python -m parley.bench.load` found it). The app freezes its
# start-up heap instead (`parley/app_pages/state.py`), and the collector's own thresholds
# handle the rest. Streamlit's watcher of the script's files is for editing, not serving.
# Uploads larger than Parley takes are refused by the server before they are read (the
# uploader's own limit is only what the page says).
for _option, _value in (
    ("runner.postScriptGC", False),
    ("server.fileWatcherType", "none"),
    ("server.maxUploadSize", MAX_FILE_BYTES // 2**20),
):
    if not config.is_manually_set(_option):
        config.set_option(_option, _value)


def _share_streamlit_cookie_secret() -> None:
    """Streamlit signs its XSRF and OIDC cookies with a secret random per process unless
    one is set: behind a proxy, a browser moved to another process would be refused.
    Unless the operator set one, it is derived from Parley's session secret."""
    if config.is_manually_set("server.cookieSecret"):
        return
    try:
        secret = streamlit_cookie_secret(get_settings())
    except ParleyError:
        return  # the app's first page says what is wrong with the settings
    config.set_option("server.cookieSecret", secret)


_share_streamlit_cookie_secret()


def _switch_interval_s() -> float:
    """How often Python hands the GIL to another thread. A page run is mostly short
    database round trips; each gives up the GIL and must win it back from the threads
    streaming other people's answers, which Python hands over every 5 ms by default.
    Parley uses 1 ms (`PARLEY_SWITCH_INTERVAL_MS`; `python -m parley.bench.load` measured
    both: docs/benchmarks.md)."""
    try:
        return get_settings().switch_interval_ms / 1000
    except ParleyError:
        return 0.001  # the app's first page says what is wrong with the settings


sys.setswitchinterval(_switch_interval_s())


def _middleware() -> list[Middleware]:
    """The proxies whose X-Forwarded-For names the client (outermost), then the headers."""
    chain = [Middleware(SecurityHeaders)]
    with contextlib.suppress(ParleyError):  # the app's first page says what is wrong
        chain.insert(0, trusted_proxy_headers(get_settings()))
    return chain


@asynccontextmanager
async def lifespan(_app: Any) -> AsyncIterator[None]:
    """At shutdown, background work (upkeep, outbox drains) finishes or is cut off
    cleanly while the interpreter can still run it."""
    yield
    await asyncio.to_thread(close_all)
    process_ended(os.getpid())  # its live gauges leave the host's sums


# Middleware given to st.App wraps Streamlit's own: every response passes through it.
app = st.App(
    "app.py",
    routes=[*ROUTES, *OPERATOR_ROUTES],
    middleware=_middleware(),
    lifespan=lifespan,
)
