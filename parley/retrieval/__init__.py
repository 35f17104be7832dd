"""Retrieval: embeddings and the vector store (Chroma) behind memory recall and documents.

    Embedder (Protocol)  MiniLMEmbedder, HashingEmbedder (test double)   embeddings.py
    BM25Index, tokenize                                                   lexical.py
    VectorStore (Chroma, made on first use)                               vector_store.py
    ScoringWeights, fuse_scores, minmax                                   scoring.py
    ConversationRecall, IndexedTurn                                       conversation_recall.py
    RecallIndex                                                           recall.py

Importing this package loads no model and opens no store.
"""

from __future__ import annotations

from parley.retrieval.embeddings import (
    Embedder,
    HashingEmbedder,
    MiniLMEmbedder,
    bundled_minilm_path,
)
from parley.retrieval.lexical import BM25Index, tokenize
from parley.retrieval.scoring import ScoringWeights, fuse_scores, minmax
from parley.retrieval.turn_recall import (
    ConversationRecall,
    IndexedTurn,
    RecallIndex,
    embedding_text,
)
from parley.retrieval.vector_store import VectorStore

__all__ = [
    "BM25Index",
    "ConversationRecall",
    "Embedder",
    "HashingEmbedder",
    "IndexedTurn",
    "MiniLMEmbedder",
    "RecallIndex",
    "ScoringWeights",
    "VectorStore",
    "bundled_minilm_path",
    "embedding_text",
    "fuse_scores",
    "minmax",
    "tokenize",
]
