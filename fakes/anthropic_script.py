"""What the fake Messages API server answers: scripted replies, faults, recorded requests."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

FaultKind = Literal[
    "rate_limit",
    "overloaded",
    "server_error",
    "auth",
    "invalid_request",
    "context_too_long",
    "timeout",
    "drop_mid_stream",
    "error_event",
    "no_message_stop",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
DEFAULT_RANDOM_KINDS: tuple[str, ...] = (
    "rate_limit",
    "overloaded",
    "server_error",
    "drop_mid_stream",
    "error_event",
    "no_message_stop",
    "timeout",
)

# kind -> (HTTP status, error type, message)
HTTP_ERRORS: dict[str, tuple[int, str, str]] = {
    "rate_limit": (429, "rate_limit_error", "Number of request tokens exceeds your rate limit."),
    "overloaded": (529, "overloaded_error", "Overloaded"),
    "server_error": (500, "api_error", "Internal server error"),
    "auth": (401, "authentication_error", "invalid x-api-key"),
    "not_found": (404, "not_found_error", "Not found"),
    "invalid_request": (400, "invalid_request_error", "Invalid request"),
    "context_too_long": (
        400,
        "invalid_request_error",
        "prompt is too long: 210000 tokens > 200000 maximum",
    ),
}


@dataclass
class Reply:
    """One scripted answer."""

    text: str = "Hello from the fake."
    chunks: list[str] | None = None
    stop_reason: str = "end_turn"
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    model: str | None = None
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)

    def split(self) -> list[str]:
        return list(self.chunks) if self.chunks is not None else split_words(self.text)


@dataclass
class Fault:
    """One scripted failure."""

    kind: FaultKind
    retry_after: float | None = None
    after_chunks: int = 1
    text: str = "partial answer that will break off"
    delay_s: float = 30.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")


@dataclass
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def json(self) -> Any:
        return self.body

    @property
    def api_key(self) -> str | None:
        """The key sent as ``x-api-key`` or (as SDK 2.x does) ``authorization: Bearer KEY``."""
        if "x-api-key" in self.headers:
            return self.headers["x-api-key"]
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        return token if scheme.lower() == "bearer" and token else None


def split_words(text: str) -> list[str]:
    """Split text into word chunks that keep their spaces (``"".join`` gives the text back)."""
    parts = re.findall(r"\s*\S+\s*", text)
    return parts if parts else ([text] if text else [])


def _block_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(b.get("text", "")) if isinstance(b, dict) else str(b) for b in content)
    return ""


def rough_tokens(body: Any) -> int:
    """A rough token count (chars/4) of the system prompt and the messages' text."""
    if not isinstance(body, dict):
        return 1
    chars = len(_block_text(body.get("system", "")))
    for msg in body.get("messages") or []:
        if isinstance(msg, dict):
            chars += len(_block_text(msg.get("content", "")))
    return max(1, chars // 4)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def random_fault(kind: str) -> Fault:
    retry_after = 0.0 if kind == "rate_limit" else None
    return Fault(cast(FaultKind, kind), retry_after, delay_s=2.0 if kind == "timeout" else 30.0)
