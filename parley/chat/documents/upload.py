"""An upload: parse, chunk, embed and index a file, all or nothing.

The slow part (embedding) runs before any lock is taken. Then three short
transactions, with the vector store between them and no lock held, so sign-ins, quota
reservations and metering never wait behind an upload: the rows are written not ready
(every read skips them), the vectors indexed, and the rows made ready with the audit
record. An upload that fails on the way, or that a dead process left half done
(`sweep_abandoned`), is removed whole, its vectors through the index's outbox.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import timedelta

import numpy as np
from sqlalchemy import delete, select

from parley.chat.documents.access import access_of, queue_sync, shareable_group
from parley.chat.documents.index_sync import IndexSync
from parley.core.audit_events import DocumentAdded, InjectionFlagged
from parley.core.domain import Principal
from parley.core.errors import (
    InvalidInput,
    NotFound,
    ParleyError,
    StorageConflict,
    StorageUnavailable,
)
from parley.retrieval.document_index import DocumentAccess, DocumentIndex
from parley.retrieval.documents import KINDS, MAX_FILE_BYTES, chunk, parse
from parley.retrieval.injection import InjectionDetector, rule_hit
from parley.store.audit import actor_of, append_in
from parley.store.db import Database
from parley.store.models import Document, DocumentChunk, DocumentGroup, utcnow

# The file name endings an upload may have (text, Markdown, HTML, PDF, Word).
SUPPORTED_SUFFIXES = tuple(KINDS)
# The largest file an upload may be, in megabytes (MiB, as Streamlit's uploader counts).
MAX_UPLOAD_MB = MAX_FILE_BYTES // 2**20
# Chunks embedded per batch while a file is indexed (progress is reported per batch).
EMBED_BATCH = 32
# An upload not made ready this long after it began was abandoned (its process died).
ABANDONED_AFTER = timedelta(minutes=30)
log = logging.getLogger(__name__)

# Progress of an upload: (fraction done, what is happening), fraction in [0, 1].
Progress = Callable[[float, str], None]


class Uploads:
    def __init__(
        self,
        database: Database,
        index: DocumentIndex,
        index_sync: IndexSync,
        detector: InjectionDetector | None = None,
    ) -> None:
        self._db = database
        self._index = index
        self._index_sync = index_sync
        self._detector = detector

    def add(
        self,
        principal: Principal,
        name: str,
        data: bytes,
        *,
        groups: tuple[str, ...] = (),
        public: bool = False,
        progress: Progress | None = None,
    ) -> int:
        """Parse, chunk, embed and index a file for the principal; the new document's id.
        `progress` hears how far it got (parsing, then each batch of chunks embedded)."""
        report = progress or _silent
        report(0.0, f"Reading {name}")
        chunks = chunk(parse(name, data))
        digest = hashlib.sha256(data).hexdigest()
        with self._db.session() as session:
            for group in groups:  # a group they may not share with is said before the slow part
                shareable_group(session, principal, group)
        batches = []
        for start in range(0, len(chunks), EMBED_BATCH):
            report(0.05 + 0.85 * start / len(chunks), f"Embedding {name}: {start}/{len(chunks)}")
            batches.append(self._index.embed([c.text for c in chunks[start : start + EMBED_BATCH]]))
        vectors = np.concatenate(batches)
        suspects = self._suspects(
            name, [f"{c.heading}\n{c.text}" if c.heading else c.text for c in chunks], report
        )
        report(0.9, f"Indexing {name}")
        # Three short transactions, the vector store between them (see the docstring).
        try:
            with self._db.session(write_lock=True) as session:
                duplicate = session.scalar(
                    select(Document.name).where(
                        Document.owner_id == principal.user_id, Document.sha256 == digest
                    )
                )
                if duplicate is not None:
                    raise InvalidInput(f"{name}: you already have this content as {duplicate!r}.")
                group_ids = [shareable_group(session, principal, g) for g in groups]
                document = Document(
                    owner_id=principal.user_id,
                    name=name[:255],
                    sha256=digest,
                    public=public,
                    chunks=len(chunks),
                    tokens=sum(c.tokens for c in chunks),
                    ready=False,
                )
                session.add(document)
                session.flush()
                session.add_all(
                    DocumentGroup(document_id=document.id, group_id=g) for g in group_ids
                )
                session.add_all(
                    DocumentChunk(
                        document_id=document.id,
                        index=c.index,
                        text=c.text,
                        heading=c.heading[:500],
                        page=c.page,
                        tokens=c.tokens,
                        suspect=suspects[n] if suspects is not None else None,
                    )
                    for n, c in enumerate(chunks)
                )
                document_id = document.id
        except StorageConflict as exc:
            raise InvalidInput(f"{name}: you already have this content.") from exc
        access = DocumentAccess(principal.user_id, public, frozenset(group_ids))
        try:
            self._index.add(document_id, vectors, access)
        except Exception as exc:
            self.abandon(document_id, access)
            if isinstance(exc, ParleyError):
                raise
            raise StorageUnavailable(
                f"indexing {name}: {exc}",
                user_message=f"{name} could not be indexed; nothing of it was kept. "
                "Please try again.",
            ) from exc
        with self._db.session(write_lock=True) as session:
            made = session.get(Document, document_id)
            if made is not None:
                made.ready = True
                append_in(  # last: the audit head stays locked until the commit
                    session,
                    DocumentAdded(
                        document_id=document_id,
                        sha256=digest,
                        chunks=len(chunks),
                        groups=sorted(groups),
                        public=public,
                    ),
                    **actor_of(principal),
                )
                flagged = [n for n, why in enumerate(suspects or []) if why]
                if flagged:
                    append_in(
                        session,
                        InjectionFlagged(
                            document_id=document_id,
                            chunks=[chunks[n].index for n in flagged],
                            reasons=[(suspects or [])[n] for n in flagged],
                            when="ingestion",
                        ),
                        **actor_of(principal),
                        about_id=principal.user_id,
                    )
        if made is None:  # its owner was erased while it was indexed
            self.abandon(document_id, access)
            raise NotFound(user_message=f"{name} was deleted while it was being indexed.")
        report(1.0, f"{name}: {len(chunks)} passages indexed")
        return document_id

    def _suspects(self, name: str, texts: list[str], report: Progress) -> list[str] | None:
        """Each chunk's injection flag ("" for none); None when there is no detector or
        it failed (logged: the chunks are read at retrieval instead)."""
        if self._detector is None:
            return None
        report(0.88, f"Checking {name} for instructions aimed at the model")
        named = rule_hit(name)  # a name is shown to the model with every passage
        try:
            verdicts = self._detector.scan_many(texts)
        except Exception:
            log.exception("The injection detector failed on %s; it reads it at retrieval", name)
            return None
        if named is not None:
            return [f"its name {named}"[:100] for _ in texts]
        return [(v.reason or "")[:100] if v.flagged else "" for v in verdicts]

    def abandon(self, document_id: int, access: DocumentAccess) -> None:
        """An upload that will not finish: its vectors and rows go (whatever is left of
        the vectors, the outbox removes later)."""
        with self._db.session(write_lock=True) as session:
            queue_sync(session, document_id, access.scopes)
            session.execute(delete(DocumentChunk).where(DocumentChunk.document_id == document_id))
            session.execute(delete(Document).where(Document.id == document_id))
        self._index_sync.sync(document_id)

    def sweep_abandoned(self, *, older_than: timedelta = ABANDONED_AFTER) -> int:
        """Uploads a process died in the middle of (rows never made ready): removed, with
        whatever vectors they had. How many."""
        cutoff = utcnow() - older_than
        with self._db.session() as session:
            stale = session.scalars(
                select(Document).where(Document.ready.is_(False), Document.created_at < cutoff)
            ).all()
            found = [(d.id, access_of(session, d)) for d in stale]
        for document_id, access in found:
            self.abandon(document_id, access)
        return len(found)


def _silent(fraction: float, step: str) -> None:  # noqa: ARG001 - a Progress that listens to nothing
    return None


__all__ = [
    "ABANDONED_AFTER",
    "EMBED_BATCH",
    "MAX_UPLOAD_MB",
    "SUPPORTED_SUFFIXES",
    "Progress",
    "Uploads",
]
