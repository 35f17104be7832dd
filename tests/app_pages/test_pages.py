"""The Streamlit pages through AppTest: first run, login, chat, expiry, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import streamlit as st
from sqlalchemy import update
from streamlit.testing.v1 import AppTest

from parley.app_pages.state import UiState
from parley.cli.main import main as cli_main
from parley.fakes.anthropic_server import FakeAnthropic, Fault, Reply
from parley.store.models import Conversation, LoginSession
from parley.wiring.services import Services, build_services
from tests.app_pages.support import add_user, app, log_in, page_text
from tests.support import ROOT


def test_first_run_creates_the_admin_and_logs_in() -> None:
    at = app()
    assert at.title[0].value == "Welcome to Parley"
    at.text_input[0].input("root")
    at.text_input[1].input("root-password")
    at.text_input[2].input("root-password")
    at.button[0].click().run()
    assert not at.exception
    state = at.session_state["parley_ui"]
    assert state.login is not None and state.login.principal.is_admin
    assert "New conversation" in page_text(at)


def test_first_run_refuses_mismatched_passwords() -> None:
    at = app()
    at.text_input[0].input("root")
    at.text_input[1].input("root-password")
    at.text_input[2].input("other-password")
    at.button[0].click().run()
    assert at.error[0].value == "The two passwords differ."
    assert at.session_state["parley_ui"].login is None


def test_visitor_sees_only_the_login_page() -> None:
    add_user("alice", "alice-password")
    at = app()
    assert at.title[0].value == "Parley"
    assert len(at.text_input) == 2
    assert not at.chat_input


def test_wrong_password_gets_a_sentence_not_a_traceback() -> None:
    add_user("alice", "alice-password")
    at = app()
    log_in(at, "alice", "wrong-password")
    assert not at.exception
    assert at.error[0].value == "Wrong user name or password."
    assert not at.chat_input


def test_chat_streams_an_answer_from_claude_and_persists_it(claude_env: FakeAnthropic) -> None:
    add_user("alice", "alice-password")
    claude_env.enqueue(Reply(text="Bonjour Alice!", chunks=["Bonjour", " Alice!"]))
    at = app()
    log_in(at, "alice", "alice-password")
    assert "claude-sonnet" in page_text(at)  # the page says which model answers
    at.chat_input[0].set_value("Say hello in French").run()
    assert not at.exception
    chat = [m.markdown[0].value for m in at.chat_message]
    assert chat == ["Say hello in French", "Bonjour Alice!"]
    # A new session (a reload) finds the conversation after logging in.
    again = app()
    log_in(again, "alice", "alice-password")
    conversation_button = next(b for b in again.button if b.label == "Say hello in French")
    conversation_button.click().run()
    assert [m.markdown[0].value for m in again.chat_message] == chat


def test_costs_are_shown_before_and_after(claude_env: FakeAnthropic) -> None:
    add_user("alice", "alice-password")
    claude_env.enqueue(Reply(text="Answer.", input_tokens=1200, output_tokens=300))
    at = app()
    log_in(at, "alice", "alice-password")
    assert any("Next message" in c.value and "$" in c.value for c in at.caption)
    at.chat_input[0].set_value("How much does this cost?").run()
    line = at.chat_message[1].caption[0].value
    # Sonnet prices: 1,200 in at $3/MTok + 300 out at $15/MTok = $0.0081
    assert line.startswith("1,200 in · 300 out") and "$0.0081" in line


def test_long_retry_after_says_when_to_try_again(claude_env: FakeAnthropic) -> None:
    add_user("alice", "alice-password")
    claude_env.enqueue(Fault("rate_limit", retry_after=3600))
    at = app()
    log_in(at, "alice", "alice-password")
    at.chat_input[0].set_value("Hello?").run()
    assert not at.exception
    assert any("try again at" in e.value and "UTC" in e.value for e in at.error)
    assert any(b.label == "Retry" for b in at.button)


def test_quota_message_names_the_reset_time(claude_env: FakeAnthropic) -> None:
    add_user("alice", "alice-password")
    assert cli_main(["quota", "set", "alice", "--messages", "1"]) == 0
    claude_env.enqueue(Reply(text="one"))
    at = app()
    log_in(at, "alice", "alice-password")
    at.chat_input[0].set_value("first").run()
    at.chat_input[0].set_value("second").run()
    assert "resets at 00:00 UTC" in at.error[0].value
    assert at.text_area[0].value == "second"  # not lost: shown back to copy


def test_failed_answer_shows_a_sentence_and_retry(claude_env: FakeAnthropic) -> None:
    add_user("alice", "alice-password")
    claude_env.enqueue(Fault("overloaded"))
    at = app()
    log_in(at, "alice", "alice-password")
    at.chat_input[0].set_value("Are you there?").run()
    assert not at.exception
    assert at.error, "a clear sentence is shown"
    retry = next(b for b in at.button if b.label == "Retry")
    claude_env.enqueue(Reply(text="Yes, I am."))
    retry.click().run()
    assert not at.exception
    assert [m.markdown[0].value for m in at.chat_message] == ["Are you there?", "Yes, I am."]
    assert not any(b.label == "Retry" for b in at.button)


@pytest.mark.parametrize("text", ["   ", "x" * 20_001])
def test_bad_messages_are_not_sent_and_not_lost(claude_env: FakeAnthropic, text: str) -> None:
    add_user("alice", "alice-password")
    at = app()
    log_in(at, "alice", "alice-password")
    at.chat_input[0].set_value(text).run()
    assert not at.exception
    assert at.error[0].value.startswith("The message")
    assert not [r for r in claude_env.requests if r.path.startswith("/v1/messages")]
    if text.strip():
        assert at.text_area[0].value == text  # the user can copy it back


def services_now() -> Services:
    from parley.core.config import get_settings

    return build_services(get_settings())


def test_idle_session_expires() -> None:
    add_user("alice", "alice-password")
    at = app()
    log_in(at, "alice", "alice-password")
    state: UiState = at.session_state["parley_ui"]
    assert state.login is not None
    idle = services_now().settings.session_idle_minutes
    with services_now()._database.session() as session:
        row = session.get(LoginSession, state.login.session_id)
        assert row is not None
        row.last_seen_at = datetime.now(UTC) - timedelta(minutes=idle + 1)
    at.run()
    assert at.session_state["parley_ui"].login is None
    assert "session has ended" in at.info[0].value
    assert not at.chat_input


def test_disabling_a_user_ends_their_open_session() -> None:
    add_user("alice", "alice-password")
    at = app()
    log_in(at, "alice", "alice-password")
    assert at.chat_input
    services_now().accounts.set_disabled(ROOT, "alice", disabled=True)
    at.run()
    assert not at.chat_input and "session has ended" in at.info[0].value
    log_in(at, "alice", "alice-password")
    assert at.error[0].value == "This account is disabled. Please ask an administrator."


def test_repeated_wrong_passwords_are_slowed_down_with_a_sentence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PARLEY_LOGIN_DELAY_S", "30")
    add_user("alice", "alice-password")
    at = app()
    log_in(at, "alice", "wrong-password")
    assert at.error[0].value == "Wrong user name or password."
    log_in(at, "alice", "alice-password")  # at once: even the right password must wait
    assert at.error[0].value.startswith("Please wait")
    assert not at.exception and not at.chat_input


def test_admin_sees_the_users_page_and_a_user_does_not() -> None:
    add_user("root", "root-password", admin=True)
    add_user("alice", "alice-password")
    at = app()
    log_in(at, "root", "root-password")
    at.switch_page("parley/app_pages/admin_users.py").run()
    assert not at.exception
    assert at.title[0].value == "Users"
    user_at = app()
    log_in(user_at, "alice", "alice-password")
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        user_at.switch_page("parley/app_pages/admin_users.py")


def test_admins_disable_enable_and_set_passwords_on_the_users_page() -> None:
    add_user("root", "root-password", admin=True)
    add_user("alice", "alice-password")
    alice_at = app()
    log_in(alice_at, "alice", "alice-password")
    assert alice_at.chat_input
    at = app()
    log_in(at, "root", "root-password")
    at.switch_page("parley/app_pages/admin_users.py").run()
    at.selectbox(key="manage-user").select("alice").run()
    at.button(key="toggle-user").click().run()
    assert not at.exception
    assert at.button(key="toggle-user").label == "Enable alice"
    assert "disabled" in at.dataframe[0].value["state"].tolist()
    alice_at.run()
    assert not alice_at.chat_input  # her open session ended
    at.button(key="toggle-user").click().run()  # enable again
    password_box = next(t for t in at.text_input if t.label == "New password for alice")
    password_box.input("short")
    next(b for b in at.button if b.label == "Set password").click().run()
    assert at.error[0].value == "A password needs at least 8 characters."
    password_box = next(t for t in at.text_input if t.label == "New password for alice")
    password_box.input("alice-new-password")
    next(b for b in at.button if b.label == "Set password").click().run()
    assert "New password set for alice" in at.success[0].value
    again = app()
    log_in(again, "alice", "alice-new-password")
    assert again.chat_input and not again.exception


def test_rename_and_delete_a_conversation(claude_env: FakeAnthropic) -> None:
    add_user("alice", "alice-password")
    claude_env.enqueue(Reply(text="ok"))
    at = app()
    log_in(at, "alice", "alice-password")
    at.chat_input[0].set_value("first topic").run()
    at.text_input(key="rename").input("Renamed topic")
    next(b for b in at.button if b.label == "Rename").click().run()
    assert any(b.label == "Renamed topic" for b in at.button)
    next(b for b in at.button if b.label == "Delete").click().run()
    next(b for b in at.button if b.label == "Yes, delete").click().run()
    assert not any(b.label == "Renamed topic" for b in at.button)
    assert "No conversations yet." in page_text(at)


def test_strategy_lab_compares_two_strategies(claude_env: FakeAnthropic) -> None:
    add_user("root", "root-password", admin=True)
    claude_env.enqueue(Reply(text="First answer."), Reply(text="Second answer."))
    at = app()
    log_in(at, "root", "root-password")
    at.chat_input[0].set_value("Remember that my cat is Tom.").run()
    at.chat_input[0].set_value("What is my cat called?").run()
    strategy_box = at.selectbox(key="memory-strategy")
    assert strategy_box.value == "token_window"
    strategy_box.set_value("window").run()  # an admin sets this conversation's strategy
    at.switch_page("parley/app_pages/strategy_lab.py").run()
    assert not at.exception
    assert at.title[0].value == "Strategy lab"
    at.selectbox[2].set_value("full").run()  # strategy A
    assert [s.value for s in at.subheader] == ["full", "token_window"]
    tokens = [int(m.value.replace(",", "")) for m in at.metric]
    assert len(tokens) == 2 and all(t > 0 for t in tokens)
    assert tokens[0] >= tokens[1]  # full holds at least what token_window holds


# ---------------------------------------------------------------- stale state, no tracebacks


def test_error_details_are_hidden_wherever_streamlit_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no .streamlit/config.toml here
    st.set_option("client.showErrorDetails", "full")
    at = app()
    assert not at.exception
    assert st.get_option("client.showErrorDetails") == "none"  # set by the app itself


@pytest.mark.parametrize(("setting", "interval"), [(None, 0.001), ("5", 0.005)])
def test_the_server_refuses_large_uploads_and_hands_the_gil_over_as_set(
    tmp_path: Path, setting: str | None, interval: float
) -> None:
    from parley.retrieval.documents import MAX_FILE_BYTES

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "PARLEY_SWITCH_INTERVAL_MS"}
    if setting is not None:
        env["PARLEY_SWITCH_INTERVAL_MS"] = setting
    shown = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, server; from streamlit import config; "
            "print(config.get_option('server.maxUploadSize'), sys.getswitchinterval())",
        ],
        cwd=tmp_path,  # no .streamlit/config.toml here: server.py sets it itself
        env={**env, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    upload_mb, switch_s = shown.stdout.split()[-2:]
    assert int(upload_mb) * 2**20 == MAX_FILE_BYTES
    assert float(switch_s) == pytest.approx(interval)


def open_conversation(at: AppTest, title: str) -> None:
    next(b for b in at.button if b.label == title).click().run()


def test_deleting_in_one_tab_then_clicking_in_another_is_a_sentence(
    claude_env: FakeAnthropic,
) -> None:
    add_user("alice", "alice-password")
    claude_env.enqueue(Reply(text="ok"))
    first_tab = app()
    log_in(first_tab, "alice", "alice-password")
    first_tab.chat_input[0].set_value("shared topic").run()
    first_tab.button(key="delete-button").click().run()  # asks "Yes, delete?"
    second_tab = app()
    log_in(second_tab, "alice", "alice-password")
    open_conversation(second_tab, "shared topic")
    second_tab.button(key="delete-button").click().run()
    second_tab.button(key="delete-confirm").click().run()
    assert not second_tab.exception
    # The first tab still offers "Yes, delete" for the conversation that is gone.
    first_tab.button(key="delete-confirm").click().run()
    assert not first_tab.exception
    assert first_tab.subheader[0].value == "New conversation"


def test_retry_over_quota_is_a_sentence(claude_env: FakeAnthropic) -> None:
    add_user("alice", "alice-password")
    claude_env.enqueue(Fault("server_error"))
    at = app()
    log_in(at, "alice", "alice-password")
    at.chat_input[0].set_value("will fail").run()
    assert any(b.label == "Retry" for b in at.button)
    services_now().quotas.set_quota(ROOT, 1, messages_per_day=None, tokens_per_day=1)
    next(b for b in at.button if b.label == "Retry").click().run()
    assert not at.exception
    assert any("tokens" in e.value for e in at.error)


def test_a_conversation_whose_strategy_was_uninstalled_goes_on(claude_env: FakeAnthropic) -> None:
    add_user("root", "root-password", admin=True)
    claude_env.enqueue(Reply(text="first"), Reply(text="second"))
    at = app()
    log_in(at, "root", "root-password")
    at.chat_input[0].set_value("keep going").run()
    with services_now()._database.session() as session:
        session.execute(update(Conversation).values(memory_strategy="uninstalled_plugin"))
    at.run()
    assert not at.exception
    assert "no longer installed" in page_text(at)
    at.chat_input[0].set_value("still there?").run()
    assert not at.exception
    assert [m.markdown[0].value for m in at.chat_message][-1] == "second"
