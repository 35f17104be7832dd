"""Routes for operators and their proxies: `/healthz`, `/readyz` and `/metrics`.

- `/healthz`: the process answers (a proxy's liveness check). Touches nothing else.
- `/readyz`: the database answers and is at this version's schema, and the vector store
  is reachable: 200 with each check's result, else 503 with a sentence per failed check
  (a proxy stops sending new browsers to a process that is not ready).
- `/metrics`: Prometheus text (`parley.core.metrics`), plus the signed-in sessions in
  use across every process, read from the database at the scrape.

None of them shows a URL, a secret, a user's name or a word anyone wrote. Served beside
the app by `server.py`; a proxy should let only the monitoring network reach `/metrics`
(`deploy/haproxy.cfg` does).
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from parley.app_pages.routes import route_services
from parley.core.config import Settings, get_settings
from parley.core.metrics import exposition
from parley.store.db import Database
from parley.store.migrate import is_current
from parley.store.models import LoginSession

log = logging.getLogger(__name__)

ACTIVE_WITHIN = timedelta(minutes=5)


def healthz(_request: Request) -> Response:
    return _plain("ok\n")


def readyz(_request: Request) -> Response:
    checks: dict[str, str] = {}
    try:
        settings = get_settings()
    except Exception:  # the settings themselves are wrong: nothing else can be checked
        return _json({"ready": False, "checks": {"settings": "The settings cannot be read."}})
    checks["database"] = _check_database()
    checks["vector_store"] = _check_vector_store(settings)
    return _json({"ready": all(v == "ok" for v in checks.values()), "checks": checks})


def metrics(_request: Request) -> Response:
    registry = CollectorRegistry()
    try:
        registry.register(_ActiveSessions(route_services().database))
    except Exception:
        log.warning("/metrics: the database could not be opened; sessions left out.")
    return Response(exposition(registry), media_type="text/plain; version=0.0.4; charset=utf-8")


class _ActiveSessions(Collector):
    """Signed-in sessions used within the last five minutes, across every process."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = datetime.now(UTC)
        try:
            with self._db.session() as session:
                count = session.scalar(
                    select(func.count(LoginSession.id)).where(
                        LoginSession.revoked_at.is_(None),
                        LoginSession.expires_at > now,
                        LoginSession.last_seen_at > now - ACTIVE_WITHIN,
                    )
                )
        except Exception:
            log.warning("/metrics: active sessions could not be counted.")
            return
        yield GaugeMetricFamily(
            "parley_active_sessions",
            "Signed-in sessions used in the last five minutes (every process)",
            value=float(count or 0),
        )


def _check_database() -> str:
    try:
        database = route_services().database
        with database.session() as session:
            session.execute(text("SELECT 1"))
        if not is_current(database):
            return "The database is not at this version's schema: run `parley db upgrade`."
    except Exception:
        return "The database does not answer."
    return "ok"


def _check_vector_store(settings: Settings) -> str:
    if settings.chroma_url is not None:
        url = settings.chroma_url.get_secret_value().rstrip("/") + "/api/v2/heartbeat"
        started = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=2.0) as answer:  # noqa: S310 (a setting)
                ok = answer.status == 200
        except Exception:
            ok = False
        if not ok:
            log.warning("/readyz: Chroma did not answer within %.1f s.", time.monotonic() - started)
            return "The Chroma server does not answer."
        return "ok"
    folder = settings.data_dir
    if not (folder.is_dir() and os.access(folder, os.W_OK)):
        return "The data directory cannot be written."
    return "ok"


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
