"""End to end: nothing an answer holds makes the browser fetch from elsewhere, and the
Content-Security-Policy holds even when rendering would not.

The answers plant every piece of Streamlit's Markdown dialect that markdown-it does not
read — math, directives, bare addresses, footnotes, tables, Mermaid, emoji and icons —
each built to hide an image from a checker that parses another dialect, against a local
listener that records any request. The browser must send it nothing, and must not even
try (no policy violation: the first line held by itself). Then an `<img>` and a `fetch`
injected by script stand for whatever a future parser difference lets through: the
policy blocks them. Every kind of response Parley serves carries the policy, nosniff,
a strict referrer policy and no framing, and the app works fully under it (Streamlit's own page,
assets, WebSocket, charts: no violation).
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import re
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from parley.app_pages.rendering import WORD_JOINER
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

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Each answer hides an image (or a fetch) behind one piece of Streamlit's dialect; `{L}` is
# the listener. Answer n starts with the line "Answer n." so the test knows it has arrived;
# a plant that starts indented has the whole answer indented.
PLANTS = [
    # Math spans swallow backticks as code spans do: markdown-it sees code, Streamlit math.
    "Math hides code: $`$ ![m]({L}/math-span) `$` and KaTeX: $\\includegraphics{{{L}/katex}}$ "
    "$$\\href{{{L}/href}}{{x}}$$",
    "A math block hides a fence:\n\n$$\n```\n$$\n![f]({L}/math-block)\n```\n",
    # A directive's braces swallow a backtick; a help tooltip renders its label again.
    ':x{{a="`"}} ![d]({L}/directive) ` and :help[\\!\\[h\\]({L}/help)] and '
    ":red[red] :blue-badge[badge]\n\n:::note\n![c]({L}/container)\n:::",
    # A bare address runs to the next space, through a backtick.
    "Addresses: https://a.example/`x ![a]({L}/https) ` and www.a.example/`y ![w]({L}/www) `",
    "Footnotes[^1] and [^x]: ![n]({L}/footnote-inline)\n\n[^1]: ![n]({L}/footnote)\n\n"
    "    ![i]({L}/footnote-indented)",
    "| h | i |\n|---|---|\n| `a | ![t]({L}/table) b` |\n| ![u]({L}/cell) | c |",
    # An indented block is code to a checker, but st.markdown dedents it on the server.
    "    ![i]({L}/dedented)\n\n    <img src='{L}/dedented-html'>",
    # Mermaid draws a fenced block; an image node loads its address while drawing.
    '```mermaid\nflowchart TD\n  A@{{ img: "{L}/mermaid", label: "x", pos: "t", w: 60, '
    'h: 60, constraint: "off" }}\n```\n\n```Mermaid-x\nflowchart TD\n  B@{{ img: "{L}/mermaid-x"'
    ', label: "y", pos: "t", w: 60, h: 60, constraint: "off" }}\n```',
    "Emoji :smile: icons :material/home: the logo :streamlit: ~strike~ and plain "
    "![p]({L}/plain) ![r][ref] <img src='{L}/html'>\n\n[ref]: {L}/reference",
]

# Records every policy violation from the first script on, on every page load.
WATCH_VIOLATIONS_JS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => window.__violations.push(
    {blocked: e.blockedURI, directive: e.effectiveDirective, source: e.sourceFile}));
"""


# A real image, so that an `<img>` the policy failed to block would load, not error.
PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)


