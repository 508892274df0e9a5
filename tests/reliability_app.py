"""A child-process app for the crash tests: it SIGKILLs itself at a chosen step.

    python tests/reliability_app.py produce --db URL --bridge FILE --total N [--crash STEP:K]
    python tests/reliability_app.py consume --db URL --bridge FILE --total N [--crash STEP:K]

`produce` records orders 0..N-1 (a business row and an outbox row per order, 100 per transaction,
continuing after the highest order already in the database) while an `OutboxRelay` publishes; it
exits once nothing is pending. Steps: `recorded` (a record transaction committed, before any publish
of it), `claimed` (a relay batch read, nothing published), `mid_batch` (the first half of a relay batch
PubAck'd, the rest not sent), `published` (a whole batch PubAck'd, not marked sent).

`consume` handles events through an `Inbox`: the handler inserts one `effects` row per call (no unique
key, so a double application would show), and exits once `effects` holds N rows (with `--until-term`:
on SIGTERM, after a graceful stop). Steps:
`before_commit` (handler done, transaction not committed), `committed` (committed, not acked).

K counts occurrences of the step in this run. The server connection is open (no auth): what is under
test here is the database side, not the permissions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from typing import Any

from reliability_support import business, effects, orders
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jsb_infra.runtime import BridgeClient, ConsumerLoop, Delivery, Event, load_bridge
from jsb_infra.runtime.inbox import Inbox
from jsb_infra.runtime.outbox import Outbox, OutboxRelay, pending_count
from jsb_infra.runtime.storage import create_schema, engine_for_url

RECORD_CHUNK = 100


class Crash:
    """Kills this process at the K-th occurrence of a step."""

    def __init__(self, spec: str | None):
        self.step, self.at = (spec.split(":")[0], int(spec.split(":")[1])) if spec else (None, 0)
        self.seen = 0

    def hit(self, step: str) -> bool:
        if step != self.step:
            return False
        self.seen += 1
        return self.seen == self.at

    def __call__(self, step: str, _count: int = 0) -> None:
        if self.hit(step):
            os.kill(os.getpid(), signal.SIGKILL)


class PlainLastAnswers(ConsumerLoop):
    """The consumer as it was: a last delivery answered with a plain ack, nothing kept to send again."""

    async def _answer_last_delivery(self, msg: Any, kind: str, payload: bytes) -> bool:
        await (msg.ack() if kind == "ack" else msg.term())
        return True


class HalfBatchClient(BridgeClient):
    """Publishes the first half of the armed batch, then dies before the rest is sent."""

    crash: Crash

    async def publish_batch(self, events: Any, max_in_flight: int = 512) -> Any:
        events = list(events)
        if self.crash.hit("mid_batch"):
            await super().publish_batch(events[: len(events) // 2], max_in_flight=max_in_flight)
            os.kill(os.getpid(), signal.SIGKILL)
        return await super().publish_batch(events, max_in_flight=max_in_flight)


async def produce(args: argparse.Namespace, crash: Crash) -> None:
    engine = engine_for_url(args.db)
    create_schema(engine)
    business.create_all(engine)
    bridge = load_bridge(args.bridge)
    outbox = Outbox(bridge)
    client = HalfBatchClient(bridge, publish_timeout=2.0)
    client.crash = crash
    await client.connect()
    # A killed relay's lease blocks its successor for lease_ttl (SQLite): short here, to keep the test short.
    relay = OutboxRelay(client, engine, batch=200, poll_interval=0.02, lease_ttl=1.0, on_step=crash)
    relay_task = asyncio.create_task(relay.run())
    with engine.connect() as conn:
        highest = conn.execute(select(func.max(orders.c.order_no))).scalar()
    next_order = 0 if highest is None else highest + 1
    while next_order < args.total:
        chunk = range(next_order, min(next_order + RECORD_CHUNK, args.total))
        with Session(engine) as session, session.begin():
            events = [outbox.event("order.created", "order", n, {"order_no": n}) for n in chunk]
            session.execute(
                orders.insert(),
                [{"order_no": n, "event_id": e.event_id} for n, e in zip(chunk, events, strict=True)],
            )
            outbox.record_many(session, events)
        crash("recorded")
        relay.wake()
        next_order = chunk[-1] + 1
        await asyncio.sleep(0.005)  # let the relay work alongside, as in an app
    while await asyncio.to_thread(pending_count, engine, bridge.publish_subject):
        await asyncio.sleep(0.02)
    await relay.stop()
    await relay_task
    await client.close()


async def consume(args: argparse.Namespace, crash: Crash) -> None:
    engine = engine_for_url(args.db)
    create_schema(engine)
    business.create_all(engine)
    bridge = load_bridge(args.bridge)
    inbox = Inbox(engine, bridge, on_step=crash)

    async def apply(event: Event, delivery: Delivery, session: Session) -> None:
        session.execute(effects.insert().values(event_id=event.event_id, order_no=event.payload["order_no"]))

    client = await BridgeClient(bridge, reconnect_time_wait=0.2).connect()
    loop = PlainLastAnswers if args.plain_last_answers else ConsumerLoop
    consumer = loop(client, inbox.handler(apply), batch=50, fetch_timeout=0.2)
    task = asyncio.create_task(consumer.run())

    def done() -> bool:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(effects)).scalar_one()) >= args.total

    if args.until_term:  # the database may be down: run until told to stop
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
    while not args.until_term and not await asyncio.to_thread(done):
        await asyncio.sleep(0.05)
    await consumer.stop()
    await task
    await client.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["produce", "consume"])
    parser.add_argument("--db", required=True)
    parser.add_argument("--bridge", required=True)
    parser.add_argument("--total", type=int, required=True)
    parser.add_argument("--crash")
    parser.add_argument(
        "--until-term", action="store_true", help="consume until SIGTERM, not until N effects"
    )
    parser.add_argument(
        "--plain-last-answers", action="store_true", help="the control: the consumer as it was"
    )
    args = parser.parse_args()
    crash = Crash(args.crash)
    asyncio.run(produce(args, crash) if args.mode == "produce" else consume(args, crash))


if __name__ == "__main__":
    main()
