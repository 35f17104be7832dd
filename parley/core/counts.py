"""A number with its noun, in the words a person would write: "1 passage", "2 passages"."""

from __future__ import annotations

IRREGULAR = {"person": "people", "entry": "entries", "summary": "summaries"}


def count(n: int, noun: str, plural: str | None = None) -> str:
    """`n` (thousands separated) and `noun`, singular for exactly one."""
    if n == 1:
        return f"1 {noun}"
    return f"{n:,} {plural or IRREGULAR.get(noun) or noun + 's'}"


__all__ = ["count"]
