"""End to end in a real browser: upload a PDF on the Documents page, ask about it,
and open the citation Claude's answer carries (the fake Messages API cites the
search result it was sent, as Claude does)."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from parley.fakes.anthropic_server import Cited, FakeAnthropic, Reply
from tests.e2e.test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    PAGE_TIMEOUT_MS,
    _answer,
    _expect_chat_page,
    _fill_credentials,
    _serve,
    _server_env,
    _session_cookie,
)
from tests.support import pdf_with_pages

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

UPLOAD_TIMEOUT_MS = 180_000  # the first upload loads the embedding model
# The fake Messages API cites the search result it was sent, as Claude does.
CITING_REPLY = Reply(
    segments=["The report says ", Cited("revenue grew 12% in March", source=0), "."]
)


def upload_report_and_ask(page: Page) -> None:
    """From the chat page: upload a two-page PDF, ask about page 2, see the cited answer."""
    pdf = pdf_with_pages("Opening remarks of the board", "Revenue grew by 12 percent in March")
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_role("link", name="Documents").click()
    # The Documents page's uploader (the chat page's message box takes files too).
    uploader = page.get_by_role("main").get_by_test_id("stFileUploader")
    uploader.locator("input[type=file]").set_input_files(
        [{"name": "report.pdf", "mimeType": "application/pdf", "buffer": pdf}]
    )
    # The browser sends the file on its own; Add before it has arrived would find none.
    expect(uploader.get_by_text("report.pdf")).to_be_visible()
    page.wait_for_load_state("networkidle")
    page.get_by_role("button", name="Add", exact=True).click()
    expect(page.get_by_text("report.pdf: 2 passages indexed")).to_be_visible(
        timeout=UPLOAD_TIMEOUT_MS
    )
    sidebar.get_by_role("link", name="Chat").click()
    _expect_chat_page(page)
    chat_input = page.get_by_test_id("stChatInputTextArea")
    chat_input.fill("How did revenue change in March?")
    chat_input.press("Enter")
    expect(_answer(page)).to_contain_text(
        "The report says revenue grew 12% in March [1].", timeout=PAGE_TIMEOUT_MS
    )


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium on PATH (make system-deps)")
def test_upload_a_pdf_ask_about_it_and_open_the_citation(tmp_path: Path) -> None:
    with FakeAnthropic(default_reply=CITING_REPLY) as fake:
        env = _server_env(tmp_path)
        env.update(
            ANTHROPIC_API_KEY="sk-ant-e2e",
            ANTHROPIC_BASE_URL=fake.base_url,
            PARLEY_MODEL_TITLES="false",
        )
        with _serve(tmp_path, env) as running, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page()
                page.set_default_timeout(PAGE_TIMEOUT_MS)
                page.goto(running.url)
                _fill_credentials(page, confirm=True)
                page.get_by_role("button", name="Create admin account").click()
                _session_cookie(page)
                _expect_chat_page(page)
                upload_report_and_ask(page)
                source = page.get_by_text("[1] report.pdf, page 2")
                source.click()
                expect(page.get_by_text("Revenue grew by 12 percent in March").last).to_be_visible()
                expect(page.get_by_test_id("stException")).to_have_count(0)
            finally:
                browser.close()
    sent = fake.requests[-1].body["messages"][-1]["content"]
    assert sent[0]["type"] == "search_result" and sent[0]["title"] == "report.pdf, page 2"
