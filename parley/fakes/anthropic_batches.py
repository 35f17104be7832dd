"""The fake server's Message Batches API: create, retrieve, list, cancel, results (JSONL).

Each request of a batch takes the next scripted item when the batch is created, as a
`/v1/messages` call would: a `Reply` is a succeeded result, an HTTP `Fault` an errored
one (its error type), a `timeout` fault an expired one. A batch stays `in_progress`
for `polls` retrievals (so a client has to poll), then ends. A cancel makes it
`canceling` until the next retrieval ends it: its first `answered_on_cancel` requests
keep their results (processed before the cancel, and billed, as the API does), the
rest are canceled. Results come in reverse order: a client must match them by
`custom_id`, as the real API asks.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from parley.fakes.anthropic_script import HTTP_ERRORS, Fault, Reply, new_id

_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

# A request's params -> its result (the server's own non-stream answer to them).
Answer = Callable[[dict[str, Any], Reply | Fault], dict[str, Any]]


@dataclass
class _Batch:
    id: str
    created_at: datetime
    results: list[dict[str, Any]]
    polls_left: int
    ended_at: datetime | None = None
    cancel_initiated_at: datetime | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)


class FakeBatches:
    """The batches a fake server holds (thread-safe)."""

    def __init__(self, *, polls: int = 1, answered_on_cancel: int = 0) -> None:
        self.polls = polls  # retrievals a batch stays in progress for
        self.answered_on_cancel = answered_on_cancel  # requests done before a cancel lands
        self._lock = threading.Lock()
        self._batches: dict[str, _Batch] = {}
        self._refusals: list[str] = []

    def refuse(self, *kinds: str) -> None:
        """Answer the next creates with these HTTP errors (`HTTP_ERRORS` kinds), in turn."""
        unknown = [k for k in kinds if k not in HTTP_ERRORS]
        if unknown:
            raise ValueError(f"unknown error kinds {unknown}; expected some of {list(HTTP_ERRORS)}")
        with self._lock:
            self._refusals.extend(kinds)

    def take_refusal(self) -> str | None:
        with self._lock:
            return self._refusals.pop(0) if self._refusals else None

    def problem(self, body: Any) -> str | None:
        """Why a create request is invalid (None: it is valid)."""
        if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
            return "requests: a list is required"
        requests = body["requests"]
        if not requests:
            return "requests: at least one request is required"
        seen: set[str] = set()
        for n, request in enumerate(requests):
            if not isinstance(request, dict):
                return f"requests.{n}: an object is required"
            custom_id = request.get("custom_id")
            if not isinstance(custom_id, str) or not _CUSTOM_ID.match(custom_id):
                return f"requests.{n}.custom_id: 1 to 64 letters, digits, - or _"
            if custom_id in seen:
                return f"requests.{n}.custom_id: {custom_id} is not unique"
            seen.add(custom_id)
            params = request.get("params")
            if not isinstance(params, dict) or not {"model", "max_tokens", "messages"} <= set(
                params
            ):
                return f"requests.{n}.params: model, max_tokens and messages are required"
            if params.get("stream"):
                return f"requests.{n}.params.stream: not allowed in a batch"
        return None

    def create(
        self, body: dict[str, Any], *, next_item: Callable[[], Reply | Fault], answer: Answer
    ) -> dict[str, Any]:
        results = []
        for request in body["requests"]:
            item = next_item()
            results.append(
                {"custom_id": request["custom_id"], "result": _result(request, item, answer)}
            )
        batch = _Batch(
            id=new_id("msgbatch"),
            created_at=datetime.now(UTC),
            results=results,
            polls_left=self.polls,
            requests=list(body["requests"]),
        )
        with self._lock:
            self._batches[batch.id] = batch
        return self._view(batch, base_url="")

    def retrieve(self, batch_id: str, base_url: str) -> dict[str, Any] | None:
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                return None
            if batch.ended_at is None:
                if batch.polls_left <= 0:
                    batch.ended_at = datetime.now(UTC)
                else:
                    batch.polls_left -= 1
            return self._view(batch, base_url)

    def listing(self, base_url: str) -> dict[str, Any]:
        with self._lock:
            views = [self._view(b, base_url) for b in reversed(self._batches.values())]
        return {
            "data": views,
            "has_more": False,
            "first_id": views[0]["id"] if views else None,
            "last_id": views[-1]["id"] if views else None,
        }

    def cancel(self, batch_id: str, base_url: str) -> dict[str, Any] | None:
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                return None
            if batch.ended_at is None and batch.cancel_initiated_at is None:
                batch.cancel_initiated_at = datetime.now(UTC)
                batch.polls_left = 0  # it ends at the next retrieval
                kept = self.answered_on_cancel
                batch.results = batch.results[:kept] + [
                    {"custom_id": r["custom_id"], "result": {"type": "canceled"}}
                    for r in batch.results[kept:]
                ]
            return self._view(batch, base_url)

    def results(self, batch_id: str) -> bytes | None:
        """The JSONL of an ended batch (None: no such batch, or not ended)."""
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None or batch.ended_at is None:
                return None
            lines = [json.dumps(r) for r in reversed(batch.results)]
        return ("\n".join(lines) + "\n").encode()

    def requests_of(self, batch_id: str) -> list[dict[str, Any]]:
        """What a batch was created with (for tests)."""
        with self._lock:
            return list(self._batches[batch_id].requests)

    @property
    def ids(self) -> list[str]:
        with self._lock:
            return list(self._batches)

    @staticmethod
    def _view(batch: _Batch, base_url: str) -> dict[str, Any]:
        ended = batch.ended_at is not None
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if ended:
            for result in batch.results:
                counts[result["result"]["type"]] += 1
        else:
            counts["processing"] = len(batch.results)
        status = "ended" if ended else "canceling" if batch.cancel_initiated_at else "in_progress"
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "created_at": _stamp(batch.created_at),
            "expires_at": _stamp(batch.created_at + timedelta(hours=24)),
            "ended_at": _stamp(batch.ended_at) if batch.ended_at else None,
            "cancel_initiated_at": (
                _stamp(batch.cancel_initiated_at) if batch.cancel_initiated_at else None
            ),
            "archived_at": None,
            "results_url": (
                f"{base_url}/v1/messages/batches/{batch.id}/results" if ended else None
            ),
        }


def _result(request: dict[str, Any], item: Reply | Fault, answer: Answer) -> dict[str, Any]:
    if isinstance(item, Fault):
        if item.kind == "timeout":
            return {"type": "expired"}
        _, err_type, message = HTTP_ERRORS.get(item.kind, HTTP_ERRORS["server_error"])
        return {
            "type": "errored",
            "error": {"type": "error", "error": {"type": err_type, "message": message}},
        }
    return {"type": "succeeded", "message": answer(request["params"], item)}


def _stamp(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


__all__ = ["FakeBatches"]
