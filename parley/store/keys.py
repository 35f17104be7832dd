"""The audit key ring: the secret that keys the audit chain, and the old ones that still
verify the segments they keyed.

The audit chain is keyed (HMAC-SHA-256) so that whoever can write the database but does
not hold the key cannot re-hash the trail after removing or editing a record. The key
therefore never lives in the database: it comes from a setting or a secret file
(`PARLEY_AUDIT_KEY`, `PARLEY_AUDIT_KEY_FILE`), and each record names only the key's id
(a hash of the key, which says nothing of it). Rotating the key starts a new segment;
`previous` keys verify the segments before it.

The same key, through a derived sub-key per purpose, makes keyed hashes of values the
trail must not hold in the clear (a name typed at a refused sign-in, an erased user's
file hashes): without the key a guess cannot be checked against them.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field

KEY_ID_LENGTH = 16
MIN_KEY_LENGTH = 16


def key_id(key: bytes) -> str:
    """A short public name for a key (a hash of it: it reveals nothing of the key)."""
    return hashlib.sha256(b"parley-audit-key-id\x00" + key).hexdigest()[:KEY_ID_LENGTH]


@dataclass(frozen=True, slots=True, repr=False)
class AuditKeys:
    """The current key and the ones it replaced. `repr` shows ids only."""

    current: bytes
    previous: tuple[bytes, ...] = ()
    _by_id: dict[str, bytes] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        for key in (self.current, *self.previous):
            if len(key) < MIN_KEY_LENGTH:
                raise ValueError(f"An audit key needs at least {MIN_KEY_LENGTH} bytes.")
        object.__setattr__(self, "_by_id", {key_id(k): k for k in (*self.previous, self.current)})

    @classmethod
    def from_secrets(cls, current: str, previous: Iterable[str] = ()) -> AuditKeys:
        return cls(current.encode("utf-8"), tuple(p.encode("utf-8") for p in previous))

    @property
    def current_id(self) -> str:
        return key_id(self.current)

    def get(self, kid: str) -> bytes | None:
        return self._by_id.get(kid)

    def sign(self, kid: str, message: str) -> str | None:
        """HMAC-SHA-256 of `message` under the key `kid`; None if this ring lacks it."""
        key = self.get(kid)
        if key is None:
            return None
        return hmac.new(key, message.encode("utf-8"), hashlib.sha256).hexdigest()

    def keyed_hash(self, purpose: str, value: str) -> str:
        """A keyed hash of `value` for one purpose (a sub-key per purpose, so hashes made
        for one use cannot be matched against another's)."""
        sub = hmac.new(self.current, b"parley-purpose\x00" + purpose.encode(), "sha256").digest()
        return hmac.new(sub, value.encode("utf-8"), hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return f"AuditKeys(current={self.current_id}, previous={len(self.previous)})"


__all__ = ["AuditKeys", "key_id"]
