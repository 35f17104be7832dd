"""Document passages in the prompt: fenced as data, never in the system prompt, recorded
with the answer, and only ever the asking user's own to see. The BIPIA attack strings
(read from ../shared/data at run time) are planted in documents and checked in the
request the fake Messages API receives."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from chat.providers.anthropic import AnthropicProvider
from chat.providers.keys import StaticKey
from fakes.anthropic_server import FakeAnthropic, Reply
from parley.domain import Principal
from retrieval.document_index import DocumentIndex
from retrieval.embeddings import HashingEmbedder
from retrieval.vector_store import VectorStore
from tests.support import ROOT
from wiring.services import Services, build_services

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
ENVELOPE = re.compile(r"<(quoted_documents_[0-9a-f]{16})>(.*?)</\1>", re.DOTALL)


def attacks() -> list[str]:
    found: list[str] = []
    for name in ("bipia_text_attack_train.json", "bipia_code_attack_train.json"):
        path = SHARED / name
        if not path.is_file():
            pytest.skip(f"{path} is not here")
        for strings in json.loads(path.read_text()).values():
            found.extend(strings)
    return found


@pytest.fixture
def claude(services: Services, fake_anthropic: FakeAnthropic, tmp_path: Path) -> Services:
    provider = AnthropicProvider(
        keys=StaticKey(SecretStr("sk-ant-test")),
        model="claude-test",
        base_url=fake_anthropic.base_url,
    )
    index = DocumentIndex(embedder=HashingEmbedder(), store=VectorStore.persistent(tmp_path / "d"))
    return build_services(
        services.settings, provider=provider, background=services.background, document_index=index
    )


def last_user_text(fake: FakeAnthropic) -> str:
    content = fake.requests[-1].body["messages"][-1]["content"]
    return content if isinstance(content, str) else "".join(b["text"] for b in content)


def test_every_bipia_attack_stays_inside_its_envelope(
    claude: Services, fake_anthropic: FakeAnthropic, alice: Principal
) -> None:
    strings = attacks()
    assert len(strings) >= 100
    for n, attack in enumerate(strings):
        claude.documents.add(alice, f"mail-{n}.txt", f"Memo {n}.\n{attack}".encode())
    system = claude.settings.system_prompt
    for n, attack in enumerate(strings):
        fake_anthropic.enqueue(Reply(text="Noted."))
        reply = claude.chat.send(alice, None, f"Memo {n}. {attack}")
        assert "".join(reply) == "Noted."
        body = fake_anthropic.requests[-1].body
        assert [b["text"] for b in body["system"]] == [system]  # operator text alone
        text = last_user_text(fake_anthropic)
        envelopes = ENVELOPE.findall(text)
        assert len(envelopes) == 1, (n, text[:300])
        inside = envelopes[0][1]
        quoted = " ".join(attack.split())
        assert quoted[:40] in " ".join(inside.split()) or attack[:40] in inside
        outside = ENVELOPE.sub("", text)
        assert outside.strip().startswith(f"Memo {n}.")  # only the question itself is outside
        assert reply.result is not None and reply.result.ok


def test_passages_are_recorded_with_the_answer_and_why_they_were_allowed(
    claude: Services, fake_anthropic: FakeAnthropic, alice: Principal, bob: Principal
) -> None:
    info = claude.documents.add(
        alice, "budget.md", b"# Budget\nMarketing gets 40,000 euros in May."
    )
    claude.groups.create(ROOT, "finance")
    claude.groups.assign(ROOT, "finance", "bob")
    fake_anthropic.enqueue(Reply(text="Forty thousand."), Reply(text="I cannot see that."))
    bob_reply = claude.chat.send(bob, None, "Marketing budget in May?")
    list(bob_reply)
    assert "quoted_documents_" not in last_user_text(fake_anthropic)  # not shared with him yet
    assert bob_reply.context.sources == ()
    claude.documents.share(alice, info.id, group="finance")
    reply = claude.chat.send(bob, None, "Marketing budget in May?")
    list(reply)
    assert "40,000 euros" in last_user_text(fake_anthropic)
    (source,) = reply.context.sources
    assert source["document_id"] == info.id and source["allowed_as"] == "group finance"
    stored = claude.conversations.messages(bob, reply.conversation_id)
    assert stored[-1].content == "I cannot see that."
