"""Who may see and share a document, read from the database: the permission checks
the document service applies, and the check of every search candidate against them."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import JSON, String, cast, delete, or_, select, type_coerce, update
from sqlalchemy.orm import Session

from parley.auth.groups import group_id_named, groups_of
from parley.chat.documents.hits import Hit
from parley.core.domain import Principal
from parley.core.errors import InvalidInput
from parley.retrieval.document_index import Allowed, DocumentAccess
from parley.store.db import Database
from parley.store.models import (
    CachedResponse,
    CachedResponseDocument,
    Document,
    DocumentChunk,
    DocumentGroup,
    DocumentSync,
    Group,
    Message,
    User,
    utcnow,
)


def group_ids(session: Session, document_id: int) -> set[int]:
    return set(
        session.scalars(
            select(DocumentGroup.group_id).where(DocumentGroup.document_id == document_id)
        )
    )


def allowed_as(session: Session, allowed: Allowed | None) -> str:
    """How a reason reads where it is recorded (provenance, a hit): "owner", "public",
    "group finance, hr"; "" when there is none."""
    if allowed is None:
        return ""
    if allowed.reason != "group":
        return allowed.reason
    names = session.scalars(
        select(Group.name).where(Group.id.in_(allowed.groups)).order_by(Group.name)
    )
    return "group " + ", ".join(names)


DELETED_DOCUMENT = "(a deleted document)"


def scrub_quotes(session: Session, document_ids: Sequence[int]) -> int:
    """In the caller's transaction, take the text of deleted documents out of every
    message that quoted or named them (citations' quoted text; the document names in
    answers' provenance, in the passages an answer read, and in the files a question was
    sent with; of anyone's conversations), and drop the response cache's answers drawn
    from them: a deleted or erased document leaves nothing behind. Call it before the
    documents' rows go. How many messages changed."""
    ids = set(document_ids)
    if not ids:
        return 0
    # Answers the response cache kept from them (quotes and all): before the documents'
    # rows go, whose deletion cascades to the rows that find them.
    session.execute(
        delete(CachedResponse).where(
            CachedResponse.id.in_(
                select(CachedResponseDocument.response_id).where(
                    CachedResponseDocument.document_id.in_(ids)
                )
            )
        )
    )
    patterns = [f'%"document_id": {d}%' for d in sorted(ids)]
    columns = (Message.citations, Message.context, Message.sources, Message.attachments)
    naming = or_(*(cast(c, String).like(p) for c in columns for p in patterns))
    changed = 0
    gone = {"name": DELETED_DOCUMENT, "cited_text": ""}
    named = {"name": DELETED_DOCUMENT}
    for message in session.scalars(select(Message).where(naming)):
        citations = [
            c.model_copy(update=gone) if c.document_id in ids else c
            for c in message.citations or ()
        ]
        sources = [
            s.model_copy(update=named) if s.document_id in ids else s for s in message.sources or ()
        ]
        attachments = [
            a.model_copy(update=named) if a.document_id in ids else a
            for a in message.attachments or ()
        ]
        context = message.context
        if context is not None:
            context = context.model_copy(
                update={
                    "sources": [
                        s.model_copy(update=named) if s.document_id in ids else s
                        for s in context.sources
                    ]
                }
            )
        if (
            citations != (message.citations or [])
            or context != message.context
            or sources != (message.sources or [])
            or attachments != (message.attachments or [])
        ):
            message.citations = citations or None
            message.context = context
            message.sources = sources or None
            message.attachments = attachments or None
            changed += 1
    # A row whose stored JSON no longer reads as its record (made by hand) is read as
    # None above: what it quotes cannot be scrubbed piecemeal, so it goes whole.
    raw = select(Message.id, *(type_coerce(c, JSON) for c in columns)).where(naming)
    for message_id, *values in session.execute(raw).all():
        row = session.get(Message, message_id)
        if row is None:
            continue
        unreadable: dict[str, None] = {
            column.key: None
            for column, value in zip(columns, values, strict=True)
            if value is not None and getattr(row, column.key) is None
        }
        if unreadable:
            session.execute(update(Message).where(Message.id == message_id).values(unreadable))
            changed += 1
    return changed


def queue_sync(session: Session, document_id: int, scopes: Sequence[str]) -> None:
    """Record, in the caller's transaction, that the document's vectors must follow the
    database, and every scope its rows may be in now."""
    row = session.get(DocumentSync, document_id)
    if row is None:
        session.add(DocumentSync(document_id=document_id, scopes=sorted(set(scopes)), attempts=0))
    else:
        row.scopes = sorted(set(row.scopes) | set(scopes))
        row.requested_at = utcnow()


def shareable_group(session: Session, principal: Principal, name: str) -> int:
    """The id of a group the principal may share with: any for admins, else one of
    their own (the same sentence whether the group exists or not)."""
    if principal.is_admin:
        return group_id_named(session, name)
    mine = groups_of(session, principal.user_id)
    found = session.scalar(select(Group.id).where(Group.name == name.strip()))
    if found is None or found not in mine:
        raise InvalidInput(f"You can share only with groups you are in; {name.strip()!r} is not.")
    return found


def access_of(session: Session, document: Document) -> DocumentAccess:
    """Who may see the document, read afresh (its shares included)."""
    return DocumentAccess(
        document.owner_id, document.public, frozenset(group_ids(session, document.id))
    )


def checked_hits(
    database: Database, principal: Principal, raw: Sequence[tuple[int, int, float]]
) -> dict[tuple[int, int], Hit]:
    """The vector search's candidates that the database says the principal may see,
    with their text: memberships, documents, shares and chunks read afresh, in four
    queries whatever the number of candidates."""
    if not raw:
        return {}
    document_ids = sorted({d for d, _, _ in raw})
    with database.session() as session:
        mine = groups_of(session, principal.user_id)  # afresh: a revocation counts now
        documents = {
            row.Document.id: row
            for row in session.execute(
                select(Document, User.name)
                .join(User, User.id == Document.owner_id)
                .where(Document.id.in_(document_ids), Document.ready)  # not mid-upload
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
            (document_id, index): (text, heading, page, suspect)
            for document_id, index, text, heading, page, suspect in session.execute(
                select(
                    DocumentChunk.document_id,
                    DocumentChunk.index,
                    DocumentChunk.text,
                    DocumentChunk.heading,
                    DocumentChunk.page,
                    DocumentChunk.suspect,
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
        access = DocumentAccess(
            document.owner_id, document.public, frozenset(shares.get(document_id, ()))
        )
        allowed = access.allowed(principal.user_id, mine)
        if allowed is None:
            continue  # defence in depth: the database has the last word
        why: str = allowed.reason
        if allowed.reason == "group":
            why = "group " + ", ".join(sorted(group_names[g] for g in allowed.groups))
        text, heading, page, suspect = row
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
            suspect=suspect,
        )
    return found


__all__ = [
    "DELETED_DOCUMENT",
    "access_of",
    "allowed_as",
    "checked_hits",
    "group_ids",
    "queue_sync",
    "scrub_quotes",
    "shareable_group",
]
