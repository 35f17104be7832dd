"""Model providers behind one small protocol, and the choice between them by settings."""

from __future__ import annotations

from chat.providers.base import (
    ChatProvider,
    ChatRequest,
    PromptMessage,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Usage,
)
from chat.providers.scripted import ScriptedProvider
from parley.config import Settings
from parley.errors import ConfigurationError


def build_provider(settings: Settings) -> ChatProvider:
    """Claude when a key is set (or forced), else the embedded local model."""
    if settings.uses_anthropic:
        from chat.providers.anthropic import AnthropicProvider

        if settings.anthropic_api_key is None:
            raise ConfigurationError("PARLEY_PROVIDER=anthropic needs ANTHROPIC_API_KEY.")
        return AnthropicProvider(
            api_key=settings.anthropic_api_key.get_secret_value(),
            model=settings.claude_model,
            base_url=settings.anthropic_base_url,
            context_window=settings.claude_context_window,
            timeout_s=settings.anthropic_timeout_s,
            max_retries=settings.anthropic_max_retries,
            send_temperature=settings.anthropic_send_temperature,
        )
    from chat.providers.local import LocalProvider

    return LocalProvider(
        model_path=settings.local_model_path,
        context_window=settings.local_context_window,
        threads=settings.local_threads,
    )


__all__ = [
    "ChatProvider",
    "ChatRequest",
    "PromptMessage",
    "ScriptedProvider",
    "StreamEnd",
    "StreamEvent",
    "TextDelta",
    "Usage",
    "build_provider",
]
