"""Where a model call's metering waits when the database will not take it.

A call that was made must reach the ledger (and with it the quota and the `ai_call`
audit record): a ledger write that may silently fail is a quota bypass. So the limited
provider retries the write with backoff, and if the database still refuses (locked,
unreachable), the call goes here: one JSON line in a file of the data directory, which
needs no database. `drain` hands every waiting call to the meter again and is run at
start-up and by upkeep after turns; recording is idempotent by `call_id`, so a line
recorded twice (a crash between the write and the file's removal) adds one row.

Each waiting call is a file of its own, written whole under a temporary name and
renamed into place, so no file is ever appended to; `drain` claims a file by renaming
it before reading it and removes it once recorded. Two processes sharing the folder
never record one call at the same moment, and a call written while another process
drains is never lost with a file it did not belong to.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from parley.core.domain import CallOutcome, Purpose
from parley.core.llm import CallMeta, CallRecord, Usage

log = logging.getLogger(__name__)

# A claimed file this old belonged to a drain that died (a live one takes milliseconds).
ABANDONED_CLAIM_S = 600.0


class Recorder(Protocol):
    def record(self, call: CallRecord) -> None: ...


def to_line(call: CallRecord) -> str:
    fields = asdict(call)
    fields["meta"].pop("cache", None)  # the cache's key holds the user's question: not on disk
    fields["started_at"] = call.started_at.isoformat()
    fields["ended_at"] = call.ended_at.isoformat()
    return json.dumps(fields, sort_keys=True) + "\n"


def from_line(line: str) -> CallRecord:
    fields: dict[str, Any] = json.loads(line)
    meta = fields["meta"]
    return CallRecord(
        meta=CallMeta(
            purpose=Purpose(meta["purpose"]),
            user_id=meta["user_id"],
            conversation_id=meta["conversation_id"],
        ),
        model=str(fields["model"]),
        usage=Usage(**fields["usage"]),
        outcome=CallOutcome(fields["outcome"]),
        started_at=datetime.fromisoformat(fields["started_at"]),
        ended_at=datetime.fromisoformat(fields["ended_at"]),
        call_id=str(fields["call_id"]),
        cache=fields.get("cache"),
        saved=Usage(**(fields.get("saved") or {})),
    )


class MeteringOutbox:
    """Calls whose metering is still to be written, one JSON file each under `folder`."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def put(self, call: CallRecord) -> None:
        """Keep `call` for a later drain (on disk before this returns)."""
        self._folder.mkdir(parents=True, exist_ok=True)
        partial = self._folder / f".{call.call_id}.{uuid.uuid4().hex}.tmp"
        with partial.open("w", encoding="utf-8") as handle:
            handle.write(to_line(call))
            handle.flush()
            os.fsync(handle.fileno())
        partial.rename(self._folder / f"pending-{call.call_id}.json")

    def waiting(self) -> int:
        """How many calls wait (claimed ones included)."""
        if not self._folder.is_dir():
            return 0
        return sum(1 for _ in self._folder.glob("*-*.json"))

    def _listed(self) -> list[tuple[float, Path]]:
        """Waiting files, oldest first, with their time (files other drains take
        meanwhile are skipped)."""
        found = []
        for path in self._folder.glob("*-*.json"):
            try:
                found.append((path.stat().st_mtime, path.name, path))
            except FileNotFoundError:
                continue
        return [(modified, path) for modified, _, path in sorted(found)]

    def drain(self, meter: Recorder) -> int:
        """Record every waiting call, oldest first; how many were recorded. A call the
        meter still refuses stays, and the drain stops there (the database is down)."""
        if not self._folder.is_dir():
            return 0
        recorded = 0
        for modified, path in self._listed():
            if path.name.startswith("pending-"):
                claimed = path.with_name(f"draining-{uuid.uuid4().hex}-{path.name}")
                try:
                    path.rename(claimed)
                    os.utime(claimed)  # the claim's time, so no live claim looks abandoned
                except FileNotFoundError:
                    continue  # another process claimed it
            elif time.time() - modified > ABANDONED_CLAIM_S:
                claimed = path  # claimed by a drain that died: take it up again
            else:
                continue  # another drain is recording it now
            try:
                call = from_line(claimed.read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue
            except (ValueError, KeyError, TypeError):
                log.error("A metering file %s cannot be read; kept aside.", claimed.name)
                claimed.rename(claimed.with_suffix(".unreadable"))
                continue
            try:
                meter.record(call)
            except Exception as exc:
                log.warning("Metering from the outbox failed (%s); kept for later.", exc)
                with contextlib.suppress(FileNotFoundError):  # taken up meanwhile
                    claimed.rename(self._folder / f"pending-{call.call_id}.json")
                break
            claimed.unlink(missing_ok=True)
            recorded += 1
        if recorded:
            log.info("Recorded %d metered calls that had waited in the outbox.", recorded)
        return recorded


__all__ = ["MeteringOutbox", "from_line", "to_line"]
