"""A load-test user that is a headless Chromium page (`--driver browser`), as Streamlit's
own load tests drive browsers: it types, presses Enter and reads the page's text. On a
small machine the pages take the cores the server needs (ten took about 1.5 of two);
`parley/bench/protocol_user.py` speaks the page's protocol instead. Certificates are not
checked here (the local cluster's is self-signed); the protocol user checks them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from parley.bench.protocol_user import UserResult

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
]

# The newest answer's text as the page shows it, the streaming cursor (▌) included: the
# cursor goes when the answer has ended and been stored, not at its last word.
# Captions (the queue position while waiting, the usage line once stored) are left out.
SETTLED_JS = """() => {
    const app = document.querySelector('[data-test-script-state]');
    return app !== null && app.getAttribute('data-test-script-state') !== 'running';
}"""
LAST_ANSWER_JS = """(count) => {
    const messages = document.querySelectorAll('[data-testid="stChatMessage"]');
    if (messages.length < count) return null;
    const blocks = messages[count - 1].querySelectorAll('[data-testid="stMarkdownContainer"]');
    return Array.from(blocks)
        .filter((block) => !block.closest('[data-testid="stCaptionContainer"]'))
        .map((block) => block.textContent)
        .join(' ')
        .trim();
}"""


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """Debian's Chromium, headless, for as long as the block runs."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


async def browser_user(browser: Any, url: str, name: str, args: argparse.Namespace) -> UserResult:
    """Signs in, then chats for `args.seconds` (at least `args.min_messages` turns)."""
    result = UserResult()
    context = await browser.new_context(ignore_https_errors=True)
    page = await context.new_page()
    page.set_default_timeout(60_000)
    try:
        await page.goto(url)
        await page.get_by_label("User name").fill(name)
        await page.get_by_label("Password", exact=True).fill(args.password)
        await page.get_by_role("button", name="Log in").click()
        chat = page.get_by_test_id("stChatInputTextArea")
        await chat.wait_for(state="visible")
    except Exception as exc:
        result.errors.append(f"sign-in: {type(exc).__name__}")
        await context.close()
        return result
    stop_at = time.monotonic() + args.seconds
    turn = 0
    while time.monotonic() < stop_at or turn < args.min_messages:
        turn += 1
        # Counted once the last answer's rerun has finished: while it runs, the page may
        # still hold the streamed element beside the stored one.
        with contextlib.suppress(Exception):
            await page.wait_for_function(SETTLED_JS, timeout=30_000)
        messages = await page.get_by_test_id("stChatMessage").count()
        await chat.fill(f"Question {turn} from {name}: how does the answer stream?")
        sent_at = time.monotonic()
        await chat.press("Enter")
        result.sent += 1
        first = full = None
        deadline = sent_at + args.answer_timeout_s
        while time.monotonic() < deadline:
            text = await page.evaluate(LAST_ANSWER_JS, messages + 2)
            now = time.monotonic()
            if text and text.strip("▌ ") and first is None:
                first = now - sent_at
            if text and "▌" not in text:  # ended, stored, and shown without the cursor
                if await page.get_by_test_id("stAlert").count():
                    break
                full = now - sent_at
                break
            await asyncio.sleep(0.02)
        if first is None or full is None:
            shown = await page.get_by_test_id("stAlert").all_text_contents()
            result.errors.append(f"answer {turn}: {shown[0][:80] if shown else 'timed out'}")
            if args.shots:
                await page.screenshot(path=str(Path(args.shots) / f"{name}-{turn}.png"))
            await page.reload()
            await chat.wait_for(state="visible")
            continue
        result.ttft_s.append(first)
        result.full_s.append(full)
        await asyncio.sleep(args.think_s)  # and the next question in the same conversation
    await context.close()
    return result


__all__ = ["browser_user", "chromium"]
