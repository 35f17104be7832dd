"""HTTP routes beside the Streamlit app: they set and clear the sign-in cookie.

A Streamlit script cannot set an `HttpOnly` cookie, so a successful sign-in sends
the browser to `/auth/session?ticket=…`, which exchanges the one-time ticket for the
session cookie (`HttpOnly`, `SameSite=Strict`, `Secure` over HTTPS) and sends it back
to the app; `/auth/logout` clears the cookie. Served by `server.py` (`st.App`).
"""

from __future__ import annotations

from functools import cache

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from auth import COOKIE_NAME, SessionService
from parley.config import get_settings
from wiring.services import build_sessions_alone


@cache
def _sessions() -> SessionService:
    return build_sessions_alone(get_settings())


def _is_https(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "")
    return request.url.scheme == "https" or forwarded.split(",")[0].strip() == "https"


async def exchange_ticket(request: Request) -> Response:
    response = RedirectResponse("/", status_code=303)
    response.headers["Cache-Control"] = "no-store"
    ticket = request.query_params.get("ticket", "")
    cookie = _sessions().exchange(ticket) if ticket else None
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


async def clear_cookie(request: Request) -> Response:
    response = RedirectResponse("/", status_code=303)
    response.headers["Cache-Control"] = "no-store"
    response.delete_cookie(COOKIE_NAME, path="/", samesite="strict", secure=_is_https(request))
    return response


ROUTES = [
    Route("/auth/session", exchange_ticket, methods=["GET"]),
    Route("/auth/logout", clear_cookie, methods=["GET"]),
]
