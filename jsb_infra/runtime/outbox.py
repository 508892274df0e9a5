"""Transactional outbox: record events in the app's own transaction; a relay publishes them.

`Outbox.record(session, event)` inserts a row into `jsb_outbox` inside the caller's transaction, so the
event exists exactly when the business change it describes committed. `OutboxRelay` publishes pending
rows in `id` order through the client's pipelined `publish_batch`, with the `Nats-Msg-Id` of the
`event_id`, and marks a row sent only after its PubAck. A crash at any point leaves rows pending that
may already be stored in the stream; publishing them again is absorbed by the stream's duplicate
window (the PubAck says `duplicate`), so each event is stored once as long as a relay restarts within
that window.

Two relays on one database:
- PostgreSQL: each batch is claimed with `SELECT ... FOR UPDATE SKIP LOCKED` in a transaction that stays
  open until the batch is marked sent, so the other relay skips those rows and takes the next ones.
  A crashed relay's locks end with its connection; the rows become claimable again.
- SQLite has no row locks: a lease row (`jsb_outbox_lease`, one per subject) names the single relay
  allowed to publish; it is renewed while the relay works and taken over by another relay once it has
  expired (`lease_ttl`, default 15 s, to be kept well below the duplicate window).

Order: one relay publishes rows in `id` order (each batch pipelined, in order). A row whose publish
failed stays pending and goes out in a later batch, after rows recorded later. With two PostgreSQL relays,
batches interleave.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from nats.js.api import PubAck
from sqlalchemy import Connection, Engine, and_, delete, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from jsb_infra.runtime.envelope import Event, encode, new_event
from jsb_infra.runtime.storage import (
    is_postgresql,
    outbox_table,
    relay_lease_table,
    utc_now,
)

if TYPE_CHECKING:
    from jsb_infra.core.outputs import BridgeOutputs
    from jsb_infra.runtime.client import BridgeClient

log = logging.getLogger("jsb_infra.runtime")

StepHook = Callable[[str, int], None]


class Outbox:
    """Records the events of one bridge (its publish subject) in the caller's transaction."""

    def __init__(self, bridge: BridgeOutputs):
        self.bridge = bridge
        self.subject = bridge.publish_subject

    def event(
        self, event_type: str, resource_type: str, resource_id: str | int, payload: Any, **fields: Any
    ) -> Event:
        """An envelope produced by this bridge's app (`new_event`'s other fields by keyword)."""
        return new_event(event_type, resource_type, resource_id, payload, producer=self.bridge.app, **fields)

    def record(self, session: Session | Connection, event: Event) -> None:
        """Add `event` to the outbox in the caller's transaction (it commits or rolls back with it)."""
        self.record_many(session, [event])

    def record_many(self, session: Session | Connection, events: Iterable[Event]) -> None:
        """Add several events in the caller's transaction, in this order."""
        now = utc_now()
        rows = [
            {
                "event_id": e.event_id,
                "subject": self.subject,
                "body": encode(e),
                "created_at": now,
                "attempts": 0,
            }
            for e in events
        ]
        if rows:
            session.execute(insert(outbox_table), rows)


@dataclass
class RelayStats:
    published: int = 0
    duplicates: int = 0  # PubAcks that said the stream already had the event (a re-publish after a crash)
    failed: int = 0
    batches: int = 0


@dataclass
class _Claim:
    """Rows taken for one batch; `connection` holds their row locks (PostgreSQL) until finished."""

    rows: list[tuple[int, bytes]]  # (id, body), in id order
    connection: Connection | None


