"""`jsb-infra dlq` and `jsb-infra status` against a real nats-server: an event dead-lettered after
max_deliver, replayed after the handler is fixed, handled once; a malformed one purged."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json

import nats
import pytest
from reliability_support import business, effects, wait_for
from sqlalchemy import select
from sqlalchemy.orm import Session

from jsb_infra.cli import build_parser
from jsb_infra.core.spec import parse_pairs
from jsb_infra.core.topology import consumer_configs, stream_config
from jsb_infra.local.server import LocalNatsServer
from jsb_infra.nats_admin import JetStreamAdmin
from jsb_infra.ops import dlq, status
from jsb_infra.runtime import BridgeClient, Delivery, Event
from jsb_infra.runtime.inbox import Inbox
from jsb_infra.runtime.storage import create_schema, engine_for_url

PAIR = {
    "stream": "dlq-sync",
    "apps": ["orders", "billing"],
    "consumer": {"max_deliver": 2, "backoff": ["200ms"]},
}


async def cli(url: str, *argv: str) -> tuple[int, str, str]:
    """Run `jsb-infra dlq|status ...` in this process; returns (exit code, stdout, stderr)."""
    args = build_parser().parse_args([*argv, "--server", url])
    out = io.StringIO()
    module = dlq if argv[0] == "dlq" else status
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = await module.run_async(args, out)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("open_pair", [PAIR], indirect=True)
async def test_dead_lettered_event_replayed_after_the_fix_is_handled_once(open_pair, tmp_path):
    url = open_pair.url
    engine = engine_for_url(f"sqlite:///{tmp_path / 'billing.db'}")
    create_schema(engine)
    business.create_all(engine)
    billing_bridge = open_pair.bridges["billing"]
    inbox = Inbox(engine, billing_bridge)
    fixed = False
    calls: list[str] = []

    async def apply(event: Event, delivery: Delivery, session: Session) -> None:
        calls.append(event.event_id)
        if event.payload.get("poison") and not fixed:
            raise RuntimeError("bug: cannot price a poison order")
        session.execute(effects.insert().values(event_id=event.event_id))

    async with BridgeClient(open_pair.bridges["orders"]) as orders, BridgeClient(billing_bridge) as billing:
        poison = orders.event("order.created", "order", 1, {"poison": True})
        fine = orders.event("order.created", "order", 2, {})
        await orders.publish_batch([poison, fine])
        consumer = billing.consumer(inbox.handler(apply), fetch_timeout=0.2)
        task = asyncio.create_task(consumer.run())
        await wait_for(lambda: consumer.stats.dead_lettered == 1 and inbox.stats.handled == 1)
        assert calls.count(poison.event_id) == 2  # max_deliver

        code, out, _ = await cli(url, "dlq", "list", "--stream", "dlq-sync", "--app", "billing", "--json")
        assert code == 0
        [letter] = json.loads(out)
        assert letter["reason"] == "max_deliver" and letter["delivery_count"] == "2"
        assert letter["original_subject"] == "orders.sync.billing" and letter["event_id"] == poison.event_id
        assert letter["error"] == "RuntimeError: bug: cannot price a poison order"
        assert letter["consumer"] == "billing-workers"
        code, out, _ = await cli(url, "status", "--stream", "dlq-sync", "--json")
        rows = {row["app"]: row for row in json.loads(out)}
        assert code == 0 and rows["billing"]["dlq"] == 1 and rows["orders"]["dlq"] == 0
        assert rows["billing"]["pending"] == 0 and rows["billing"]["last_acked"] is not None

        show = ("dlq", "show", "--stream", "dlq-sync", "--app", "billing", "--seq", str(letter["seq"]))
        code, out, _ = await cli(url, *show)
        assert code == 0 and "Jsb-Dlq-Reason: max_deliver" in out and poison.event_id in out

        code, out, _ = await cli(
            url, "dlq", "replay", "--stream", "dlq-sync", "--app", "billing", "--all", "--dry-run"
        )
        nc = await open_pair.admin()
        stored = await JetStreamAdmin(nc).get_message("dlq-sync", letter["seq"])
        await nc.close()
        assert stored is not None
        replay_id = dlq.replay_msg_id("dlq-sync", dlq.DeadLetter.from_message(stored))
        assert code == 0 and f"would replay seq {letter['seq']}" in out and replay_id in out
        await asyncio.sleep(0.5)
        assert calls.count(poison.event_id) == 2  # the dry run published nothing...
        code, out, _ = await cli(url, "dlq", "list", "--stream", "dlq-sync", "--app", "billing", "--json")
        assert len(json.loads(out)) == 1  # ...and removed nothing

        fixed = True
        # A replay that published and died before removing the DLQ message, as the CLI would have sent it.
        code, out, _ = await cli(url, *show, "--json")
        nc = await open_pair.admin()
        await nc.request(
            "orders.sync.billing",
            json.loads(out)["body"].encode(),
            headers={"Nats-Msg-Id": replay_id},
        )
        await nc.close()
        await wait_for(lambda: inbox.stats.handled == 2)
        # Run again, the replay is stored once (the duplicate window) and the DLQ message removed.
        code, out, _ = await cli(
            url, "dlq", "replay", "--stream", "dlq-sync", "--app", "billing", "--seq", str(letter["seq"])
        )
        assert code == 0 and f"replayed seq {letter['seq']} to orders.sync.billing" in out
        assert "already stored (duplicate)" in out
        code, out, _ = await cli(
            url, "dlq", "replay", "--stream", "dlq-sync", "--app", "billing", "--seq", str(letter["seq"])
        )
        assert code == 0 and out == ""  # gone from the DLQ: nothing to replay again
        await asyncio.sleep(0.3)
        assert calls.count(poison.event_id) == 3 and inbox.stats.handled == 2
        await consumer.stop()
        await task
    with engine.connect() as conn:
        applied = [r[0] for r in conn.execute(select(effects.c.event_id))]
    engine.dispose()
    assert sorted(applied) == sorted([poison.event_id, fine.event_id])
    code, out, _ = await cli(url, "dlq", "list", "--stream", "dlq-sync", "--app", "billing")
    assert code == 0 and out.startswith("0 message(s) on billing.sync.dlq")


@pytest.mark.parametrize("open_pair", [PAIR], indirect=True)
async def test_purge_removes_only_with_its_dry_run_off_and_status_counts_what_waits(open_pair):
    url = open_pair.url
    async with (
        BridgeClient(open_pair.bridges["orders"]) as orders,
        BridgeClient(open_pair.bridges["billing"]) as billing,
    ):
        await orders.publish_raw("orders.sync.billing", b"not an envelope", {"Nats-Msg-Id": "garbage-1"})
        consumer = billing.consumer(lambda event, delivery: asyncio.sleep(0), fetch_timeout=0.2)
        task = asyncio.create_task(consumer.run())
        await wait_for(lambda: consumer.stats.dead_lettered == 1)
        await consumer.stop()
        await task
        await orders.publish_batch([orders.event("order.created", "order", n, {}) for n in range(5)])
        nc = await open_pair.admin()
        sub = await nc.jetstream().pull_subscribe_bind(durable="billing-workers", stream="dlq-sync")
        held = await sub.fetch(2, timeout=2)  # delivered, not acked
        code, out, _ = await cli(url, "status", "--stream", "dlq-sync", "--app", "billing", "--json")
        [row] = json.loads(out)
        assert code == 0
        assert (row["pending"], row["ack_pending"], row["dlq"]) == (3, 2, 1)
        code, out, _ = await cli(url, "status", "--stream", "dlq-sync")
        assert code == 0 and out.splitlines()[0].split()[:4] == ["stream", "app", "pending", "ack"]
        assert len(out.splitlines()) == 3  # header, billing, orders
        for msg in held:
            await msg.ack()
        await nc.close()

    code, out, _ = await cli(url, "dlq", "list", "--stream", "dlq-sync", "--app", "billing", "--json")
    [letter] = json.loads(out)
    assert letter["reason"] == "malformed" and letter["event_id"] == "?"
    assert letter["error"].startswith("body: not JSON")
    code, out, _ = await cli(
        url, "dlq", "purge", "--stream", "dlq-sync", "--app", "billing", "--all", "--dry-run"
    )
    assert code == 0 and f"would remove seq {letter['seq']}" in out
    code, out, _ = await cli(url, "dlq", "list", "--stream", "dlq-sync", "--app", "billing", "--json")
    assert len(json.loads(out)) == 1
    code, out, _ = await cli(
        url, "dlq", "purge", "--stream", "dlq-sync", "--app", "billing", "--seq", str(letter["seq"])
    )
    assert code == 0 and f"removed seq {letter['seq']}" in out
    code, out, _ = await cli(url, "status", "--stream", "dlq-sync", "--app", "billing", "--json")
    assert json.loads(out)[0]["dlq"] == 0


@pytest.mark.parametrize("open_pair", [PAIR], indirect=True)
async def test_bad_operator_input_is_refused_before_touching_the_stream(open_pair, monkeypatch):
    url = open_pair.url
    monkeypatch.delenv("JSB_ADMIN_SERVERS", raising=False)
    code, _, err = await cli(url, "dlq", "replay", "--stream", "dlq-sync", "--app", "billing")
    assert code == 2 and "replay: name the messages with --seq N (repeatable) or --all" in err
    code, _, err = await cli(url, "dlq", "purge", "--stream", "dlq-sync", "--app", "bill.ing", "--all")
    assert code == 2 and "--app: app name 'bill.ing' contains '.'" in err
    code, _, err = await cli(url, "dlq", "list", "--stream", "nope", "--app", "billing")
    assert code == 1 and "--stream: no stream 'nope'" in err
    code, _, err = await cli(url, "status", "--stream", "dlq-sync", "--app", "ghost")
    assert code == 1
    code, out, err = await cli(url, "dlq", "rescue", "--stream", "dlq-sync", "--app", "ghost")
    assert code == 1 and "--app: no durable 'ghost-workers' on stream 'dlq-sync'" in err
    assert "nothing past max_deliver" not in out  # it looked at no work queue: not an all-clear
    args = build_parser().parse_args(["status", "--stream", "dlq-sync"])
    with contextlib.redirect_stderr(io.StringIO()) as err_out:
        assert await status.run_async(args, io.StringIO()) == 2
    assert "--server: required (or set JSB_ADMIN_SERVERS)" in err_out.getvalue()


async def test_operator_commands_authenticate_as_the_admin_from_the_environment(tmp_path, monkeypatch):
    """Admin user and password from JSB_ADMIN_*; a wrong password fails saying as whom, not the secret."""
    auth = 'authorization { user: "ops", password: "ops-secret" }\n'
    pair = parse_pairs([PAIR]).pairs[0]
    with LocalNatsServer(store_dir=tmp_path / "nats", extra_config=auth) as server:
        nc = await nats.connect(server.url, user="ops", password="ops-secret")
        admin = JetStreamAdmin(nc)
        await admin.create_stream(stream_config(pair))
        for config in consumer_configs(pair).values():
            await admin.create_consumer(pair.stream, config)
        await nc.close()
        monkeypatch.setenv("JSB_ADMIN_SERVERS", server.url)
        monkeypatch.setenv("JSB_ADMIN_USER", "ops")
        monkeypatch.setenv("JSB_ADMIN_PASSWORD", "ops-secret")
        args = build_parser().parse_args(["status", "--stream", "dlq-sync", "--json"])
        out = io.StringIO()
        assert await status.run_async(args, out) == 0
        assert sorted(row["app"] for row in json.loads(out.getvalue())) == ["billing", "orders"]
        monkeypatch.setenv("JSB_ADMIN_PASSWORD", "wrong")
        args = build_parser().parse_args(["dlq", "list", "--stream", "dlq-sync", "--app", "billing"])
        with contextlib.redirect_stderr(io.StringIO()) as err:
            assert await dlq.run_async(args, io.StringIO()) == 1
        assert "as user 'ops'" in err.getvalue() and "wrong" not in err.getvalue()
