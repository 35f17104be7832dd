"""The local cluster (`deploy/cluster.py`): PostgreSQL, a Chroma server, two Parley
processes and HAProxy with TLS, all on 127.0.0.1. A real browser signs in through the
proxy, chats, is moved to the other process on reload and stays signed in; `/metrics`
through the proxy counts the answer, summed over both processes. Then the process
serving the browser is killed mid-answer: the browser reconnects to the other one,
still signed in, finds the answer kept as interrupted, and Retry answers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect, sync_playwright
from sqlalchemy import create_engine, text

from tests.e2e.test_browser import CHROMIUM, CHROMIUM_ARGS, PAGE_TIMEOUT_MS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "deploy" / "cluster.py"
NEEDS = ("haproxy", "openssl", "chromium")
ADMIN, PASSWORD = "admin", "correct-horse-1"


def _missing() -> list[str]:
    missing = [tool for tool in NEEDS if shutil.which(tool) is None]
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")) and not shutil.which("initdb"):
        missing.append("postgresql")
    return missing


def _cluster(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    return subprocess.run(
        [sys.executable, str(CLUSTER), "--dir", str(folder), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    missing = _missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the cluster needs {missing} (make system-deps installs them)")
        pytest.skip(f"needs {missing} (make system-deps installs them)")
    folder = Path(tempfile_dir()) / "cluster"
    started = _cluster(
        folder,
        "up",
        "--processes",
        "2",
        "--port",
        "0",
        "--fake-claude",
        "--words",
        "150",
        "--word-delay-ms",
        "40",
    )
    assert started.returncode == 0, started.stderr + started.stdout
    try:
        yield json.loads((folder / "state.json").read_text())
    finally:
        stopped = _cluster(folder, "down")
        assert stopped.returncode == 0, stopped.stderr


def tempfile_dir() -> str:
    # Not under pytest's temporary root: that is private to root, and postgres must enter it.
    import tempfile

    folder = tempfile.mkdtemp(prefix="parley-cluster-")
    os.chmod(folder, 0o755)
    return folder


def fetch(url: str) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the cluster's self-signed certificate
    with urllib.request.urlopen(url, timeout=10, context=context) as answer:
        return str(answer.read().decode())


def node_of(page: Page) -> str:
    nodes = [c["value"] for c in page.context.cookies() if c["name"] == "PARLEY_NODE"]
    assert nodes, "the proxy set no affinity cookie"
    return str(nodes[0])


def move_to(page: Page, node: str) -> None:
    """As if the proxy sent this browser elsewhere (its process went away, or a rebalance)."""
    cookie = next(c for c in page.context.cookies() if c["name"] == "PARLEY_NODE")
    page.context.add_cookies([{**cookie, "value": node}])  # type: ignore[list-item]


def calls_counted(url: str) -> float:
    for line in fetch(f"{url}/metrics").splitlines():
        ours = line.startswith("parley_model_calls_total{") and 'purpose="chat"' in line
        if ours and 'outcome="complete"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_browser_signs_in_through_the_proxy_and_stays_signed_in_on_the_other_process(
    cluster: dict[str, Any], tmp_path: Path
) -> None:
    url = cluster["url"]
    assert json.loads(fetch(f"{url}/readyz"))["ready"] is True
    counted_before = calls_counted(url)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(ignore_https_errors=True)
            page = context.new_page()
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            try:
                page.goto(url)
                page.get_by_label("User name").fill(ADMIN)
                page.get_by_label("Password", exact=True).fill(PASSWORD)
                page.get_by_label("Password again").fill(PASSWORD)
                page.get_by_role("button", name="Create admin account").click()
                sidebar = page.get_by_test_id("stSidebar")
                expect(sidebar).to_contain_text(f"Logged in as {ADMIN}")
                session = [c for c in context.cookies() if c["name"] == "parley_session"]
                assert session and session[0]["secure"]  # HTTPS through the proxy: Secure
                first = node_of(page)

                chat = page.get_by_test_id("stChatInputTextArea")
                chat.fill("Tell me about the cluster.")
                chat.press("Enter")
                answer = page.get_by_test_id("stChatMessage").nth(1)
                expect(answer).to_contain_text("streams one word after another")
                # Named by the question, then by the title the model gives it.
                title = re.compile("Tell me about the cluster.|A fake title")
                conversation = sidebar.get_by_role("button", name=title)
                expect(conversation).to_be_visible(timeout=30_000)  # listed once answered

                other = "p1" if first == "p0" else "p0"
                move_to(page, other)
                page.reload()
                # The other process's first page run builds its services: more than the
                # default 5 s on two busy cores.
                expect(sidebar).to_contain_text(f"Logged in as {ADMIN}", timeout=30_000)
                expect(page.get_by_role("button", name="Log in")).to_have_count(0)
                assert node_of(page) == other  # served by the other process now
                conversation.click()
                expect(answer).to_contain_text("streams one word after another")
                expect(page.get_by_test_id("stException")).to_have_count(0)
                page.screenshot(path=str(tmp_path / "other-process.png"))
            except BaseException:
                with contextlib.suppress(Exception):
                    page.screenshot(path=str(tmp_path / "failure.png"))
                raise
        finally:
            browser.close()
    deadline = time.monotonic() + 10
    while calls_counted(url) < counted_before + 1:
        assert time.monotonic() < deadline, "the answer never showed in /metrics"
        time.sleep(0.5)


def app_ready(cluster: dict[str, Any], index: int = 0) -> tuple[int, dict[str, Any]]:
    """One app process's /readyz, asked directly (the proxy's is for monitoring)."""
    port = cluster["app_ports"][index]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def wait_ready(cluster: dict[str, Any], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while any(app_ready(cluster, i)[0] != 200 for i in range(len(cluster["app_ports"]))):
        assert time.monotonic() < deadline, "the processes did not become ready again"
        time.sleep(0.5)


def sign_in(page: Page, url: str) -> None:
    page.goto(url)
    page.get_by_label("User name").fill(ADMIN)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_test_id("stSidebar")).to_contain_text(f"Logged in as {ADMIN}")


def ask(page: Page, question: str) -> None:
    """Send a question in a new conversation and wait for its whole answer."""
    page.get_by_test_id("stSidebar").get_by_role("button", name="New conversation").click()
    chat = page.get_by_test_id("stChatInputTextArea")
    chat.fill(question)
    chat.press("Enter")
    answer = page.get_by_test_id("stChatMessage").nth(1)
    expect(answer).to_contain_text("150 out", timeout=60_000)  # complete, and metered


@pytest.mark.parametrize("part", ["postgres", "chroma"])
def test_a_restarted_database_or_vector_store_needs_no_restart_of_parley(
    cluster: dict[str, Any], part: str, tmp_path: Path
) -> None:
    """While PostgreSQL is down, pages say so in a sentence; while Chroma is down, chat goes
    on without recall. Either way /readyz says what is missing, and once it is back every
    process works again (pool pre-ping, a new Chroma client) with no restart."""
    folder = Path(cluster["dir"])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(ignore_https_errors=True).new_page()
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            try:
                sign_in(page, cluster["url"])
                stopped = _cluster(folder, "stop", part)
                assert stopped.returncode == 0, stopped.stderr
                try:
                    status, body = app_ready(cluster)
                    check = "database" if part == "postgres" else "vector_store"
                    assert status == 503 and body["checks"][check] != "ok"
                    assert body["checks"][check].endswith(".")  # a sentence, not an error dump
                    if part == "postgres":
                        page.reload()
                        expect(page.get_by_text("could not reach its database")).to_be_visible()
                    else:
                        ask(page, "Still there without the vector store?")
                    expect(page.get_by_test_id("stException")).to_have_count(0)
                    page.screenshot(path=str(tmp_path / f"{part}-down.png"))
                finally:
                    started = _cluster(folder, "start", part)
                    assert started.returncode == 0, started.stderr
                wait_ready(cluster)
                page.reload()
                expect(page.get_by_test_id("stSidebar")).to_contain_text(f"Logged in as {ADMIN}")
                ask(page, f"Back after the {part} restart?")
                expect(page.get_by_test_id("stException")).to_have_count(0)
            except BaseException:
                with contextlib.suppress(Exception):
                    page.screenshot(path=str(tmp_path / "failure.png"))
                raise
        finally:
            browser.close()


def drafted(database_url: str) -> str:
    """The answer being written, as its process last checkpointed it."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            content = connection.execute(text("SELECT content FROM answer_drafts")).scalar()
    finally:
        engine.dispose()
    return str(content or "")


