"""The open conversation rides in the URL (`?c=ID`): a reload comes back to it, and the
link opens nothing for anyone but its owner."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from parley.fakes.anthropic_server import FakeAnthropic, Reply
from tests.app_pages.support import APP, add_user, app, log_in, page_text

NOT_YOURS = "That link does not open a conversation of yours."


def reloaded(link: str) -> AppTest:
    """A fresh page load (a new browser session) of `/?c=link`."""
    at = AppTest.from_file(APP, default_timeout=30)
    at.query_params["c"] = link
    at.run()
    return at


def test_a_reload_opens_the_conversation_the_url_names(claude_env: FakeAnthropic) -> None:
    add_user("alice", "alice-password")
    claude_env.enqueue(Reply(text="Tom is a fine name."), Reply(text="Second answer."))
    at = app()
    log_in(at, "alice", "alice-password")
    at.chat_input[0].set_value("My cat is called Tom.").run()
    link = at.query_params["c"]
    assert link and link[0].isdigit()
    at.chat_input[0].set_value("And a second question.").run()
    assert at.query_params["c"] == link  # the same conversation, the same link

    again = reloaded(link[0] if isinstance(link, list) else link)
    log_in(again, "alice", "alice-password")
    text = page_text(again)
    assert "My cat is called Tom." in text and "Second answer." in text
    assert NOT_YOURS not in text

    next(b for b in again.button if b.label == "New conversation").click().run()
    assert "c" not in again.query_params  # a new conversation has no link yet
    assert "My cat is called Tom." not in page_text(again)


def test_the_link_opens_nothing_for_anyone_else(claude_env: FakeAnthropic) -> None:
    add_user("alice", "alice-password")
    add_user("bob", "bob-password")
    claude_env.enqueue(Reply(text="A private answer."))
    at = app()
    log_in(at, "alice", "alice-password")
    at.chat_input[0].set_value("Alice's secret question").run()
    link = at.query_params["c"]
    link = link[0] if isinstance(link, list) else link

    for other_link in (link, "999999", "not-a-number"):
        bob = reloaded(other_link)
        log_in(bob, "bob", "bob-password")
        text = page_text(bob)
        assert NOT_YOURS in text  # the same words whether it exists or not
        assert "Alice's secret question" not in text and "A private answer." not in text
        assert "c" not in bob.query_params
        assert not bob.exception


def test_a_number_too_large_for_an_id_is_the_same_sentence(claude_env: FakeAnthropic) -> None:
    del claude_env
    add_user("bob", "bob-password")
    bob = reloaded("9" * 30)
    log_in(bob, "bob", "bob-password")
    assert NOT_YOURS in page_text(bob) and not bob.exception
