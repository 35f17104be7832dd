"""HTTP routes beside the Streamlit app: they set and clear the sign-in cookie.

A Streamlit script cannot set an `HttpOnly` cookie, so a successful sign-in sends
the browser to `/session/start?ticket=…`, which exchanges the one-time ticket for the
session cookie (`HttpOnly`, `SameSite=Strict`, `Secure` over HTTPS) and sends it back
to the app; `/session/end` clears the cookie. Served by `server.py` (`st.App`).
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from auth import COOKIE_NAME, SessionService
from parley.config import get_settings
from wiring.services import build_sessions_alone

_BUILT: dict[str, SessionService] = {}
_BUILT_LOCK = threading.Lock()


def _sessions() -> SessionService:
    """Sessions for the current settings; a new database URL or secret builds anew."""
    settings = get_settings()
    key = settings.fingerprint()
    with _BUILT_LOCK:
        if key not in _BUILT:
            _BUILT.clear()
            _BUILT[key] = build_sessions_alone(settings)
        return _BUILT[key]


def _is_https(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "")
    return request.url.scheme == "https" or forwarded.split(",")[0].strip() == "https"


def _from_this_site(request: Request) -> bool:
    """True when the browser says the navigation came from Parley's own pages.

    A ticket is not bound to the browser that signed in, so a ticket URL sent from
    elsewhere (a link in a mail, another site) must not plant someone's session in
    this browser (login CSRF): browsers mark such a navigation `Sec-Fetch-Site:
    cross-site` (or `none` when typed), and Parley's own redirect `same-origin`.
    A browser too old to send the header must send a same-origin `Referer`.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    referer = urlsplit(request.headers.get("referer", ""))
    return bool(referer.netloc) and referer.netloc == request.url.netloc


def exchange_ticket(request: Request) -> Response:
    # A plain `def`: Starlette runs it in its thread pool, so the database call never
    # holds up the event loop that streams everyone's answers.
    response = RedirectResponse("/", status_code=303)
    response.headers["Cache-Control"] = "no-store"
    ticket = request.query_params.get("ticket", "")
    cookie = _sessions().exchange(ticket) if ticket and _from_this_site(request) else None
    if cookie is not None:
        lifetime_s = get_settings().session_lifetime_hours * 3600
        response.set_cookie(
            COOKIE_NAME,
            cookie,
            max_age=lifetime_s,
            path="/",
            httponly=True,
            samesite="strict",
            secure=_is_https(request),
        )
    return response


def clear_cookie(request: Request) -> Response:
    # After an OIDC sign-in, Streamlit's own /auth/logout clears its identity cookie next
    # (and ends the provider's session); the only other place to go is the app.
    then = "/auth/logout" if request.query_params.get("then") == "oidc" else "/"
    response = RedirectResponse(then, status_code=303)
    response.headers["Cache-Control"] = "no-store"
    response.delete_cookie(COOKIE_NAME, path="/", samesite="strict", secure=_is_https(request))
    return response


# Not under /auth/: Streamlit serves /auth/login and /auth/logout for `st.login`, and
# routes given to `st.App` come first, so a route there would hide Streamlit's.
ROUTES = [
    Route("/session/start", exchange_ticket, methods=["GET"]),
    Route("/session/end", clear_cookie, methods=["GET"]),
]
