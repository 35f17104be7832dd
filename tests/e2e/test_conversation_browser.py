"""End to end, in a real browser: what people do with a conversation (stop an answer, …).

One server for the module, answering through the fake Messages API (the real SDK parses
its bytes), so the test sees what the provider saw: the connection a Stop closes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from parley.fakes.anthropic_server import FakeAnthropic, Reply
from tests.e2e.test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    PAGE_TIMEOUT_MS,
    Server,
    _expect_chat_page,
    _fill_credentials,
    _serve,
    _server_env,
    _session_cookie,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make system-deps)"),
]

WORDS = " ".join(f"word{i}" for i in range(400))  # 12 s at 30 ms a word


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(default_reply=Reply(text="A short answer.", input_tokens=40)) as running:
        yield running


@pytest.fixture(scope="module")
def server(fake: FakeAnthropic, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp_path = tmp_path_factory.mktemp("conversations")
    env = _server_env(tmp_path)
    env.update(
        ANTHROPIC_API_KEY="sk-ant-e2e",
        ANTHROPIC_BASE_URL=fake.base_url,
        PARLEY_ANTHROPIC_MAX_RETRIES="0",
        PARLEY_MODEL_TITLES="false",
    )
    with _serve(tmp_path, env) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser, server: Server, tmp_path: Path) -> Iterator[Page]:
    """A signed-in page (the first one creates the admin account)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server.url)
    create = page.get_by_role("button", name="Create admin account")
    sign_in = page.get_by_role("button", name="Log in")
    expect(create.or_(sign_in)).to_be_visible()
    first_run = create.is_visible()
    _fill_credentials(page, confirm=first_run)
    (create if first_run else sign_in).click()
    _session_cookie(page)
    _expect_chat_page(page)
    try:
        yield page
    finally:
        with contextlib.suppress(Exception):  # how it was left, pass or fail
            page.screenshot(path=str(tmp_path / "last.png"))
        context.close()
    assert not errors, f"JavaScript errors in the page: {errors!r}"


def ask(page: Page, text: str) -> None:
    chat = page.get_by_test_id("stChatInputTextArea")
    chat.fill(text)
    chat.press("Enter")


def test_stop_ends_the_answer_within_a_second_and_keeps_its_text(
    page: Page, fake: FakeAnthropic, tmp_path: Path
) -> None:
    fake.enqueue(Reply(text=WORDS, chunk_delay_s=0.03, input_tokens=321))
    before = len(fake.hangups)
    ask(page, "Talk for a while")
    answer = page.get_by_test_id("stChatMessage").nth(1)
    expect(answer).to_contain_text("word20")
    page.screenshot(path=str(tmp_path / "streaming.png"))
    stop = answer.get_by_role("button", name="Stop")
    stopped_at = time.monotonic()
    stop.click()
    deadline = stopped_at + 5
    while len(fake.hangups) == before:
        assert time.monotonic() < deadline, "the provider's stream was never closed"
        time.sleep(0.01)
    took = fake.hangups[before] - stopped_at
    assert took < 1.0, f"Stop took {took:.2f} s to close the provider's stream"

    expect(answer).to_contain_text("Stopped; the text above is what arrived.")
    expect(answer).to_contain_text("321 in")  # its usage, as the API reported it
    shown = answer.get_by_test_id("stMarkdownContainer").first.inner_text()
    kept: list[Any] = shown.split()
    assert kept[:21] == [f"word{i}" for i in range(21)]
    assert len(kept) < 400  # stopped, not finished
    expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    expect(page.get_by_role("button", name="Stop")).to_have_count(0)
    expect(page.get_by_test_id("stException")).to_have_count(0)
    page.screenshot(path=str(tmp_path / "stopped.png"))

    # The conversation goes on after a stopped answer.
    ask(page, "Now briefly")
    expect(page.get_by_test_id("stChatMessage").nth(3)).to_contain_text("A short answer.")
    expect(page.get_by_test_id("stChatMessage").nth(1)).to_contain_text("Stopped")
