"""Documents: upload, list, share, unshare, delete, and permission-scoped search.

A document is private to its owner, shared with groups, or public to every user.
Owners and admins share, unshare and delete. `search` filters inside the Chroma query
by the principal's id and groups (read afresh on every call), then checks each hit
against the database's access list before returning it, so a revoked share or a
deleted document is gone from the very next search, in every process.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from auth.groups import group_id_named, groups_of
from parley.domain import Principal
from parley.errors import InvalidInput, NotFound, StorageConflict
from parley.tokens import count_tokens
from retrieval.document_index import Access, DocumentIndex
from retrieval.documents import chunk, parse
from store.db import Database
from store.models import Document, DocumentChunk, DocumentGroup, Group, User

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    id: int
    name: str
    owner: str
    groups: tuple[str, ...]
    public: bool
    chunks: int


@dataclass(frozen=True, slots=True)
class Hit:
    document_id: int
    name: str
    owner: str
    chunk: int
    heading: str
    page: int | None
    text: str
    score: float
    why: str = ""  # the permission that let the user see it: owner, public, group NAME


class DocumentService:
    def __init__(self, database: Database, index: DocumentIndex) -> None:
        self._db = database
        self._index = index

    def add(
        self,
        principal: Principal,
        name: str,
        data: bytes,
        *,
        groups: tuple[str, ...] = (),
        public: bool = False,
    ) -> DocumentInfo:
        """Parse, chunk, embed and index a file for the principal; all or nothing."""
        chunks = chunk(parse(name, data))
        digest = hashlib.sha256(data).hexdigest()
        vectors = self._index.embed([c.text for c in chunks])
        try:
            with self._db.session() as session:
                duplicate = session.scalar(
                    select(Document.name).where(
                        Document.owner_id == principal.user_id, Document.sha256 == digest
                    )
                )
                if duplicate is not None:
                    raise InvalidInput(f"{name}: you already have this content as {duplicate!r}.")
                group_ids = [group_id_named(session, g) for g in groups]
                document = Document(
                    owner_id=principal.user_id,
                    name=name[:255],
                    sha256=digest,
                    public=public,
                    chunks=len(chunks),
                    tokens=sum(c.tokens for c in chunks),
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
                    )
                    for c in chunks
                )
                session.flush()
                document_id = document.id
                access = Access(principal.user_id, public, frozenset(group_ids))
                try:
                    self._index.add(document_id, vectors, access)
                except Exception:
                    self._index.remove(document_id)  # nothing half-indexed
                    raise
        except StorageConflict as exc:
            raise InvalidInput(f"{name}: you already have this content.") from exc
        return self.get(principal, document_id)

    def get(self, principal: Principal, document_id: int) -> DocumentInfo:
        with self._db.session() as session:
            document = self._visible(session, principal, document_id)
            return _info(session, document)

    def list_for(self, principal: Principal) -> list[DocumentInfo]:
        """Every document the principal may see (admins: every document)."""
        with self._db.session() as session:
            documents = session.scalars(select(Document).order_by(Document.id)).all()
            mine = groups_of(session, principal.user_id)
            return [
                _info(session, d)
                for d in documents
                if principal.is_admin or _may_see(session, d, principal.user_id, mine)
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
        return self._change(principal, document_id, group=group, public=public, granted=False)

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
        with self._db.session() as session:
            document = self._managed(session, principal, document_id)
            if group is not None:
                group_id = group_id_named(session, group)
                link = session.get(DocumentGroup, (document.id, group_id))
                if granted and link is None:
                    session.add(DocumentGroup(document_id=document.id, group_id=group_id))
                elif not granted and link is not None:
                    session.delete(link)
            if public:
                document.public = granted
            session.flush()
            access = _access(session, document)
        self._index.set_access(document_id, access)
        return self.get(principal, document_id)

    def delete(self, principal: Principal, document_id: int) -> None:
        with self._db.session() as session:
            document = self._managed(session, principal, document_id)
            session.execute(delete(DocumentChunk).where(DocumentChunk.document_id == document.id))
            session.delete(document)
        try:
            self._index.remove(document_id)
        except Exception:  # searches check the database: stale vectors show nothing
            log.exception("Dropping the vectors of document %s failed", document_id)

    def search(self, principal: Principal, query: str, *, k: int = 5) -> list[Hit]:
        """The best chunks the principal may see, best first."""
        if not query.strip():
            raise InvalidInput("The search is empty. Type something to look for.")
        with self._db.session() as session:
            mine = groups_of(session, principal.user_id)
        raw = self._index.search(query, user_id=principal.user_id, groups=mine, n=k * 2)
        hits: list[Hit] = []
        with self._db.session() as session:
            mine = groups_of(session, principal.user_id)  # afresh: a revocation counts now
            for document_id, index, score in raw:
                document = session.get(Document, document_id)
                if document is None or not _may_see(session, document, principal.user_id, mine):
                    continue  # defence in depth: the database has the last word
                row = session.get(DocumentChunk, (document_id, index))
                if row is None:
                    continue
                owner = session.get(User, document.owner_id)
                hits.append(
                    Hit(
                        document.id,
                        document.name,
                        owner.name if owner else "?",
                        index,
                        row.heading,
                        row.page,
                        row.text,
                        score,
                        _why(session, document, principal.user_id, mine),
                    )
                )
                if len(hits) == k:
                    break
        return hits

    def has_any(self, principal: Principal) -> bool:
        """Whether the principal may see at least one document (else no search is run)."""
        with self._db.session() as session:
            mine = groups_of(session, principal.user_id)
            shared = select(DocumentGroup.document_id).where(DocumentGroup.group_id.in_(mine))
            found = session.scalar(
                select(Document.id)
                .where(
                    (Document.owner_id == principal.user_id)
                    | Document.public
                    | Document.id.in_(shared)
                )
                .limit(1)
            )
        return found is not None

    def passages(
        self, principal: Principal, question: str, *, max_tokens: int, min_score: float
    ) -> list[Hit]:
        """The passages worth putting before the question: relevant enough, best first,
        within `max_tokens` (counted as rendered)."""
        if max_tokens <= 0 or not self.has_any(principal):
            return []
        chosen: list[Hit] = []
        used = 0
        for hit in self.search(principal, question, k=8):
            if hit.score < min_score:
                break
            cost = count_tokens(hit.text) + 20  # its text and its numbered header
            if used + cost > max_tokens:
                continue
            chosen.append(hit)
            used += cost
        return chosen

    def _visible(self, session: Session, principal: Principal, document_id: int) -> Document:
        document = session.get(Document, document_id)
        mine = groups_of(session, principal.user_id)
        if document is None or not (
            principal.is_admin or _may_see(session, document, principal.user_id, mine)
        ):
            raise NotFound(user_message=f"There is no document {document_id}.")
        return document

    def _managed(self, session: Session, principal: Principal, document_id: int) -> Document:
        document = session.get(Document, document_id)
        if document is None or not (principal.is_admin or document.owner_id == principal.user_id):
            raise NotFound(user_message=f"There is no document {document_id} of yours.")
        return document


def _group_ids(session: Session, document_id: int) -> set[int]:
    return set(
        session.scalars(
            select(DocumentGroup.group_id).where(DocumentGroup.document_id == document_id)
        )
    )


def _may_see(session: Session, document: Document, user_id: int, groups: set[int]) -> bool:
    return (
        document.owner_id == user_id
        or document.public
        or bool(_group_ids(session, document.id) & groups)
    )


def _why(session: Session, document: Document, user_id: int, groups: set[int]) -> str:
    if document.owner_id == user_id:
        return "owner"
    if document.public:
        return "public"
    shared = _group_ids(session, document.id) & groups
    names = session.scalars(select(Group.name).where(Group.id.in_(shared)).order_by(Group.name))
    return "group " + ", ".join(names)


def _access(session: Session, document: Document) -> Access:
    return Access(document.owner_id, document.public, frozenset(_group_ids(session, document.id)))


def _info(session: Session, document: Document) -> DocumentInfo:
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
    )


__all__ = ["DocumentInfo", "DocumentService", "Hit"]