def test_killing_the_process_mid_answer_keeps_the_answer_and_retry_works(
    cluster: dict[str, Any], tmp_path: Path
) -> None:
    url = cluster["url"]
    index: int | None = None  # the process killed, started again at the end
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(ignore_https_errors=True).new_page()
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            try:
                sign_in(page, url)
                sidebar = page.get_by_test_id("stSidebar")
                chat = page.get_by_test_id("stChatInputTextArea")
                chat.fill("Talk until you are cut off.")
                chat.press("Enter")
                answer = page.get_by_test_id("stChatMessage").nth(1)
                expect(answer).to_contain_text("streams one word after another")
                deadline = time.monotonic() + 30
                while len((checkpointed := drafted(cluster["database_url"])).split()) < 10:
                    assert time.monotonic() < deadline, "the answer was never checkpointed"
                    time.sleep(0.2)
                node = node_of(page)
                index = int(node.removeprefix("p"))
                os.killpg(cluster["app_pids"][index], signal.SIGKILL)  # 150 words take 6 s

                # The browser reconnects through the proxy to the other process.
                deadline = time.monotonic() + 60
                while node_of(page) == node:
                    assert time.monotonic() < deadline, "the browser never reconnected"
                    time.sleep(0.5)
                expect(sidebar).to_contain_text(f"Logged in as {ADMIN}", timeout=60_000)
                expect(page.get_by_role("button", name="Log in")).to_have_count(0)
                conversation = sidebar.get_by_role(
                    "button", name=re.compile("Talk until you are cut off.|A fake title")
                ).first
                kept = page.get_by_text("the server writing it stopped")
                deadline = time.monotonic() + 60
                while True:  # kept once the draft's 10 s without a checkpoint are up
                    conversation.click()
                    try:
                        expect(kept).to_be_visible(timeout=3_000)
                        break
                    except AssertionError:
                        assert time.monotonic() < deadline, "the answer was not kept"
                expect(answer).to_contain_text("This answer broke off")
                # At least what was checkpointed before the kill is kept (a later
                # checkpoint may have kept more).
                expect(answer).to_contain_text(checkpointed.strip())
                page.screenshot(path=str(tmp_path / "kept.png"))
                page.get_by_role("button", name="Retry").click()
                expect(page.get_by_role("button", name="Retry")).to_have_count(0, timeout=60_000)
                expect(page.get_by_text("This answer broke off")).to_have_count(0)
                expect(page.get_by_test_id("stChatMessage").nth(1)).to_contain_text(
                    "150 out"
                )  # the whole answer, metered
                expect(page.get_by_test_id("stException")).to_have_count(0)
                page.screenshot(path=str(tmp_path / "retried.png"))
            except BaseException:
                with contextlib.suppress(Exception):
                    page.screenshot(path=str(tmp_path / "failure.png"))
                raise
        finally:
            browser.close()
            if index is not None:
                restarted = _cluster(Path(cluster["dir"]), "start", f"app-{index}")
                assert restarted.returncode == 0, restarted.stderr
