"""The strategy lab shows each strategy's options and sets them for one conversation."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from parley.core.config import get_settings
from parley.fakes.anthropic_server import FakeAnthropic, Reply
from parley.store.db import Database
from parley.store.models import Conversation
from tests.app_pages.support import add_user, app, log_in, page_text


def stored_options() -> list[Any]:
    database = Database(get_settings().resolved_database_url)
    try:
        with database.session() as session:
            return list(session.scalars(select(Conversation.memory_options)))
    finally:
        database.dispose()


def turns_in_prompts(text: str) -> list[str]:
    return [line.split(" · ")[0] for line in text.splitlines() if "Turns in the prompt" in line]


def test_the_strategy_lab_sets_a_strategys_options_for_the_conversation(
    claude_env: FakeAnthropic,
) -> None:
    add_user("root", "root-password", admin=True)
    claude_env.enqueue(Reply(text="First answer."), Reply(text="Second answer."))
    at = app()
    log_in(at, "root", "root-password")
    at.chat_input[0].set_value("Remember that my cat is Tom.").run()
    at.chat_input[0].set_value("What is my cat called?").run()
    at.switch_page("parley/app_pages/strategy_lab.py").run()
    assert not at.exception
    at.selectbox[2].set_value("window").run()  # strategy A; B is token_window
    assert "This strategy has no options." in page_text(at)  # token_window's
    assert turns_in_prompts(page_text(at)) == ["Turns in the prompt: 2"] * 2
    turns = at.text_input(key="memory-option-window-turns")
    assert turns.value == "" and turns.placeholder == "6 (the environment's)"
    turns.input("0")
    next(b for b in at.button if b.label == "Save for this conversation").click().run()
    assert [e.value for e in at.error] == [
        "These options do not suit the memory strategy 'window': "
        "turns: Input should be greater than or equal to 1."
    ]
    assert stored_options() == [None]  # nothing stored
    at.text_input(key="memory-option-window-turns").input("1")
    next(b for b in at.button if b.label == "Save for this conversation").click().run()
    assert not at.exception and not at.error
    assert any(s.value.startswith("Saved") for s in at.success)
    assert stored_options() == [{"window": {"turns": 1}}]
    # The replay uses them: window keeps one turn, an assistant's, so none is left.
    assert turns_in_prompts(page_text(at)) == [
        "Turns in the prompt: 0",
        "Turns in the prompt: 2",
    ]
