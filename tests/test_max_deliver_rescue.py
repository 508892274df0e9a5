"""Last deliveries, against a real nats-server killed and restarted on its store.

- The consumer's acks of last deliveries survive a server that dies before writing them: they are
  confirmed and sent again after the reconnect (control: without the resend the server keeps them).
- What reached max_deliver anyway (a worker that died holding it) is counted by `jsb-infra status`
  and moved to the DLQ by `jsb-infra dlq rescue`, from where `replay` brings it back; a message still
  in flight is never moved, and a msg id taken in advance by a peer does not make rescue delete the
  original.
"""

from __future__ import annotations

import asyncio
import json

import nats
import pytest
from test_dlq_status import cli

from jsb_infra.core import names
from jsb_infra.core.outputs import bridge_outputs
from jsb_infra.core.spec import parse_pairs
from jsb_infra.local.server import LocalNatsServer
from jsb_infra.nats_admin import AdminConnection, admin_session
from jsb_infra.ops.dlq import rescue_msg_id
from jsb_infra.runtime import BridgeClient, ConsumerLoop, Delivery, Event


class PlainLastAnswers(ConsumerLoop):
    """The control: a last delivery answered as before, with a plain ack and nothing kept."""

    async def _answer_last_delivery(self, msg, kind: str, payload: bytes) -> bool:
        await (msg.ack() if kind == "ack" else msg.term())
        return True


# every delivery is the last one: what is not answered stays in the work queue at once
PAIR = {
    "stream": "last-sync",
    "apps": ["orders", "billing"],
    "consumer": {"max_deliver": 1, "backoff": ["1s"]},
}
WORK = "orders.sync.billing"
EVENTS = 200


async def api(url: str, subject: str, body: dict | None = None) -> dict:
    nc = await nats.connect(url)
    try:
        return json.loads((await nc.request(subject, json.dumps(body or {}).encode(), timeout=5)).data)
    finally:
        await nc.close()


async def count(url: str, subject: str) -> int:
    info = await api(url, f"$JS.API.STREAM.INFO.{PAIR['stream']}", {"subjects_filter": subject})
    return int((info["state"].get("subjects") or {}).get(subject, 0))


async def publish(url: str, n: int, prefix: str = "e") -> None:
    orders = await BridgeClient(bridge_outputs(parse_pairs([PAIR]).pairs[0], "orders", [url])).connect()
    for i in range(n):
        await orders.publish("order.created", "order", i, {"n": i}, event_id=f"{prefix}-{i:03d}")
    await orders.close()


async def settled(url: str) -> None:
    for _ in range(100):
        info = await api(url, f"$JS.API.CONSUMER.INFO.{PAIR['stream']}.billing-workers")
        if info["num_pending"] == 0 and info["num_ack_pending"] == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not settled: {info}")


