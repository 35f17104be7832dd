"""Two Parley processes on one database and one Chroma server: a change made by one is
seen by the next request on the other, for each kind of change — a new turn, a
superseded answer, a rename, an erasure, a revoked session and a changed share.

Each process is a fresh interpreter (`tests.wiring.actor`) with its own caches,
answering from the fake Messages API; this process sets up the users, reads what the
fake was sent, and checks.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parley.core.domain import Role
from parley.fakes.anthropic_server import FakeAnthropic, Fault, Reply
from parley.retrieval.document_index import DocumentIndex
from parley.retrieval.embeddings import HashingEmbedder
from parley.retrieval.vector_store import VectorStore
from parley.store.db import Database
from parley.store.migrate import upgrade
from parley.wiring.services import Services, build_services
from tests.support import ROOT

pytestmark = pytest.mark.slow


class Actor:
    """One process, asked one thing at a time."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.wiring.actor"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert self._read() == {"ok": "ready"}

    def _read(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            _, errors = self._process.communicate(timeout=10)
            raise AssertionError(f"actor {self.name} ended: {errors[-3000:]}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def __call__(self, op: str, **args: Any) -> Any:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self._process.stdin.flush()
        answer = self._read()
        if "error" in answer:
            return Refused(answer["kind"], answer["error"])
        return answer["ok"]

    def close(self) -> None:
        self._process.communicate(timeout=30)  # closes its stdin: the actor ends


class Refused:
    def __init__(self, kind: str, sentence: str) -> None:
        self.kind, self.sentence = kind, sentence

    def __repr__(self) -> str:
        return f"Refused({self.kind}: {self.sentence})"


@pytest.fixture
def world(
    tmp_path: Path, chroma_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Actor, Actor, FakeAnthropic, Services, dict[str, int]]]:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for name in ("session_secret", "audit_key"):
        (secrets_dir / name).write_text(secrets.token_urlsafe(32))
    database_url = f"sqlite:///{tmp_path / 'shared.db'}"
    with FakeAnthropic(default_reply=Reply(text="Noted.")) as fake:
        env = {
            "ANTHROPIC_API_KEY": "sk-ant-test",
            "ANTHROPIC_BASE_URL": fake.base_url,
            "PARLEY_ANTHROPIC_MAX_RETRIES": "0",
            "PARLEY_MODEL_TITLES": "false",
            "PARLEY_DATABASE_URL": database_url,
            "PARLEY_SECRETS_DIR": str(secrets_dir),
            "PARLEY_CHROMA_URL": chroma_url,
            # Each process's own collections: other tests share this Chroma server.
            "PARLEY_DATA_DIR": str(tmp_path / "setup"),
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        upgrade(Database(database_url))
        from parley.core.config import get_settings

        url = chroma_url.removeprefix("http://").split(":")
        index = DocumentIndex(
            embedder=HashingEmbedder(), store=VectorStore.http(url[0], int(url[1]))
        )
        setup = build_services(get_settings(), document_index=index, eager=False)
        make = setup.accounts.create_user
        alice = make(ROOT, name="alice", password="alice-password")
        bob = make(ROOT, name="bob", password="bob-password")
        make(ROOT, name="root", password="root-password", role=Role.ADMIN)
        setup.groups.create(ROOT, "staff")
        setup.groups.assign(ROOT, "staff", "bob")
        setup.groups.assign(ROOT, "staff", "alice")  # one shares with a group one is in
        marker = secrets.token_hex(4)  # this test's document, on a shared Chroma server
        menu = setup.documents.add(
            alice, f"menu-{marker}.txt", f"Soup {marker} on Fridays.".encode()
        ).id
        del bob
        ids = {"menu": menu}
        base = {**os.environ}
        one = Actor("one", {**base, "PARLEY_DATA_DIR": str(tmp_path / "one")})
        two = Actor("two", {**base, "PARLEY_DATA_DIR": str(tmp_path / "two")})
        try:
            yield one, two, fake, setup, ids | {"marker": int(marker, 16)}
        finally:
            one.close()
            two.close()
            setup.close()


def prompt_texts(fake: FakeAnthropic) -> str:
    """The messages of the last request the fake API received, as one text."""
    return json.dumps(fake.requests[-1].body["messages"])


def test_each_kind_of_change_in_one_process_is_seen_by_the_next_request_on_the_other(
    world: tuple[Actor, Actor, FakeAnthropic, Services, dict[str, int]],
) -> None:
    one, two, fake, _, ids = world

    # A new turn: two has the conversation's turns cached; one adds a turn; two sees it
    # at once, and sends it to the model.
    started = one("send", user="alice", conversation=None, text="Alpha, from one.")
    conversation = started["conversation"]
    assert two("turns", user="alice", conversation=conversation) == ["Alpha, from one.", "Noted."]
    one("send", user="alice", conversation=conversation, text="Bravo, from one.")
    assert two("turns", user="alice", conversation=conversation)[-2:] == [
        "Bravo, from one.",
        "Noted.",
    ]
    two("send", user="alice", conversation=conversation, text="Charlie, from two.")
    assert "Bravo, from one." in prompt_texts(fake)

    # A superseded answer: two has one's broken answer cached; one retries it; two's turns
    # have the new answer in its place.
    fake.enqueue(
        Fault("drop_mid_stream", after_chunks=2, text="Broken echo answer that stops"),
        Fault("overloaded"),  # the continuation fails too: kept as interrupted
    )
    one("send", user="alice", conversation=conversation, text="Echo, from one.")
    before = two("turns", user="alice", conversation=conversation)
    assert before[-1].startswith("Broken echo")
    fake.enqueue(Reply(text="Echo answered again."))
    assert one("retry", user="alice", conversation=conversation) == "Echo answered again."
    after = two("turns", user="alice", conversation=conversation)
    assert after == [*before[:-1], "Echo answered again."]

    # A rename, seen in the other's list at once.
    one("rename", user="alice", conversation=conversation, title="Renamed by one")
    assert two("titles", user="alice") == ["Renamed by one"]

    # An erasure: the other can neither list nor continue the conversation.
    one("delete", user="alice", conversation=conversation)
    assert two("titles", user="alice") == []
    refused = two("send", user="alice", conversation=conversation, text="Still there?")
    assert isinstance(refused, Refused) and refused.kind == "NotFound"

    # A revoked session: signed in on one, read on two, signed out everywhere on one.
    cookie = one("sign_in", user="bob")
    assert two("resume", cookie=cookie) == "bob"
    assert one("sign_out_everywhere", user="bob") == 1
    assert two("resume", cookie=cookie) is None

    # A changed share: bob (staff) finds alice's document on two only while it is shared.
    marker = f"{ids['marker']:08x}"
    assert two("search", user="bob", query=f"Soup {marker}") == []
    assert one("share", user="alice", document=ids["menu"], group="staff") == ids["menu"]
    assert two("search", user="bob", query=f"Soup {marker}") == [ids["menu"]]
    assert ids["menu"] in two("documents", user="bob")
    assert one("unshare", user="alice", document=ids["menu"], group="staff") == ids["menu"]
    assert two("search", user="bob", query=f"Soup {marker}") == []
    assert ids["menu"] not in two("documents", user="bob")
