"""A concurrency limit every app process shares: the rows of `call_slots`.

With `PARLEY_LIMITER_STORE=database`, a provider call holds one of
`PARLEY_MAX_CONCURRENT_CALLS` rows for as long as it streams, whichever process it runs
in. A row is free when it has no holder or its holder's lease ran out: a process renews
the leases of the slots it holds every few seconds, so one that dies mid-answer frees
its slots within `lease_s`, and no slot leaks. Taking one is a short transaction
(`FOR UPDATE SKIP LOCKED` on PostgreSQL, so processes do not queue on each other's
row locks; `BEGIN IMMEDIATE` on SQLite).

Each process keeps its own first-in, first-out line in front (`ConcurrencyGate`): a call
that has its place there polls for a shared slot every `poll_s`, for at most `wait_s`
(then `Overloaded`, a sentence and a Retry). Each taken slot carries its call's own token,
so a call whose lease lapsed can never free a slot another call has taken since.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from parley.core.errors import StorageError
from parley.store.db import Database
from parley.store.models import CallSlot
from parley.store.shared import PROCESS_ID

log = logging.getLogger(__name__)


class SharedSlots:
    def __init__(
        self,
        database: Database,
        slots: int,
        *,
        holder: str = PROCESS_ID,
        lease_s: float = 30.0,
        poll_s: float = 0.05,
        wait_s: float = 120.0,
    ) -> None:
        self.wait_s = wait_s
        self._db = database
        self.slots = slots
        self._holder = holder
        self._lease_s = lease_s
        self.poll_s = poll_s
        self._held: dict[int, str] = {}  # slot -> the token of the call holding it
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None

    def try_take(self) -> int | None:
        """A free slot's number, now held by this call; None when all are taken (or the
        database did not answer: the caller polls again)."""
        now = time.time()
        token = f"{self._holder}:{secrets.token_hex(4)}"
        try:
            with self._db.session(write_lock=True) as session:
                self._ensure_rows(session)
                row = session.scalar(
                    select(CallSlot)
                    .where(
                        CallSlot.slot < self.slots,
                        or_(CallSlot.holder.is_(None), CallSlot.expires_at < now),
                    )
                    .order_by(CallSlot.slot)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                )
                if row is None:
                    return None
                if row.holder is not None:
                    log.warning("Call slot %d was held by %s, which stopped.", row.slot, row.holder)
                row.holder = token
                row.expires_at = now + self._lease_s
                taken = row.slot
        except StorageError:
            return None  # a busy database: the caller polls again
        with self._lock:
            self._held[taken] = token
            if self._renewer is None or not self._renewer.is_alive():
                self._renewer = threading.Thread(
                    target=self._renew, name="parley-call-slots", daemon=True
                )
                self._renewer.start()
        return taken

    def give_back(self, slot: int) -> None:
        with self._lock:
            token = self._held.pop(slot, None)
        if token is None:
            return
        for attempt in range(5):
            try:
                with self._db.session(write_lock=True) as session:
                    session.execute(  # only if still this call's: a lapsed lease may
                        update(CallSlot)  # have gone to another call since
                        .where(CallSlot.slot == slot, CallSlot.holder == token)
                        .values(holder=None)
                    )
                return
            except StorageError:
                time.sleep(0.05 * (attempt + 1))
        log.warning("Call slot %d could not be given back; its lease frees it.", slot)

    @property
    def held(self) -> int:
        with self._lock:
            return len(self._held)

    def _ensure_rows(self, session: Session) -> None:
        have = session.scalar(select(CallSlot.slot).order_by(CallSlot.slot.desc()).limit(1))
        start = -1 if have is None else have
        for slot in range(start + 1, self.slots):
            session.add(CallSlot(slot=slot, holder=None, expires_at=0.0))
        if start + 1 < self.slots:
            session.flush()

    def _renew(self) -> None:
        """Every third of a lease, while this process holds any slot: extend their leases."""
        while True:
            time.sleep(self._lease_s / 3)
            with self._lock:
                held = dict(self._held)
            if not held:
                with self._lock:
                    if not self._held:
                        self._renewer = None
                        return
                continue
            try:
                with self._db.session(write_lock=True) as session:
                    session.execute(
                        update(CallSlot)
                        .where(CallSlot.holder.in_(list(held.values())))
                        .values(expires_at=time.time() + self._lease_s)
                    )
            except StorageError:
                log.warning("Could not renew the leases of call slots %s; trying again.", held)


__all__ = ["SharedSlots"]
