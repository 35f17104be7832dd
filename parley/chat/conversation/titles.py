"""Conversation titles as validated structured output.

The model is asked for `{"title": "..."}` matching `TitleOutput`'s JSON schema
(Claude's structured outputs; a JSON grammar on the local model). Output that
fails validation is sent back with the validation error, at most `attempts`
times in all; then the deterministic title from the first message is kept.
Nothing here raises: a title is a nicety, never a reason to fail a turn.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from parley.core.errors import ParleyError
from parley.core.llm import (
    CacheKey,
    CallMeta,
    ChatProvider,
    ChatRequest,
    PromptMessage,
    TextDelta,
)

log = logging.getLogger(__name__)

TITLE_CHARS = 60

TITLE_SYSTEM = (
    "You name chat conversations. Reply with JSON only, exactly of the form "
    '{"title": "<3 to 8 words>"}: no quotes inside the title, no trailing period, '
    "no Markdown."
)


class TitleOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=3, max_length=TITLE_CHARS)

    @field_validator("title")
    @classmethod
    def one_plain_line(cls, value: str) -> str:
        value = " ".join(value.split()).strip(" .\"'")
        if len(value) < 3:
            raise ValueError("the title must have at least 3 characters")
        if any(mark in value for mark in ("{", "}", "`", "#", "*")):
            raise ValueError("the title must be plain text without Markdown or braces")
        return value


def fallback_title(text: str) -> str:
    """The first message on one line, cut at TITLE_CHARS."""
    first_line = " ".join(text.split())
    if len(first_line) <= TITLE_CHARS:
        return first_line
    return first_line[: TITLE_CHARS - 1].rstrip() + "…"


def parse_title(raw: str) -> TitleOutput:
    """Validate the model's output; raises `ValidationError` or `ValueError` with the reason."""
    cleaned = raw.strip()
    if cleaned.startswith("```"):  # tolerate a fenced block, nothing else
        cleaned = cleaned.strip("`").removeprefix("json").strip()
    return TitleOutput.model_validate_json(cleaned)


def title_message(question: str, answer: str) -> PromptMessage:
    """What the model is asked to name: the first question and its answer."""
    return PromptMessage(
        "user",
        "Name this conversation.\n\n<first_message>\n"
        f"{question[:2000]}\n</first_message>\n<first_answer>\n{answer[:2000]}\n</first_answer>",
    )


def title_request(
    question: str, answer: str, *, temperature: float, meta: CallMeta, again: str = ""
) -> ChatRequest:
    """One call for a title, as a batch sends it; `again`: why an earlier reply was not
    valid (the model is told, and asked once more)."""
    messages = [title_message(question, answer)]
    if again:
        messages.append(
            PromptMessage(
                "user",
                f"An earlier reply was not valid: {again}. Reply with only the JSON object "
                '{"title": "..."}.',
            )
        )
    return ChatRequest(
        system=TITLE_SYSTEM,
        messages=tuple(messages),
        max_tokens=60,
        temperature=temperature,
        json_schema=TitleOutput.model_json_schema(),
        meta=meta,
    )


def title_problem(raw: str) -> tuple[str | None, str]:
    """(the title, "") when `raw` is a valid title reply, else (None, why not)."""
    try:
        return parse_title(raw).title, ""
    except (ValidationError, ValueError) as exc:
        return None, _reason(exc)


def generate_title(
    provider: ChatProvider,
    *,
    meta: CallMeta,
    question: str,
    answer: str,
    temperature: float,
    attempts: int,
    cached: bool = True,
) -> tuple[str, int]:
    """The title and how many model calls it took (0 when the fallback is used at once).
    `cached`: the response cache may answer (the same exchange, exactly)."""
    messages = [title_message(question, answer)]
    schema = TitleOutput.model_json_schema()
    # A title is deterministic by nature: the same exchange of the same user gets the
    # same title from the response cache (the first attempt only: a retry says why).
    key = CacheKey(
        scope=f"user {meta.user_id}",
        context=hashlib.sha256(
            json.dumps([provider.model, TITLE_SYSTEM, schema, temperature], sort_keys=True).encode()
        ).hexdigest(),
        question=messages[0].content,
        semantic=False,  # the exchange is long, and one word may change the title
    )
    for attempt in range(1, attempts + 1):
        keyed = cached and meta.user_id is not None and attempt == 1
        request = ChatRequest(
            system=TITLE_SYSTEM,
            messages=tuple(messages),
            max_tokens=60,
            temperature=temperature,
            json_schema=schema,
            meta=replace(meta, cache=key) if keyed else meta,
        )
        try:
            raw = "".join(e.text for e in provider.stream(request) if isinstance(e, TextDelta))
        except ParleyError as exc:
            log.info("Title generation failed (%s); using the first message.", type(exc).__name__)
            return fallback_title(question), attempt
        try:
            return parse_title(raw).title, attempt
        except (ValidationError, ValueError) as exc:
            reason = _reason(exc)
            log.info("Title attempt %d invalid: %s", attempt, reason)
            messages += [
                PromptMessage("assistant", raw.strip() or "(empty)"),
                PromptMessage(
                    "user",
                    f"That is not valid: {reason}. Reply again with only the JSON object "
                    '{"title": "..."}.',
                ),
            ]
    return fallback_title(question), attempts


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'output'}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
    return str(exc)


__all__ = [
    "TitleOutput",
    "fallback_title",
    "generate_title",
    "parse_title",
    "title_problem",
    "title_request",
]
