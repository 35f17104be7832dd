"""Model providers behind one small protocol, and the choice between them by settings.

`AnthropicProvider` loads with the first provider that needs it: its module imports the
Anthropic SDK, a second of start-up that a command calling no model (`parley user
list`) should not pay for importing this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from parley.chat.gateway.providers.keys import CommandKey, FileKey, KeySource, StaticKey
from parley.chat.gateway.providers.local import LocalProvider
from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.core.config import KeySourceChoice, Settings, get_settings
from parley.core.errors import ConfigurationError
from parley.core.llm import (
    BatchClient,
    ChatProvider,
    ChatRequest,
    PromptMessage,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Usage,
)

if TYPE_CHECKING:
    from parley.chat.gateway.providers.anthropic import AnthropicProvider, HeadersObserver


def __getattr__(name: str) -> object:
    if name == "AnthropicProvider":  # the SDK, on first mention (see the docstring)
        from parley.chat.gateway.providers.anthropic import AnthropicProvider

        return AnthropicProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_key_source(settings: Settings) -> KeySource:
    """The key source the settings choose (see `parley.chat.gateway.providers.keys`)."""
    if settings.anthropic_key_source is KeySourceChoice.FILE:
        if settings.anthropic_key_file is None:
            raise ConfigurationError(
                "PARLEY_ANTHROPIC_KEY_SOURCE=file needs PARLEY_ANTHROPIC_KEY_FILE."
            )
        return FileKey(settings.anthropic_key_file)
    if settings.anthropic_key_source is KeySourceChoice.COMMAND:
        if not settings.anthropic_key_command:
            raise ConfigurationError(
                "PARLEY_ANTHROPIC_KEY_SOURCE=command needs PARLEY_ANTHROPIC_KEY_COMMAND."
            )
        return CommandKey(settings.anthropic_key_command, ttl_s=settings.anthropic_key_ttl_s)
    if settings.anthropic_api_key is None:
        raise ConfigurationError("PARLEY_PROVIDER=anthropic needs ANTHROPIC_API_KEY.")
    return StaticKey(settings.anthropic_api_key, reload=lambda: get_settings().anthropic_api_key)


def build_provider(
    settings: Settings, *, on_headers: HeadersObserver | None = None
) -> ChatProvider:
    """Claude when a key is set (or forced), else the embedded local model."""
    if settings.uses_anthropic:
        return _claude(settings, on_headers)
    return LocalProvider(
        model_path=settings.local_model_path,
        context_window=settings.local_context_window,
        threads=settings.local_threads,
    )


def build_batch_client(settings: Settings) -> BatchClient | None:
    """Claude's Message Batches API when a key is set (or forced); None for the local
    model, whose batch work runs in the background instead."""
    if not settings.uses_anthropic:
        return None
    from parley.chat.gateway.providers.anthropic_batches import AnthropicBatches

    return AnthropicBatches(_claude(settings, None))


def _claude(settings: Settings, on_headers: HeadersObserver | None) -> AnthropicProvider:
    keys = build_key_source(settings)  # a missing key is an error before the SDK loads
    from parley.chat.gateway.providers.anthropic import AnthropicProvider

    return AnthropicProvider(
        keys=keys,
        model=settings.claude_model,
        base_url=settings.anthropic_base_url,
        context_window=settings.claude_context_window,
        timeout_s=settings.anthropic_timeout_s,
        max_retries=settings.anthropic_max_retries,
        max_retry_wait_s=settings.anthropic_max_retry_wait_s,
        fallback_model=settings.anthropic_fallback_model,
        send_temperature=settings.anthropic_send_temperature,
        on_headers=on_headers,
    )


__all__ = [
    "AnthropicProvider",
    "ChatProvider",
    "ChatRequest",
    "PromptMessage",
    "ScriptedProvider",
    "StreamEnd",
    "StreamEvent",
    "TextDelta",
    "Usage",
    "build_batch_client",
    "build_key_source",
    "build_provider",
]
