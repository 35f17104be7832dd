"""Retrieval: embeddings and the vector store (Chroma) behind memory recall and documents.

    Embedder (Protocol)  MiniLMEmbedder, HashingEmbedder (test double)   embeddings.py
    BM25Index, tokenize                                                   lexical.py
    VectorStore (Chroma, made on first use)                               vector_store.py
    ScoringWeights, fuse_scores, minmax                                   scoring.py
    ConversationRecall, IndexedTurn                                       turn_index.py
    RecallIndex                                                           turn_recall.py
    DocumentAccess, DocumentIndex                                         document_index.py

Import from the modules: this package file imports nothing, so a command that needs
none of it never loads numpy.
"""
