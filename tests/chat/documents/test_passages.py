"""Document passages in the prompt: `search_result` blocks for Claude, a data envelope
for the local model, never the system prompt; cited, recorded with the answer, and only
ever the asking user's own to see. The BIPIA attack strings (read from ../shared/data at
run time; missing, they skip the tests locally and fail them under CI) are planted in
documents and checked in the request each model receives."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from parley.chat.gateway.providers.anthropic import AnthropicProvider
from parley.chat.gateway.providers.keys import StaticKey
from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.core.domain import Principal
from parley.core.llm import Citation
from parley.fakes.anthropic_server import Cited, FakeAnthropic, Reply
from parley.retrieval.document_index import DocumentIndex
from parley.retrieval.embeddings import HashingEmbedder
from parley.retrieval.vector_store import VectorStore
from parley.wiring.services import Services, build_services
from tests.support import ROOT, shared_data

ENVELOPE = re.compile(r"<(quoted_documents_[0-9a-f]{16})>(.*?)</\1>", re.DOTALL)


def attacks() -> list[str]:
    found: list[str] = []
    for name in ("bipia_text_attack_train.json", "bipia_code_attack_train.json"):
        for strings in json.loads(shared_data(name).read_text()).values():
            found.extend(strings)
    return found


def test_missing_attack_strings_fail_under_ci_and_skip_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="is not here"):
        shared_data("bipia_no_such_file.json")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="is not here"):
        shared_data("bipia_no_such_file.json")


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


def user_blocks(fake: FakeAnthropic) -> list[dict[str, object]]:
    content = fake.requests[-1].body["messages"][-1]["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def last_user_text(fake: FakeAnthropic) -> str:
    """The text blocks of the last user message (search results left out)."""
    return "".join(str(b["text"]) for b in user_blocks(fake) if b["type"] == "text")


def results_text(fake: FakeAnthropic) -> str:
    return "".join(
        str(t["text"])
        for b in user_blocks(fake)
        if b["type"] == "search_result"
        for t in b["content"]  # type: ignore[attr-defined]
    )


def squashed(text: str) -> str:
    return " ".join(text.split())


def test_every_bipia_attack_stays_inside_its_search_result(
    claude: Services, fake_anthropic: FakeAnthropic, alice: Principal
) -> None:
    strings = attacks()
    assert len(strings) >= 100
    for n, attack in enumerate(strings):
        claude.documents.add(alice, f"mail-{n}.txt", f"Memo {n}.\n{attack}".encode())
    system = claude.gateway.marked_system(
        claude.settings.system_prompt, alice.user_id
    )  # and the guard's line
    for n, attack in enumerate(strings):
        fake_anthropic.enqueue(Reply(text="Noted."))
        question = f"Memo {n}. {attack}"  # the user asks about it: the passage is found
        reply = claude.chat.send(alice, None, question)
        assert "".join(reply) == "Noted."
        body = fake_anthropic.requests[-1].body
        assert [b["text"] for b in body["system"]] == [system]  # operator text alone
        blocks = user_blocks(fake_anthropic)
        results = [b for b in blocks if b["type"] == "search_result"]
        assert results and all(b["citations"] == {"enabled": True} for b in results)
        assert squashed(attack)[:60] in squashed(results_text(fake_anthropic)), n
        assert last_user_text(fake_anthropic) == question.strip()  # only the question outside
        assert len(body["messages"]) == 1  # and nothing else in the prompt
        assert reply.result is not None and reply.result.ok


def test_every_bipia_attack_stays_inside_the_local_models_envelope(
    services: Services, scripted: ScriptedProvider, alice: Principal, tmp_path: Path
) -> None:
    strings = attacks()
    index = DocumentIndex(embedder=HashingEmbedder(), store=VectorStore.persistent(tmp_path / "d"))
    local = build_services(
        services.settings, provider=scripted, background=services.background, document_index=index
    )
    for n, attack in enumerate(strings):
        local.documents.add(alice, f"mail-{n}.txt", f"Memo {n}.\n{attack}".encode())
    for n, attack in enumerate(strings):
        question = f"Memo {n}. {attack}"
        list(local.chat.send(alice, None, question))
        request = scripted.requests[-1]
        assert request.system == local.gateway.marked_system(
            services.settings.system_prompt, alice.user_id
        )
        text = request.messages[-1].content
        assert request.messages[-1].sources == ()
        envelopes = ENVELOPE.findall(text)
        assert len(envelopes) == 1, (n, text[:300])
        assert squashed(attack)[:60] in squashed(envelopes[0][1]), n
        assert ENVELOPE.sub("", text).strip() == question.strip()


def test_claudes_citations_are_stored_with_the_answer(
    claude: Services, fake_anthropic: FakeAnthropic, alice: Principal
) -> None:
    info = claude.documents.add(
        alice, "policy.md", b"# Refunds\nRefunds are paid within 30 days of the request."
    )
    fake_anthropic.enqueue(
        Reply(segments=["The policy says ", Cited("refunds take 30 days", source=0), "."])
    )
    reply = claude.chat.send(alice, None, "How long do refunds take?")
    assert "".join(reply) == "The policy says refunds take 30 days."
    (stored,) = claude.conversations.messages(alice, reply.conversation_id)[1:]
    (citation,) = stored.citations
    assert citation.n == 1 and citation.document_id == info.id
    assert citation.name == "policy.md" and citation.chunks == [0]
    assert "within 30 days" in citation.cited_text
    assert citation.offset == len("The policy says refunds take 30 days")
    opened = claude.documents.open_chunk(alice, info.id, 0)
    assert opened.name == "policy.md" and "within 30 days" in opened.text


def test_a_citation_of_no_passage_is_dropped(
    claude: Services, fake_anthropic: FakeAnthropic, alice: Principal
) -> None:
    claude.documents.add(alice, "policy.md", b"Refunds are paid within 30 days.")
    fake_anthropic.enqueue(Reply(segments=["Thirty days ", Cited("(see)", source=5)]))
    reply = claude.chat.send(alice, None, "How long do refunds take?")
    list(reply)
    assert claude.conversations.messages(alice, reply.conversation_id)[-1].citations == ()


def test_the_local_models_numbered_references_become_citations(
    services: Services, scripted: ScriptedProvider, alice: Principal, tmp_path: Path
) -> None:
    index = DocumentIndex(embedder=HashingEmbedder(), store=VectorStore.persistent(tmp_path / "d"))
    local = build_services(
        services.settings, provider=scripted, background=services.background, document_index=index
    )
    info = local.documents.add(alice, "policy.md", b"Refunds are paid within 30 days.")
    scripted.enqueue("Within 30 days [1]. Not [7].")
    reply = local.chat.send(alice, None, "How long do refunds take?")
    list(reply)
    (citation,) = local.conversations.messages(alice, reply.conversation_id)[-1].citations
    assert citation.n == 1 and citation.document_id == info.id
    assert citation.offset == len("Within 30 days [1]")
    assert citation.marker is True  # the page adds no second [1]


def test_a_scripted_native_citation_takes_its_place_in_the_answer(
    services: Services, alice: Principal, tmp_path: Path
) -> None:
    scripted = ScriptedProvider(native_citations=True)
    index = DocumentIndex(embedder=HashingEmbedder(), store=VectorStore.persistent(tmp_path / "d"))
    native = build_services(
        services.settings, provider=scripted, background=services.background, document_index=index
    )
    native.documents.add(alice, "a.md", b"Alpha is the first letter.")
    scripted.enqueue("Alpha", Citation(0, "Alpha is the first letter.", 0, 1), " leads.")
    reply = native.chat.send(alice, None, "Which letter is first, alpha?")
    list(reply)
    assert scripted.requests[-1].messages[-1].sources[0].texts == ("Alpha is the first letter.",)
    (citation,) = native.conversations.messages(alice, reply.conversation_id)[-1].citations
    assert citation.offset == len("Alpha")


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
    assert results_text(fake_anthropic) == ""  # not shared with him yet
    assert bob_reply.provenance.sources == []
    claude.groups.assign(ROOT, "finance", "alice")
    claude.documents.share(alice, info.id, group="finance")
    reply = claude.chat.send(bob, None, "Marketing budget in May?")
    list(reply)
    assert "40,000 euros" in results_text(fake_anthropic)
    (source,) = reply.provenance.sources
    assert source.document_id == info.id and source.allowed_as == "group finance"
    stored = claude.conversations.messages(bob, reply.conversation_id)
    assert stored[-1].content == "I cannot see that."


def test_a_conversation_draws_only_on_the_documents_it_was_given(
    claude: Services, fake_anthropic: FakeAnthropic, alice: Principal
) -> None:
    first = claude.documents.add(alice, "a.md", b"The blue budget is 10 euros.")
    second = claude.documents.add(alice, "b.md", b"The red budget is 20 euros.")
    reply = claude.chat.send(alice, None, "What is the budget?", documents=[second.id])
    list(reply)
    assert [s.document_id for s in reply.provenance.sources] == [second.id]
    cid = reply.conversation_id
    assert claude.conversations.documents_of(alice, cid) == [second.id]
    claude.conversations.choose_documents(alice, cid, None)
    list(claude.chat.send(alice, cid, "What is the budget?"))
    assert "blue budget" in results_text(fake_anthropic)
    assert "red budget" in results_text(fake_anthropic)
    claude.conversations.choose_documents(alice, cid, [first.id])
    list(claude.chat.send(alice, cid, "What is the budget?"))
    assert "blue budget" in results_text(fake_anthropic)
    assert "red budget" not in results_text(fake_anthropic)
