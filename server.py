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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import streamlit as st
from starlette.middleware import Middleware
from streamlit import config

from parley.app_pages.routes import ROUTES
from parley.app_pages.security_headers import SecurityHeaders
from parley.app_pages.state import close_all

config.set_option("client.showErrorDetails", "none")
config.set_option("client.toolbarMode", "minimal")


@asynccontextmanager
async def lifespan(_app: Any) -> AsyncIterator[None]:
    """At shutdown, background work (upkeep, outbox drains) finishes or is cut off
    cleanly while the interpreter can still run it."""
    yield
    await asyncio.to_thread(close_all)


# Middleware given to st.App wraps Streamlit's own: every response passes through it.
app = st.App("app.py", routes=ROUTES, middleware=[Middleware(SecurityHeaders)], lifespan=lifespan)
