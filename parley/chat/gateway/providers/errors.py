"""Translate provider SDK and transport exceptions into Parley's tree, in this one place."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx2

from parley.core.errors import (
    AuthenticationFailed,
    ContextTooLong,
    InvalidRequest,
    Overloaded,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    StreamInterrupted,
)

log = logging.getLogger(__name__)

_TOO_LONG_MARKERS = ("prompt is too long", "too many tokens", "context window", "context length")


def retry_after_seconds(headers: Any) -> float | None:
    """The wait a response asks for: `retry-after-ms`, else `retry-after` in seconds."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return float(value) * scale
        except (TypeError, ValueError):
            continue
    return None


def _error_type(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("type", ""))
    return ""


def translate(
    exc: BaseException,
    *,
    partial_text: str = "",
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ProviderError:
    """Map any exception raised while talking to a provider to a `ProviderError`.

    Text that already arrived is never dropped: if there is any, the result is a
    `StreamInterrupted` that carries it (the cause stays on `__cause__`).
    """
    if isinstance(exc, StreamInterrupted):
        return exc
    if partial_text:
        interrupted = StreamInterrupted(
            f"stream broke off: {type(exc).__name__}", partial_text=partial_text
        )
        interrupted.__cause__ = exc
        return interrupted
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, anthropic.AuthenticationError | anthropic.PermissionDeniedError):
        log.error(
            "ALERT: the Anthropic API rejected the key (status %s); check the key source.",
            exc.status_code,
        )
        return AuthenticationFailed(f"status {exc.status_code}")
    if isinstance(exc, anthropic.RateLimitError):
        return RateLimited(
            "status 429", retry_after=retry_after_seconds(exc.response.headers) or 60.0, now=now()
        )
    if isinstance(exc, anthropic.APIStatusError):
        status, kind = exc.status_code, _error_type(exc)
        if isinstance(exc, anthropic.OverloadedError) or kind == "overloaded_error":
            return Overloaded(f"status {status} {kind}")
        if kind == "rate_limit_error":
            return RateLimited(f"{kind} in stream", retry_after=60.0, now=now())
        message = str(exc.message).lower()
        if status == 413 or any(marker in message for marker in _TOO_LONG_MARKERS):
            return ContextTooLong(f"status {status}")
        if status >= 500 or kind == "api_error":
            return ProviderUnavailable(f"status {status} {kind}")
        log.error("The model service refused a request (status %s, %s): a bug.", status, kind)
        return InvalidRequest(f"status {status} {kind}")
    if isinstance(exc, anthropic.APIConnectionError | httpx2.TransportError):
        return ProviderUnavailable(type(exc).__name__)
    log.error("Unexpected provider exception %s", type(exc).__name__)
    return ProviderError(f"unexpected {type(exc).__name__}")
