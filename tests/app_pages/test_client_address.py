"""X-Forwarded-For is believed only from the proxies the settings trust."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from parley.app_pages.client_address import trusted_proxy_headers
from parley.core.config import Settings


def client_seen(trusted: list[str], forwarded: str) -> str:
    def echo(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.client.host if request.client else "")

    app = Starlette(
        routes=[Route("/", echo)],
        middleware=[trusted_proxy_headers(Settings(trusted_proxies=trusted))],
    )
    # Starlette's test client connects from the address "testclient".
    return TestClient(app).get("/", headers={"X-Forwarded-For": forwarded}).text


def test_a_trusted_proxy_names_the_client() -> None:
    assert client_seen(["testclient"], "203.0.113.9") == "203.0.113.9"


def test_an_untrusted_peer_cannot_name_itself_someone_else() -> None:
    assert client_seen([], "203.0.113.9") == "testclient"
    assert client_seen(["10.0.0.1"], "203.0.113.9") == "testclient"


def test_a_client_cannot_slip_an_address_in_front_of_the_proxys() -> None:
    # The proxy appends the real peer; whatever the client sent before it is not believed.
    assert client_seen(["testclient"], "198.51.100.1, 203.0.113.9") == "203.0.113.9"
