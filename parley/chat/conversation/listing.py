"""How a user's conversations are listed: told apart when they read alike, and grouped
by when they were last active (UTC days, as everywhere in Parley)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import date, timedelta

from parley.chat.conversation.conversations import ConversationInfo

GROUPS = ("Today", "Previous 7 days", "Older")


def date_groups(
    conversations: Sequence[ConversationInfo], today: date
) -> list[tuple[str, list[ConversationInfo]]]:
    """The conversations (newest first) under "Today", "Previous 7 days" and "Older",
    in that order, leaving out empty groups; the order within each is kept."""
    grouped: dict[str, list[ConversationInfo]] = {name: [] for name in GROUPS}
    week_ago = today - timedelta(days=7)
    for conversation in conversations:
        day = conversation.updated_at.date()
        name = "Today" if day >= today else "Previous 7 days" if day >= week_ago else "Older"
        grouped[name].append(conversation)
    return [(name, items) for name, items in grouped.items() if items]


def distinct_labels(conversations: Sequence[ConversationInfo]) -> dict[int, str]:
    """Each conversation's title; conversations sharing a title (three that began alike)
    also say when they began, so no two entries read the same."""
    seen = Counter(c.title for c in conversations)
    labels = {
        c.id: c.title if seen[c.title] == 1 else f"{c.title} · {c.created_at:%d %b %H:%M} UTC"
        for c in conversations
    }
    while True:  # begun in the same minute too: numbered, oldest first
        alike: dict[str, list[int]] = {}
        for i, label in labels.items():
            alike.setdefault(label, []).append(i)
        clashes = [ids for ids in alike.values() if len(ids) > 1]
        if not clashes:
            return labels
        for ids in clashes:
            for n, i in enumerate(sorted(ids)[1:], start=2):
                labels[i] = f"{labels[i]} ({n})"


__all__ = ["GROUPS", "date_groups", "distinct_labels"]
