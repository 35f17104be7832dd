"""What the fake Messages API server answers: scripted replies, faults, recorded requests."""

from __future__ import annotations

import base64
import binascii
import re
import struct
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
class Cited:
    """A piece of an answer that cites blocks `start` to `end` (exclusive; None: the
    source's last) of the request's `source`-th search result, as Claude cites."""

    text: str
    source: int = 0
    start: int = 0
    end: int | None = None


@dataclass
class Reply:
    """One scripted answer. With `segments`, each is one text block of the answer, a
    `Cited` one carrying its citation (streamed as a `citations_delta`)."""

    text: str = "Hello from the fake."
    segments: list[str | Cited] | None = None
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

    def __post_init__(self) -> None:
        if self.segments is not None:
            self.text = "".join(s.text if isinstance(s, Cited) else s for s in self.segments)

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
        return "".join(
            _block_text(b.get("content", "")) + str(b.get("title", ""))
            if isinstance(b, dict) and b.get("type") == "search_result"
            else str(b.get("text", ""))
            if isinstance(b, dict)
            else str(b)
            for b in content
        )
    return ""


def search_results(body: Any) -> list[dict[str, Any]]:
    """The request's `search_result` blocks, in the order the API numbers them."""
    found: list[dict[str, Any]] = []
    for message in body.get("messages") or [] if isinstance(body, dict) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            found += [
                b for b in content if isinstance(b, dict) and b.get("type") == "search_result"
            ]
    return found


IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
MAX_IMAGE_BYTES = 5 * 2**20  # the API's limit for one image, in base64
_IMAGE_MAGIC = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}


def images(body: Any) -> list[dict[str, Any]]:
    """The request's `image` blocks, in order."""
    found: list[dict[str, Any]] = []
    for message in body.get("messages") or [] if isinstance(body, dict) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            found += [b for b in content if isinstance(b, dict) and b.get("type") == "image"]
    return found


def image_problem(body: Any) -> str | None:
    """What the real API would refuse about the request's images, if anything: an
    assistant turn with one, an unknown media type, bad base64, data of another kind
    than it says, or more than 5 MB."""
    for message in body.get("messages") or [] if isinstance(body, dict) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if (
            message.get("role") == "assistant"
            and isinstance(content, list)
            and any(isinstance(b, dict) and b.get("type") == "image" for b in content)
        ):
            return "Images are only accepted in user messages."
    for block in images(body):
        source = block.get("source") or {}
        media_type = source.get("media_type")
        if source.get("type") != "base64" or media_type not in IMAGE_MEDIA_TYPES:
            return f"Unsupported image source or media type: {media_type!r}."
        encoded = str(source.get("data", ""))
        if len(encoded) > MAX_IMAGE_BYTES:  # the API measures the base64
            return "image exceeds 5 MB maximum"
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return "The image's data is not valid base64."
        if not data.startswith(_IMAGE_MAGIC[media_type]):
            return f"Image does not match the provided media type {media_type}."
    return None


def image_tokens(block: dict[str, Any]) -> int:
    """width × height / 750 for a PNG (its header says its size); 1,600 otherwise."""
    data = base64.b64decode(str((block.get("source") or {}).get("data", "")))
    if data.startswith(b"\x89PNG") and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return max(1, int(width) * int(height) // 750)
    return 1600


def citation_problem(body: Any) -> str | None:
    """What the real API would refuse about the request's search results, if anything."""
    results = search_results(body)
    enabled = {bool((r.get("citations") or {}).get("enabled")) for r in results}
    if len(enabled) > 1:
        return "Citations must be enabled on all or none of the search results."
    for result in results:
        content = result.get("content")
        if not isinstance(content, list) or not content or not result.get("source"):
            return "A search result needs a source and at least one text block."
    return None


def citation(body: Any, cited: Cited) -> dict[str, Any] | None:
    """The `search_result_location` a `Cited` segment stands for (None: no such source)."""
    results = search_results(body)
    if not 0 <= cited.source < len(results):
        return None
    result = results[cited.source]
    blocks = result["content"]
    end = len(blocks) if cited.end is None else min(cited.end, len(blocks))
    start = min(cited.start, end - 1)
    return {
        "type": "search_result_location",
        "source": result["source"],
        "title": result.get("title"),
        "cited_text": "".join(str(b.get("text", "")) for b in blocks[start:end]),
        "search_result_index": cited.source,
        "start_block_index": start,
        "end_block_index": end,
    }


def rough_tokens(body: Any) -> int:
    """A rough token count (chars/4) of the system prompt and the messages' text."""
    if not isinstance(body, dict):
        return 1
    chars = len(_block_text(body.get("system", "")))
    for msg in body.get("messages") or []:
        if isinstance(msg, dict):
            chars += len(_block_text(msg.get("content", "")))
    return max(1, chars // 4) + sum(image_tokens(b) for b in images(body))


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def random_fault(kind: str) -> Fault:
    retry_after = 0.0 if kind == "rate_limit" else None
    return Fault(cast(FaultKind, kind), retry_after, delay_s=2.0 if kind == "timeout" else 30.0)
