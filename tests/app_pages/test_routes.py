"""The cookie routes beside the app: a ticket from Parley's own page buys the cookie once;
a ticket URL opened from elsewhere plants nothing (login CSRF)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from parley.app_pages import routes
from parley.auth import COOKIE_NAME
from parley.cli.main import main as cli_main
from parley.core.config import get_settings
from parley.core.domain import Principal
from parley.core.errors import StorageUnavailable
from parley.wiring.services import Services, build_services
from tests.support import ROOT


@pytest.fixture
def app_services() -> Iterator[Services]:
    assert cli_main(["db", "upgrade"]) == 0
    routes._BUILT.clear()
    built = build_services(get_settings())
    yield built
    built.close()
    routes._BUILT.clear()


@pytest.fixture
def client() -> TestClient:
    return TestClient(Starlette(routes=routes.ROUTES), base_url="http://parley.test")


def ticket_for(services: Services) -> tuple[Principal, str]:
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    return alice, services.sessions.start(alice)[1]


SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin"}


def test_a_ticket_from_the_app_buys_an_httponly_strict_cookie_once(
    app_services: Services, client: TestClient
) -> None:
    alice, ticket = ticket_for(app_services)
    response = client.get(
        f"/session/start?ticket={ticket}", headers=SAME_ORIGIN, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"] == "/"
    header = response.headers["set-cookie"]
    assert header.startswith(f"{COOKIE_NAME}=") and "HttpOnly" in header
    assert "SameSite=strict" in header and "Secure" not in header  # plain http here
    cookie = response.cookies[COOKIE_NAME]
    resumed = app_services.sessions.resume(cookie)
    assert resumed is not None and resumed.principal == alice
    again = client.get(
        f"/session/start?ticket={ticket}", headers=SAME_ORIGIN, follow_redirects=False
    )
    assert "set-cookie" not in again.headers  # a ticket works once


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "none"},  # typed or pasted
        {"Referer": "https://evil.example/page"},
        {},
    ],
)
def test_a_ticket_url_opened_from_elsewhere_plants_nothing(
    app_services: Services, client: TestClient, headers: dict[str, str]
) -> None:
    _, ticket = ticket_for(app_services)
    response = client.get(
        f"/session/start?ticket={ticket}", headers=headers, follow_redirects=False
    )
    assert response.status_code == 303 and "set-cookie" not in response.headers
    # The refused ticket is still good for the browser that signed in.
    ok = client.get(f"/session/start?ticket={ticket}", headers=SAME_ORIGIN, follow_redirects=False)
    assert COOKIE_NAME in ok.cookies


def test_behind_https_the_cookie_is_secure(app_services: Services, client: TestClient) -> None:
    _, ticket = ticket_for(app_services)
    response = client.get(
        f"/session/start?ticket={ticket}",
        headers={**SAME_ORIGIN, "X-Forwarded-Proto": "https"},
        follow_redirects=False,
    )
    assert "Secure" in response.headers["set-cookie"]


def test_logout_is_a_post_from_this_site_that_clears_the_cookie(client: TestClient) -> None:
    response = client.post("/session/end", headers=SAME_ORIGIN, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/"
    assert (
        f'{COOKIE_NAME}=""' in response.headers["set-cookie"]
        or "Max-Age=0" in response.headers["set-cookie"]
    )
    oidc = client.post("/session/end?then=oidc", headers=SAME_ORIGIN, follow_redirects=False)
    assert oidc.headers["location"] == "/auth/logout"


@pytest.mark.parametrize(
    "headers",
    [{"Sec-Fetch-Site": "cross-site"}, {"Referer": "https://evil.example/page"}, {}],
)
def test_a_logout_from_elsewhere_ends_nothing(client: TestClient, headers: dict[str, str]) -> None:
    response = client.post("/session/end", headers=headers, follow_redirects=False)
    assert response.status_code == 403 and "set-cookie" not in response.headers
    assert "must start from Parley's own page" in response.text
    # A GET (a link, an image) clears nothing either: it shows a form to post.
    shown = client.get("/session/end", headers=headers, follow_redirects=False)
    assert shown.status_code == 200 and "set-cookie" not in shown.headers
    assert 'method="post"' in shown.text and "/session/end.js" not in shown.text


def test_the_app_sends_the_browser_to_a_form_that_posts_itself(client: TestClient) -> None:
    shown = client.get("/session/end?then=oidc", headers=SAME_ORIGIN)
    assert 'action="/session/end?then=oidc"' in shown.text
    assert '<script src="/session/end.js"></script>' in shown.text
    script = client.get("/session/end.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "submit()" in script.text


def test_a_route_never_answers_a_bare_500(
    app_services: Services, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, ticket = ticket_for(app_services)

    def locked(_ticket: str) -> str:
        raise StorageUnavailable("database is locked")

    monkeypatch.setattr(routes._sessions(), "exchange", locked)
    response = client.get(f"/session/start?ticket={ticket}", headers=SAME_ORIGIN)
    assert response.status_code == 503
    assert StorageUnavailable().user_message in response.text
    assert "Traceback" not in response.text and "set-cookie" not in response.headers

    def broken(_ticket: str) -> str:
        raise RuntimeError("a bug")

    monkeypatch.setattr(routes._sessions(), "exchange", broken)
    response = client.get(f"/session/start?ticket={ticket}", headers=SAME_ORIGIN)
    assert response.status_code == 503 and "went wrong on Parley&#x27;s side" in response.text
