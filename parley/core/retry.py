"""The one retry of a write the database refuses for a moment: tried again after each
wait, then the last failure is raised for the caller to keep what it could not store
(the metering outbox, an answer's sentence)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def retried(
    action: Callable[[], T],
    waits_s: Sequence[float],
    *,
    retry_on: type[Exception] | tuple[type[Exception], ...] = Exception,
    on_retry: Callable[[Exception], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`action()`, tried again after each of `waits_s` while it raises `retry_on`; any
    other exception, or the last one, goes to the caller."""
    for wait in waits_s:
        try:
            return action()
        except retry_on as exc:
            if on_retry is not None:
                on_retry(exc)
        sleep(wait)
    return action()


__all__ = ["retried"]
