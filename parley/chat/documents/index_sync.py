"""The document index follows the database: the outbox of document changes.

Every change to who may see a document (upload, share, unshare, delete) writes a
`document_sync` row in its own transaction, naming the scopes its vectors may be in.
`IndexSync` applies such rows to the vector index — moving, re-tagging or dropping the
document's vectors, and purging a deleted document's vectors from the index's files —
and removes a row only once that worked. What fails stays for the next `sweep` (at
start-up). The database is always right; the index catches up.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select

from parley.chat.documents.access import access_of
from parley.retrieval.document_index import LEGACY_COLLECTION, DocumentAccess, DocumentIndex
from parley.store.db import Database
from parley.store.models import Document, DocumentSync

log = logging.getLogger(__name__)


class IndexSync:
    def __init__(self, database: Database, index: DocumentIndex) -> None:
        self._db = database
        self._index = index

    def sweep(self) -> int:
        """Bring pending documents' vectors in line with the database (after a vector
        store failure), and purge every scope of a deleted one from the index's files (an
        earlier try may have dropped its rows and failed, or died, before the purge);
        vectors kept the older way (one shared collection) are moved into scopes first.
        How many documents are still pending afterwards."""
        moved: list[str] = []
        try:
            if self._index.migrate_legacy(self._access_of):
                moved = [LEGACY_COLLECTION]  # dropped, with rows of deleted documents in it
        except Exception:
            log.exception("Moving document vectors into scoped collections failed; will retry")
        with self._db.session() as session:
            pending = session.scalars(select(DocumentSync.document_id)).all()
        return self._apply(pending, sweeping=True, purge=moved)

    def _access_of(self, document_id: int) -> DocumentAccess | None:
        with self._db.session() as session:
            document = session.get(Document, document_id)
            return access_of(session, document) if document is not None else None

    def sync(self, document_id: int) -> bool:
        """Apply a pending outbox row: True once the index matches the database (and a
        deleted document's vectors are purged from the index's files)."""
        return self._apply([document_id], sweeping=False) == 0

    def _apply(
        self, document_ids: Sequence[int], *, sweeping: bool, purge: Sequence[str] = ()
    ) -> int:
        """Apply pending outbox rows; how many stay pending. The scopes a deleted
        document's rows were dropped from (a sweep: all its scopes) are purged once for
        the batch, before its outbox row goes; if the purge fails, the row stays."""
        failed = 0
        done: list[tuple[int, datetime]] = []
        erased: list[tuple[int, datetime]] = []
        scopes = set(purge)
        for document_id in document_ids:
            with self._db.session() as session:
                row = session.get(DocumentSync, document_id)
                if row is None:
                    continue
                stale, queued = list(row.scopes), row.requested_at
                document = session.get(Document, document_id)
                access = access_of(session, document) if document is not None else None
            try:
                dropped = self._index.sync(document_id, access, stale=stale)
            except Exception:
                log.exception("Updating the vectors of document %s failed; will retry", document_id)
                self._count_attempt(document_id)
                failed += 1
                continue
            if access is None and (dropped or sweeping):
                scopes.update(stale if sweeping else dropped)
                erased.append((document_id, queued))
            else:
                done.append((document_id, queued))
        if scopes:
            try:
                self._index.purge(sorted(scopes))
            except Exception:
                log.exception("Purging deleted documents' vectors failed; will retry")
                for document_id, _ in erased:
                    self._count_attempt(document_id)
                failed += len(erased)
                erased = []
        with self._db.session() as session:
            for document_id, queued in [*done, *erased]:
                session.execute(  # a change queued meanwhile keeps its row
                    delete(DocumentSync).where(
                        DocumentSync.document_id == document_id,
                        DocumentSync.requested_at == queued,
                    )
                )
        return failed

    def _count_attempt(self, document_id: int) -> None:
        with self._db.session() as session:
            pending = session.get(DocumentSync, document_id)
            if pending is not None:
                pending.attempts += 1


__all__ = ["IndexSync"]
