"""The sidebar's conversation list: no two entries read the same."""

from __future__ import annotations

from parley.fakes.anthropic_server import FakeAnthropic, Reply
from tests.app_pages.support import add_user, app, log_in


def test_conversations_that_began_alike_are_told_apart(claude_env: FakeAnthropic) -> None:
    add_user("alice", "alice-password")
    at = app()
    log_in(at, "alice", "alice-password")
    for _ in range(3):  # titles stay the first message (this fixture makes no titles)
        claude_env.enqueue(Reply(text="An answer."))
        at.chat_input[0].set_value("Help me plan a trip").run()
        next(b for b in at.button if b.label == "New conversation").click().run()
    entries = [b.label for b in at.button if b.key and b.key.startswith("conversation-")]
    assert len(entries) == 3
    assert len(set(entries)) == 3, entries  # three different entries, not three alike
    assert all(e.startswith("Help me plan a trip · ") and e.count(" UTC") == 1 for e in entries)
