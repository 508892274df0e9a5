"""Idempotent inbox: the handler's writes and the record of its event commit in one transaction.

`Inbox.handler(fn)` turns `async fn(event, delivery, session)` into the consumer's handler. For each
delivery it opens a transaction, inserts the inbox row `(consumer, event_id)` FIRST, then calls `fn`
with the session, then commits; the consumer acks after that.

- The row is the first write, and its primary key makes a second insert of the same event conflict:
  a redelivery of a handled event (after a crash between commit and ack, or a re-publish after the
  stream's duplicate window) finds the row, skips `fn`, and is acked. On PostgreSQL a concurrent
  delivery of the same event waits on the uncommitted row and then sees it (`ON CONFLICT DO NOTHING`);
  on SQLite the transaction holds the write lock from its start (`BEGIN IMMEDIATE`).
- If `fn` (or the commit) raises, the transaction rolls back, inbox row included, and the consumer
  naks as before (dead-lettering on the last delivery); the redelivery runs `fn` again.
- A crash before the commit loses the transaction; one after it leaves a row that answers the
  redelivery. So each event's effects apply exactly once, across restarts.

Rows are needed as long as the same event can arrive again: the stream's duplicate window plus the
consumer's redelivery span (`minimum_retention`). `cleanup()` deletes older rows.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine, delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from jsb_infra.core.outputs import BridgeOutputs, ConsumerOutputs
from jsb_infra.runtime.consumer import Delivery, Handler, intended_redelivery_ns
from jsb_infra.runtime.envelope import Event
from jsb_infra.runtime.storage import inbox_table, utc_now

TransactionalHandler = Callable[[Event, Delivery, Session], Awaitable[None]]
StepHook = Callable[[str, int], None]

DEFAULT_DUPLICATE_WINDOW_NS = 120 * 1_000_000_000  # nats-server's default, and the spec's


_locks: weakref.WeakKeyDictionary[Engine, asyncio.Lock] = weakref.WeakKeyDictionary()


def _transaction_lock(engine: Engine) -> asyncio.Lock:
    """One inbox transaction at a time per engine in this process.

    The session is synchronous and `fn` awaits inside its transaction. Were two handlers of one event
    loop in transactions at once, the second one's statement could wait on the first one's row lock
    (the same event redelivered to a second consumer, or the same business row) while blocking the
    loop the first one needs to commit: a deadlock. Consumers answer one message at a time anyway.
    """
    lock = _locks.get(engine)
    if lock is None:
        lock = _locks[engine] = asyncio.Lock()
    return lock


def redelivery_span_ns(consumer: ConsumerOutputs) -> int:
    """The longest time from a message's first delivery to its last: each of the `max_deliver - 1`
    failed deliveries may hold it for the ack wait and then wait for the redelivery."""
    return (
        sum(
            consumer.ack_wait_ns + intended_redelivery_ns(consumer, n) for n in range(1, consumer.max_deliver)
        )
        + consumer.ack_wait_ns
    )


def minimum_retention(consumer: ConsumerOutputs, duplicate_window_ns: int) -> timedelta:
    """How long an inbox row must be kept: duplicate window + redelivery span."""
    return timedelta(microseconds=(duplicate_window_ns + redelivery_span_ns(consumer)) // 1000)


@dataclass
class InboxStats:
    handled: int = 0  # fn ran and its transaction committed
    duplicates: int = 0  # already in the inbox: acked without running fn
    failed: int = 0  # fn or the commit raised: rolled back, the consumer naks
    handler_seconds: float = 0.0  # time spent in fn plus commit, handled ones only


class Inbox:
    """The inbox of one app's durable, in `engine`'s database (tables from `create_schema`)."""

    def __init__(
        self,
        engine: Engine,
        bridge: BridgeOutputs,
        *,
        duplicate_window_ns: int = DEFAULT_DUPLICATE_WINDOW_NS,
        on_step: StepHook | None = None,
    ):
        if duplicate_window_ns <= 0:
            raise ValueError(f"duplicate_window_ns: must be positive, got {duplicate_window_ns}")
        self.engine = engine
        self.bridge = bridge
        self.consumer_key = f"{bridge.stream}/{bridge.durable}"
        self.duplicate_window_ns = duplicate_window_ns
        self.retention = minimum_retention(bridge.consumer, duplicate_window_ns)
        self.on_step = on_step
        self.stats = InboxStats()
        dialect = engine.dialect.name
        if dialect == "postgresql":
            self._insert = pg_insert(inbox_table).on_conflict_do_nothing().returning(inbox_table.c.event_id)
        elif dialect == "sqlite":
            self._insert = (
                sqlite_insert(inbox_table).on_conflict_do_nothing().returning(inbox_table.c.event_id)
            )
        else:
            raise ValueError(f"engine: the inbox supports sqlite and postgresql, got {dialect!r}")

    def _step(self, name: str) -> None:
        if self.on_step is not None:
            self.on_step(name, self.stats.handled)

    def handler(self, fn: TransactionalHandler) -> Handler:
        """The consumer handler that runs `fn` at most once per event (see the module doc)."""
        insert_row = self._insert
        consumer_key = self.consumer_key
        stats = self.stats

        async def handle(event: Event, delivery: Delivery) -> None:
            async with _transaction_lock(self.engine):
                await run(event, delivery)

        async def run(event: Event, delivery: Delivery) -> None:
            started = time.perf_counter()
            try:
                with Session(self.engine) as session, session.begin():
                    inserted = session.execute(
                        insert_row,
                        {
                            "consumer": consumer_key,
                            "event_id": event.event_id,
                            "stream_sequence": delivery.stream_sequence,
                            "received_at": utc_now(),
                        },
                    ).first()
                    if inserted is None:
                        stats.duplicates += 1
                        return  # commits an empty transaction
                    await fn(event, delivery, session)
                    self._step("before_commit")
            except BaseException:
                stats.failed += 1
                raise
            stats.handled += 1
            stats.handler_seconds += time.perf_counter() - started
            self._step("committed")

        return handle

    def cleanup(self, keep: timedelta | None = None) -> int:
        """Delete this consumer's rows older than `keep` (default and minimum: `self.retention`)."""
        if keep is not None and keep < self.retention:
            raise ValueError(
                f"keep: must be at least the duplicate window plus the redelivery span ({self.retention}), "
                f"got {keep}"
            )
        cutoff = utc_now() - (keep or self.retention)
        t = inbox_table
        with self.engine.begin() as conn:
            result = conn.execute(
                delete(t).where(t.c.consumer == self.consumer_key, t.c.received_at < cutoff)
            )
            return int(result.rowcount)
