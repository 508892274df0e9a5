"""The transactional outbox against a real nats-server, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from jsb_infra.nats_admin import JetStreamAdmin
from jsb_infra.runtime import BridgeClient
from jsb_infra.runtime.outbox import Outbox, OutboxRelay, pending_count, purge_sent
from jsb_infra.runtime.storage import create_schema, engine_for_url, outbox_table, utc_now


async def stream_bodies(pp, subject: str) -> list[bytes]:
    """Every message on `subject`, in stream order (read by the admin, without a consumer)."""
    nc = await pp.admin()
    try:
        return [m.data async for m in JetStreamAdmin(nc).messages(pp.pair.stream, subject)]
    finally:
        await nc.close()


@pytest.fixture
def engine(database_url):
    engine = engine_for_url(database_url)
    create_schema(engine)
    yield engine
    engine.dispose()


async def test_only_committed_events_are_published_in_order(open_pair, engine):
    bridge = open_pair.bridges["orders"]
    outbox = Outbox(bridge)
    kept = [outbox.event("order.created", "order", n, {"n": n}) for n in range(30)]
    with Session(engine) as session, session.begin():
        outbox.record_many(session, kept[:10])
    with Session(engine) as session:  # rolled back: as if the business change failed
        outbox.record(session, outbox.event("order.created", "order", "lost", {}))
        session.rollback()
    with Session(engine) as session, session.begin():
        outbox.record_many(session, kept[10:])
    async with BridgeClient(bridge) as client:
        relay = OutboxRelay(client, engine, batch=7)
        published = 0
        while True:
            done, failed = await relay.relay_once()
            assert failed == 0
            if not done:
                break
            published += done
        await relay.stop()
    assert published == 30 and relay.stats.batches == 5
    assert pending_count(engine, bridge.publish_subject) == 0
    bodies = await stream_bodies(open_pair, bridge.publish_subject)
    assert [json.loads(b)["event_id"] for b in bodies] == [e.event_id for e in kept]


async def test_two_relays_never_publish_the_same_row(open_pair, engine):
    bridge = open_pair.bridges["orders"]
    outbox = Outbox(bridge)
    total = 1500
    with Session(engine) as session, session.begin():
        outbox.record_many(
            session, (outbox.event("order.created", "order", n, {"n": n}) for n in range(total))
        )
    async with BridgeClient(bridge) as one, BridgeClient(bridge) as two:
        relays = [OutboxRelay(c, engine, batch=100, poll_interval=0.02) for c in (one, two)]
        tasks = [asyncio.create_task(r.run()) for r in relays]
        while pending_count(engine, bridge.publish_subject):
            await asyncio.sleep(0.05)
        for relay in relays:
            await relay.stop()
        await asyncio.gather(*tasks)
    stats = [r.stats for r in relays]
    # Every row published once: no PubAck said "duplicate", so no row went out from both relays.
    assert sum(s.published for s in stats) == total
    assert [s.duplicates for s in stats] == [0, 0]
    if engine.dialect.name == "postgresql":
        assert all(s.published > 0 for s in stats), "SKIP LOCKED lets both relays work"
    else:
        assert sorted(s.published for s in stats) == [0, total], "the SQLite lease admits one relay"
    assert len(await stream_bodies(open_pair, bridge.publish_subject)) == total


async def test_an_event_the_stream_refuses_stays_pending_with_its_error(open_pair, engine):
    bridge = open_pair.bridges["orders"]
    outbox = Outbox(bridge)
    async with BridgeClient(bridge) as client:
        too_big = outbox.event("order.created", "order", "big", {"blob": "x" * (client.nc.max_payload + 1)})
        fine = [outbox.event("order.created", "order", n, {"n": n}) for n in range(3)]
        with Session(engine) as session, session.begin():
            outbox.record_many(session, [fine[0], too_big, *fine[1:]])
        relay = OutboxRelay(client, engine)
        assert await relay.relay_once() == (3, 1)
        assert await relay.relay_once() == (0, 1)  # tried again, refused again, never marked sent
        await relay.stop()
    with engine.connect() as conn:
        row = conn.execute(
            select(outbox_table.c.attempts, outbox_table.c.last_error, outbox_table.c.sent_at).where(
                outbox_table.c.event_id == too_big.event_id
            )
        ).one()
    assert row.attempts == 2 and row.sent_at is None
    assert "max_payload" in row.last_error
    assert len(await stream_bodies(open_pair, bridge.publish_subject)) == 3


async def test_the_relay_command_publishes_what_the_app_records_and_stops_on_sigterm(open_pair, tmp_path):
    bridge = open_pair.bridges["orders"]
    bridge_file = tmp_path / "orders.json"
    bridge_file.write_text(bridge.model_dump_json())
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = engine_for_url(url)
    create_schema(engine)
    jsb_infra = str(Path(sys.executable).with_name("jsb-infra"))
    bad = subprocess.run(
        [jsb_infra, "relay", "--bridge", str(bridge_file), "--batch", "0"],
        capture_output=True,
        text=True,
        env={**os.environ, "JSB_DATABASE_URL": ""},
    )
    assert bad.returncode == 2
    assert (
        "--db: required (or set JSB_DATABASE_URL)" in bad.stderr
        and "--batch: must be at least 1" in bad.stderr
    )
    relay = subprocess.Popen(
        [jsb_infra, "relay", "--db", url, "--bridge", str(bridge_file), "--poll-interval", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        outbox = Outbox(bridge)
        events = [outbox.event("order.created", "order", n, {"n": n}) for n in range(50)]
        with Session(engine) as session, session.begin():
            outbox.record_many(session, events)
        deadline = asyncio.get_running_loop().time() + 20
        while pending_count(engine) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert pending_count(engine) == 0
    finally:
        relay.send_signal(signal.SIGTERM)
        output, _ = relay.communicate(timeout=20)
    engine.dispose()
    assert relay.returncode == 0, output
    assert "relay stopped: 50 published (0 already stored), 0 failed" in output
    bodies = await stream_bodies(open_pair, bridge.publish_subject)
    assert [json.loads(b)["event_id"] for b in bodies] == [e.event_id for e in events]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_row_that_commits_after_later_rows_is_still_published(open_pair, engine):
    """PostgreSQL assigns ids at insert, not at commit: a slow transaction's row may become visible
    after rows with higher ids were published. No high-water mark may skip it."""
    bridge = open_pair.bridges["orders"]
    outbox = Outbox(bridge)
    slow = outbox.event("order.created", "order", "slow", {})
    fast = [outbox.event("order.created", "order", n, {}) for n in range(300)]
    slow_session = Session(engine)
    slow_session.begin()
    outbox.record(slow_session, slow)  # takes the lowest id, not committed yet
    slow_session.flush()
    with Session(engine) as session, session.begin():
        outbox.record_many(session, fast)
    async with BridgeClient(bridge) as client:
        relay = OutboxRelay(client, engine, batch=50, poll_interval=0.02)
        task = asyncio.create_task(relay.run())
        while relay.stats.published < len(fast):
            await asyncio.sleep(0.02)
        slow_session.commit()
        slow_session.close()
        while pending_count(engine):
            await asyncio.sleep(0.02)
        await relay.stop()
        await task
    ids = [json.loads(b)["event_id"] for b in await stream_bodies(open_pair, bridge.publish_subject)]
    assert ids == [e.event_id for e in fast] + [slow.event_id]


async def test_the_relay_waits_out_a_server_outage_and_publishes_each_row_once(open_pair, engine):
    bridge = open_pair.bridges["orders"]
    outbox = Outbox(bridge)
    events = [outbox.event("order.created", "order", n, {}) for n in range(200)]
    with Session(engine) as session, session.begin():
        outbox.record_many(session, events)
    client = BridgeClient(bridge, publish_timeout=0.5, publish_budget=1.0, reconnect_time_wait=0.1)
    await client.connect()
    open_pair.server.stop(kill=True)
    relay = OutboxRelay(
        client, engine, batch=50, poll_interval=0.05, error_backoff=0.2, max_error_backoff=0.5
    )
    task = asyncio.create_task(relay.run())
    await asyncio.sleep(1.0)  # the relay sees the client reconnecting: it claims, gives back, waits
    assert relay.stats.published == 0 and pending_count(engine) == 200
    await asyncio.to_thread(open_pair.server.start)
    while pending_count(engine):
        await asyncio.sleep(0.05)
    await relay.stop()
    await task
    await client.close()
    bodies = await stream_bodies(open_pair, bridge.publish_subject)
    assert sorted(json.loads(b)["event_id"] for b in bodies) == sorted(e.event_id for e in events)


async def test_purge_sent_deletes_only_rows_sent_long_enough_ago(open_pair, engine):
    bridge = open_pair.bridges["orders"]
    outbox = Outbox(bridge)
    with Session(engine) as session, session.begin():
        outbox.record_many(session, [outbox.event("order.created", "order", n, {}) for n in range(6)])
    async with BridgeClient(bridge) as client:
        relay = OutboxRelay(client, engine, batch=4)
        assert await relay.relay_once() == (4, 0)  # rows 1-4 sent, 5-6 pending
        await relay.stop()
    with engine.begin() as conn:  # rows 1-2 were sent two days ago
        conn.execute(
            update(outbox_table).where(outbox_table.c.id <= 2).values(sent_at=utc_now() - timedelta(days=2))
        )
    assert purge_sent(engine, timedelta(days=1)) == 2
    with engine.connect() as conn:
        left = [row[0] for row in conn.execute(select(outbox_table.c.id).order_by(outbox_table.c.id))]
    assert left == [3, 4, 5, 6] and pending_count(engine) == 2
