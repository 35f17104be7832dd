"""The response cache on the page: a question asked again at temperature 0 shows the
kept answer, marked as costing nothing, and the admins' Usage page counts the hit."""

from __future__ import annotations

import pytest

from parley.fakes.anthropic_server import FakeAnthropic, Reply
from tests.app_pages.support import add_user, app, log_in


def test_a_repeated_question_is_answered_again_without_a_call(
    claude_env: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARLEY_TEMPERATURE__CHAT", "0")
    add_user("alice", "alice-password", admin=True)
    at = app()
    log_in(at, "alice", "alice-password")
    claude_env.enqueue(Reply(text="Ottawa, on the Ottawa River.", input_tokens=120))
    at.chat_input[0].set_value("What is the capital of Canada?").run()
    at.run()
    next(b for b in at.button if b.label == "New conversation").click().run()
    at.chat_input[0].set_value("What is the capital of Canada?").run()
    at.run()
    question, answer = at.chat_message
    assert answer.markdown[0].value == "Ottawa, on the Ottawa River."
    assert any("no call, no cost" in c.value for c in answer.caption), [
        c.value for c in answer.caption
    ]
    chats = [r for r in claude_env.requests if r.path == "/v1/messages" and r.json.get("stream")]
    assert len(chats) == 1, "the second answer came from the cache"
    at.switch_page("parley/app_pages/admin_usage.py").run()
    assert not at.exception
    shown = {m.label: m.value for m in at.metric}
    assert shown["Answered from the cache"] == "1"
    assert shown["Not in the cache"] == "1"
    assert shown["Saved by the cache"].startswith("$") and shown["Saved by the cache"] != "$0.0000"
