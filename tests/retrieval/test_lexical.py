"""parley/retrieval/lexical.py: the tokenizer, the light stemmer and incremental BM25."""

from __future__ import annotations

import math

import numpy as np

from parley.retrieval.lexical import BM25Index, stem, tokenize


def test_tokenize_drops_stopwords_and_apostrophes_and_stems() -> None:
    assert tokenize("I'm going to the Hobbies class; she's PAINTED paintings!") == [
        "going",  # a stem keeps at least three letters
        "hobby",
        "class",
        "paint",
        "painting",  # one suffix only: "paintings" loses its "s"
    ]


def test_stemmer_is_light() -> None:
    assert stem("runs") == stem("run") == "run"
    assert stem("painting") == stem("painted") == stem("paints") == "paint"
    assert stem("glasses") == "glass"
    assert stem("class") == "class"
    assert stem("running") == "runn"  # no consonant undoubling: "running" does not match "run"
    assert stem("bus") == "bus"  # three letters or fewer are left alone
    assert stem("apples") == "appl" != stem("apple")  # "-es" is tried before "-s", as researched


def test_bm25_ranks_the_document_with_the_rare_terms_first() -> None:
    index = BM25Index()
    docs = [
        "we talked about the weather and the weather again",
        "the weather was fine for a walk",
        "my grandmother's violin recital was on the weather channel",
        "nothing to see here",
    ]
    assert [index.add(d) for d in docs] == [0, 1, 2, 3]
    assert len(index) == 4
    scores = index.scores("violin weather")
    assert scores.shape == (4,)
    assert int(np.argmax(scores)) == 2
    assert scores[3] == 0.0
    assert scores[0] > 0 and scores[1] > 0


def test_bm25_matches_the_formula() -> None:
    docs = ["apple banana apple", "banana cherry", "cherry cherry date fig"]
    index = BM25Index(k1=1.2, b=0.75)
    for d in docs:
        index.add(d)
    tokens = [tokenize(d) for d in docs]
    avgdl = sum(len(t) for t in tokens) / len(tokens)
    expected = []
    for t in tokens:
        total = 0.0
        for term in ("apple", "cherry"):
            df = sum(term in u for u in tokens)
            idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
            tf = t.count(term)
            total += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(t) / avgdl))
        expected.append(total)
    np.testing.assert_allclose(index.scores("apple and cherries"), expected, rtol=1e-9)


def test_bm25_is_incremental_and_empty_inputs_give_zeros() -> None:
    index = BM25Index()
    assert index.scores("anything").shape == (0,)
    index.add("the dog barked")
    first = index.scores("dog")
    index.add("a cat")
    index.add("another dog")
    again = index.scores("dog")
    assert again.shape == (3,) and again[1] == 0.0
    assert first[0] > 0 and again[2] > again[1]
    np.testing.assert_array_equal(index.scores("the and of"), np.zeros(3))
    np.testing.assert_array_equal(index.scores(""), np.zeros(3))
