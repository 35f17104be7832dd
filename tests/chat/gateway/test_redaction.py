"""PII redaction: personal values leave as stable placeholders and come back in the
answer the user sees; nothing Parley keeps about the call holds them."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from parley.chat.gateway.providers.scripted import ScriptedProvider
from parley.chat.gateway.redaction import (
    NATIONAL_IDS,
    RedactingProvider,
    Redactor,
    redactor_key,
    restore,
)
from parley.core import metrics
from parley.core.background import BackgroundWork
from parley.core.config import Settings
from parley.core.domain import Principal
from parley.core.errors import ConfigurationError, ProviderError
from parley.core.llm import (
    CacheKey,
    CallMeta,
    ChatRequest,
    Citation,
    PromptMessage,
    SearchSource,
    StreamEnd,
    TextDelta,
)
from parley.wiring.services import Services, build_services
from tests.support import ROOT

VALUES = {
    "EMAIL": ["ana.lopez@example.org", "J.Smith+news@mail.example.co.uk"],
    "PHONE": ["+44 20 7946 0958", "(415) 555-2671", "+49 30 901820"],
    "CARD": ["4111 1111 1111 1111", "3782-822463-10005", "5555555555554444"],
    "IBAN": ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432"],
    "ID": [
        "536-90-4399",  # US social security number
        "123 456 782",  # Canadian SIN
        "AB 12 34 56 C",  # UK National Insurance number
        "943 476 5919",  # NHS number
        "36 574 261 809",  # German tax id
        "2 95 10 99 126 111 93",  # French NIR
        "54362315K",  # Spanish DNI
        "X-2482300W",  # Spanish NIE
        "RSSMRA85T10A562S",  # Italian codice fiscale
        "44051401359",  # Polish PESEL
        "811228-9874",  # Swedish personnummer
        "2345 6789 0124",  # Aadhaar
        "390.533.447-05",  # Brazilian CPF
    ],
}
ALL = [(kind, value) for kind, values in VALUES.items() for value in values]
# Look alike, but fail their checks or are no one's: they stay as written.
ORDINARY = [
    "4111 1111 1111 1112",  # Luhn fails
    "GB82WEST12345698765433",  # mod 97 fails
    "call 555-1234",  # too short to be a valid number
    "version 1.2.3",
    "in 2024 we had 1,234,567 users",
    "order 1234567890",
    "pi is 3.14159265358979",
    "ISBN 978-3-16-148410-0",
    "at 10:30 on 2024-01-15",
    "uuid 123e4567-e89b-12d3-a456-426614174000",
    "price $1,299.99",
    "see [1] and [note] and [ID_cafe] in the text",
]


def redactor(secret: str = "a secret") -> Redactor:
    return Redactor(redactor_key(secret))


@pytest.mark.parametrize(("kind", "value"), ALL)
def test_each_kind_is_replaced_and_put_back(kind: str, value: str) -> None:
    said = f"Please note {value} for later."
    result = redactor().redact(said)
    assert value not in result.text
    assert re.fullmatch(rf"Please note \[{kind}_[0-9a-f]{{8}}\] for later\.", result.text)
    assert result.counts == {kind: 1}
    assert restore(result.text, result.placeholders) == said


@pytest.mark.parametrize("said", ORDINARY)
def test_what_only_looks_like_a_value_is_left_alone(said: str) -> None:
    result = redactor().redact(said)
    assert result.text == said and result.counts == {}


def test_every_national_id_named_has_a_sample() -> None:
    # A new id in the table gets a sample above, or this fails.
    assert len(NATIONAL_IDS) == len(VALUES["ID"])


def test_placeholders_are_stable_keyed_and_tell_values_apart() -> None:
    one, again, other_key = redactor(), redactor(), redactor("another secret")
    a = one.redact("ana@example.org wrote to bob@example.org").text
    assert a == again.redact("ana@example.org wrote to bob@example.org").text  # any process
    assert one.redact("ana@example.org", "7").text != one.redact("ana@example.org", "8").text
    assert one.redact("Mail ANA@example.org").text.endswith(a.split()[0])  # case aside
    first, _, _, second = a.split()
    assert first != second  # two people stay two
    assert other_key.redact("ana@example.org").text != first  # keyed: not a plain hash


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from([value for _, value in ALL]),
            st.text(alphabet="abcdefgh ,.:;()[]!?'\n", max_size=12),
        ),
        max_size=12,
    )
)
def test_no_value_survives_and_everything_comes_back(parts: list[str]) -> None:
    # Values apart as people write them ("; "): digits run together with one space are
    # one number to anyone ("0958 2345 6789 0124" is not read as two).
    said = "; ".join(parts)
    result = redactor().redact(said)
    for _, value in ALL:
        if value in said:
            assert value not in result.text
    assert restore(result.text, result.placeholders) == said


def _request(question: str, passage: str = "") -> ChatRequest:
    sources = (SearchSource("parley:document/1#0", "notes.txt", (passage,)),) if passage else ()
    return ChatRequest(
        system="You help. Support: help@parley.example",
        messages=(
            PromptMessage("user", "Earlier: my card is 4111 1111 1111 1111"),
            PromptMessage("assistant", "Noted."),
            PromptMessage("user", question, sources=sources),
        ),
        max_tokens=200,
        temperature=0,
    )


def _echo(scripted: ScriptedProvider, answer: str, *, size: int = 3) -> None:
    """Answers with `answer`, "{email}" standing for the placeholder the request holds,
    cut into deltas of `size` characters (so a placeholder splits across them)."""

    def on_request(request: ChatRequest) -> None:
        sent = request.messages[-1].content
        token = re.search(r"\[EMAIL_[0-9a-f]{8}\]", sent)
        assert token is not None
        words = answer.replace("{email}", token.group())
        scripted.enqueue(*[words[i : i + size] for i in range(0, len(words), size)])
        scripted.on_request = None

    scripted.on_request = on_request


@pytest.mark.parametrize("size", [1, 2, 5, 7, 16, 100])
def test_the_provider_sees_placeholders_and_the_user_the_values(size: int) -> None:
    scripted = ScriptedProvider()
    provider = RedactingProvider(scripted, redactor())
    _echo(scripted, "I will write to {email} today.", size=size)
    events = list(
        provider.stream(_request("Write to ana@example.org, IBAN GB82WEST12345698765432"))
    )
    shown = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert shown == "I will write to ana@example.org today."
    assert isinstance(events[-1], StreamEnd)
    sent = scripted.requests[-1]
    everything = " ".join(m.content for m in sent.messages)
    for raw in ("ana@example.org", "GB82WEST12345698765432", "4111 1111 1111 1111"):
        assert raw not in everything
    assert sent.system == "You help. Support: help@parley.example"  # operator text untouched


def test_passages_are_redacted_and_citations_come_back_whole() -> None:
    scripted = ScriptedProvider()
    provider = RedactingProvider(scripted, redactor())

    def on_request(request: ChatRequest) -> None:
        passage = request.messages[-1].sources[0].texts[0]
        assert "ana@example.org" not in passage
        scripted.enqueue("Per the notes", Citation(0, passage, 0, 1), ", yes.")

    scripted.on_request = on_request
    events = list(provider.stream(_request("Who?", passage="Contact ana@example.org on Fridays.")))
    cited = [e for e in events if isinstance(e, Citation)]
    assert cited[0].cited_text == "Contact ana@example.org on Fridays."
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("Citation") > kinds.index("TextDelta")  # the text before it first


def test_a_count_of_tokens_is_asked_for_the_redacted_request() -> None:
    seen: list[ChatRequest] = []

    class Counting(ScriptedProvider):
        def count_tokens(self, request: ChatRequest) -> int:
            seen.append(request)
            return 1

    RedactingProvider(Counting(), redactor()).count_tokens(_request("Call +44 20 7946 0958"))
    assert "7946" not in seen[0].messages[-1].content


def test_redactions_are_counted_by_kind_in_the_metrics() -> None:
    before = metrics.PII_REDACTIONS.labels(kind="phone")._value.get()
    scripted = ScriptedProvider()
    scripted.enqueue("OK")
    list(RedactingProvider(scripted, redactor()).stream(_request("Call (415) 555-2671")))
    assert metrics.PII_REDACTIONS.labels(kind="phone")._value.get() == before + 1


@pytest.fixture
def redacting(services: Services, scripted: ScriptedProvider) -> Services:
    chosen = services.settings.model_copy(
        update={"pii": services.settings.pii.model_copy(update={"enabled": True})}
    )
    return build_services(chosen, provider=scripted, background=services.background)


def test_a_chat_turn_stores_the_values_and_keeps_them_out_of_everything_else(
    redacting: Services,
    scripted: ScriptedProvider,
    alice: Principal,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    _echo(scripted, "Done: I noted {email}.")
    reply = redacting.chat.send(alice, None, "My address is ana.secret@example.org")
    assert "".join(reply) == "Done: I noted ana.secret@example.org."
    thread = redacting.conversations.thread(alice, reply.conversation_id)
    assert thread.messages[1].content == "Done: I noted ana.secret@example.org."
    assert all("ana.secret" not in m.content for r in scripted.requests for m in r.messages)
    assert "ana.secret" not in caplog.text
    # The ledger, the audit trail and the outbox: not one byte of it.
    with redacting._database.session() as session:
        for table in ("usage_ledger", "audit_records"):
            rows = session.execute(text(f"SELECT * FROM {table}")).all()  # noqa: S608
            assert rows and "ana.secret" not in repr(rows)


def test_redaction_is_off_unless_chosen(
    services: Services, scripted: ScriptedProvider, alice: Principal
) -> None:
    assert Settings(data_dir=services.settings.data_dir).pii.enabled is False
    scripted.enqueue("OK")
    list(services.chat.send(alice, None, "My address is ana@example.org"))
    assert "ana@example.org" in scripted.requests[-1].messages[-1].content


def test_an_unknown_national_id_is_a_sentence(services: Services) -> None:
    chosen = services.settings.model_copy(
        update={
            "pii": services.settings.pii.model_copy(
                update={"enabled": True, "national_ids": ["us_ssn", "xx_made_up"]}
            )
        }
    )
    with pytest.raises(ConfigurationError, match="xx_made_up"):
        built = build_services(chosen, provider=ScriptedProvider(), background=services.background)
        _ = built.gateway


@pytest.mark.parametrize(
    "text",
    [
        "1 " * 2400,  # a long run of one-digit groups
        " ".join(str(1_700_000_000_000 + i) for i in range(2000)),  # a column of timestamps
        "555 " * 3000,
    ],
)
def test_digit_dense_text_is_read_in_linear_time(text: str) -> None:
    started = time.perf_counter()
    redactor().find(text)
    assert time.perf_counter() - started < 2.0


def test_titles_and_the_cache_keys_question_leave_redacted() -> None:
    scripted = ScriptedProvider()
    scripted.enqueue("OK")
    asked = _request("Who is ana@example.org?", passage="Notes.")
    titled = replace(
        asked,
        messages=(
            replace(
                asked.messages[-1],
                sources=(SearchSource("parley:document/1#0", "cv-ana@example.org.pdf", ("x",)),),
            ),
        ),
        meta=CallMeta(cache=CacheKey(scope="u1", context="c", question="Who is ana@example.org?")),
    )
    list(RedactingProvider(scripted, redactor()).stream(titled))
    sent = scripted.requests[-1]
    assert "ana@example.org" not in sent.messages[-1].sources[0].title
    assert sent.meta.cache is not None and "ana@example.org" not in sent.meta.cache.question


def test_a_broken_stream_keeps_the_text_it_held() -> None:
    scripted = ScriptedProvider()
    scripted.enqueue_error(ProviderError("gone"), chunks=["Mail [EMA"])
    shown: list[str] = []
    with pytest.raises(ProviderError):
        for event in RedactingProvider(scripted, redactor()).stream(_request("ana@example.org")):
            if isinstance(event, TextDelta):
                shown.append(event.text)
    assert "".join(shown) == "Mail [EMA"


def test_summaries_and_the_response_cache_never_hold_a_value(
    scripted: ScriptedProvider, alice: Principal, tmp_path: Any
) -> None:
    from parley.core.config import ProviderChoice
    from parley.store.migrate import upgrade
    from parley.wiring.factories import open_database

    chosen = Settings(
        data_dir=tmp_path / "pii",
        provider=ProviderChoice.LOCAL,
        model_titles=False,
        memory_strategy="summary_buffer",
        memory_fold_tokens=300,
        max_output_tokens=200,
        pii={"enabled": True},
        temperature={"chat": 0.0},
    )
    del alice
    database = open_database(chosen)
    upgrade(database)
    built = build_services(chosen, provider=scripted, background=BackgroundWork(workers=0))
    carol = built.accounts.create_user(ROOT, name="carol", password="carol-password")
    scripted.default_answer = "Noted. " + "The rest of the answer goes on for a while. " * 8
    conversation = None
    for n in range(14):
        question = f"Turn {n}: write to carol.{n}@example.org. " + "Some more words here. " * 8
        reply = built.chat.send(carol, conversation, question)
        list(reply)
        conversation = reply.conversation_id
    summaries = [r for r in scripted.requests if r.meta.purpose.value == "summary"]
    assert summaries, "no summary was asked for"
    folded = " ".join(m.content for r in summaries for m in r.messages)
    assert "Turn 0" in folded and "[EMAIL_" in folded and "@example.org" not in folded
    everything = [m.content for r in scripted.requests for m in r.messages]
    assert not any("@example.org" in text for text in everything)
    with built._database.session() as session:
        kept = session.execute(text("SELECT * FROM cached_responses")).all()
        assert kept and "@example.org" not in repr(kept)
