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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from auth.groups import group_id_named, groups_of
from parley.domain import Principal
from parley.errors import InvalidInput, NotFound, ParleyError, StorageConflict, StorageUnavailable
from parley.tokens import count_tokens
from retrieval.document_index import Access, Candidate, DocumentIndex, hybrid_rank
from retrieval.documents import KINDS, chunk, parse
from store.db import Database
from store.models import Document, DocumentChunk, DocumentGroup, DocumentSync, Group, User, utcnow

# The file name endings an upload may have (text, Markdown, HTML, PDF, Word).
SUPPORTED_SUFFIXES = tuple(KINDS)
# Chunks embedded per batch while a file is indexed (progress is reported per batch).
EMBED_BATCH = 32
# Candidates the vector search hands to the hybrid ranking, per hit wanted (at least 40).
CANDIDATES_PER_HIT = 4
# Progress of an upload: (fraction done, what is happening), fraction in [0, 1].
Progress = Callable[[float, str], None]

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
    score: float  # cosine similarity to the query (the relevance threshold applies to it)
    why: str = ""  # the permission that let the user see it: owner, public, group NAME
    rank: float = 0.0  # the fused (BM25 and cosine) relevance the hits are ordered by


@dataclass(frozen=True, slots=True)
class Passage:
    """Consecutive chunks of one document, quoted together (one source to cite)."""

    hits: tuple[Hit, ...]

    @property
    def first(self) -> Hit:
        return self.hits[0]

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(h.chunk for h in self.hits)

    @property
    def title(self) -> str:
        """`name, page 3, Heading` (pages `3-4` when the passage runs over a page)."""
        first = self.first
        pages = sorted({h.page for h in self.hits if h.page})
        where = ""
        if pages:
            span = str(pages[0]) if len(pages) == 1 else f"{pages[0]}-{pages[-1]}"
            where = f", page {span}" if len(pages) == 1 else f", pages {span}"
        heading = f", {first.heading}" if first.heading else ""
        return f"{first.name}{where}{heading}"


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
        progress: Progress | None = None,
    ) -> DocumentInfo:
        """Parse, chunk, embed and index a file for the principal; all or nothing.
        `progress` hears how far it got (parsing, then each batch of chunks embedded)."""
        report = progress or _silent
        report(0.0, f"Reading {name}")
        chunks = chunk(parse(name, data))
        digest = hashlib.sha256(data).hexdigest()
        with self._db.session() as session:
            for group in groups:  # a group they may not share with is said before the slow part
                _shareable_group(session, principal, group)
        batches = []
        for start in range(0, len(chunks), EMBED_BATCH):
            report(0.05 + 0.85 * start / len(chunks), f"Embedding {name}: {start}/{len(chunks)}")
            batches.append(self._index.embed([c.text for c in chunks[start : start + EMBED_BATCH]]))
        vectors = np.concatenate(batches)
        report(0.9, f"Indexing {name}")
        try:
            with self._db.session() as session:
                duplicate = session.scalar(
                    select(Document.name).where(
                        Document.owner_id == principal.user_id, Document.sha256 == digest
                    )
                )
                if duplicate is not None:
                    raise InvalidInput(f"{name}: you already have this content as {duplicate!r}.")
                group_ids = [_shareable_group(session, principal, g) for g in groups]
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
                    # Rows an earlier failed upload left under this id go first (SQLite
                    # hands out a rolled-back id again).
                    self._index.remove(document_id, access.scopes)
                    self._index.add(document_id, vectors, access)
                except Exception as exc:
                    try:
                        self._index.remove(document_id, access.scopes)  # nothing half-indexed
                    except Exception:
                        log.exception("Removing a failed upload's vectors failed too")
                    if isinstance(exc, ParleyError):
                        raise
                    raise StorageUnavailable(
                        f"indexing {name}: {exc}",
                        user_message=f"{name} could not be indexed; nothing of it was kept. "
                        "Please try again.",
                    ) from exc
        except StorageConflict as exc:
            raise InvalidInput(f"{name}: you already have this content.") from exc
        report(1.0, f"{name}: {len(chunks)} passages indexed")
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
            before = _access(session, document)
            if group is not None:
                group_id = (
                    _shareable_group(session, principal, group)
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
            _queue_sync(session, document.id, before.scopes)
        self._sync(document_id)  # if the index fails, the outbox keeps the change
        return self.get(principal, document_id)

    def delete(self, principal: Principal, document_id: int) -> None:
        """Delete a document: its rows go at once (searches check the database, so it is
        gone from the next one), and an outbox row in the same transaction makes sure its
        vectors follow, now or at the next start-up."""
        with self._db.session() as session:
            document = self._managed(session, principal, document_id)
            _queue_sync(session, document.id, _access(session, document).scopes)
            session.execute(delete(DocumentChunk).where(DocumentChunk.document_id == document.id))
            session.delete(document)
        self._sync(document_id)

    def sweep_index(self) -> int:
        """Bring pending documents' vectors in line with the database (after a vector
        store failure); vectors kept the older way (one shared collection) are moved
        into scopes first. How many documents are still pending afterwards."""
        try:
            self._index.migrate_legacy(self._access_of)
        except Exception:
            log.exception("Moving document vectors into scoped collections failed; will retry")
        with self._db.session() as session:
            pending = session.scalars(select(DocumentSync.document_id)).all()
        return sum(not self._sync(d) for d in pending)

    def _access_of(self, document_id: int) -> Access | None:
        with self._db.session() as session:
            document = session.get(Document, document_id)
            return _access(session, document) if document is not None else None

    def _sync(self, document_id: int) -> bool:
        """Apply a pending outbox row: True once the index matches the database."""
        with self._db.session() as session:
            row = session.get(DocumentSync, document_id)
            if row is None:
                return True
            scopes, queued = list(row.scopes), row.requested_at
            document = session.get(Document, document_id)
            access = _access(session, document) if document is not None else None
        try:
            self._index.sync(document_id, access, stale=scopes)
        except Exception:
            log.exception("Updating the vectors of document %s failed; will retry", document_id)
            with self._db.session() as session:
                pending = session.get(DocumentSync, document_id)
                if pending is not None:
                    pending.attempts += 1
            return False
        with self._db.session() as session:
            session.execute(  # a change queued meanwhile keeps its row
                delete(DocumentSync).where(
                    DocumentSync.document_id == document_id, DocumentSync.requested_at == queued
                )
            )
        return True

    def open_chunk(self, principal: Principal, document_id: int, index: int) -> Hit:
        """One chunk of a document the principal may see (a citation opened on the page)."""
        with self._db.session() as session:
            document = self._visible(session, principal, document_id)
            row = session.get(DocumentChunk, (document.id, index))
            if row is None:
                raise NotFound(user_message=f"Document {document_id} has no passage {index}.")
            owner = session.get(User, document.owner_id)
            mine = groups_of(session, principal.user_id)
            why = (
                "admin"
                if principal.is_admin and not _may_see(session, document, principal.user_id, mine)
                else _why(session, document, principal.user_id, mine)
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
                why,
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
        found = self._checked_hits(principal, raw)
        candidates = [Candidate(d, i, h.score, h.text) for (d, i), h in found.items()]
        ranked = hybrid_rank(query, candidates)
        return [replace(found[(c.document_id, c.index)], rank=rank) for c, rank in ranked[:k]]

    def _checked_hits(
        self, principal: Principal, raw: Sequence[tuple[int, int, float]]
    ) -> dict[tuple[int, int], Hit]:
        """The vector search's candidates that the database says the principal may see,
        with their text: memberships, documents, shares and chunks read afresh, in four
        queries whatever the number of candidates."""
        if not raw:
            return {}
        document_ids = sorted({d for d, _, _ in raw})
        with self._db.session() as session:
            mine = groups_of(session, principal.user_id)  # afresh: a revocation counts now
            documents = {
                row.Document.id: row
                for row in session.execute(
                    select(Document, User.name)
                    .join(User, User.id == Document.owner_id)
                    .where(Document.id.in_(document_ids))
                )
            }
            shares: dict[int, set[int]] = {}
            for document_id, group_id in session.execute(
                select(DocumentGroup.document_id, DocumentGroup.group_id).where(
                    DocumentGroup.document_id.in_(document_ids)
                )
            ):
                shares.setdefault(document_id, set()).add(group_id)
            group_names = dict(
                session.execute(select(Group.id, Group.name).where(Group.id.in_(mine))).all()
            )
            chunks = {
                (document_id, index): (text, heading, page)
                for document_id, index, text, heading, page in session.execute(
                    select(
                        DocumentChunk.document_id,
                        DocumentChunk.index,
                        DocumentChunk.text,
                        DocumentChunk.heading,
                        DocumentChunk.page,
                    ).where(
                        # One indexed lookup per pair: a row-value IN scans the table.
                        or_(
                            *(
                                (DocumentChunk.document_id == d) & (DocumentChunk.index == i)
                                for d, i in sorted({(d, i) for d, i, _ in raw})
                            )
                        )
                    )
                )
            }
        found: dict[tuple[int, int], Hit] = {}
        for document_id, index, score in raw:
            entry = documents.get(document_id)
            row = chunks.get((document_id, index))
            if entry is None or row is None:
                continue  # deleted meanwhile
            document, owner = entry.Document, entry.name
            via = sorted(group_names[g] for g in shares.get(document_id, set()) & mine)
            if document.owner_id == principal.user_id:
                why = "owner"
            elif document.public:
                why = "public"
            elif via:
                why = "group " + ", ".join(via)
            else:
                continue  # defence in depth: the database has the last word
            text, heading, page = row
            found[(document_id, index)] = Hit(
                document.id,
                document.name,
                owner,
                index,
                heading,
                page,
                text,
                score,
                why,
            )
        return found

    def has_any(self, principal: Principal, documents: Iterable[int] | None = None) -> bool:
        """Whether the principal may see at least one document (of `documents`, when
        given); else no search is run."""
        with self._db.session() as session:
            mine = groups_of(session, principal.user_id)
            shared = select(DocumentGroup.document_id).where(DocumentGroup.group_id.in_(mine))
            query = select(Document.id).where(
                (Document.owner_id == principal.user_id) | Document.public | Document.id.in_(shared)
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
        return _passages(hits, max_tokens)

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


def _silent(fraction: float, step: str) -> None:  # noqa: ARG001 - a Progress that listens to nothing
    return None


# Tokens a passage's header and block framing take beside its text.
PASSAGE_OVERHEAD_TOKENS = 20


def _passages(hits: Sequence[Hit], max_tokens: int) -> list[Passage]:
    """Relevant hits grouped into runs of consecutive chunks, best run first, as many
    as fit in `max_tokens`."""
    by_place = {(h.document_id, h.chunk): h for h in hits}
    taken: set[tuple[int, int]] = set()
    runs: list[Passage] = []
    used = 0
    for hit in hits:  # best first
        place = (hit.document_id, hit.chunk)
        if place in taken:
            continue
        run = [hit]
        for step in (-1, 1):  # relevant neighbours on either side join the run
            at = hit.chunk + step
            while (hit.document_id, at) in by_place and (hit.document_id, at) not in taken:
                neighbour = by_place[(hit.document_id, at)]
                run = [neighbour, *run] if step < 0 else [*run, neighbour]
                at += step
        cost = sum(count_tokens(h.text) for h in run) + PASSAGE_OVERHEAD_TOKENS
        while len(run) > 1 and used + cost > max_tokens:  # drop the weakest end first
            weakest = 0 if run[0].rank < run[-1].rank else -1
            run.pop(weakest)
            cost = sum(count_tokens(h.text) for h in run) + PASSAGE_OVERHEAD_TOKENS
        if hit not in run or used + cost > max_tokens:
            continue
        taken.update((h.document_id, h.chunk) for h in run)
        runs.append(Passage(tuple(run)))
        used += cost
    return runs


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


def _queue_sync(session: Session, document_id: int, scopes: Sequence[str]) -> None:
    """Record, in the caller's transaction, that the document's vectors must follow the
    database, and every scope its rows may be in now."""
    row = session.get(DocumentSync, document_id)
    if row is None:
        session.add(DocumentSync(document_id=document_id, scopes=sorted(set(scopes)), attempts=0))
    else:
        row.scopes = sorted(set(row.scopes) | set(scopes))
        row.requested_at = utcnow()


def _shareable_group(session: Session, principal: Principal, name: str) -> int:
    """The id of a group the principal may share with: any for admins, else one of
    their own (the same sentence whether the group exists or not)."""
    if principal.is_admin:
        return group_id_named(session, name)
    mine = groups_of(session, principal.user_id)
    found = session.scalar(select(Group.id).where(Group.name == name.strip()))
    if found is None or found not in mine:
        raise InvalidInput(f"You can share only with groups you are in; {name.strip()!r} is not.")
    return found


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


__all__ = [
    "SUPPORTED_SUFFIXES",
    "DocumentInfo",
    "DocumentService",
    "Hit",
    "Passage",
    "Progress",
]
