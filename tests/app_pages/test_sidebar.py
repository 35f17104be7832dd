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


def test_the_sidebar_searches_ones_own_conversations_and_opens_the_message(
    claude_env: FakeAnthropic,
) -> None:
    add_user("alice", "alice-password")
    add_user("bob", "bob-password")
    bob = app()
    log_in(bob, "bob", "bob-password")
    claude_env.enqueue(Reply(text="Bob's tulips are red."))
    bob.chat_input[0].set_value("About my tulips").run()

    at = app()
    log_in(at, "alice", "alice-password")
    for question, answer in (
        ("Which bulbs flower first?", "Snowdrops, then crocus and tulips."),
        ("Plan a trip", "Take the night train."),
    ):
        claude_env.enqueue(Reply(text=answer))
        at.chat_input[0].set_value(question).run()
        next(b for b in at.button if b.label == "New conversation").click().run()

    at.text_input(key="search").set_value("tulip").run()
    found = [b for b in at.button if b.key and b.key.startswith("found-")]
    assert len(found) == 1, [b.label for b in found]  # alice's answer; never bob's
    assert "**tulips**" in found[0].label and found[0].label.startswith("Which bulbs")
    found[0].click().run()
    assert [m.markdown[0].value for m in at.chat_message if m.markdown] == [
        "Which bulbs flower first?",
        "Snowdrops, then crocus and tulips.",
    ]
    captions = [c.value for c in at.chat_message[1].caption]
    assert any("Found here" in c for c in captions)
    assert not at.exception

    at.text_input(key="search").set_value("?!").run()
    assert any("Type a word to search for." in c.value for c in at.sidebar.caption)
    at.text_input(key="search").set_value("zeppelin").run()
    assert any("Nothing in your conversations matches." in c.value for c in at.sidebar.caption)
