"""Nothing stays in the work queue after its last delivery: a PostgreSQL outage plus a nats-server kill.

Real processes: the consumer app is a child process (tests/reliability_app.py, an `Inbox` on a real
PostgreSQL of the test's own, which the test stops and starts), the nats-server is SIGKILLed and
restarted on its store. The outage fails deliveries 1 to max_deliver - 1 of every event, so when the
database is back every event the consumer holds is on its last delivery; the nats-server is killed
right then. What the server stops delivering after max_deliver stays in a work-queue stream unless it
is acked or termed: the consumer must answer each last delivery for sure, and an operator sees what
reached max_deliver anyway (`status`) and moves it to the DLQ (`dlq rescue`).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats
import pytest
from conftest import provision
from reliability_support import business
from sqlalchemy import func, select
from test_dlq_status import cli

from jsb_infra.core import names
from jsb_infra.core.outputs import bridge_outputs
from jsb_infra.core.spec import parse_pairs
from jsb_infra.local.postgres import LocalPostgres
from jsb_infra.local.server import LocalNatsServer
from jsb_infra.nats_admin import JetStreamAdmin
from jsb_infra.runtime.storage import create_schema, engine_for_url, inbox_table

APP = str(Path(__file__).with_name("reliability_app.py"))
TOTAL = 100
MAX_DELIVER = 4
PAIR = {
    "stream": "stuck-sync",
    "apps": ["orders", "billing"],
    "consumer": {"max_deliver": MAX_DELIVER, "backoff": ["1s"]},
}
WORK_SUBJECT = "orders.sync.billing"
KILL_AFTER = 60  # applied events when the nats-server is killed: mid-window, acks in flight


async def api(url: str, subject: str, body: dict | None = None) -> dict:
    nc = await nats.connect(url)
    try:
        reply = await nc.request(subject, json.dumps(body or {}).encode(), timeout=5)
        return json.loads(reply.data)
    finally:
        await nc.close()


async def subject_count(url: str, stream: str, subject: str) -> int:
    info = await api(url, f"$JS.API.STREAM.INFO.{stream}", {"subjects_filter": subject})
    return int((info["state"].get("subjects") or {}).get(subject, 0))


async def durable(url: str, stream: str) -> dict:
    return await api(url, f"$JS.API.CONSUMER.INFO.{stream}.billing-workers")


async def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


@pytest.fixture
def outage_postgres():
    """A PostgreSQL of this test's own: its outage must not reach other tests' databases."""
    with LocalPostgres() as cluster:
        yield cluster


@pytest.mark.parametrize("control", [False, True], ids=["consumer", "control-plain-acks"])
async def test_pg_outage_and_server_kill_leave_nothing_after_the_last_delivery(
    outage_postgres, tmp_path, control
):
    """With the consumer as it is, and as the control with its last answers plain acks as before
    (which left 47-72 of 100 in the work queue in 5 of 7 runs): either way `status` counts what is
    left and `rescue` empties the work queue."""
    pair = parse_pairs([PAIR]).pairs[0]
    server = LocalNatsServer(store_dir=tmp_path / "nats").start()
    try:
        await provision(server.url, pair, open_server=True)
        bridge_file = tmp_path / "billing.json"
        bridge_file.write_text(bridge_outputs(pair, "billing", [server.url]).model_dump_json())
        db = outage_postgres.url
        engine = engine_for_url(db)
        create_schema(engine)
        business.create_all(engine)

        argv = [sys.executable, APP, "consume", "--db", db, "--bridge", str(bridge_file)]
        argv += ["--total", str(TOTAL), "--until-term"] + (["--plain-last-answers"] if control else [])
        app = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        try:
            await faults(server, outage_postgres, engine, app)
        finally:
            if app.poll() is None:
                app.send_signal(signal.SIGTERM)
            _, stderr = app.communicate(timeout=30)
        assert app.returncode == 0, stderr[-3000:]

        left = await subject_count(server.url, pair.stream, WORK_SUBJECT)
        resent = stderr.count("sent the answers to")
        # What the operator sees: status counts what reached max_deliver and is still in the work queue.
        code, out, _ = await cli(server.url, "status", "--stream", pair.stream, "--app", "billing", "--json")
        assert json.loads(out)[0]["max_delivered"] == left and code == (1 if left else 0)

        # ... and moves it to the DLQ, where `dlq replay` can take it up.
        code, out, _ = await cli(server.url, "dlq", "rescue", "--stream", pair.stream, "--app", "billing")
        assert code == 0, out
        assert await subject_count(server.url, pair.stream, WORK_SUBJECT) == 0, "the work queue is empty"
        in_dlq = await subject_count(server.url, pair.stream, names.dlq_subject("billing"))

        # Every event applied once or in the DLQ; none applied twice.
        with engine.connect() as conn:
            applied = [r[0] for r in conn.execute(select(business.tables["effects"].c.event_id))]
            inbox_rows = conn.execute(select(func.count()).select_from(inbox_table)).scalar_one()
        engine.dispose()
        assert len(applied) == len(set(applied)) == inbox_rows, "an effect applied twice"
        dead = await dead_letter_events(server.url, pair.stream)
        assert len(dead) == in_dlq
        assert set(applied) | set(dead) == {f"evt-{n:04d}" for n in range(TOTAL)}, (
            "every event applied or in the DLQ"
        )
        report = {"left_before_rescue": left, "applied": len(applied), "dlq": in_dlq, "resends": resent}
        print(f"max-deliver fault ({'control' if control else 'consumer'}):", report)
        if not control:
            assert resent >= 1, "the consumer sent its last answers again after the reconnect"
    finally:
        server.stop()


async def dead_letter_events(url: str, stream: str) -> list[str]:
    nc = await nats.connect(url)
    try:
        admin = JetStreamAdmin(nc)
        return [
            json.loads(m.data)["event_id"] async for m in admin.messages(stream, names.dlq_subject("billing"))
        ]
    finally:
        await nc.close()


async def faults(server: LocalNatsServer, pg: LocalPostgres, engine, app: subprocess.Popen) -> None:
    stream = PAIR["stream"]

    async def pulling() -> bool:
        assert app.poll() is None, "the consumer app exited"
        return (await durable(server.url, stream))["num_waiting"] > 0

    await wait_until(pulling, 30, "the consumer's first pull")
    pg.pause()  # the outage starts before the events arrive: every delivery fails until it ends
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    for n in range(TOTAL):
        event_id = f"evt-{n:04d}"
        body = json.dumps(
            {
                "event_id": event_id,
                "schema_version": 1,
                "event_type": "order.created",
                "producer": "orders",
                "resource_type": "order",
                "resource_id": str(n),
                "occurred_at": "2026-01-01T00:00:00Z",
                "trace_id": None,
                "payload": {"order_no": n},
            }
        ).encode()
        await js.publish(WORK_SUBJECT, body, headers={"Nats-Msg-Id": event_id})
    await nc.close()

    # deliveries 1 .. max_deliver - 1 of every event fail on the database
    async def all_but_last_used() -> bool:
        info = await durable(server.url, stream)
        return info["delivered"]["consumer_seq"] >= (MAX_DELIVER - 1) * TOTAL

    await wait_until(all_but_last_used, 30, "the failing deliveries")
    pg.resume()
    engine.dispose()  # its pooled connections died with the server

    def effects_seen() -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(select(func.count()).select_from(business.tables["effects"])).scalar_one()
            )

    async def some_applied() -> bool:
        return await asyncio.to_thread(effects_seen) >= KILL_AFTER

    await wait_until(some_applied, 30, "the first handled last delivery")
    server.stop(kill=True)  # mid-window: acks of applied events are in flight, the rest is held
    await asyncio.sleep(1.5)  # longer than the ack wait
    server.start()

    async def settled() -> bool:
        info = await durable(server.url, stream)
        return info["num_pending"] == 0 and info["num_ack_pending"] == 0

    await wait_until(settled, 60, "nothing pending or in flight")
    await asyncio.sleep(2.0)  # a late ack or redelivery would show here
    assert await settled()
    assert app.poll() is None, "the consumer kept running"
