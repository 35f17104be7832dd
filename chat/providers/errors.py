"""Translate provider SDK exceptions into Parley's tree, in this one place."""

from __future__ import annotations

import logging

import anthropic

from parley.errors import ProviderError, StreamInterrupted

log = logging.getLogger(__name__)


def translate(exc: BaseException, *, partial_text: str = "") -> ProviderError:
    """Map any exception raised while talking to a provider to a `ProviderError`.

    Text that already arrived is never dropped: if there is any, the result is a
    `StreamInterrupted` that carries it.
    """
    if isinstance(exc, ProviderError):
        return exc
    if partial_text:
        return StreamInterrupted(
            f"stream broke off: {type(exc).__name__}", partial_text=partial_text
        )
    if isinstance(exc, anthropic.AuthenticationError):
        log.error("The Anthropic API rejected the key (401); check the key source.")
        return ProviderError(
            "authentication failed",
            user_message="The model service rejected Parley's key. An administrator must fix it.",
        )
    if isinstance(exc, anthropic.RateLimitError):
        return ProviderError(
            "rate limited", user_message="The model service is busy (rate limit). Try again soon."
        )
    if isinstance(exc, anthropic.APIStatusError):
        return ProviderError(f"status {exc.status_code}")
    if isinstance(exc, anthropic.APIConnectionError | anthropic.APITimeoutError):
        return ProviderError(
            "connection failed", user_message="The model service cannot be reached right now."
        )
    return ProviderError(f"unexpected {type(exc).__name__}")