class Listener:
    """A local HTTP server that records every request: where a leak would go."""

    def __init__(self) -> None:
        seen: list[str] = []
        self.requests = seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the standard library's name
                seen.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Content-Length", str(len(PIXEL)))
                self.end_headers()
                self.wfile.write(PIXEL)

            def log_message(self, *_args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def listening() -> Iterator[Listener]:
    listener = Listener()
    try:
        yield listener
    finally:
        listener.close()


@contextlib.contextmanager
def parley_with_claude(tmp_path: Path, *replies: Reply) -> Iterator[Server]:
    with FakeAnthropic() as fake:
        fake.enqueue(*replies)
        env = _server_env(tmp_path)
        env.update(
            ANTHROPIC_API_KEY="sk-ant-e2e",
            ANTHROPIC_BASE_URL=fake.base_url,
            PARLEY_MODEL_TITLES="false",
        )
        with _serve(tmp_path, env) as running:
            yield running


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


def fetch(url: str, *, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """`url` as is (never via a proxy, redirects not followed)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())
    request = urllib.request.Request(url, data=b"" if method == "POST" else None, method=method)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:  # a redirect or an error status: still a response
        return error.code, dict(error.headers.items()), error.read()


def directives(policy: str) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    for part in policy.split(";"):
        name, *sources = part.split()
        parsed[name] = sources
    return parsed


def assert_protected(url: str, headers: dict[str, str]) -> None:
    lowered = {name.lower(): value for name, value in headers.items()}
    policy = directives(lowered.get("content-security-policy", "") or "none")
    assert lowered.get("x-content-type-options") == "nosniff", url
    assert lowered.get("referrer-policy") in ("no-referrer", "same-origin"), url
    assert policy.get("frame-ancestors") == ["'none'"], (url, policy)
    assert policy.get("default-src") == ["'self'"], (url, policy)
    for name in ("img-src", "font-src", "connect-src", "frame-src", "media-src", "script-src"):
        sources = policy.get(name, policy["default-src"])
        assert "'self'" in sources, (url, name, sources)
        # Only Parley itself and URLs the page makes itself: no host, scheme or wildcard
        # that would let a planted address through.
        others = [s for s in sources if s not in ("'self'", "data:", "blob:")]
        assert all(s.startswith("'") for s in others), (url, name, others)
        assert "'unsafe-eval'" not in sources and "'unsafe-inline'" not in others, (url, name)
    assert policy.get("object-src") == ["'none'"], (url, policy)


def test_every_response_carries_the_policy(tmp_path: Path) -> None:
    with parley_with_claude(tmp_path) as running:
        status, headers, page = fetch(f"{running.url}/")
        assert status == 200 and b'<div id="root">' in page
        assert_protected("/", headers)
        assets = re.findall(rb'(?:src|href)="\./(static/[^"]+)"', page)
        assert any(a.endswith(b".js") for a in assets) and any(a.endswith(b".css") for a in assets)
        paths = [f"/{a.decode()}" for a in assets[:3] + assets[-1:]]
        paths += [
            "/favicon.png",
            "/manifest.json",
            "/_stcore/health",
            "/_stcore/host-config",
            "/session/start?ticket=not-a-ticket",
            "/session/end",
            "/session/end?then=oidc",
            "/chat",  # a page's own address: the app again
            "/static/js/no-such-file.js",  # the app again (Streamlit serves its page)
            "/media/no-such-file.png",  # Streamlit's media endpoint: not found
        ]
        statuses = []
        for method, path in [("GET", p) for p in paths] + [("POST", "/session/end")]:
            status, headers, _ = fetch(f"{running.url}{path}", method=method)
            assert status < 500, (method, path, status)
            assert_protected(f"{method} {path}", headers)
            statuses.append(status)
        assert any(300 <= s < 400 for s in statuses)  # redirects are covered too
        assert any(400 <= s < 500 for s in statuses)  # and refusals


def answer(number: int, plant: str) -> str:
    text = f"Answer {number}.\n\n{plant}"
    return textwrap.indent(text, "    ") if plant.startswith("    ") else text


def send(page: Page, number: int, text: str) -> None:
    """Send `text` and wait until answer `number` (0-based) has arrived and settled."""
    chat_input = page.get_by_test_id("stChatInputTextArea")
    chat_input.fill(text)
    chat_input.press("Enter")
    answer = (
        page.get_by_test_id("stChatMessage")
        .nth(2 * number + 1)
        .get_by_test_id("stChatMessageContent")
    )
    expect(answer).to_contain_text(f"Answer {number}.", timeout=PAGE_TIMEOUT_MS)
    expect(answer).not_to_contain_text("▌", timeout=PAGE_TIMEOUT_MS)


def violations(page: Page) -> list[dict[str, str]]:
    found: list[dict[str, str]] = page.evaluate("window.__violations || []")
    return found


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium on PATH (make system-deps)")
def test_planted_answers_fetch_nothing_and_the_policy_blocks_what_gets_through(
    tmp_path: Path,
) -> None:
    with listening() as listener:
        replies = [
            Reply(text=answer(n, plant.format(L=listener.url))) for n, plant in enumerate(PLANTS)
        ]
        # The model's name is stored and shown under each answer, and the first message
        # becomes the conversation's title: both are plain text wherever they appear.
        replies[0].model = f"claude-x ![model]({listener.url}/model)"
        title = f"Sum $x$ :red[y] ![t]({listener.url}/title)"
        console: list[str] = []
        with parley_with_claude(tmp_path, *replies) as running, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page()
                page.set_default_timeout(PAGE_TIMEOUT_MS)
                page.add_init_script(WATCH_VIOLATIONS_JS)
                page.on("console", lambda message: console.append(message.text))
                page.goto(running.url)
                _fill_credentials(page, confirm=True)
                page.get_by_role("button", name="Create admin account").click()
                _session_cookie(page)
                _expect_chat_page(page)
                for number in range(len(PLANTS)):
                    send(page, number, title if number == 0 else f"Question {number}")
                page.reload()  # the stored conversation, replayed from the database
                _expect_chat_page(page)
                page.get_by_test_id("stSidebar").get_by_role("button").filter(
                    has_text="Sum"
                ).click()
                expect(page.get_by_test_id("stChatMessage")).to_have_count(2 * len(PLANTS))
                # The usage page draws charts (Vega) under the policy too.
                page.get_by_test_id("stSidebar").get_by_role("link", name="Usage").click()
                expect(page.get_by_test_id("stVegaLiteChart").first).to_be_visible()
                page.get_by_test_id("stSidebar").get_by_role("link", name="Chat").click()
                _expect_chat_page(page)
                page.wait_for_timeout(2000)  # time for any fetch to happen

                # The first line held by itself: nothing was rendered that fetches, so the
                # policy had nothing to block, and Streamlit's own page broke no rule.
                messages = page.get_by_test_id("stChatMessageContent")
                leaks = page.eval_on_selector_all(
                    f"img[src^='{listener.url}']", "images => images.map((i) => i.src)"
                )
                assert leaks == [], leaks
                assert messages.locator(".katex, [data-testid='stMermaidChart']").count() == 0
                assert violations(page) == [], violations(page)
                assert not [c for c in console if "Content Security Policy" in c], console
                assert listener.requests == [], f"the browser fetched {listener.requests!r}"
                # What was planted is shown as the characters it is.
                expect(messages.nth(1)).to_contain_text(f"![m]({listener.url}/math-span)")
                # (a label's address carries an invisible word joiner: shown, never linked)
                shown_url = listener.url.replace("http://", f"http{WORD_JOINER}://")
                expect(messages.nth(1)).to_contain_text(f"claude-x ![model]({shown_url}/model)")
                expect(messages.last).to_contain_text("image not loaded: p")
                expect(page.get_by_test_id("stException")).to_have_count(0)

                # The second line: what a future parser difference might let through.
                outcome = page.evaluate(
                    """async (url) => {
                        const image = document.createElement("img");
                        const loaded = new Promise((resolve) => {
                            image.onload = () => resolve("loaded");
                            image.onerror = () => resolve("blocked");
                        });
                        image.src = url + "/injected-image";
                        document.body.appendChild(image);
                        const fetched = await fetch(url + "/injected-fetch").then(
                            () => "loaded", () => "blocked");
                        return [await loaded, fetched];
                    }""",
                    listener.url,
                )
                assert outcome == ["blocked", "blocked"]
                deadline = time.monotonic() + 5
                while len(violations(page)) < 2 and time.monotonic() < deadline:
                    page.wait_for_timeout(100)
                blocked = {(v["directive"], v["blocked"]) for v in violations(page)}
                assert ("img-src", f"{listener.url}/injected-image") in blocked, blocked
                assert ("connect-src", f"{listener.url}/injected-fetch") in blocked, blocked
            finally:
                browser.close()
    assert listener.requests == [], f"the browser fetched {listener.requests!r}"
