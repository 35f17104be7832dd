"""Values tests share (fixtures live in conftest.py)."""

from __future__ import annotations

from parley.domain import Principal, Role

# The operator: an administrator who is no account, as the CLI acts. Tests set users up so.
ROOT = Principal(user_id=0, name="(operator)", role=Role.ADMIN)


class FakeClock:
    """A clock for the rate limiter: `sleep` moves it on instead of waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
