"""Parley served as an ASGI app (`streamlit run server.py`, as `make run` does).

`app.py` is the Streamlit script; this adds the sign-in cookie routes
(`app_pages/routes.py`) and sets, in code, the options that must hold wherever
the app is started from (no tracebacks or error details in the browser).
"""

from __future__ import annotations

import streamlit as st
from streamlit import config

from app_pages.routes import ROUTES

config.set_option("client.showErrorDetails", "none")
config.set_option("client.toolbarMode", "minimal")

app = st.App("app.py", routes=ROUTES)
