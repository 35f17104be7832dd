"""The audit trail as admins read it: a user's history, paginated; exports; the chain's
check. Admins only (checked here); an export is itself recorded."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from parley.core.domain import Principal
from parley.core.errors import PermissionDenied
from parley.store.audit import (
    AuditLog,
    Checkpoint,
    Verified,
    by,
    parse_checkpoints,
    to_csv,
    to_jsonl,
)
from parley.store.db import Database


@dataclass(frozen=True, slots=True)
class AuditPage:
    records: list[dict[str, Any]]
    total: int


class AuditTrail:
    def __init__(self, database: Database) -> None:
        self._log = AuditLog(database)

    def history(
        self,
        admin: Principal,
        *,
        user_id: int | None = None,
        kinds: Sequence[str] = (),
        page: int = 0,
        per_page: int = 50,
    ) -> AuditPage:
        """Records newest first: of one user (what they did and what was done to their
        data) or everyone's, of the kinds given (all if none)."""
        _require_admin(admin)
        per_page = max(1, min(per_page, 500))
        records = list(
            self._log.records(
                user_id=user_id,
                kinds=kinds,
                newest_first=True,
                limit=per_page,
                offset=max(0, page) * per_page,
            )
        )
        return AuditPage(records, self._log.count(user_id=user_id, kinds=kinds))

    def kinds(self, admin: Principal) -> list[str]:
        _require_admin(admin)
        return self._log.kinds()

    def export(
        self,
        admin: Principal,
        *,
        format: Literal["jsonl", "csv"] = "jsonl",
        user_id: int | None = None,
        since: datetime | None = None,
    ) -> str:
        """The records as JSON lines or CSV, oldest first (the export goes on record)."""
        return "".join(self.export_lines(admin, format=format, user_id=user_id, since=since))

    def export_lines(
        self,
        admin: Principal,
        *,
        format: Literal["jsonl", "csv"] = "jsonl",
        user_id: int | None = None,
        actor: str | None = None,
        since: datetime | None = None,
    ) -> Iterator[str]:
        """`export`, streamed: of one user (`user_id`), or of an actor's name that is no
        account (an erased user, a name typed at a refused sign-in). On record first."""
        _require_admin(admin)
        self._log.append(
            "audit_exported",
            **by(admin),
            about_id=user_id,
            data={
                "format": format,
                "user_id": user_id,
                "actor": actor,
                "since": since.isoformat() if since else None,
            },
        )
        records = self._log.records(user_id=user_id, actor=actor, since=since)
        return to_jsonl(records) if format == "jsonl" else to_csv(records)

    def verify(self, admin: Principal, anchors: Sequence[Checkpoint] = ()) -> Verified:
        _require_admin(admin)
        return self._log.verify(anchors)

    def verify_against(self, admin: Principal, checkpoints: str) -> Verified:
        """`verify`, with the anchors of a checkpoint file's text (`InvalidInput` with a
        sentence when a line is not one `parley audit checkpoint` printed)."""
        _require_admin(admin)
        return self._log.verify(parse_checkpoints(checkpoints))

    def checkpoint(self, admin: Principal) -> Checkpoint:
        """An anchor line for the operator to keep outside the database (on record)."""
        _require_admin(admin)
        return self._log.checkpoint(admin)

    def last_checkpoint(self, admin: Principal) -> datetime | None:
        """When the last checkpoint was taken, if ever (the console shows it)."""
        _require_admin(admin)
        at = self._log.last_checkpoint()
        return datetime.fromisoformat(at) if at else None


def _require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise PermissionDenied(user_message="Only administrators read the audit trail.")


__all__ = ["AuditPage", "AuditTrail"]
