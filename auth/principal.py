"""Who is asking. Every service call that touches user data takes a `Principal`."""

from __future__ import annotations

from dataclasses import dataclass

from store.models import Role


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: int
    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN
