"""End to end: the real app (Streamlit + the embedded SmolLM2 model) driven in a real browser.

Walks first run -> admin account -> chat -> streamed answer -> reload -> log in again ->
replay of the stored conversation. Drives Debian's ``chromium`` (Playwright never downloads a
browser). Set ``PARLEY_SCREENSHOT=docs/chat-page.png`` to refresh the README screenshot.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect, sync_playwright

from tests.support import free_port, stop

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

# Read at import: tests/conftest.py removes every PARLEY_* variable before each test runs.
SCREENSHOT = os.environ.get("PARLEY_SCREENSHOT")

ADMIN = "admin"
PASSWORD = "correct-horse-1"
PROMPT = "Give me three tips for a good night's sleep."  # under 60 characters: also the title
STARTUP_TIMEOUT_S = 60.0
PAGE_TIMEOUT_MS = 30_000
ANSWER_TIMEOUT_MS = 180_000  # the model loads on first use; answers run to max_output_tokens

# Records every distinct text of the second chat message (the answer) as the page changes, so
# the test can see the answer grow while it streams without racing a polling loop.
WATCH_ANSWER_JS = """() => {
    window.__parleyAnswerTexts = [];
    const record = () => {
        const message = document.querySelectorAll('[data-testid="stChatMessage"]')[1];
        const content = message && message.querySelector('[data-testid="stChatMessageContent"]');
        const text = content ? content.textContent.trim() : "";
        const seen = window.__parleyAnswerTexts;
        if (text && seen[seen.length - 1] !== text) seen.push(text);
    };
    new MutationObserver(record).observe(document.body, {
        childList: true, subtree: true, characterData: true,
    });
}"""


@dataclass(frozen=True)
class Server:
    url: str
    log_path: Path

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(no server log: {exc})"
        return "\n".join(text.splitlines()[-lines:])


def _server_env(tmp_path: Path) -> dict[str, str]:
    """The caller's environment minus every Parley/Anthropic setting: no key, so SmolLM2 answers."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PARLEY_") and key not in {"ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"}
    }
    env["PARLEY_DATA_DIR"] = str(tmp_path / "data")
    # An empty secrets directory, so a key in /run/secrets cannot switch the app to Claude.
    no_secrets = tmp_path / "server-secrets"
    no_secrets.mkdir(exist_ok=True)
    env["PARLEY_SECRETS_DIR"] = str(no_secrets)
    return env


def _is_healthy(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(f"{url}/_stcore/health", timeout=2) as response:
            return bool(response.read().strip() == b"ok")
    except (OSError, urllib.error.URLError):
        return False


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A fresh Parley (empty database, local model) on a free port; stopped afterwards."""
    with _serve(tmp_path, _server_env(tmp_path)) as running:
        yield running


@contextlib.contextmanager
def _serve(tmp_path: Path, env: dict[str, str]) -> Iterator[Server]:
    log_path = tmp_path / "server.log"
    with log_path.open("w", encoding="utf-8") as server_log:
        subprocess.run(
            [str(VENV_BIN / "parley"), "db", "upgrade"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=server_log,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=120,
        )
        port = free_port()
        command = [
            str(VENV_BIN / "streamlit"),
            "run",
            "server.py",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
        ]
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=server_log,
            stderr=subprocess.STDOUT,
        )
        running = Server(url=f"http://127.0.0.1:{port}", log_path=log_path)
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while not _is_healthy(running.url):
                if proc.poll() is not None:
                    pytest.fail(
                        f"streamlit exited with code {proc.returncode}:\n{running.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"streamlit not healthy after {STARTUP_TIMEOUT_S:.0f} s:\n"
                        f"{running.log_tail()}"
                    )
                time.sleep(0.25)
            yield running
        finally:
            stop(proc)


def _fill_credentials(page: Page, *, confirm: bool) -> None:
    page.get_by_label("User name").fill(ADMIN)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    if confirm:
        page.get_by_label("Password again").fill(PASSWORD)


def _session_cookie(page: Page) -> dict[str, object]:
    """The sign-in cookie, once the browser has been through the ticket route."""
    deadline = time.monotonic() + PAGE_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        found = [c for c in page.context.cookies() if c["name"] == "parley_session"]
        if found:
            return dict(found[0])
        time.sleep(0.1)
    raise AssertionError("no parley_session cookie after signing in")


def _expect_chat_page(page: Page) -> None:
    expect(page.get_by_test_id("stChatInputTextArea")).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    expect(page.get_by_test_id("stException")).to_have_count(0)


def _answer(page: Page) -> Locator:
    return page.get_by_test_id("stChatMessage").nth(1).get_by_test_id("stChatMessageContent")


def _answer_text(page: Page) -> Locator:
    """The answer as written: its first Markdown block, without the caption and actions."""
    return _answer(page).get_by_test_id("stMarkdownContainer").first


def _conversation_button(page: Page) -> Locator:
    return page.get_by_test_id("stSidebar").get_by_role("button", name=PROMPT, exact=True)


def _walk(page: Page, server: Server) -> None:
    page.goto(server.url)

    # First run: the first account becomes the admin and is logged in straight away.
    expect(page.get_by_role("button", name="Create admin account")).to_be_visible(
        timeout=PAGE_TIMEOUT_MS
    )
    _fill_credentials(page, confirm=True)
    page.get_by_role("button", name="Create admin account").click()
    cookie = _session_cookie(page)
    _expect_chat_page(page)
    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar).to_contain_text(f"Logged in as {ADMIN}")
    expect(sidebar).to_contain_text("SmolLM2")  # no API key: the embedded model answers
    expect(sidebar.get_by_role("button", name="New conversation")).to_be_visible()

    # Send a message; the answer streams in, then the page reruns with the stored conversation.
    page.evaluate(WATCH_ANSWER_JS)
    chat_input = page.get_by_test_id("stChatInputTextArea")
    chat_input.fill(PROMPT)
    chat_input.press("Enter")
    messages = page.get_by_test_id("stChatMessage")
    expect(messages.first).to_contain_text(PROMPT, timeout=PAGE_TIMEOUT_MS)
    expect(_answer(page)).not_to_have_text("", timeout=ANSWER_TIMEOUT_MS)
    # The sidebar lists the conversation once the answer is stored and the page has rerun.
    expect(_conversation_button(page)).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
    expect(page.get_by_role("heading", name=PROMPT)).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    expect(messages).to_have_count(2)
    # The rerun after the answer may still show the streamed element for a moment.
    expect(_answer(page)).not_to_contain_text("▌", timeout=PAGE_TIMEOUT_MS)
    # The stored answer carries its actions; until they show, the streamed element may remain.
    expect(_answer(page).get_by_role("radiogroup", name="Feedback rating")).to_be_visible(
        timeout=PAGE_TIMEOUT_MS
    )
    answer = (_answer_text(page).text_content() or "").strip()
    assert answer, "the assistant message is empty"
    assert answer != PROMPT, "the assistant message only repeats the user's message"
    expect(page.get_by_test_id("stException")).to_have_count(0)

    texts: list[str] = page.evaluate("window.__parleyAnswerTexts")
    log.info("answer seen in %d stages while streaming; final answer %r", len(texts), answer)
    if len(answer.split()) >= 5:  # a one-token answer cannot be seen growing
        assert len(texts) >= 2, f"the answer appeared all at once, not streamed: {texts!r}"
        assert len(texts[0]) < len(answer), f"the first text seen was not partial: {texts!r}"

    # The sign-in survives a reload: a server-side session behind an HttpOnly cookie.
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert PASSWORD not in str(cookie["value"])
    page.reload()
    _expect_chat_page(page)
    expect(sidebar).to_contain_text(f"Logged in as {ADMIN}")
    expect(page.get_by_role("button", name="Log in")).to_have_count(0)

    # The stored conversation replays from the sidebar.
    _conversation_button(page).click()
    expect(page.get_by_role("heading", name=PROMPT)).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    expect(messages).to_have_count(2, timeout=PAGE_TIMEOUT_MS)
    expect(messages.first.get_by_test_id("stMarkdownContainer").first).to_have_text(PROMPT)
    expect(_answer_text(page)).to_have_text(answer)
    expect(page.get_by_test_id("stException")).to_have_count(0)

    # Log out: the login form, and a reload does not bring the session back.
    sidebar.get_by_role("link", name="Log out").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    deadline = time.monotonic() + PAGE_TIMEOUT_MS / 1000
    while any(c["name"] == "parley_session" for c in page.context.cookies()):
        assert time.monotonic() < deadline, "the cookie outlived the logout"
        time.sleep(0.1)
    page.reload()
    expect(page.get_by_role("button", name="Log in")).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    _fill_credentials(page, confirm=False)
    page.get_by_role("button", name="Log in").click()
    _session_cookie(page)
    _expect_chat_page(page)
    expect(_conversation_button(page)).to_be_visible(timeout=PAGE_TIMEOUT_MS)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium on PATH (make system-deps)")
def test_first_run_chat_reload_and_replay(server: Server, tmp_path: Path) -> None:
    page_errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            try:
                _walk(page, server)
            except BaseException:
                failure_shot = tmp_path / "failure.png"
                with contextlib.suppress(Exception):  # keep the original error if this fails
                    page.screenshot(path=str(failure_shot))
                log.error(
                    "browser test failed; screenshot %s; page errors %r\nserver log tail:\n%s",
                    failure_shot,
                    page_errors,
                    server.log_tail(),
                )
                raise
            assert not page_errors, f"JavaScript errors in the page: {page_errors!r}"
            if SCREENSHOT:
                Path(SCREENSHOT).parent.mkdir(parents=True, exist_ok=True)
                page.mouse.move(0, 0)  # no hover highlight in the picture
                page.screenshot(path=SCREENSHOT)
        finally:
            browser.close()


class _Listener:
    """A local HTTP server that records every request: where a leaked image would go."""

    def __init__(self) -> None:
        import http.server
        import threading

        seen = self.requests = []  # type: list[str]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the standard library's name
                seen.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium on PATH (make system-deps)")
def test_an_answer_never_makes_the_browser_fetch_an_image(tmp_path: Path) -> None:
    from parley.fakes.anthropic_server import FakeAnthropic, Reply

    listener = _Listener()
    answer = (
        "Here is the summary you asked for.\n\n"
        f"![status]({listener.url}/inline?d=conversation-secret)\n\n"
        f"![chart][leak]\n\n[leak]: {listener.url}/reference?d=secret\n\n"
        f"<img src='{listener.url}/html?d=secret'>\n\n"
        f"See [the report]({listener.url}/link) for more."
    )
    try:
        with FakeAnthropic(default_reply=Reply(text=answer)) as fake:
            env = _server_env(tmp_path)
            env.update(
                ANTHROPIC_API_KEY="sk-ant-e2e",
                ANTHROPIC_BASE_URL=fake.base_url,
                PARLEY_MODEL_TITLES="false",
            )
            with _serve(tmp_path, env) as running, sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
                )
                try:
                    page = browser.new_page()
                    page.set_default_timeout(PAGE_TIMEOUT_MS)
                    page.goto(running.url)
                    _fill_credentials(page, confirm=True)
                    page.get_by_role("button", name="Create admin account").click()
                    _session_cookie(page)
                    _expect_chat_page(page)
                    chat_input = page.get_by_test_id("stChatInputTextArea")
                    chat_input.fill("Summarise my notes")
                    chat_input.press("Enter")
                    expect(_answer(page)).to_contain_text(
                        "image not loaded: status", timeout=PAGE_TIMEOUT_MS
                    )
                    expect(_answer(page)).to_contain_text(f"{listener.url}/link")  # the target
                    page.wait_for_timeout(1500)  # time for any fetch to happen
                    assert page.locator("[data-testid='stChatMessageContent'] img").count() == 0
                finally:
                    browser.close()
    finally:
        listener.close()
    assert listener.requests == [], f"the browser fetched {listener.requests!r}"
