"""Claude's Message Batches API through the official SDK (`client.messages.batches`).

A batch is many requests answered within a day at half the price: Parley sends the
work nobody waits for through it (`parley.chat.batch`). The requests are built exactly
as `AnthropicProvider` builds a streamed call (`_params`, the same system block, search
results and output format), with the same key source: a rejected key is reloaded once
and the call retried (a rotation without restart). The SDK's own retries and timeouts
apply to every call but a create, which is sent once (a retry of a create the API took
but answered late would be a second, billed batch; the caller looks for it instead).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

from parley.chat.gateway.providers.anthropic import AnthropicProvider, _read_key, _usage
from parley.chat.gateway.providers.errors import translate
from parley.core.errors import AuthenticationFailed
from parley.core.llm import (
    BATCH_CREATE_TIMEOUT_S,
    BatchOutcome,
    BatchProgress,
    ChatRequest,
    Usage,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


class AnthropicBatches:
    """`BatchClient` for Claude: create, poll, read results, cancel."""

    def __init__(self, provider: AnthropicProvider) -> None:
        self._provider = provider

    @property
    def model(self) -> str:
        return self._provider.model

    def _call(self, do: Callable[[Any], T]) -> T:
        """`do(client)`, with the key reloaded once if the API rejects it."""
        provider = self._provider
        key = _read_key(provider._keys.get)
        try:
            return _translated(lambda: do(provider._client_for(key)))
        except AuthenticationFailed:
            fresh = _read_key(provider._keys.refresh)
            if fresh == key:
                raise
            log.warning("The API key was rejected; retrying once with the reloaded key.")
            return _translated(lambda: do(provider._client_for(fresh)))

    def submit(self, requests: Sequence[tuple[str, ChatRequest]]) -> str:
        payload = [
            {"custom_id": custom_id, "params": self._params(request)}
            for custom_id, request in requests
        ]
        # Sent once: the SDK's retries would make a second, billed batch of a create the
        # API took but answered late. The caller looks for it (`recent`) before again.
        batch = self._call(
            lambda client: client.with_options(
                max_retries=0, timeout=BATCH_CREATE_TIMEOUT_S
            ).messages.batches.create(requests=payload)
        )
        return str(batch.id)

    def recent(self, since: datetime) -> list[tuple[str, int, datetime]]:
        page = self._call(lambda client: client.messages.batches.list(limit=100))
        found = []
        for batch in page.data:
            if batch.created_at >= since:
                counts = batch.request_counts
                total = (
                    counts.processing
                    + counts.succeeded
                    + counts.errored
                    + counts.canceled
                    + counts.expired
                )
                found.append((str(batch.id), total, batch.created_at))
        return found

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        params = _translated(lambda: self._provider._params(self.model, request))
        # A batch request is the body itself: what the SDK would add as extra_body is in it.
        params.update(params.pop("extra_body", None) or {})
        return params

    def progress(self, batch_id: str) -> BatchProgress:
        batch = self._call(lambda client: client.messages.batches.retrieve(batch_id))
        counts = batch.request_counts
        return BatchProgress(
            ended=batch.processing_status == "ended",
            processing=counts.processing,
            succeeded=counts.succeeded,
            errored=counts.errored,
            canceled=counts.canceled,
            expired=counts.expired,
        )

    def outcomes(self, batch_id: str) -> Iterator[BatchOutcome]:
        lines = self._call(lambda client: list(client.messages.batches.results(batch_id)))
        return iter(_translated(lambda: [_outcome(line, self.model) for line in lines]))

    def cancel(self, batch_id: str) -> None:
        self._call(lambda client: client.messages.batches.cancel(batch_id))


def _outcome(line: Any, model: str) -> BatchOutcome:
    """One line of a batch's results (a line that does not parse is the provider's
    error, said as such by `_translated`)."""
    result = line.result
    if result.type == "succeeded":
        message = result.message
        return BatchOutcome(
            custom_id=line.custom_id,
            text="".join(b.text for b in message.content if b.type == "text"),
            model=message.model,
            usage=_usage(message.usage),
            stop_reason=message.stop_reason,
        )
    if result.type == "errored":
        error = str(getattr(result.error.error, "type", "error"))
        return BatchOutcome(line.custom_id, None, model, Usage(), error=error)
    return BatchOutcome(line.custom_id, None, model, Usage(), error=result.type)


def _translated(do: Callable[[], T]) -> T:
    try:
        return do()
    except Exception as exc:  # every SDK and transport error becomes a ProviderError
        raise translate(exc) from exc


__all__ = ["AnthropicBatches"]
