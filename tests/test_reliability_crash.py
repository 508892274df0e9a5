"""Kill the app (SIGKILL) at every step of outbox publishing and of inbox handling, restart it, and
show every event stored once and every handler effect applied once: on SQLite and on PostgreSQL.

The apps are child processes (tests/reliability_app.py) that kill themselves at a chosen step.
SQLite runs with `synchronous=NORMAL`: in WAL mode that keeps every commit across an app crash (what is
tested here) and spares an fsync per handled event; `FULL`, the default, adds power-cut durability.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import nats
import pytest
from reliability_support import business
from sqlalchemy import func, select

from jsb_infra.runtime.storage import create_schema, engine_for_url, inbox_table, outbox_table

APP = str(Path(__file__).with_name("reliability_app.py"))
TOTAL = 2000
PAIR = {
    "stream": "crash-sync",
    "apps": ["orders", "billing"],
    "consumer": {"max_deliver": 10, "backoff": ["1s"]},
}
# Outbox: after a record commit (nothing of it published), after a claim (nothing published), with half
# a batch PubAck'd, after a whole batch PubAck'd but before it is marked sent; then a clean run.
PRODUCER_RUNS = ["recorded:3", "claimed:2", "mid_batch:2", "published:2", None]
# Inbox: handler done but not committed; committed but not acked; then a clean run.
CONSUMER_RUNS = ["before_commit:150", "committed:300", None]


def run_app(mode: str, db: str, bridge: Path, crash: str | None) -> None:
    argv = [sys.executable, APP, mode, "--db", db, "--bridge", str(bridge), "--total", str(TOTAL)]
    if crash:
        argv += ["--crash", crash]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    expected = -signal.SIGKILL if crash else 0
    assert result.returncode == expected, f"{mode} {crash}: exit {result.returncode}\n{result.stderr[-3000:]}"


def run_all(mode: str, db: str, bridge: Path, crashes: list[str | None]) -> None:
    for crash in crashes:
        run_app(mode, db, bridge, crash)


async def admin_info(url: str, subject: str, *args: str) -> dict:
    nc = await nats.connect(url)
    try:
        reply = await nc.request(subject, json.dumps(dict(a.split("=", 1) for a in args)).encode(), timeout=5)
        return json.loads(reply.data)
    finally:
        await nc.close()


@pytest.mark.parametrize("open_pair", [PAIR], indirect=True)
async def test_outbox_and_inbox_survive_sigkill_at_every_step(open_pair, database_url, tmp_path):
    orders_bridge = tmp_path / "orders.json"
    billing_bridge = tmp_path / "billing.json"
    orders_bridge.write_text(open_pair.bridges["orders"].model_dump_json())
    billing_bridge.write_text(open_pair.bridges["billing"].model_dump_json())
    stream = open_pair.pair.stream
    # Two apps with a database each (on PostgreSQL: one database, their own tables).
    producer_db = consumer_db = database_url
    if database_url.startswith("sqlite"):
        producer_db = f"sqlite:///{tmp_path / 'orders.db'}?synchronous=NORMAL"
        consumer_db = f"sqlite:///{tmp_path / 'billing.db'}?synchronous=NORMAL"
    for url in {producer_db, consumer_db}:  # created up front: two processes racing to create tables
        engine = engine_for_url(url)
        create_schema(engine)
        business.create_all(engine)
        engine.dispose()

    # The producer's crashes and the consumer's run side by side, as two apps would.
    await asyncio.gather(
        asyncio.to_thread(run_all, "produce", producer_db, orders_bridge, PRODUCER_RUNS),
        asyncio.to_thread(run_all, "consume", consumer_db, billing_bridge, CONSUMER_RUNS),
    )

    engine = engine_for_url(producer_db)
    with engine.connect() as conn:
        recorded = {row[0] for row in conn.execute(select(outbox_table.c.event_id))}
        unsent = conn.execute(
            select(func.count()).select_from(outbox_table).where(outbox_table.c.sent_at.is_(None))
        ).scalar_one()
        orders = {row[0] for row in conn.execute(select(business.tables["orders"].c.event_id))}
    engine.dispose()
    assert len(recorded) == TOTAL and recorded == orders and unsent == 0
    engine = engine_for_url(consumer_db)
    with engine.connect() as conn:
        effects = [row[0] for row in conn.execute(select(business.tables["effects"].c.event_id))]
        inbox_rows = conn.execute(select(func.count()).select_from(inbox_table)).scalar_one()
    engine.dispose()
    assert len(effects) == TOTAL, f"{len(effects) - len(set(effects))} effects applied twice"
    assert set(effects) == recorded
    assert inbox_rows == TOTAL

    # Every producer crash left events published but not marked sent; they were published again and
    # the duplicate window dropped the copies: the stream stored exactly TOTAL messages, now consumed.
    info = await admin_info(open_pair.url, f"$JS.API.STREAM.INFO.{stream}")
    assert info["state"]["last_seq"] == TOTAL and info["state"]["messages"] == 0
    state = await admin_info(open_pair.url, f"$JS.API.CONSUMER.INFO.{stream}.billing-workers")
    assert state["num_pending"] == 0 and state["num_ack_pending"] == 0
    # The consumer kills really cost deliveries: the redelivered events were answered from the inbox.
    assert state["delivered"]["consumer_seq"] > TOTAL