class OutboxRelay:
    """Publishes one bridge's pending outbox rows; `await run()` until `await stop()`.

    DB calls run on one worker thread of the relay's own (a SQLite write may wait for the lock without
    stalling the event loop, and a PostgreSQL claim transaction stays on one thread). `on_step(name,
    rows)` is called at `claimed` (a batch read, nothing sent) and `published` (its PubAcks in, not
    marked): the crash tests kill the process there.
    """

    def __init__(
        self,
        client: BridgeClient,
        engine: Engine,
        *,
        batch: int = 500,
        max_in_flight: int = 512,
        poll_interval: float = 0.2,
        lease_ttl: float = 15.0,
        error_backoff: float = 1.0,
        max_error_backoff: float = 5.0,
        holder: str | None = None,
        on_step: StepHook | None = None,
    ):
        if batch < 1:
            raise ValueError(f"batch: must be at least 1, got {batch}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval: must be > 0 seconds, got {poll_interval}")
        if lease_ttl <= 0:
            raise ValueError(f"lease_ttl: must be > 0 seconds, got {lease_ttl}")
        self.client = client
        self.engine = engine
        self.subject = client.bridge.publish_subject
        self.batch = batch
        self.max_in_flight = max_in_flight
        self.poll_interval = poll_interval
        self.lease_ttl = lease_ttl
        self.error_backoff = error_backoff
        self.max_error_backoff = max_error_backoff
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.on_step = on_step
        self.stats = RelayStats()
        self._row_locks = is_postgresql(engine)
        self._lease_until = 0.0
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="jsb-relay")
        self._wake = asyncio.Event()
        self._stopping = False
        self._finished = asyncio.Event()
        self._running = False

    # -- the loop ---------------------------------------------------------------------------------
    async def run(self) -> RelayStats:
        """Publish until `stop()`: batches back to back while rows are pending, else poll (or `wake()`).

        Pipelined: while a batch is being published, the next one is claimed (rows after it) and the
        previous one is marked sent, both on the relay's DB thread. A failure anywhere drops the claim
        made ahead and reads from the first pending row again after a pause.
        """
        self._running = True
        self._finished.clear()
        pause = self.error_backoff
        ahead: asyncio.Future[_Claim | None] | None = None
        marking: asyncio.Future[None] | None = None
        held: _Claim | None = None  # claimed, not yet handed to a mark: released if anything fails
        try:
            while not self._stopping:
                try:
                    held = await ahead if ahead is not None else await self._db(self._claim, None)
                    ahead = None
                    if held is None or not held.rows:
                        held = None
                        await self._sleep(self.poll_interval)
                        continue
                    # PostgreSQL: SKIP LOCKED already passes over this batch (its transaction is open), and
                    # a row whose id was taken before this batch's but that committed later is still
                    # found. SQLite: writers are serialized, so ids come in commit order; read past it.
                    after = None if self._row_locks else held.rows[-1][0]
                    ahead = asyncio.ensure_future(self._db(self._claim, after))
                    sent, failures, results = await self._publish(held)
                    if marking is not None:
                        previous, marking = marking, None
                        await previous
                    marking = asyncio.ensure_future(self._db(self._finish, held, sent, failures))
                    held = None
                    self._count(sent, failures, results)
                    if not failures:
                        pause = self.error_backoff
                        continue
                    failure: BaseException | str = f"{len(failures)} row(s) not published"
                except Exception as err:  # the database or the connection is down: try again later
                    failure = err
                await self._let_go(ahead, held, marking)
                ahead, held, marking = None, None, None
                log.error("outbox relay %s: %s; retrying in %.1fs", self.subject, failure, pause)
                await self._sleep(pause)
                pause = min(pause * 2, self.max_error_backoff)
        finally:
            await self._let_go(ahead, held, marking)
            self._running = False
            self._finished.set()
        return self.stats

    async def _let_go(
        self,
        ahead: asyncio.Future[_Claim | None] | None,
        held: _Claim | None,
        marking: asyncio.Future[None] | None,
    ) -> None:
        """After a failure or at the end: give back the claims not marked, let the mark under way end."""
        await self._discard(ahead)
        if held is not None:
            with contextlib.suppress(Exception):
                await self._release(held)
        if marking is not None:
            try:
                await marking
            except Exception as err:  # the rows stay pending; they are published again (duplicates)
                log.error("outbox relay %s: marking a batch sent failed: %r", self.subject, err)

    async def _discard(self, ahead: asyncio.Future[_Claim | None] | None) -> None:
        """Give back a claim made ahead (PostgreSQL: roll back, releasing its row locks)."""
        if ahead is None:
            return
        with contextlib.suppress(Exception):
            claim = await ahead
            if claim is not None:
                await self._release(claim)

    async def _release(self, claim: _Claim) -> None:
        """PostgreSQL: roll back the claim's transaction; its rows are pending and claimable again."""
        if claim.connection is not None:
            await self._db(claim.connection.close)

    async def stop(self) -> None:
        """Stop after the batch in hand is marked; returns when `run()` has ended."""
        self._stopping = True
        self._wake.set()
        if self._running:
            await self._finished.wait()
        if not self._row_locks and self._lease_until:
            try:
                await self._db(self._release_lease)
            except Exception as err:  # it expires by itself
                log.warning("outbox relay %s: could not release the lease: %r", self.subject, err)
        self._executor.shutdown(wait=True)

    def wake(self) -> None:
        """Look for pending rows now (call after committing a transaction that recorded events)."""
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self._wake.clear()

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _step(self, name: str, count: int) -> None:
        if self.on_step is not None:
            self.on_step(name, count)

    async def relay_once(self) -> tuple[int, int]:
        """One batch, start to end: claim pending rows, publish them, mark the acknowledged ones sent.

        Returns (published, failed); (0, 0) when nothing was pending or another relay holds the lease.
        """
        claim: _Claim | None = await self._db(self._claim, None)
        if claim is None or not claim.rows:
            return 0, 0
        try:
            sent, failures, results = await self._publish(claim)
        except BaseException:
            await self._release(claim)
            raise
        await self._db(self._finish, claim, sent, failures)
        self._count(sent, failures, results)
        return len(sent), len(failures)

    async def _publish(self, claim: _Claim) -> tuple[list[int], list[tuple[int, str]], list[Any]]:
        """Publish a claimed batch; returns (sent row ids, (row id, error) of the others, results)."""
        if not self.client.nc.is_connected:
            # publish_batch would spend its publish budget waiting for the connection while holding
            # the claim: while the client reconnects, give the claim back (another relay may take it)
            # and wait instead.
            raise ConnectionError(f"{self.client.name} is not connected (reconnecting); waiting")
        self._step("claimed", len(claim.rows))
        loads = json.loads
        events = [Event(**loads(body)) for _, body in claim.rows]
        results = await self.client.publish_batch(events, max_in_flight=self.max_in_flight)
        self._step("published", len(claim.rows))
        sent: list[int] = []
        failures: list[tuple[int, str]] = []
        for row, result in zip(claim.rows, results, strict=True):
            if isinstance(result, PubAck):
                sent.append(row[0])
            else:
                failures.append((row[0], f"{type(result).__name__}: {result}"))
        return sent, failures, results

    def _count(self, sent: list[int], failures: list[tuple[int, str]], results: list[Any]) -> None:
        self.stats.batches += 1
        self.stats.published += len(sent)
        self.stats.duplicates += sum(1 for r in results if isinstance(r, PubAck) and r.duplicate)
        self.stats.failed += len(failures)
        for row_id, error in failures[:3]:
            log.error("outbox relay %s: row %d not published: %s", self.subject, row_id, error)

    # -- database work (on the relay's thread) ----------------------------------------------------
    def _pending_query(self, after_id: int | None) -> Any:
        t = outbox_table
        query = select(t.c.id, t.c.body).where(t.c.subject == self.subject, t.c.sent_at.is_(None))
        if after_id is not None:
            query = query.where(t.c.id > after_id)
        return query.order_by(t.c.id).limit(self.batch)

    def _claim(self, after_id: int | None) -> _Claim | None:
        """Pending rows (after `after_id`: those past a batch still in hand), locked on PostgreSQL."""
        if self._row_locks:
            conn = self.engine.connect()
            try:
                conn.begin()
                rows = conn.execute(self._pending_query(after_id).with_for_update(skip_locked=True)).all()
            except BaseException:
                conn.close()
                raise
            if not rows:
                conn.close()
                return _Claim([], None)
            return _Claim([(r[0], r[1]) for r in rows], conn)
        if not self._hold_lease():
            return None
        with self.engine.connect() as conn:
            rows = conn.execute(self._pending_query(after_id)).all()
            conn.rollback()
        return _Claim([(r[0], r[1]) for r in rows], None)

    def _finish(self, claim: _Claim, sent: Sequence[int], failures: Sequence[tuple[int, str]]) -> None:
        if claim.connection is not None:
            conn = claim.connection
            try:
                self._mark(conn, sent, failures)
                conn.commit()
            finally:
                conn.close()
            return
        with self.engine.begin() as conn:
            self._mark(conn, sent, failures)

    @staticmethod
    def _mark(conn: Connection, sent: Sequence[int], failures: Sequence[tuple[int, str]]) -> None:
        t = outbox_table
        if sent and sent[-1] - sent[0] == len(sent) - 1:
            # Contiguous ids (the usual batch): a range, no 500 bind parameters. Safe because every id
            # in the range is one of ours (ids are unique), so no other row is marked by it.
            conn.execute(update(t).where(t.c.id.between(sent[0], sent[-1])).values(sent_at=utc_now()))
        elif sent:
            conn.execute(update(t).where(t.c.id.in_(sent)).values(sent_at=utc_now()))
        for row_id, error in failures:
            conn.execute(
                update(t).where(t.c.id == row_id).values(attempts=t.c.attempts + 1, last_error=error[:2000])
            )

    def _hold_lease(self) -> bool:
        """SQLite: take or renew this subject's lease; False while another relay's lease runs."""
        now_mono = time.monotonic()
        if now_mono < self._lease_until - self.lease_ttl * 2 / 3:
            return True  # renewed less than a third of the ttl ago
        lease = relay_lease_table
        now = utc_now()
        expires = now + timedelta(seconds=self.lease_ttl)
        with self.engine.begin() as conn:
            conn.execute(
                _insert_ignore(conn, lease).values(
                    subject=self.subject, holder=self.holder, expires_at=expires
                )
            )
            taken = conn.execute(
                update(lease)
                .where(
                    lease.c.subject == self.subject,
                    or_(lease.c.holder == self.holder, lease.c.expires_at < now),
                )
                .values(holder=self.holder, expires_at=expires)
            ).rowcount
        if taken:
            self._lease_until = now_mono + self.lease_ttl
            return True
        self._lease_until = 0.0
        return False

    def _release_lease(self) -> None:
        lease = relay_lease_table
        with self.engine.begin() as conn:
            conn.execute(
                update(lease)
                .where(lease.c.subject == self.subject, lease.c.holder == self.holder)
                .values(expires_at=utc_now())
            )
        self._lease_until = 0.0

    # -- inspection -------------------------------------------------------------------------------
    def backlog(self) -> int:
        """Rows of this subject not yet sent (a DB query; run it off the hot path)."""
        return pending_count(self.engine, self.subject)


def pending_count(engine: Engine, subject: str | None = None) -> int:
    """How many outbox rows (of `subject`, or all) wait for their PubAck."""
    t = outbox_table
    condition: ColumnElement[bool] = t.c.sent_at.is_(None)
    if subject is not None:
        condition = and_(condition, t.c.subject == subject)
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(t).where(condition)).scalar_one())


def purge_sent(engine: Engine, older_than: timedelta) -> int:
    """Delete rows sent more than `older_than` ago; returns how many. A scan of the table (`sent_at`
    has no index, which would cost every mark): run it from a periodic job."""
    t = outbox_table
    with engine.begin() as conn:
        result = conn.execute(delete(t).where(t.c.sent_at.is_not(None), t.c.sent_at < utc_now() - older_than))
        return int(result.rowcount)


def _insert_ignore(conn: Connection, table: Any) -> Any:
    """INSERT that does nothing when the primary key exists (SQLite and PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        return pg_insert(table).on_conflict_do_nothing()
    return sqlite_insert(table).on_conflict_do_nothing()
