"""Documents: upload (`upload.py`), list, share, unshare, delete, and permission-scoped search.

A document is private to its owner, shared with groups, or public to every user.
Owners and admins share, unshare and delete. `search` filters inside the Chroma query
by the principal's id and groups (read afresh on every call), then checks each hit
against the database's access list before returning it, so a revoked share or a
deleted document is gone from the very next search, in every process.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from functools import partial

import numpy as np
from sqlalchemy import delete, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from parley.auth.groups import group_id_named, groups_of
from parley.chat.documents.access import (
    access_of,
    allowed_as,
    checked_hits,
    queue_sync,
    scrub_quotes,
    shareable_group,
)
from parley.chat.documents.hits import Hit, Passage, group_passages
from parley.chat.documents.index_sync import IndexSync
from parley.chat.documents.upload import (
    ABANDONED_AFTER,
    MAX_UPLOAD_MB,
    SUPPORTED_SUFFIXES,
    Progress,
    Uploads,
)
from parley.core.audit_events import (
    DocumentChunkOpened,
    DocumentDeleted,
    DocumentShared,
    DocumentUnshared,
    InjectionFlagged,
)
from parley.core.background import Defer
from parley.core.domain import Principal
from parley.core.errors import (
    InvalidInput,
    NotFound,
    StorageError,
)
from parley.retrieval.document_index import (
    Candidate,
    DocumentIndex,
    hybrid_rank,
)
from parley.retrieval.documents import MAX_FILE_BYTES, kind_of
from parley.retrieval.injection import InjectionDetector
from parley.store.audit import actor_of, append_in
from parley.store.db import Database
from parley.store.models import (
    Document,
    DocumentChunk,
    DocumentGroup,
    Group,
    User,
)

# Candidates the vector search hands to the hybrid ranking, per hit wanted (at least 40).
CANDIDATES_PER_HIT = 4
MAX_FILES_PER_MESSAGE = 5  # files sent with one message

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    id: int
    name: str
    owner: str
    groups: tuple[str, ...]
    public: bool
    chunks: int
    may_manage: bool = False  # the asker may share, unshare and delete it
    summary: str | None = None  # written by a batch job (`parley batch submit documents`)


@dataclass(frozen=True, slots=True)
class SentFiles:
    """The documents a message's files are, and which of them are new (the others the
    sender had already): a message not sent takes back only the new ones."""

    documents: list[DocumentInfo]
    new: list[int]


class DocumentService:
    def __init__(
        self,
        database: Database,
        index: DocumentIndex,
        *,
        defer: Defer | None = None,
        on_change: Callable[[Sequence[int]], object] | None = None,
        detector: InjectionDetector | None = None,
    ) -> None:
        self._db = database
        # Reads chunks for instructions aimed at the model: at upload, and at retrieval
        # for chunks stored before it (`parley.retrieval.injection`).
        self._detector = detector
        # Told of documents whose content or sharing changed (the response cache drops
        # the answers that drew on them).
        self._on_change = on_change
        self._index = index
        self._index_sync = IndexSync(database, index)
        self._uploads = Uploads(database, index, self._index_sync, detector)
        # Runs slow work (dropping and purging a deleted document's vectors) off the
        # request, on the services' pool; None runs it inline.
        self._defer = defer

    def add(
        self,
        principal: Principal,
        name: str,
        data: bytes,
        *,
        groups: tuple[str, ...] = (),
        public: bool = False,
        progress: Progress | None = None,
    ) -> DocumentInfo:
        """Parse, chunk, embed and index a file for the principal; all or nothing
        (`parley.chat.documents.upload`). `progress` hears how far it got."""
        document_id = self._uploads.add(
            principal, name, data, groups=groups, public=public, progress=progress
        )
        return self.get(principal, document_id)

    def add_files(self, principal: Principal, files: Sequence[tuple[str, bytes]]) -> SentFiles:
        """Files sent with a message, as private documents of the principal: all or none.
        Their kinds, sizes and number are checked before anything is stored; a file that
        cannot be read then removes the ones added before it. A file the principal has
        already added (the same bytes) is that document again, whatever its name now."""
        if len(files) > MAX_FILES_PER_MESSAGE:
            raise InvalidInput(
                f"A message takes at most {MAX_FILES_PER_MESSAGE} files; this one has {len(files)}."
            )
        for name, data in files:
            kind_of(name)  # a sentence naming the file and the kinds there are
            if len(data) > MAX_FILE_BYTES:
                raise InvalidInput(
                    f"{name}: the file has {len(data) / 2**20:.1f} MB; "
                    f"the limit is {MAX_UPLOAD_MB} MB."
                )
        added: list[DocumentInfo] = []  # taken back if a later file fails
        documents: list[DocumentInfo] = []
        try:
            for name, data in files:
                kept = self._own_copy(principal, data)  # sent before: the same document
                if kept is None:
                    kept = self.add(principal, name, data)
                    added.append(kept)
                documents.append(kept)
        except BaseException:
            self.remove_quietly(principal, [d.id for d in added])
            raise
        return SentFiles(documents, [d.id for d in added])

    def _own_copy(self, principal: Principal, data: bytes) -> DocumentInfo | None:
        """The principal's own ready document with exactly these bytes, if there is one."""
        digest = hashlib.sha256(data).hexdigest()
        with self._db.session() as session:
            found = session.scalar(
                select(Document.id).where(
                    Document.owner_id == principal.user_id,
                    Document.sha256 == digest,
                    Document.ready,
                )
            )
        return self.get(principal, found) if found is not None else None

    def remove_quietly(self, principal: Principal, document_ids: Iterable[int]) -> None:
        """Take back documents added for a message that was not sent (logged, never raised)."""
        for document_id in document_ids:
            try:
                self.delete(principal, document_id)
            except Exception:
                log.exception("Could not remove document %s of a message not sent", document_id)

    def embed_query(self, text: str) -> np.ndarray:
        """The text's vector, as a question is embedded to search (the response cache
        matches questions by it)."""
        return np.asarray(self._index.embed([text])[0])

    def get(self, principal: Principal, document_id: int) -> DocumentInfo:
        with self._db.session() as session:
            document = self._visible(session, principal, document_id)
            return _info(session, document, principal)

    def list_for(self, principal: Principal) -> list[DocumentInfo]:
        """Every document the principal may see (admins: every document)."""
        with self._db.session() as session:
            documents = session.scalars(
                select(Document).where(Document.ready).order_by(Document.id)
            ).all()
            mine = groups_of(session, principal.user_id)
            return [
                _info(session, d, principal)
                for d in documents
                if principal.is_admin or access_of(session, d).allowed(principal.user_id, mine)
            ]

    def share(
        self,
        principal: Principal,
        document_id: int,
        *,
        group: str | None = None,
        public: bool = False,
    ) -> DocumentInfo:
        return self._change(principal, document_id, group=group, public=public, granted=True)

    def unshare(
        self,
        principal: Principal,
        document_id: int,
        *,
        group: str | None = None,
        public: bool = False,
    ) -> DocumentInfo:
        changed = self._change(principal, document_id, group=group, public=public, granted=False)
        self._changed([document_id])
        return changed

    def _changed(self, document_ids: Sequence[int]) -> None:
        if self._on_change is not None:
            self._on_change(document_ids)

    def _change(
        self,
        principal: Principal,
        document_id: int,
        *,
        group: str | None,
        public: bool,
        granted: bool,
    ) -> DocumentInfo:
        if group is None and not public:
            raise InvalidInput("Say whom to share with: a group, or everyone (public).")
        with self._db.session(write_lock=True) as session:
            document = self._managed(session, principal, document_id)
            before = access_of(session, document)
            if group is not None:
                group_id = (
                    shareable_group(session, principal, group)
                    if granted
                    else group_id_named(session, group)
                )
                link = session.get(DocumentGroup, (document.id, group_id))
                if granted and link is None:
                    session.add(DocumentGroup(document_id=document.id, group_id=group_id))
                elif not granted and link is not None:
                    session.delete(link)
            if public:
                document.public = granted
            session.flush()
            queue_sync(session, document.id, before.scopes)
            change = DocumentShared if granted else DocumentUnshared
            append_in(
                session,
                change(document_id=document.id, group=group, public=public),
                **actor_of(principal),
                about_id=document.owner_id,
            )
        self._sync(document_id)  # if the index fails, the outbox keeps the change
        return self.get(principal, document_id)

    def delete(self, principal: Principal, document_id: int) -> None:
        """Delete a document: its rows go at once (searches check the database, so it is
        gone from the next one), and an outbox row in the same transaction makes sure its
        vectors follow, now or at the next start-up."""
        with self._db.session(write_lock=True) as session:
            document = self._managed(session, principal, document_id)
            queue_sync(session, document.id, access_of(session, document).scopes)
            session.execute(delete(DocumentChunk).where(DocumentChunk.document_id == document.id))
            scrub_quotes(session, [document.id])  # before the row: it finds cached answers by it
            session.delete(document)
            append_in(
                session,
                DocumentDeleted(document_id=document.id),
                **actor_of(principal),
                about_id=document.owner_id,
            )
        self._db.reclaim()  # no byte of the chunks left in SQLite's files
        self._changed([document_id])
        # The vectors and the index's files follow off the request (a purge rebuilds the
        # scope's collection): the outbox row stays until done, or for the start-up sweep.
        if self._defer is None or not self._defer(
            partial(self._sync_later, document_id), f"erase vectors of document {document_id}"
        ):
            self._sync(document_id)

    def sweep_abandoned(self, *, older_than: timedelta = ABANDONED_AFTER) -> int:
        """Uploads a process died in the middle of, removed (`Uploads.sweep_abandoned`)."""
        return self._uploads.sweep_abandoned(older_than=older_than)

    def sweep_index(self) -> int:
        """Finish the index's pending work (`IndexSync.sweep`); how many documents are
        still pending afterwards."""
        return self._index_sync.sweep()

    def _sync_later(self, document_id: int) -> None:
        self._index_sync.sync(document_id)

    def _sync(self, document_id: int) -> bool:
        return self._index_sync.sync(document_id)

    def open_chunk(self, principal: Principal, document_id: int, index: int) -> Hit:
        """One chunk of a document the principal may see (a citation opened on the page)."""
        with self._db.session() as session:
            document = self._visible(session, principal, document_id)
            row = session.get(DocumentChunk, (document.id, index))
            if row is None:
                raise NotFound(user_message=f"Document {document_id} has no passage {index}.")
            owner = session.get(User, document.owner_id)
            mine = groups_of(session, principal.user_id)
            allowed = access_of(session, document).allowed(principal.user_id, mine)
            overridden = allowed is None  # only an admin gets this far without a reason
            reason = "admin" if overridden else allowed_as(session, allowed)
            if overridden:  # an admin reading a document not shared with them: on record
                append_in(
                    session,
                    DocumentChunkOpened(document_id=document.id, chunk=index),
                    **actor_of(principal),
                    about_id=document.owner_id,
                )
            return Hit(
                document.id,
                document.name,
                owner.name if owner else "?",
                index,
                row.heading,
                row.page,
                row.text,
                1.0,
                reason,
            )

    def search(
        self,
        principal: Principal,
        query: str,
        *,
        k: int = 5,
        documents: Iterable[int] | None = None,
    ) -> list[Hit]:
        """The best chunks the principal may see (of `documents` only, when given), best
        first: BM25 and cosine fused over the vector search's candidates."""
        if not query.strip():
            raise InvalidInput("The search is empty. Type something to look for.")
        chosen = None if documents is None else sorted(set(documents))
        if chosen == []:
            return []
        with self._db.session() as session:
            mine = groups_of(session, principal.user_id)
        raw = self._index.search(
            query,
            user_id=principal.user_id,
            groups=mine,
            n=max(40, k * CANDIDATES_PER_HIT),
            documents=chosen,
        )
        found = checked_hits(self._db, principal, raw)
        candidates = [Candidate(d, i, h.score, h.text) for (d, i), h in found.items()]
        ranked = hybrid_rank(query, candidates)
        return [replace(found[(c.document_id, c.index)], rank=rank) for c, rank in ranked[:k]]

    def has_any(self, principal: Principal, documents: Iterable[int] | None = None) -> bool:
        """Whether the principal may see at least one document (of `documents`, when
        given); else no search is run."""
        with self._db.session() as session:
            mine = groups_of(session, principal.user_id)
            shared = select(DocumentGroup.document_id).where(DocumentGroup.group_id.in_(mine))
            query = select(Document.id).where(
                Document.ready,
                (Document.owner_id == principal.user_id)
                | Document.public
                | Document.id.in_(shared),
            )
            if documents is not None:
                query = query.where(Document.id.in_(list(documents)))
            found = session.scalar(query.limit(1))
        return found is not None

    def passages(
        self,
        principal: Principal,
        question: str,
        *,
        max_tokens: int,
        min_score: float,
        documents: Iterable[int] | None = None,
    ) -> list[Passage]:
        """The passages worth putting before the question, best first, within
        `max_tokens`: chunks whose cosine reaches `min_score`, in fused order; a chunk's
        relevant next or previous chunk joins it, so a passage reads on where an answer
        runs over a chunk's edge."""
        chosen = None if documents is None else list(documents)
        if max_tokens <= 0 or not self.has_any(principal, chosen):
            return []
        hits = [
            h
            for h in self.search(principal, question, k=12, documents=chosen)
            if h.score >= min_score
        ]
        return group_passages(self._read_unread(principal, hits), max_tokens)

    def _read_unread(self, principal: Principal, hits: list[Hit]) -> list[Hit]:
        """The hits, those stored before the injection detector read now (and their
        flags kept, the flagged ones audited). A detector that fails is logged; the
        passages go as they are."""
        unread = [h for h in hits if h.suspect is None]
        if not unread or self._detector is None:
            return hits
        try:
            verdicts = self._detector.scan_many([h.text for h in unread])
        except Exception:
            log.exception("The injection detector failed at retrieval")
            return hits
        flags = {
            (h.document_id, h.chunk): ((v.reason or "")[:100] if v.flagged else "")
            for h, v in zip(unread, verdicts, strict=True)
        }
        try:
            with self._db.session(write_lock=True) as session:
                flagged: dict[int, list[tuple[int, str]]] = {}
                for (document_id, index), why in flags.items():
                    changed = session.execute(
                        update(DocumentChunk)
                        .where(
                            DocumentChunk.document_id == document_id,
                            DocumentChunk.index == index,
                            DocumentChunk.suspect.is_(None),
                        )
                        .values(suspect=why)
                    )
                    # Another turn read it first: that one audited it.
                    if why and isinstance(changed, CursorResult) and changed.rowcount:
                        flagged.setdefault(document_id, []).append((index, why))
                for document_id, found in flagged.items():
                    owner = session.scalar(
                        select(Document.owner_id).where(Document.id == document_id)
                    )
                    append_in(
                        session,
                        InjectionFlagged(
                            document_id=document_id,
                            chunks=[i for i, _ in found],
                            reasons=[why for _, why in found],
                            when="retrieval",
                        ),
                        **actor_of(principal),  # whose question brought it up
                        about_id=owner,
                    )
        except StorageError:
            log.warning("The injection flags found at retrieval could not be kept")
        return [replace(h, suspect=flags.get((h.document_id, h.chunk), h.suspect)) for h in hits]

    def _visible(self, session: Session, principal: Principal, document_id: int) -> Document:
        document = session.get(Document, document_id)
        mine = groups_of(session, principal.user_id)
        if (
            document is None
            or not document.ready
            or not (
                principal.is_admin or access_of(session, document).allowed(principal.user_id, mine)
            )
        ):
            raise NotFound(user_message=f"There is no document {document_id}.")
        return document

    def _managed(self, session: Session, principal: Principal, document_id: int) -> Document:
        document = session.get(Document, document_id)
        if document is None or not document.ready or not may_manage(principal, document):
            raise NotFound(user_message=f"There is no document {document_id} of yours.")
        return document


def may_manage(principal: Principal, document: Document) -> bool:
    """Who may share, unshare and delete a document: its owner and admins (by id and
    role, never by name)."""
    return principal.is_admin or document.owner_id == principal.user_id


def _info(session: Session, document: Document, principal: Principal) -> DocumentInfo:
    owner = session.get(User, document.owner_id)
    names = session.scalars(
        select(Group.name)
        .join(DocumentGroup, DocumentGroup.group_id == Group.id)
        .where(DocumentGroup.document_id == document.id)
        .order_by(Group.name)
    ).all()
    return DocumentInfo(
        document.id,
        document.name,
        owner.name if owner else "?",
        tuple(names),
        document.public,
        document.chunks,
        may_manage=may_manage(principal, document),
        summary=document.summary,
    )


__all__ = [
    "MAX_FILES_PER_MESSAGE",
    "SentFiles",
    "MAX_UPLOAD_MB",
    "SUPPORTED_SUFFIXES",
    "DocumentInfo",
    "DocumentService",
    "Hit",
    "Passage",
    "Progress",
]
