"""A canary key must never appear in logs, the database, exceptions, output or the page."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from parley.core.config import get_settings
from parley.fakes.anthropic_server import FakeAnthropic, Fault, Reply
from parley.store.migrate import upgrade
from parley.wiring.factories import open_database
from parley.wiring.services import build_services
from tests.support import ROOT

CANARY = "sk-ant-CANARY-3f9a61c2e7b84d05a1"
APP = str(Path(__file__).resolve().parents[2] / "app.py")
PARLEY = str(Path(sys.executable).with_name("parley"))


def every_file_under(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def canary_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeAnthropic:
    script = tmp_path / "vault"
    script.write_text(f"#!/bin/sh\necho {CANARY}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    fake = FakeAnthropic(api_keys={CANARY}).start()
    monkeypatch.setenv("PARLEY_ANTHROPIC_KEY_SOURCE", "command")
    monkeypatch.setenv("PARLEY_ANTHROPIC_KEY_COMMAND", str(script))
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.base_url)
    monkeypatch.setenv("PARLEY_ANTHROPIC_MAX_RETRIES", "0")
    monkeypatch.setenv("PARLEY_LOG_LEVEL", "DEBUG")
    yield fake
    fake.stop()


def test_canary_key_never_leaks(
    canary_env: FakeAnthropic, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    env = dict(os.environ)
    subprocess.run([PARLEY, "db", "upgrade"], env=env, check=True, capture_output=True)
    subprocess.run(
        [PARLEY, "user", "add", "alice"],
        input="alice-password\n",
        text=True,
        env=env,
        check=True,
        capture_output=True,
    )
    outputs: list[str] = []
    # Through the CLI: a good answer, an auth failure, a broken stream, a 500.
    canary_env.enqueue(
        Reply(text="fine"),
        Fault("auth"),
        Fault("drop_mid_stream"),
        Fault("drop_mid_stream"),
        Fault("server_error"),
    )
    for message in ["one", "two", "three", "four"]:
        done = subprocess.run(
            [PARLEY, "chat", "--user", "alice", message],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        outputs += [done.stdout, done.stderr]
    assert "fine" in outputs[0]

    # In process, with every logger at DEBUG (the SDK's included), and through the page.
    caplog.set_level(logging.DEBUG)
    st.cache_resource.clear()
    services = build_services(get_settings())
    alice = services.accounts.find_principal(ROOT, "alice")
    assert alice is not None
    canary_env.enqueue(Fault("auth"), Reply(text="fine again"))
    for text in ["five", "six"]:
        reply = services.chat.send(alice, None, text)
        outputs.append("".join(reply))
        assert reply.result is not None
        outputs.append(repr(reply.result))
    at = AppTest.from_file(APP, default_timeout=30)
    at.run()
    at.text_input[0].input("alice")
    at.text_input[1].input("alice-password")
    at.button[0].click().run()
    canary_env.enqueue(Fault("auth"))
    at.chat_input[0].set_value("seven").run()
    outputs.append(str(at))
    assert at.error, "the failure shows a sentence"

    assert CANARY not in "\n".join(outputs)
    assert CANARY not in caplog.text, "no logger, the SDK's at DEBUG included, saw the key"
    files = every_file_under(data_dir)
    assert any(p.name == "parley.log" for p in files)
    assert any(p.suffix == ".db" for p in files)
    leaked = [str(p) for p, content in files.items() if CANARY.encode() in content]
    assert leaked == []
    # The key really was used: the fake accepted only the canary.
    assert any(r.api_key == CANARY for r in canary_env.requests)


def test_the_audit_key_is_never_written_anywhere(tmp_path: Path) -> None:
    """Given by setting, the audit key keys records and checkpoints but never lands in
    the database, the log, a checkpoint line or any file of the data directory."""
    audit_canary = "audit-CANARY-7c1e0b9d4f2a6e83"
    settings = get_settings(data_dir=tmp_path / "data", audit_key=audit_canary)
    settings.data_dir.mkdir(parents=True)
    upgrade(open_database(settings))
    services = build_services(settings)
    try:
        services.accounts.create_user(ROOT, name="alice", password="alice-password")
        line = services.audit.checkpoint(ROOT).line()
        assert services.audit.verify(ROOT).broken is None
    finally:
        services.close()
    assert audit_canary not in line and audit_canary not in repr(services._database.audit_keys)
    assert not (settings.data_dir / "audit.key").exists()  # no default key made beside it
    for path, data in every_file_under(tmp_path).items():
        assert audit_canary.encode() not in data, path
