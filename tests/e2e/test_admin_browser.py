"""End to end in a real browser, signed in through OIDC (`st.login` against a local
OpenID provider): a user asks about her document; an admin, whose provider groups make
him one, finds her conversation from yesterday in the console, opens it with a reason,
sees which document chunks fed the answer and what it cost; she sees that visit; her
sign-out ends the provider's sign-in too. Set ``PARLEY_CONSOLE_SCREENSHOT=docs/admin-console.png``
to refresh the README's screenshot."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright
from sqlalchemy import update

from parley.fakes.anthropic_server import FakeAnthropic
from parley.store.db import Database
from parley.store.models import Message
from tests.e2e.test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    PAGE_TIMEOUT_MS,
    ROOT,
    VENV_BIN,
    _expect_chat_page,
    _serve,
    _server_env,
    _session_cookie,
)
from tests.e2e.test_documents_browser import CITING_REPLY, upload_report_and_ask
from tests.oidc_provider import Provider, oidc_provider

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SCREENSHOT = os.environ.get("PARLEY_CONSOLE_SCREENSHOT")  # read before conftest clears it
USERS = [
    {"sub": "root-sub", "email": "root@example.com", "groups": ["parley-admins", "staff"]},
    {"sub": "alice-sub", "email": "alice@example.com", "groups": ["staff"]},
]
REASON = "Support ticket 4411: the revenue figure"


def secrets_file(tmp_path: Path, provider: Provider) -> Path:
    """`.streamlit/secrets.toml` as Streamlit documents it for `st.login`."""
    path = tmp_path / "secrets.toml"
    path.write_text(
        "[auth]\n"
        'redirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
        f'cookie_secret = "{secrets.token_hex(16)}"\n'
        'client_id = "parley-e2e"\n'
        'client_secret = "parley-e2e-secret"\n'
        f'server_metadata_url = "{provider.metadata_url}"\n',
        encoding="utf-8",
    )
    return path


def sign_in(page: Page, url: str, provider: Provider, sub: str) -> None:
    page.goto(url)
    page.get_by_role("button", name="Sign in with single sign-on").click()
    page.wait_for_url(f"{provider.url}/oauth2/authorize*")
    page.locator(f'button[name="sub"][value="{sub}"]').click()
    _session_cookie(page)
    _expect_chat_page(page)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(VENV_BIN / "parley"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done


def backdate_messages(database_url: str, days: int) -> None:
    """As if the conversation had happened `days` ago (the console filters by day)."""
    database = Database(database_url)
    with database.session() as session:
        session.execute(update(Message).values(created_at=datetime.now(UTC) - timedelta(days=days)))
    database.dispose()


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium on PATH (make system-deps)")
def test_an_admin_signed_in_through_oidc_reviews_yesterdays_conversation(tmp_path: Path) -> None:
    with (
        oidc_provider(USERS, tmp_path / "oidc.log") as provider,
        FakeAnthropic(default_reply=CITING_REPLY) as fake,
    ):
        env = _server_env(tmp_path)
        env.update(
            ANTHROPIC_API_KEY="sk-ant-e2e",
            ANTHROPIC_BASE_URL=fake.base_url,
            PARLEY_MODEL_TITLES="false",
            # The admin group of this provider, and of no other (groups are per issuer).
            PARLEY_OIDC_ADMIN_GROUPS=json.dumps([f"{provider.url}#parley-admins"]),
            STREAMLIT_SECRETS_FILES=str(secrets_file(tmp_path, provider)),
        )
        with _serve(tmp_path, env) as running, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                alice = browser.new_context().new_page()
                alice.set_default_timeout(PAGE_TIMEOUT_MS)
                sign_in(alice, running.url, provider, "alice-sub")
                sidebar = alice.get_by_test_id("stSidebar")
                expect(sidebar.get_by_role("link", name="Admin console")).to_have_count(0)
                upload_report_and_ask(alice)
                backdate_messages(f"sqlite:///{tmp_path / 'data' / 'parley.db'}", days=1)

                admin = browser.new_context(viewport={"width": 1400, "height": 1250}).new_page()
                admin.set_default_timeout(PAGE_TIMEOUT_MS)
                sign_in(admin, running.url, provider, "root-sub")
                admin.get_by_test_id("stSidebar").get_by_role("link", name="Admin console").click()
                admin.get_by_label("Text in a message or title (this search is audited)").fill(
                    "revenue"
                )
                admin.get_by_role("button", name="Find").click()
                expect(
                    admin.get_by_text("will see that you opened this conversation")
                ).to_be_visible()
                admin.get_by_label("Reason").fill(REASON)
                admin.get_by_role("button", name="Open with this reason").click()
                expect(
                    admin.get_by_text("The report says revenue grew 12% in March")
                ).to_be_visible()
                expect(admin.get_by_text("tokens · $").first).to_be_visible()
                admin.get_by_text("What went into the prompt").click()
                prompt = admin.get_by_test_id("stExpander").filter(has_text="What went into")
                table = prompt.get_by_test_id("stTable")
                expect(table).to_contain_text("report.pdf")  # the chunks that fed the answer
                expect(table).to_contain_text("owner")  # and why she could see them
                expect(prompt.get_by_text("Strategy")).to_be_visible()
                expect(admin.get_by_test_id("stException")).to_have_count(0)
                if SCREENSHOT:
                    admin.wait_for_timeout(1000)  # the expander's animation
                    admin.screenshot(path=str(ROOT / SCREENSHOT), full_page=True)

                alice.get_by_test_id("stSidebar").get_by_role("link", name="Who looked").click()
                opened = alice.get_by_text("root@example.com opened your conversation")
                expect(opened).to_be_visible()
                expect(alice.get_by_text(REASON, exact=False)).to_be_visible()

                # Revoked sessions stay revoked: the provider's sign-in still in Streamlit's
                # cookie does not sign her straight back in.
                for verb in ("disable", "enable"):  # disabling ends every session of hers
                    cli(env, "user", verb, "alice@example.com")
                alice.reload()  # her session is gone: both sign-ins are cleared
                alice.wait_for_url(f"{provider.url}/oauth2/end_session*")
                alice.goto(running.url)
                expect(
                    alice.get_by_role("button", name="Sign in with single sign-on")
                ).to_be_visible()
                expect(alice.get_by_test_id("stChatInputTextArea")).to_have_count(0)
                sign_in(alice, running.url, provider, "alice-sub")

                # Signing out ends the provider's sign-in in this browser too: back at the
                # sign-in page, not signed straight back in.
                alice.get_by_test_id("stSidebar").get_by_role("link", name="Log out").click()
                # Wait for the provider's end of session itself, not a fixed time: on a busy
                # machine the redirect could land after the next page was asked for.
                alice.wait_for_url(f"{provider.url}/oauth2/end_session*")
                alice.goto(running.url)
                expect(
                    alice.get_by_role("button", name="Sign in with single sign-on")
                ).to_be_visible()
                expect(alice.get_by_test_id("stChatInputTextArea")).to_have_count(0)
            finally:
                browser.close()
        verified = cli(env, "audit", "verify")
    assert "intact" in verified.stdout
    assert fake.requests[-1].body["messages"][-1]["content"][0]["type"] == "search_result"
