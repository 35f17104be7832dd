"""End to end, in a real browser: what people do with a conversation (stop an answer, …).

One server for the module, answering through the fake Messages API (the real SDK parses
its bytes), so the test sees what the provider saw: the connection a Stop closes.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage
from playwright.sync_api import Browser, Page, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from parley.fakes.anthropic_server import Cited, FakeAnthropic, Reply
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
from tests.e2e.test_documents_browser import UPLOAD_TIMEOUT_MS
from tests.support import pdf_with_pages

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


def key(page: Page, prefix: str) -> Any:
    """Streamlit's element for a widget whose key starts with `prefix` (its class names it)."""
    return page.locator(f"[class*='st-key-{prefix}']")


def test_edit_a_question_step_between_branches_send_a_pdf_and_find_it_again(
    page: Page, fake: FakeAnthropic, tmp_path: Path
) -> None:
    messages = page.get_by_test_id("stChatMessage")
    page.get_by_test_id("stSidebar").get_by_role("button", name="New conversation").click()
    fake.enqueue(Reply(text="Paris."))
    ask(page, "Which capital has the Louvre?")
    expect(messages.nth(1)).to_contain_text("Paris.")

    # Edit the question: the new answer shows, and "2 / 2" says there is another.
    key(page, "edit-").first.get_by_role("button").click()
    box = key(page, "edit-text-").locator("textarea")
    expect(box).to_have_value("Which capital has the Louvre?")
    box.fill("Which capital has the Uffizi?")
    fake.enqueue(Reply(text="Florence was; Rome is."))
    key(page, "edit-send-").get_by_role("button").click()
    expect(messages.nth(1)).to_contain_text("Florence was; Rome is.")
    expect(messages.nth(0)).to_contain_text("Which capital has the Uffizi?")
    expect(messages.nth(0)).to_contain_text("2 / 2")
    page.screenshot(path=str(tmp_path / "edited.png"))

    # Back to the first branch, whole.
    key(page, "branch-back-").first.get_by_role("button").click()
    expect(messages.nth(0)).to_contain_text("Which capital has the Louvre?")
    expect(messages.nth(1)).to_contain_text("Paris.")
    expect(messages.nth(0)).to_contain_text("1 / 2")

    # A PDF sent in the message box is read for the question and cited.
    fake.enqueue(
        Reply(segments=["The memo says ", Cited("the museum opens at nine", source=0), "."])
    )
    pdf = pdf_with_pages("Visitor memo: the museum opens at nine on weekdays")
    chat = page.get_by_test_id("stChatInput")
    chat.locator("input[type=file]").set_input_files(
        [{"name": "memo.pdf", "mimeType": "application/pdf", "buffer": pdf}]
    )
    expect(chat).to_contain_text("memo.pdf")
    page.wait_for_load_state("networkidle")  # the file has reached the server
    ask(page, "When does it open?")
    expect(messages.nth(3)).to_contain_text(
        "The memo says the museum opens at nine [1].", timeout=UPLOAD_TIMEOUT_MS
    )
    expect(messages.nth(2)).to_contain_text("memo.pdf")
    expect(messages.nth(3)).to_contain_text("memo.pdf")  # the source under the answer
    sent = fake.requests[-1].body["messages"][-1]["content"]
    assert sent[0]["type"] == "search_result" and "memo.pdf" in sent[0]["title"]
    page.screenshot(path=str(tmp_path / "pdf.png"))

    # Found again by a word from its middle, on the branch that holds it.
    page.get_by_test_id("stSidebar").get_by_role("button", name="New conversation").click()
    search = page.get_by_test_id("stSidebar").get_by_placeholder("Search your conversations")
    search.fill("Uffizi")
    search.press("Enter")
    found = key(page, "found-").first.get_by_role("button")
    expect(found).to_contain_text("Uffizi")
    found.click()
    expect(messages.nth(0)).to_contain_text("Which capital has the Uffizi?")
    expect(messages.nth(0)).to_contain_text("Found here")
    expect(page.get_by_test_id("stException")).to_have_count(0)


