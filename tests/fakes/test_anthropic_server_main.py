"""The fake Messages API run on its own (`python -m parley.fakes.anthropic_server`), as a
plug-in author runs it to watch the prompts a strategy builds."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import anthropic

from parley.fakes.anthropic_server import FakeAnthropic, RecordedRequest, describe_request

ROOT_DIR = Path(__file__).resolve().parents[2]
SUMMARY = "<conversation_summary_1>we sailed</conversation_summary_1>"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_it_starts_on_its_own_answers_the_sdk_and_prints_each_prompt() -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "parley.fakes.anthropic_server", "--port", str(port)]
        + ["--reply", "Ahoy from the fake."],
        cwd=ROOT_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline()  # printed once it listens
        assert first.strip() == f"Fake Anthropic API at http://127.0.0.1:{port}"
        client = anthropic.Anthropic(
            api_key="fake", base_url=f"http://127.0.0.1:{port}", max_retries=0, timeout=10
        )
        answer = client.messages.create(
            model="claude-test",
            max_tokens=64,
            system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            messages=[
                {"role": "user", "content": SUMMARY},
                {"role": "assistant", "content": "Noted."},
                {"role": "user", "content": "Which harbour?"},
            ],
        )
        assert answer.content[0].type == "text" and answer.content[0].text == "Ahoy from the fake."
    finally:
        server.terminate()
        out, err = server.communicate(timeout=10)
    printed = first + out
    assert "=== POST /v1/messages  model=claude-test max_tokens=64" in printed
    assert "--- system\nBe brief. [cache_control]\n" in printed
    assert f"--- user\n{SUMMARY}\n" in printed
    assert "--- assistant\nNoted.\n--- user\nWhich harbour?\n" in printed
    assert "Traceback" not in err


def test_a_port_in_use_is_a_sentence() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "parley.fakes.anthropic_server", "--port", str(port)],
            cwd=ROOT_DIR,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 1
    assert done.stderr.startswith(f"Cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in done.stderr


def test_a_request_is_described_block_by_block() -> None:
    request = RecordedRequest(
        "POST",
        "/v1/messages",
        {},
        {
            "model": "m",
            "max_tokens": 5,
            "stream": True,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "search_result", "title": "Policy", "content": []},
                        {"type": "text", "text": "What does it say?"},
                    ],
                }
            ],
        },
    )
    assert describe_request(request) == (
        "=== POST /v1/messages  model=m max_tokens=5 stream=True\n"
        "--- user\n<search_result block 'Policy'>\nWhat does it say?\n\n"
    )


def test_started_in_a_test_it_still_takes_any_free_port_and_prints_nothing() -> None:
    with FakeAnthropic() as fake, FakeAnthropic() as other:
        assert fake.base_url.startswith("http://127.0.0.1:") and fake.log is None
        assert fake.base_url != other.base_url
