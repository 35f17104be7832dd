"""Routes for operators and their proxies: `/healthz`, `/readyz` and `/metrics`.

- `/healthz`: the process answers (a proxy's liveness check). Touches nothing else.
- `/readyz`: the database answers and is at this version's schema, and the vector store
  is reachable: 200 with each check's result, else 503 with a sentence per failed check
  (for monitoring and orchestrators; the proxy checks `/healthz`, because the database
  and the vector store are every process's: see `deploy/haproxy.cfg.in`).
- `/metrics`: Prometheus text (`parley.core.metrics`), plus the signed-in sessions in
  use across every process, read from the database at the scrape.

None of them shows a URL, a secret, a user's name or a word anyone wrote. Served beside
the app by `server.py`; a proxy should let only the monitoring network reach `/metrics`
(`deploy/haproxy.cfg` does).
"""

from __future__ import annotations

import json
import logging
import threading
import time

from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from parley.app_pages.routes import route_services
from parley.core.config import get_settings
from parley.core.metrics import exposition
from parley.wiring.health import ActiveSessions, readiness

log = logging.getLogger(__name__)


def healthz(_request: Request) -> Response:
    return _plain("ok\n")


_READY_FOR_S = 2.0  # a flood of /readyz costs one check every two seconds, not one each
_last_ready: tuple[float, dict[str, object]] | None = None
_ready_lock = threading.Lock()


def readyz(_request: Request) -> Response:
    global _last_ready
    with _ready_lock:
        if _last_ready is not None and time.monotonic() - _last_ready[0] < _READY_FOR_S:
            return _json(_last_ready[1])
        body = _check_ready()
        _last_ready = (time.monotonic(), body)
        return _json(body)


def _check_ready() -> dict[str, object]:
    try:
        settings = get_settings()
        database = route_services().database
    except Exception:  # the settings themselves are wrong: nothing else can be checked
        log.warning("/readyz: the settings cannot be read, or the database opened.")
        return {"ready": False, "checks": {"settings": "The settings cannot be read."}}
    checks = readiness(settings, database)
    return {"ready": all(v == "ok" for v in checks.values()), "checks": checks}


def metrics(_request: Request) -> Response:
    registry = CollectorRegistry()
    try:
        registry.register(ActiveSessions(route_services().database))
    except Exception:
        log.warning("/metrics: the database could not be opened; sessions left out.")
    return Response(exposition(registry), media_type="text/plain; version=0.0.4; charset=utf-8")


def _plain(body: str, status: int = 200) -> Response:
    response = PlainTextResponse(body, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def _json(body: dict[str, object]) -> Response:
    ready = bool(body.get("ready"))
    response = Response(
        json.dumps(body), status_code=200 if ready else 503, media_type="application/json"
    )
    response.headers["Cache-Control"] = "no-store"
    return response


ROUTES = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