def test_rate_down_export_import_and_the_admin_finds_it_by_thumbs_down(
    page: Page, fake: FakeAnthropic, tmp_path: Path
) -> None:
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_role("button", name="New conversation").click()
    messages = page.get_by_test_id("stChatMessage")
    fake.enqueue(Reply(text="Bake it at 900 degrees for a week."))
    ask(page, "How long do I bake bread?")
    answer = messages.nth(1)
    expect(answer).to_contain_text("Bake it at 900 degrees")

    # Thumbs down, with why.
    answer.get_by_role("radio", name="Thumbs down").click()
    answer.get_by_role("button", name="Comment").click()
    page.get_by_label("What made this answer good or bad? (optional)").fill("Burnt to ash")
    page.get_by_role("button", name="Save").click()

    # Export as JSON from the panel, and import it back as a new conversation.
    sidebar.get_by_text("This conversation").click()
    with page.expect_download() as download:
        sidebar.get_by_role("button", name="JSON").click()
    exported = Path(download.value.path()).read_bytes()
    assert b'"How long do I bake bread?"' in exported
    sidebar.get_by_text("Import a conversation").click()
    sidebar.locator("input[type=file]").set_input_files(
        [{"name": "bread.json", "mimeType": "application/json", "buffer": exported}]
    )
    expect(sidebar.get_by_text("bread.json")).to_be_visible()
    page.wait_for_load_state("networkidle")  # the file has reached the server
    sidebar.get_by_role("button", name="Import", exact=True).click()
    expect(messages.nth(1)).to_contain_text("Bake it at 900 degrees")
    expect(sidebar.get_by_role("button", name="How long do I bake bread?")).to_have_count(2)
    page.screenshot(path=str(tmp_path / "imported.png"))

    # The admin finds the conversation by its thumbs down and reads why.
    sidebar.get_by_role("link", name="Admin console").click()
    feedback = page.get_by_test_id("stSelectbox").filter(has_text="Feedback")
    feedback.click()
    page.get_by_role("option", name="thumbs down").click()
    page.get_by_role("button", name="Find").click()
    expect(page.get_by_text("rated by its user · Burnt to ash")).to_be_visible()
    expect(page.get_by_test_id("stException")).to_have_count(0)
    page.screenshot(path=str(tmp_path / "admin.png"))


def test_an_image_sent_in_the_message_box_is_shown_and_read_as_an_image(
    page: Page, fake: FakeAnthropic, tmp_path: Path
) -> None:
    messages = page.get_by_test_id("stChatMessage")
    page.get_by_test_id("stSidebar").get_by_role("button", name="New conversation").click()
    out = io.BytesIO()
    PILImage.new("RGB", (640, 400), "darkorange").save(out, "PNG")
    fake.enqueue(Reply(text="An orange rectangle, wider than tall."))
    chat = page.get_by_test_id("stChatInput")
    chat.locator("input[type=file]").set_input_files(
        [{"name": "swatch.png", "mimeType": "image/png", "buffer": out.getvalue()}]
    )
    expect(chat).to_contain_text("swatch.png")
    page.wait_for_load_state("networkidle")  # the file has reached the server
    ask(page, "What shape is this?")
    expect(messages.nth(1)).to_contain_text(
        "An orange rectangle, wider than tall.", timeout=UPLOAD_TIMEOUT_MS
    )
    shown = messages.nth(0).get_by_role("img")
    expect(shown).to_have_count(1)
    # Measured once its bytes are in (before, the element is an empty box). On a busy
    # machine the first copy's media URL can be gone by the time the browser asks for it
    # (a later rerun replaced it): a reload draws the thumbnail again from the database.
    for attempt in range(3):
        try:
            page.wait_for_function(
                "img => img.complete && img.naturalWidth > 0",
                arg=shown.element_handle(),
                timeout=10_000,
            )
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
            page.reload()
            expect(shown).to_have_count(1, timeout=UPLOAD_TIMEOUT_MS)
    box = shown.bounding_box()
    assert box is not None and 100 < box["width"] <= 170  # the small copy, 160 px wide
    sent = fake.requests[-1].body["messages"][-1]["content"]
    assert [b["type"] for b in sent] == ["text", "image", "text"]
    assert sent[0]["text"] == "Image 1: swatch.png"
    page.screenshot(path=str(tmp_path / "image.png"))
    expect(page.get_by_test_id("stException")).to_have_count(0)
