"""HTTP routes beside the Streamlit app: they set and clear the sign-in cookie.

A Streamlit script cannot set an `HttpOnly` cookie, so a successful sign-in sends
the browser to `/session/start?ticket=…`, which exchanges the one-time ticket for the
session cookie (`HttpOnly`, `SameSite=Strict`, `Secure` over HTTPS) and sends it back
to the app. Ending a session is a POST to `/session/end` with the same same-origin
check (a GET there only shows a page whose form posts it, submitted at once by a
same-origin script when the app itself sent the browser there), so another site can
neither plant a session nor end one. Served by `server.py` (`st.App`).

No route answers a bare 500: a database that is busy or unreachable gives a short
page with a sentence (503), and the browser can go back to the app.
"""

from __future__ import annotations

import html
import logging
import threading
from collections.abc import Callable
from functools import wraps
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from parley.app_pages.words import say
from parley.auth import COOKIE_NAME, SessionService
from parley.core.config import Settings, get_settings
from parley.core.errors import ParleyError
from parley.wiring.factories import build_sessions, open_database

log = logging.getLogger(__name__)


class RouteServices:
    """What the routes beside the app use: their own database handle, and sessions made on
    first use (a readiness check must not need the schema that sessions need)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.database = open_database(settings)
        self._sessions: SessionService | None = None
        self._lock = threading.Lock()

    @property
    def sessions(self) -> SessionService:
        with self._lock:
            if self._sessions is None:
                self._sessions = build_sessions(self._settings, self.database)
            return self._sessions


_BUILT: dict[str, RouteServices] = {}
_BUILT_LOCK = threading.Lock()


def route_services() -> RouteServices:
    """For the current settings; a new database URL or secret builds anew (and lets the
    old database handle go)."""
    settings = get_settings()
    key = settings.fingerprint()
    with _BUILT_LOCK:
        if key not in _BUILT:
            for old in _BUILT.values():
                old.database.dispose()
            _BUILT.clear()
            _BUILT[key] = RouteServices(settings)
        return _BUILT[key]


def _sessions() -> SessionService:
    return route_services().sessions


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


def _page(title: str, body: str, *, status: int = 200, script: str | None = None) -> Response:
    """A minimal page of Parley's own: no inline script or style (the CSP allows none)."""
    tag = f'<script src="{script}"></script>' if script else ""
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)} · Parley</title></head><body>{body}{tag}</body></html>"
    )
    response = HTMLResponse(page, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def _never_a_bare_500(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
    """A failure in a route becomes a sentence on a page, never Starlette's bare 500."""

    @wraps(handler)
    def guarded(request: Request) -> Response:
        try:
            return handler(request)
        except ParleyError as exc:
            sentence = say(exc)
            log.warning("%s failed: %s", request.url.path, exc)
        except Exception:
            sentence = "Something went wrong on Parley's side."
            log.exception("%s failed", request.url.path)
        return _page(
            "Please try again",
            f'<p>{html.escape(sentence)}</p><p><a href="/">Back to Parley</a></p>',
            status=503,
        )

    return guarded


@_never_a_bare_500
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


END_SCRIPT = "/session/end.js"


def end_page(request: Request) -> Response:
    """GET /session/end: a page whose form posts the sign-out. When the app sent the
    browser here (same-origin), a same-origin script submits it at once; opened from
    elsewhere, it waits for a click, so a link on another site ends nothing."""
    then = "oidc" if request.query_params.get("then") == "oidc" else ""
    action = "/session/end?then=oidc" if then else "/session/end"
    form = (
        f'<form id="end" method="post" action="{action}">'
        "<p>Signing you out of Parley…</p>"
        '<button type="submit">Sign out</button></form>'
    )
    automatic = request.headers.get("sec-fetch-site") == "same-origin"
    return _page("Sign out", form, script=END_SCRIPT if automatic else None)


def end_script(_request: Request) -> Response:
    response = Response('document.getElementById("end").submit();\n', media_type="text/javascript")
    response.headers["Cache-Control"] = "no-store"
    return response


@_never_a_bare_500
def clear_cookie(request: Request) -> Response:
    """POST /session/end, from Parley's own page only: the cookie goes. (The server-side
    session was ended by the app before it sent the browser here.)"""
    if not _from_this_site(request):
        return _page(
            "Not signed out",
            "<p>Signing out must start from Parley's own page.</p>"
            '<p><a href="/">Back to Parley</a></p>',
            status=403,
        )
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
    Route("/session/end", end_page, methods=["GET"]),
    Route("/session/end", clear_cookie, methods=["POST"]),
    Route(END_SCRIPT, end_script, methods=["GET"]),
]
