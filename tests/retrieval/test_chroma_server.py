"""Recall against a real Chroma server (`chroma run` on 127.0.0.1), as at scale."""

from __future__ import annotations

from pathlib import Path

import pytest

from parley.core.config import Settings
from parley.retrieval.embeddings import HashingEmbedder
from parley.retrieval.turn_recall import IndexedTurn, RecallIndex
from parley.wiring.factories import build_recall_index


def test_recall_persists_on_a_chroma_server(chroma_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, chroma_url=chroma_url)
    built = build_recall_index(settings)  # the app's own wiring picks the HTTP client
    assert built.store is not None
    turns = [
        IndexedTurn(
            id=1, text="We planted tomatoes in the greenhouse.", speaker="Ann", session="s1"
        ),
        IndexedTurn(id=2, text="The train to Porto leaves at nine.", speaker="Bob", session="s1"),
        IndexedTurn(id=3, text="Tomatoes need a lot of sun.", speaker="Ann", session="s2"),
    ]
    first = RecallIndex(embedder=HashingEmbedder(), store=built.store)
    first.observe(42, turns)
    assert set(built.store.get("conversation-42")) == {"1", "2", "3"}
    nearest = built.store.query(
        "conversation-42",
        HashingEmbedder().embed(["tomatoes greenhouse"])[0],
        n=3,
        where={"speaker": "Ann"},  # a metadata filter inside the server's query
    )
    assert {turn_id for turn_id, _ in nearest} == {"1", "3"}
    # A new process (a new index) finds the embeddings on the server instead of re-embedding.
    calls: list[int] = []

    class CountingEmbedder(HashingEmbedder):
        def embed(self, texts):  # type: ignore[no-untyped-def]
            calls.append(len(texts))
            return super().embed(texts)

    second = RecallIndex(embedder=CountingEmbedder(), store=built.store)
    scores = second.score(42, turns, "tomatoes")
    assert [turn_id for turn_id, _ in scores] == [1, 2, 3]
    assert calls == [1]  # only the question was embedded
    second.forget(42)
    assert built.store.get("conversation-42") == {}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://chroma.internal", ("chroma.internal", 8000, False)),
        ("http://chroma.internal:9000", ("chroma.internal", 9000, False)),
        ("https://chroma.example", ("chroma.example", 443, True)),
        ("https://chroma.example:8443", ("chroma.example", 8443, True)),
    ],
)
def test_the_chroma_urls_scheme_and_port_are_honoured(
    url: str, expected: tuple[str, int, bool], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from parley.retrieval.vector_store import VectorStore
    from parley.wiring.factories import build_recall_index

    made: list[tuple[str, int, bool]] = []
    monkeypatch.setattr(
        VectorStore,
        "http",
        classmethod(
            lambda cls, host, port, ssl=False: made.append((host, port, ssl)) or cls(lambda: None)
        ),
    )
    build_recall_index(Settings(data_dir=tmp_path, chroma_url=url))
    assert made == [expected]


@pytest.mark.parametrize(
    "url", ["chroma.internal:8000", "ftp://chroma", "http://:8000", "http://h:port"]
)
def test_a_bad_chroma_url_is_a_sentence(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Refused with the settings, before any vector store is opened.
    from parley.core.config import get_settings
    from parley.core.errors import ConfigurationError

    monkeypatch.setenv("PARLEY_CHROMA_URL", url)
    with pytest.raises(ConfigurationError, match="chroma_url"):
        get_settings()
