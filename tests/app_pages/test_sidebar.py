"""The sidebar's conversation list: no two entries read the same."""

from __future__ import annotations

import pytest

from parley.cli.common import principal_named
from parley.core.config import get_settings
from parley.fakes.anthropic_server import FakeAnthropic, Reply
from parley.wiring.services import build_services
from tests.app_pages.support import add_user, app, log_in
from tests.support import ROOT


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


def test_an_answer_is_rated_commented_and_copied_from_the_page(
    claude_env: FakeAnthropic, request: pytest.FixtureRequest
) -> None:
    add_user("alice", "alice-password")
    at = app()
    log_in(at, "alice", "alice-password")
    claude_env.enqueue(Reply(text="Use `git bisect` to find it."))
    at.chat_input[0].set_value("How do I find the commit that broke it?").run()
    (rating,) = at.feedback
    rating.set_value(1).run()  # thumbs up
    assert not at.exception
    services = build_services(get_settings(), eager=False)
    request.addfinalizer(services.close)
    rows = services.feedback.find(ROOT)
    assert [(r.user, r.rating.value, r.comment) for r in rows] == [("alice", "up", None)]
    assert at.feedback[0].value == 1  # shown as given on the next run
    comment = next(t for t in at.text_area if t.key and t.key.startswith("feedback-comment-"))
    comment.set_value("Exactly what I needed.").run()
    next(b for b in at.button if b.key and b.key.startswith("feedback-save-")).click().run()
    assert services.feedback.find(ROOT)[0].comment == "Exactly what I needed."
    at.feedback[0].set_value(0).run()  # thumbs down keeps the comment
    assert [(r.rating.value, r.comment) for r in services.feedback.find(ROOT)] == [
        ("down", "Exactly what I needed.")
    ]
    copied = [c.value for c in at.code]
    assert "Use `git bisect` to find it." in copied  # the answer as written, to copy
    assert not at.exception


def test_the_sidebar_pins_archives_groups_by_day_and_shows_more(
    request: pytest.FixtureRequest,
) -> None:
    add_user("alice", "alice-password")
    services = build_services(get_settings(), eager=False)
    request.addfinalizer(services.close)
    alice = principal_named(services, "alice")
    made = [services.conversations.create(alice, title=f"Topic {n}").id for n in range(60)]
    at = app()
    log_in(at, "alice", "alice-password")

    def entries() -> list[str]:
        return [b.label for b in at.button if b.key and b.key.startswith("conversation-")]

    assert len(entries()) == 50 and entries()[0] == "Topic 59"  # a page, newest first
    assert "Today" in [c.value for c in at.sidebar.caption]
    next(b for b in at.button if b.key == "sidebar-more").click().run()
    assert len(entries()) == 60 and not [b for b in at.button if b.key == "sidebar-more"]

    next(b for b in at.button if b.label == "Topic 0").click().run()  # the oldest
    next(b for b in at.button if b.key == "pin-button").click().run()
    assert entries()[0] == "Topic 0"  # pinned on top
    assert any("Pinned" in c.value for c in at.sidebar.caption)
    next(b for b in at.button if b.key == "archive-button").click().run()
    assert "Topic 0" not in entries()
    at.toggle(key="show-archived").set_value(True).run()
    assert entries() == ["Topic 0"]
    next(b for b in at.button if b.label == "Topic 0").click().run()
    next(b for b in at.button if b.label == "Unarchive").click().run()
    at.toggle(key="show-archived").set_value(False).run()
    assert entries()[0] == "Topic 0" and len(made) == 60 and not at.exception