async def kill_after_acks(open_pair, loop: type[ConsumerLoop], prefix: str = "e") -> tuple[int, dict]:
    """Consume EVENTS last deliveries; SIGKILL the server right after the acks of all but the last,
    restart it after the ack wait; returns what is left in the work queue and the consumer's stats."""
    server: LocalNatsServer = open_pair.server
    url = open_pair.url
    await publish(url, EVENTS, prefix)
    client = await BridgeClient(open_pair.bridges["billing"], reconnect_time_wait=0.1).connect()
    handled: list[str] = []

    async def handle(event: Event, delivery: Delivery) -> None:
        handled.append(event.event_id)
        if len(handled) == EVENTS:  # every earlier one answered, the last acks just sent
            server.process.kill()  # at once, before the loop lets the server catch up
            await asyncio.to_thread(server.stop, True)
            await asyncio.sleep(1.5)  # past the ack wait: the restarted server counts them delivered
            await asyncio.to_thread(server.start)

    consumer = loop(client, handle, batch=EVENTS // 2, fetch_timeout=0.5)
    task = asyncio.create_task(consumer.run())
    await settled_after_restart(url, lambda: len(handled) >= EVENTS)
    await consumer.stop()
    await task
    await client.close()
    return await count(url, WORK), {"resent": consumer.stats.final_answers_resent, "handled": len(handled)}


async def settled_after_restart(url: str, done) -> None:
    for _ in range(200):
        if done():
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(2.5)  # the restart, the reconnect, a resend
    await settled(url)


@pytest.mark.parametrize("open_pair", [PAIR], indirect=True)
async def test_acks_of_last_deliveries_survive_a_server_killed_before_writing_them(open_pair, tmp_path):
    left, stats = await kill_after_acks(open_pair, ConsumerLoop)
    assert stats["handled"] == EVENTS and stats["resent"] >= EVENTS - 1, stats
    assert left == 0, f"{left} left in the work queue after their last delivery"


@pytest.mark.parametrize("open_pair", [PAIR], indirect=True)
async def test_control_without_the_resend_the_killed_server_keeps_them(open_pair, tmp_path):
    for attempt in range(3):  # the kill races the server's write of the acks: it may lose none
        left, stats = await kill_after_acks(open_pair, PlainLastAnswers, prefix=f"try{attempt}")
        assert stats["resent"] == 0
        if left:
            break
    assert left > 0, "the kill did not lose any ack in 3 tries: this control proves nothing"
    code, out, _ = await cli(
        open_pair.url, "status", "--stream", PAIR["stream"], "--app", "billing", "--json"
    )
    assert code == 1 and json.loads(out)[0]["max_delivered"] == left


@pytest.mark.parametrize("open_pair", [PAIR], indirect=True)
async def test_status_counts_and_rescue_moves_what_reached_max_deliver(open_pair):
    url, stream = open_pair.url, PAIR["stream"]
    await publish(url, 3)
    # a worker that takes one message and dies: nobody will ever answer it
    nc = await nats.connect(url)
    psub = await nc.jetstream().pull_subscribe_bind("billing-workers", stream)
    [taken] = await psub.fetch(1)
    # ... a second one still in flight, held by a live worker that sends in_progress
    [held] = await psub.fetch(1)
    keeper = asyncio.create_task(keep_alive(held))
    await asyncio.sleep(1.5)  # the first one's ack wait ends: max_deliver 1 is reached

    code, out, _ = await cli(url, "status", "--stream", stream, "--app", "billing", "--json")
    row = json.loads(out)[0]
    assert code == 1 and row["max_delivered"] == 1 and row["ack_pending"] == 1 and row["pending"] == 1, row
    code, out, _ = await cli(url, "status", "--stream", stream)
    assert "max delivered" in out and "dlq rescue" in out

    # while one is in flight the server's counts cannot tell which delivered one is left: nothing moves
    code, out, _ = await cli(url, "dlq", "rescue", "--stream", stream, "--app", "billing")
    assert code == 0 and "moved seq" not in out and "1 more past max_deliver" in out, out
    assert await count(url, WORK) == 3
    keeper.cancel()
    await held.ack()
    await asyncio.sleep(0.2)
    code, out, _ = await cli(url, "dlq", "rescue", "--stream", stream, "--app", "billing", "--dry-run")
    assert code == 0 and "would move seq 1 " in out and await count(url, WORK) == 2, out
    code, out, _ = await cli(url, "dlq", "rescue", "--stream", stream, "--app", "billing")
    assert code == 0 and out.count("moved seq") == 1 and "moved seq 1 " in out, out
    first = json.loads(taken.data)["event_id"]
    code, out, _ = await cli(url, "dlq", "list", "--stream", stream, "--app", "billing", "--json")
    [letter] = json.loads(out)
    assert letter["event_id"] == first and letter["reason"] == "max_deliver"
    assert letter["original_subject"] == WORK and letter["original_sequence"] == "1"
    assert await count(url, WORK) == 1, "the undelivered one stays"
    await nc.close()
    code, out, _ = await cli(url, "status", "--stream", stream, "--app", "billing", "--json")
    assert code == 0 and json.loads(out)[0]["max_delivered"] == 0

    # replay brings it back to the work queue, where the app handles it
    code, out, _ = await cli(url, "dlq", "replay", "--stream", stream, "--app", "billing", "--all")
    assert code == 0 and "replayed" in out
    got: list[str] = []
    client = await BridgeClient(open_pair.bridges["billing"]).connect()

    async def handle(event: Event, delivery: Delivery) -> None:
        got.append(event.event_id)

    consumer = client.consumer(handle, fetch_timeout=0.3)
    task = asyncio.create_task(consumer.run())
    for _ in range(100):
        if len(got) == 2:
            break
        await asyncio.sleep(0.05)
    await consumer.stop()
    await task
    await client.close()
    assert first in got and len(got) == 2, got
    assert await count(url, WORK) == 0 and await count(url, names.dlq_subject("billing")) == 0


async def keep_alive(msg) -> None:
    while True:
        await msg.in_progress()
        await asyncio.sleep(0.3)


async def _past_max_deliver(url: str, stream: str) -> None:
    """One message in billing's work queue, delivered once and never answered (max_deliver 1 here)."""
    await publish(url, 1)
    nc = await nats.connect(url)
    await (await nc.jetstream().pull_subscribe_bind("billing-workers", stream)).fetch(1)  # never answered
    await nc.close()


@pytest.mark.parametrize("open_pair", [PAIR], indirect=True)
async def test_a_peer_cannot_predict_a_rescue_msg_id(open_pair):
    url, stream = open_pair.url, PAIR["stream"]
    await _past_max_deliver(url, stream)
    nc = await nats.connect(url)
    js = nc.jetstream()
    # the peer publishes first, on its own subject, every id it could derive from what it sees: the
    # former fixed form and the sequence numbers around the message
    squatted = [f"rescue:{stream}:{seq}" for seq in range(0, 5)] + [f"rescue-{seq}" for seq in range(5)]
    for msg_id in squatted:
        await js.publish("billing.sync.orders", b"{}", headers={"Nats-Msg-Id": msg_id})
    await nc.close()
    await asyncio.sleep(1.3)
    code, out, _ = await cli(url, "dlq", "rescue", "--stream", stream, "--app", "billing")
    assert code == 0, out
    assert await count(url, WORK) == 0 and await count(url, names.dlq_subject("billing")) == 1


@pytest.mark.parametrize("open_pair", [PAIR], indirect=True)
async def test_rescue_never_deletes_the_original_when_its_msg_id_was_taken(open_pair):
    url, stream = open_pair.url, PAIR["stream"]
    await _past_max_deliver(url, stream)
    # the real id hashes the stored time, which only an admin reads: taken here by one who has it
    async with admin_session(AdminConnection(servers=[url])) as admin:
        original = await admin.get_message(stream, 1)
        assert original is not None
        taken = rescue_msg_id(stream, original)
    nc = await nats.connect(url)
    squat = await nc.jetstream().publish("billing.sync.orders", b"{}", headers={"Nats-Msg-Id": taken})
    await nc.close()
    await asyncio.sleep(1.3)
    code, out, _ = await cli(url, "dlq", "rescue", "--stream", stream, "--app", "billing")
    assert code == 1 and "is taken by stream seq" in out, out
    assert await count(url, WORK) == 1, "the original stays in the work queue"
    assert await count(url, names.dlq_subject("billing")) == 0
    assert squat.seq == 2


@pytest.mark.parametrize("open_pair", [PAIR], indirect=True)
async def test_status_prometheus_gauges_follow_the_server_on_every_scrape(open_pair):
    from prometheus_client.parser import text_string_to_metric_families

    url, stream = open_pair.url, PAIR["stream"]

    async def scrape() -> dict[str, float]:
        code, out, _ = await cli(url, "status", "--stream", stream, "--app", "billing", "--prometheus")
        assert code in (0, 1), out
        return {
            s.name: s.value
            for family in text_string_to_metric_families(out)
            for s in family.samples
            if s.labels == {"stream": stream, "app": "billing"}
        }

    await publish(url, 3)  # no consumer runs: the lag grows on the server
    first = await scrape()
    assert first["jsb_status_pending"] == 3 and first["jsb_status_dlq"] == 0
    assert first["jsb_status_durable_present"] == 1

    client = await BridgeClient(open_pair.bridges["billing"]).connect()

    async def broken(event: Event, delivery: Delivery) -> None:
        raise RuntimeError("cannot handle")

    consumer = client.consumer(broken, fetch_timeout=0.3)  # max_deliver 1: each goes to the DLQ at once
    task = asyncio.create_task(consumer.run())
    for _ in range(100):
        if consumer.stats.dead_lettered == 3:
            break
        await asyncio.sleep(0.05)
    await consumer.stop()
    await task
    await client.close()
    after = await scrape()
    assert after["jsb_status_pending"] == 0 and after["jsb_status_dlq"] == 3 == await count(
        url, "billing.sync.dlq"
    )
    assert after["jsb_status_max_delivered"] == 0 and after["jsb_status_ack_pending"] == 0
    await publish(url, 2, prefix="later")
    assert (await scrape())["jsb_status_pending"] == 2


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.last-sync.billing-workers.3.17.42.1733550000000000000.5",
        "$JS.ACK._.ACCHASH.last-sync.billing-workers.4.17.42.1733550000000000000.5.rnd",
        "$JS.ACK.hub.ACCHASH.last-sync.billing-workers.1.17.42.1733550000000000000.0",
    ],
)
def test_delivery_count_reads_what_nats_py_reads(reply):
    from nats.aio.msg import Msg

    from jsb_infra.runtime.consumer import delivery_count

    msg = Msg(None, subject=WORK, reply=reply)  # type: ignore[arg-type]
    assert delivery_count(msg) == msg.metadata.num_delivered


def test_prometheus_labels_of_a_durable_name_with_a_quote_still_parse():
    """Without --app, status takes app names from any `*-workers` durable on the server, which the CLI
    never checked: the exposition must stay parseable whatever the name holds."""
    from prometheus_client.parser import text_string_to_metric_families

    from jsb_infra.ops.status import AppStatus, render_prometheus

    odd = 'a"x\\y'
    row = AppStatus("s", odd, f"{odd}-workers", 1, 0, 0, 0, 2, None, None, max_delivered=0)
    samples = [s for f in text_string_to_metric_families(render_prometheus([row])) for s in f.samples]
    assert samples and all(s.labels == {"stream": "s", "app": odd} for s in samples)
