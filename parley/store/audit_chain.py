"""What an audit record's hash covers, and the redacted form of its personal part.

    content  = SHA-256(salt + canonical JSON of actor, subject, data)
    redacted = SHA-256(canonical JSON of the redacted actor, subject, data)
    hash     = HMAC-SHA-256(key, previous hash + canonical JSON of id, time, actor and
               about ids, kind, key id, content and redacted hashes)

The redacted form is decided when the record is written (`redacted_content`: ids stay,
Parley's own words stay, every other string becomes `[erased]`), and its hash is keyed
into the chain with everything else. An erasure may therefore swap the personal part
for exactly that form and nothing else: whoever edits a record's content, redacted or
not, breaks it. Records written before the trail was keyed (no key id) hash their fields
with plain SHA-256; `parley db upgrade` keys them (`parley/store/audit.py: seal_legacy`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from parley.core.errors import ConfigurationError
from parley.store.db import AUDIT_KEYS
from parley.store.keys import AuditKeys
from parley.store.models import AuditRecord

GENESIS = "0" * 64
ERASED = "[erased]"
# Actors that are Parley itself, not a person: kept in a redacted record.
PARLEY_ACTORS = frozenset({"system", "oidc", "(operator)"})
# Keys of a redacted record's data kept as they were: the words Parley itself chose
# (never a name, address, issuer, group, free text or hash of a user's). Numbers, booleans
# and nulls are kept everywhere; every other string becomes `[erased]`.
REDACTION_KEEPS = frozenset(
    {
        "purpose", "model", "outcome", "status", "method", "format", "role", "from",
        "to", "sign_in", "first_run", "via", "stop_reason", "strategy",
    }
)  # fmt: skip
_SUBJECT_KINDS = ("user", "group", "document", "conversation", "session")


def canonical(data: Mapping[str, Any]) -> str:
    """JSON with sorted keys and no spaces: the same data always gives the same bytes."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_hash(prev_hash: str, fields: Mapping[str, Any]) -> str:
    """The unkeyed hash of records written before the trail was keyed."""
    return hashlib.sha256((prev_hash + canonical(fields)).encode("utf-8")).hexdigest()


def keyed_hash(key: bytes, prev_hash: str, fields: Mapping[str, Any]) -> str:
    message = (prev_hash + canonical(fields)).encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_hash(salt: str, actor: str, subject: str, data: str) -> str:
    """The salted hash through which a record's personal part enters the chain."""
    body = canonical({"actor": actor, "subject": subject, "data": data})
    return hashlib.sha256((salt + body).encode("utf-8")).hexdigest()


def redacted_hash(actor: str, subject: str, data: str) -> str:
    return hashlib.sha256(
        canonical({"actor": actor, "subject": subject, "data": data}).encode("utf-8")
    ).hexdigest()


def redacted_content(
    actor_id: int | None, actor: str, subject: str, data: str
) -> tuple[str, str, str]:
    """The record's personal part as an erasure leaves it: the actor by id, a subject's
    kind and id (never a name), the data's numbers and Parley's own words."""
    if actor_id is not None:
        shown = f"user #{actor_id}"
    else:
        shown = actor if actor in PARLEY_ACTORS else ERASED
    return shown, _redacted_subject(subject), canonical(_redacted_data(json.loads(data)))


def _redacted_subject(subject: str) -> str:
    kind, _, rest = subject.partition(" ")
    if kind not in _SUBJECT_KINDS:
        return ERASED if subject else ""
    return subject if rest.isdigit() else f"{kind} {ERASED}"


def _redacted_data(value: Any, key: str | None = None) -> Any:
    if isinstance(value, dict):
        return {k: _redacted_data(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted_data(v, key) for v in value]
    if isinstance(value, str) and key not in REDACTION_KEEPS:
        return ERASED
    return value


def hashed_fields(row: AuditRecord) -> dict[str, Any]:
    """What a record's hash covers: keyed records take their content through its hash
    (and its redacted form's); unkeyed ones, written before keys, their fields."""
    if row.key_id is not None:
        keyed: dict[str, Any] = {
            "id": row.id,
            "at": row.at,
            "actor_id": row.actor_id,
            "kind": row.kind,
            "key_id": row.key_id,
            "content": row.content_hash,
            "redacted": row.redacted_hash,
        }
        if row.about_id is not None:
            keyed["about_id"] = row.about_id
        return keyed
    fields: dict[str, Any] = {
        "id": row.id,
        "at": row.at,
        "actor_id": row.actor_id,
        "actor": row.actor,
        "kind": row.kind,
        "subject": row.subject,
        "data": row.data,
    }
    if row.about_id is not None:
        fields["about_id"] = row.about_id
    return fields


def keys_of(session: Session) -> AuditKeys:
    """The key ring the session's database was opened with."""
    keys = session.info.get(AUDIT_KEYS)
    if not isinstance(keys, AuditKeys):
        raise ConfigurationError(
            "The audit key is not configured: set PARLEY_AUDIT_KEY or PARLEY_AUDIT_KEY_FILE."
        )
    return keys


__all__ = [
    "ERASED",
    "GENESIS",
    "canonical",
    "content_hash",
    "hashed_fields",
    "keyed_hash",
    "keys_of",
    "record_hash",
    "redacted_content",
    "redacted_hash",
    "text_hash",
]
