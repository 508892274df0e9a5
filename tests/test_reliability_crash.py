"""Kill the app (SIGKILL) at every step of outbox publishing and of inbox handling, restart it, and
show every event stored once and every handler effect applied once: on SQLite and on PostgreSQL.

The apps are child processes (tests/reliability_app.py) that kill themselves at a chosen step.
SQLite runs with `synchronous=NORMAL`: in WAL mode that keeps every commit across an app crash (what is
tested here) and spares an fsync per handled event; `FULL`, the default, adds power-cut durability.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from jsb_infra.nats_admin import JetStreamAdmin
from jsb_infra.runtime.storage import engine_for_url, outbox_table

APP = str(Path(__file__).with_name("reliability_app.py"))
TOTAL = 2000
PAIR = {
    "stream": "crash-sync",
    "apps": ["orders", "billing"],
    "consumer": {"max_deliver": 10, "backoff": ["1s"]},
}
# Outbox: after a record commit (nothing of it published), after a claim (nothing published), with half
# a batch PubAck'd, after a whole batch PubAck'd but before it is marked sent; then a clean run.
PRODUCER_RUNS = ["recorded:3", "claimed:2", "mid_batch:2", "published:2", "published:1", None]
# Inbox: handler done but not committed; committed but not acked; then a clean run.
CONSUMER_RUNS = ["before_commit:150", "committed:300", "before_commit:1", "committed:1", None]


def run_app(mode: str, db: str, bridge: Path, crash: str | None) -> None:
    argv = [sys.executable, APP, mode, "--db", db, "--bridge", str(bridge), "--total", str(TOTAL)]
    if crash:
        argv += ["--crash", crash]
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    print(f"{mode} {crash}: {time.monotonic() - started:.1f}s")
    expected = -signal.SIGKILL if crash else 0
    assert result.returncode == expected, f"{mode} {crash}: exit {result.returncode}\n{result.stderr[-3000:]}"


async def subject_count(admin_url: str, stream: str, subject: str) -> int:
    import nats

    nc = await nats.connect(admin_url)
    try:
        info = await JetStreamAdmin(nc)._request(
            f"$JS.API.STREAM.INFO.{stream}", {"subjects_filter": subject}
        )
        return int((info["state"].get("subjects") or {}).get(subject, 0))
    finally:
        await nc.close()


async def consumer_state(admin_url: str, stream: str, durable: str) -> dict:
    import nats

    nc = await nats.connect(admin_url)
    try:
        info = await JetStreamAdmin(nc).consumer_info(stream, durable)
        assert info is not None
        return info
    finally:
        await nc.close()


@pytest.mark.parametrize("open_pair", [PAIR], indirect=True)
async def test_outbox_and_inbox_survive_sigkill_at_every_step(open_pair, database_url, tmp_path):
    orders_bridge = tmp_path / "orders.json"
    billing_bridge = tmp_path / "billing.json"
    orders_bridge.write_text(open_pair.bridges["orders"].model_dump_json())
    billing_bridge.write_text(open_pair.bridges["billing"].model_dump_json())
    subject = open_pair.bridges["orders"].publish_subject
    # The producer and the consumer are two apps with a database each.
    producer_db = database_url
    consumer_db = database_url
    if database_url.startswith("sqlite"):
        producer_db = f"sqlite:///{tmp_path / 'orders.db'}?synchronous=NORMAL"
        consumer_db = f"sqlite:///{tmp_path / 'billing.db'}?synchronous=NORMAL"

    for crash in PRODUCER_RUNS:
        run_app("produce", producer_db, orders_bridge, crash)

    engine = engine_for_url(producer_db)
    with engine.connect() as conn:
        recorded = {row[0] for row in conn.execute(select(outbox_table.c.event_id))}
        unsent = conn.execute(
            select(func.count()).select_from(outbox_table).where(outbox_table.c.sent_at.is_(None))
        ).scalar_one()
        orders = {row[0] for row in conn.exec_driver_sql("SELECT event_id FROM orders")}
    engine.dispose()
    assert len(recorded) == TOTAL and recorded == orders and unsent == 0
    # Every crash left some event published but not marked sent; the relay published it again and the
    # stream's duplicate window dropped the copy: the stream holds each event once.
    assert await subject_count(open_pair.url, open_pair.pair.stream, subject) == TOTAL

    for crash in CONSUMER_RUNS:
        run_app("consume", consumer_db, billing_bridge, crash)

    engine = engine_for_url(consumer_db)
    with engine.connect() as conn:
        effects = [row[0] for row in conn.exec_driver_sql("SELECT event_id FROM effects")]
        inbox_rows = conn.exec_driver_sql("SELECT count(*) FROM jsb_inbox").scalar_one()
    engine.dispose()
    assert len(effects) == TOTAL, f"{len(effects) - len(set(effects))} effects applied twice"
    assert set(effects) == recorded
    assert inbox_rows == TOTAL
    state = await consumer_state(open_pair.url, open_pair.pair.stream, "billing-workers")
    assert state["num_pending"] == 0 and state["num_ack_pending"] == 0
    # The kills really cost deliveries: redelivered events were answered from the inbox.
    assert state["delivered"]["consumer_seq"] > TOTAL
    assert await subject_count(open_pair.url, open_pair.pair.stream, subject) == 0
