"""Chaos: hundreds of turns through the chat service while the API fails 30 % of the time.

Every user message must be stored, every turn must end `complete` or in a clear
error state, and nothing may raise. The real SDK retries (quickly: the fake sends
`retry-after-ms: 1`), and Parley continues broken streams once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from parley.chat.gateway.providers.anthropic import AnthropicProvider
from parley.chat.gateway.providers.keys import StaticKey
from parley.core.background import BackgroundWork
from parley.core.config import Settings
from parley.core.domain import MessageRole, MessageStatus
from parley.fakes.anthropic_server import FakeAnthropic
from parley.store.models import Message
from parley.wiring.services import Services, build_services
from tests.conftest import SUMMARY_LINES
from tests.support import ROOT

TURNS = 300
FAULT_RATE = 0.3
ALL_KINDS = [
    "rate_limit",
    "overloaded",
    "server_error",
    "timeout",
    "drop_mid_stream",
    "error_event",
    "no_message_stop",
]


@pytest.mark.slow
def test_chaos_no_message_lost(services: Services, settings: Settings) -> None:
    alice = services.accounts.create_user(ROOT, name="alice", password="alice-password")
    with FakeAnthropic(
        fault_rate=FAULT_RATE, fault_kinds=ALL_KINDS, seed=7, error_headers={"retry-after-ms": "1"}
    ) as fake:
        provider = AnthropicProvider(
            keys=StaticKey(SecretStr("sk-ant-chaos")),
            model="claude-chaos",
            base_url=fake.base_url,
            max_retries=2,
            timeout_s=0.5,
        )
        chaos_settings = settings.model_copy(
            update={
                "requests_per_minute": 1e6,
                "input_tokens_per_minute": 1e9,
                "output_tokens_per_minute": 1e9,
                "anthropic_max_retry_wait_s": 1,
                "max_concurrent_calls": 2,
            }
        )
        chat = build_services(
            chaos_settings, provider=provider, background=BackgroundWork(workers=0)
        ).chat
        conversation_id: int | None = None
        for turn in range(TURNS):
            if turn % 25 == 0:
                conversation_id = None  # a fresh conversation now and then
            reply = chat.send(alice, conversation_id, f"message {turn}")
            text = "".join(reply)  # any exception here fails the test
            conversation_id = reply.conversation_id
            result = reply.result
            assert result is not None
            assert result.text == text
            if not result.ok:
                assert result.error and result.error.endswith(".")
        assert sum(1 for r in fake.requests if r.body.get("stream")) >= TURNS

    with services._database.session() as session:
        messages = session.scalars(select(Message).order_by(Message.id)).all()
    users = [m for m in messages if m.role is MessageRole.USER]
    answers = [m for m in messages if m.role is MessageRole.ASSISTANT]
    assert [m.content for m in users] == [f"message {i}" for i in range(TURNS)]
    assert len(answers) == TURNS
    statuses = Counter(m.status for m in answers)
    for answer in answers:
        if answer.status is MessageStatus.INTERRUPTED:
            assert answer.content and answer.error
        elif answer.status is MessageStatus.ERROR:
            assert not answer.content and answer.error
        else:
            assert answer.status is MessageStatus.COMPLETE and answer.error is None
    rate = statuses[MessageStatus.COMPLETE] / TURNS
    SUMMARY_LINES.append(
        f"chaos: {TURNS} turns, {FAULT_RATE:.0%} faults injected, completion rate {rate:.1%} "
        f"({ {s.value: n for s, n in statuses.items()} })"
    )
    assert rate > 0.8  # SDK retries and one continuation recover most faults


@pytest.mark.slow
def test_cli_against_a_faulty_server_never_loses_a_message() -> None:
    parley = str(Path(sys.executable).with_name("parley"))
    with FakeAnthropic(
        fault_rate=0.5, fault_kinds=ALL_KINDS, seed=3, error_headers={"retry-after-ms": "1"}
    ) as fake:
        env = {
            **os.environ,
            "ANTHROPIC_API_KEY": "sk-ant-test",
            "ANTHROPIC_BASE_URL": fake.base_url,
            "PARLEY_ANTHROPIC_MAX_RETRIES": "1",
            "PARLEY_ANTHROPIC_TIMEOUT_S": "0.5",
            "PARLEY_MODEL_TITLES": "false",
        }
        subprocess.run([parley, "db", "upgrade"], env=env, check=True, capture_output=True)
        subprocess.run(
            [parley, "user", "add", "bob"],
            input="bob-password\n",
            text=True,
            env=env,
            check=True,
            capture_output=True,
        )
        endings = []
        for turn in range(8):
            done = subprocess.run(
                [parley, "chat", "--user", "bob", f"question {turn}"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert "Traceback" not in done.stderr
            lines = done.stderr.strip().splitlines()
            assert lines[-1].isdigit()  # the conversation id, always
            if done.returncode != 0:
                assert lines[-2].startswith("parley: ") and lines[-2].endswith(".")
            endings.append(done.returncode)
    from parley.core.config import get_settings
    from parley.wiring.services import build_services

    svc = build_services(get_settings(), eager=False)
    try:
        with svc._database.session() as session:
            stored = session.scalars(
                select(Message.content).where(Message.role == MessageRole.USER).order_by(Message.id)
            ).all()
    finally:
        svc.close()
    assert stored == [f"question {i}" for i in range(8)]
    assert set(endings) <= {0, 1}
