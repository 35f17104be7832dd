"""What `/readyz` and `/metrics` ask of the process's parts (the pages' routes call these:
a page never touches the database itself).

- `readiness`: the database answers and is at this version's schema; the vector store is
  reachable (a Chroma server's heartbeat, or a writable data directory). A sentence per
  failed check, never a URL.
- `ActiveSessions`: a Prometheus collector of the signed-in sessions used in the last
  five minutes, across every process (read from the database at the scrape).
"""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text

from parley.core.config import Settings
from parley.store.db import Database
from parley.store.migrate import is_current
from parley.store.models import LoginSession

log = logging.getLogger(__name__)

ACTIVE_WITHIN = timedelta(minutes=5)
OK = "ok"


def readiness(settings: Settings, database: Database) -> dict[str, str]:
    """Each check's result: "ok", or a sentence saying what is not ready."""
    return {"database": _database(database), "vector_store": _vector_store(settings)}


def _database(database: Database) -> str:
    try:
        with database.session() as session:
            session.execute(text("SELECT 1"))
        if not is_current(database):
            return "The database is not at this version's schema: run `parley db upgrade`."
    except Exception:
        log.warning("/readyz: the database does not answer.")
        return "The database does not answer."
    return OK


def _vector_store(settings: Settings) -> str:
    if settings.chroma_url is not None:
        url = settings.chroma_url.get_secret_value().rstrip("/") + "/api/v2/heartbeat"
        try:
            with urllib.request.urlopen(url, timeout=2.0) as answer:
                ok = answer.status == 200
        except Exception:
            ok = False
        if not ok:
            log.warning("/readyz: the Chroma server does not answer.")
            return "The Chroma server does not answer."
        return OK
    folder = settings.data_dir
    if not (folder.is_dir() and os.access(folder, os.W_OK)):
        return "The data directory cannot be written."
    return OK


class ActiveSessions(Collector):
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


__all__ = ["ActiveSessions", "readiness"]
