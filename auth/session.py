"""A browser login: who, and when they were last active. Expires after a quiet spell."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from parley.domain import Principal


@dataclass(frozen=True, slots=True)
class LoginSession:
    principal: Principal
    last_active: datetime

    def is_expired(self, *, now: datetime, idle: timedelta) -> bool:
        return now - self.last_active > idle

    def touched(self, now: datetime) -> LoginSession:
        return replace(self, last_active=now)
