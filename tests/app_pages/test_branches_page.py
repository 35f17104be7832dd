"""The chat page edits a question, answers again, and steps between the branches."""

from __future__ import annotations

import json

from streamlit.testing.v1 import AppTest

from parley.fakes.anthropic_server import FakeAnthropic, Reply
from tests.app_pages.support import add_user, app, log_in


def shown(at: AppTest) -> list[str]:
    return [m.markdown[0].value for m in at.chat_message if m.markdown]


def button(at: AppTest, prefix: str, index: int = 0) -> object:
    found = [b for b in at.button if b.key and b.key.startswith(prefix)]
    return found[index]


def test_edit_answer_again_and_step_between_branches(claude_env: FakeAnthropic) -> None:
    add_user("alice", "alice-password")
    at = app()
    log_in(at, "alice", "alice-password")
    claude_env.enqueue(Reply(text="Paris."))
    at.chat_input[0].set_value("Capital of France?").run()
    assert shown(at) == ["Capital of France?", "Paris."]

    # Edit the question: a box with its words, then Send starts a new branch.
    button(at, "edit-").click().run()  # type: ignore[attr-defined]
    box = next(t for t in at.text_area if t.key and t.key.startswith("edit-text-"))
    assert box.value == "Capital of France?"
    box.set_value("Capital of Italy?")
    claude_env.enqueue(Reply(text="Rome."))
    button(at, "edit-send-").click().run()  # type: ignore[attr-defined]
    at.run()  # the rerun after the answer is stored
    assert shown(at) == ["Capital of Italy?", "Rome."]
    assert "2 / 2" in [c.value for c in at.chat_message[0].caption]
    assert not at.exception

    # Step back: the first question and its answer, whole.
    button(at, "branch-back-").click().run()  # type: ignore[attr-defined]
    assert shown(at) == ["Capital of France?", "Paris."]
    assert "1 / 2" in [c.value for c in at.chat_message[0].caption]

    # Answer again on this branch: a second answer, the first kept beside it.
    claude_env.enqueue(Reply(text="Paris, on the Seine."))
    button(at, "regenerate-").click().run()  # type: ignore[attr-defined]
    at.run()
    assert shown(at) == ["Capital of France?", "Paris, on the Seine."]
    assert "2 / 2" in [c.value for c in at.chat_message[1].caption]
    button(at, "branch-back-", 1).click().run()  # type: ignore[attr-defined]
    assert shown(at) == ["Capital of France?", "Paris."]

    # A question typed now follows the branch shown.
    claude_env.enqueue(Reply(text="About two million."))
    at.chat_input[0].set_value("How many people live there?").run()
    assert shown(at)[:2] == ["Capital of France?", "Paris."]
    assert shown(at)[-1] == "About two million."
    chats = [r for r in claude_env.requests if r.path == "/v1/messages" and r.json.get("stream")]
    text = json.dumps(chats[-1].json["messages"])
    assert "Paris." in text and "Rome." not in text and "Seine" not in text
    assert not at.exception


def test_each_tab_keeps_the_branch_it_shows(claude_env: FakeAnthropic) -> None:
    add_user("alice", "alice-password")
    one = app()
    log_in(one, "alice", "alice-password")
    claude_env.enqueue(Reply(text="Paris."))
    one.chat_input[0].set_value("Capital of France?").run()
    button(one, "edit-").click().run()  # type: ignore[attr-defined]
    next(t for t in one.text_area if t.key and t.key.startswith("edit-text-")).set_value(
        "Capital of Spain?"
    )
    claude_env.enqueue(Reply(text="Madrid."))
    button(one, "edit-send-").click().run()  # type: ignore[attr-defined]
    one.run()
    assert shown(one) == ["Capital of Spain?", "Madrid."]

    # A second tab opens the conversation and steps back to the first branch.
    two = app()
    log_in(two, "alice", "alice-password")
    next(b for b in two.button if b.key and b.key.startswith("conversation-")).click().run()
    button(two, "branch-back-").click().run()  # type: ignore[attr-defined]
    assert shown(two) == ["Capital of France?", "Paris."]

    # The first tab still shows, and adds to, its own branch.
    one.run()
    assert shown(one) == ["Capital of Spain?", "Madrid."]
    claude_env.enqueue(Reply(text="About 3.3 million."))
    one.chat_input[0].set_value("How many live there?").run()
    one.run()
    assert shown(one) == [
        "Capital of Spain?",
        "Madrid.",
        "How many live there?",
        "About 3.3 million.",
    ]
    two.run()
    assert shown(two) == ["Capital of France?", "Paris."]
    assert not one.exception and not two.exception
