"""Retrieval: embeddings and the vector store (Chroma) behind memory recall and documents."""
