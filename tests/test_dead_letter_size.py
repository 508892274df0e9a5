"""A message near the server's max_payload cannot take the runtime's connection down.

The server limits body and headers together (`max_payload`) and closes a connection that publishes
more; nats-py checks the body alone and, on that error, closes the client for good. The peer app
(`orders`, its real rendered permissions and its own NKey) stores a malformed message just under the
limit on billing's subject: billing's runtime dead-letters it with its DLQ headers added, which would
push the copy over. The dead letter must be sent within the limit (the error text cut, or the body left
out and named), billing must stay connected and go on handling orders' events, and `dlq replay` must
refuse a letter without its body. A single publish with headers over the limit fails as a
`PublishError` unsent, and in JWT mode the client takes the user's payload claim from its `.creds`
(the server applies it without announcing it). The controls put back the former behaviour (the
message sent as is) and show billing's client closed and its consumer stopped by one message of the
peer.
"""

from __future__ import annotations

import asyncio

import nats
import pytest
from test_app_limits import PAIRS as LIMIT_PAIRS
from test_app_limits import jwt_deployment
from test_msg_id_preemption import dead_letters, wait_for

from jsb_infra.core import names
from jsb_infra.core.outputs import bridge_outputs
from jsb_infra.core.spec import AppLimits
from jsb_infra.ops import dlq
from jsb_infra.runtime import BridgeClient, Credentials, PublishError
from jsb_infra.runtime import client as client_module
from jsb_infra.runtime import consumer as consumer_module
from jsb_infra.runtime.client import headers_size
from jsb_infra.runtime.consumer import DLQ_BODY_OMITTED, DLQ_ERROR
from jsb_infra.runtime.envelope import MSG_ID_HEADER, encode
from jsb_infra.runtime.msg_ids import DEAD_LETTER_PREFIX

PAIR = {
    "stream": "size-sync",
    "apps": ["orders", "billing"],
    "consumer": {"max_deliver": 2, "backoff": ["200ms"]},
    # messages up to the server's max_payload (1 MiB): the stream's own bound set above it, few of them
    "stream_options": {"max_msg_size": 2 * 1024 * 1024, "max_msgs_per_subject": 10},
}
ATTACKER, VICTIM = "orders", "billing"
# The DLQ headers billing adds to orders' message, with an empty error text: what a dead letter of it
# needs besides the body. A body this much (plus 10 bytes) under the limit fits only with the error cut.
DLQ_HEADERS_WITHOUT_ERROR = headers_size(
    {MSG_ID_HEADER: DEAD_LETTER_PREFIX + "0" * 32, DLQ_ERROR: ""}
    | {
        getattr(consumer_module, name): value
        for name, value in [
            ("DLQ_REASON", consumer_module.REASON_MALFORMED),
            ("DLQ_DELIVERY_COUNT", "1"),
            ("DLQ_ORIGINAL_SUBJECT", names.publish_subject(ATTACKER, VICTIM)),
            ("DLQ_STREAM_SEQUENCE", "1"),
            ("DLQ_CONSUMER", names.durable_name(VICTIM)),
        ]
    }
)
ERROR_ROOM = 10


def put_back_the_former_behaviour(monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: every message sent as is (no dead letter fitted, no size check before sending)."""
    monkeypatch.setattr(consumer_module, "fit_dead_letter", lambda body, headers, limit: (body, headers))
    monkeypatch.setattr(client_module, "oversize_problem", lambda body, headers, limit: None)


async def attack(pp, margin: int) -> tuple[BridgeClient, object, asyncio.Task, int]:
    """orders stores a malformed body `margin` bytes under the server's max_payload (no headers, so the
    server takes it); billing's consumer runs on it. Returns billing's client, consumer, task and the
    body's size."""
    attacker = await nats.connect(
        pp.url, nkeys_seed_str=pp.seeds[ATTACKER], inbox_prefix=names.inbox_prefix(ATTACKER)
    )
    size = attacker.max_payload - margin
    ack = await attacker.jetstream().publish(names.publish_subject(ATTACKER, VICTIM), b"x" * size, timeout=5)
    assert ack.stream == pp.pair.stream
    await attacker.close()
    billing = await BridgeClient(pp.bridges[VICTIM], Credentials(nkey_seed=pp.seeds[VICTIM])).connect()
    handled: list[str] = []

    async def handler(event, delivery) -> None:
        handled.append(event.event_id)

    consumer = billing.consumer(handler, fetch_timeout=0.2)
    consumer.handled = handled  # type: ignore[attr-defined]
    return billing, consumer, asyncio.create_task(consumer.run()), size


async def next_event_is_handled(pp, consumer, within: float = 5.0) -> bool:
    """orders publishes a good event through the runtime; whether billing handles it."""
    async with BridgeClient(pp.bridges[ATTACKER], Credentials(nkey_seed=pp.seeds[ATTACKER])) as orders:
        event = orders.event("order.created", "order", 1, {})
        await orders.publish_event(event)
    try:
        await wait_for(lambda: event.event_id in consumer.handled, timeout=within)
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize("provisioned_pair", [PAIR], indirect=True)
@pytest.mark.parametrize(
    ("margin", "body_kept"),
    [(DLQ_HEADERS_WITHOUT_ERROR + ERROR_ROOM, True), (20, False)],  # the error cut; no room for headers
    ids=["error-cut", "body-omitted"],
)
async def test_a_peer_message_at_the_limit_is_dead_lettered_and_the_consumer_goes_on(
    provisioned_pair, margin, body_kept
):
    pp = provisioned_pair
    billing, consumer, task, size = await attack(pp, margin)
    try:
        await wait_for(lambda: consumer.stats.dead_lettered == 1)
        assert not billing.nc.is_closed and billing.nc.last_error is None
        [letter] = await dead_letters(pp)
        assert letter.headers[MSG_ID_HEADER].startswith("dl1-")
        if body_kept:
            assert letter.data == b"x" * size and DLQ_BODY_OMITTED not in letter.headers
            assert letter.headers[DLQ_ERROR] == "body: not"[:ERROR_ROOM]  # the error, cut to fit
        else:
            assert letter.data == b"" and letter.headers[DLQ_BODY_OMITTED] == str(size)
            dead = dlq.DeadLetter.from_message(letter)
            assert "did not fit the dead letter" in (dlq.replay_problem(dead, VICTIM) or "")
            assert dead.summary()["body_omitted"] == str(size)
        assert await next_event_is_handled(pp, consumer)
    finally:
        task.cancel()
        await billing.close()


@pytest.mark.parametrize("provisioned_pair", [PAIR], indirect=True)
async def test_control_sent_as_is_the_peer_message_closes_the_consumers_connection(
    provisioned_pair, monkeypatch
):
    put_back_the_former_behaviour(monkeypatch)
    pp = provisioned_pair
    billing, consumer, task, _ = await attack(pp, DLQ_HEADERS_WITHOUT_ERROR + ERROR_ROOM)
    try:
        await wait_for(lambda: billing.nc.is_closed)
        assert "maximum payload violation" in str(billing.nc.last_error)
        assert await dead_letters(pp) == []
        assert not await next_event_is_handled(pp, consumer, within=1.5)
    finally:
        task.cancel()
        await billing.close()


@pytest.mark.parametrize("provisioned_pair", [PAIR], indirect=True)
@pytest.mark.parametrize("former", [False, True], ids=["checked", "control-unchecked"])
async def test_an_event_whose_headers_cross_the_limit_fails_unsent(provisioned_pair, monkeypatch, former):
    """The body alone passes nats-py's check; with its `Nats-Msg-Id` it is over max_payload."""
    if former:
        put_back_the_former_behaviour(monkeypatch)
    pp = provisioned_pair
    async with BridgeClient(
        pp.bridges[ATTACKER], Credentials(nkey_seed=pp.seeds[ATTACKER]), publish_budget=0.5, publish_timeout=1
    ) as orders:
        event = orders.event("order.created", "order", 1, {"pad": ""})
        base = len(encode(event))
        event = orders.event("order.created", "order", 1, {"pad": "y" * (orders.nc.max_payload - base - 8)})
        assert len(encode(event)) <= orders.nc.max_payload
        with pytest.raises(PublishError) as failed:
            await orders.publish_event(event)
        if former:
            await wait_for(lambda: orders.nc.is_closed)  # the server closed it; nats-py does not come back
            assert "maximum payload violation" in str(orders.nc.last_error)
            return
        assert "exceed the server's max_payload" in str(failed.value)
        assert not orders.nc.is_closed
        small = await orders.publish_event(orders.event("order.created", "order", 2, {}))
        assert small.stream == pp.pair.stream


@pytest.mark.parametrize("former", [False, True], ids=["claim-read", "control-claim-ignored"])
async def test_jwt_mode_an_event_over_the_users_payload_claim_fails_unsent(
    make_server, tmp_path_factory, monkeypatch, former
):
    """JWT mode, `app_limits.payload` 4096 under the server's 1 MiB: the server applies the user's claim
    without announcing it; the client reads it from the `.creds`. Control: the claim ignored (the client
    trusts the server's INFO alone), the event is sent and the server closes the connection."""
    if former:
        monkeypatch.setattr(client_module, "creds_payload_limit", lambda credentials: 0)
    world = await jwt_deployment(make_server, AppLimits(payload=4096), tmp_path_factory.mktemp("resolver"))
    assert world.issued is not None
    bridge = bridge_outputs(LIMIT_PAIRS[0], "a", [world.server.url])
    async with BridgeClient(
        bridge, Credentials(creds=world.issued.creds("a")), publish_budget=0.5, publish_timeout=1
    ) as client:
        assert client.nc.max_payload == 1024 * 1024  # what the server announces
        big = client.event("order.created", "order", 1, {"pad": "y" * 5000})
        with pytest.raises(PublishError) as failed:
            await client.publish_event(big)
        if former:
            await wait_for(lambda: client.nc.is_closed)
            assert "maximum payload violation" in str(client.nc.last_error)
            return
        assert "max_payload of 4096 bytes" in str(failed.value) and client.max_payload == 4096
        assert not client.nc.is_closed
        small = await client.publish_event(client.event("order.created", "order", 2, {}))
        assert small.stream == LIMIT_PAIRS[0].stream


STREAM_LIMITED = {
    **PAIR,
    "stream": "size-stream-sync",
    "stream_options": {"max_msg_size": 2048, "max_msgs_per_subject": 10},
}


@pytest.mark.parametrize("provisioned_pair", [STREAM_LIMITED], indirect=True)
@pytest.mark.parametrize("former", [False, True], ids=["fallback", "control-no-fallback"])
async def test_a_peer_message_at_the_streams_max_msg_size_is_dead_lettered_without_its_body(
    provisioned_pair, monkeypatch, former
):
    """The stream's `max_msg_size` (2048 here, 16 KiB by default) counts headers too, and the app does not
    know it: orders stores a malformed body of exactly that size, billing's dead letter of it (the body
    plus the DLQ headers) is refused by the stream (10054), and goes again at once without the body.
    Control: without that fallback the dead letter never lands."""
    if former:
        monkeypatch.setattr(consumer_module, "is_too_large_for_stream", lambda err: False)
    pp = provisioned_pair
    attacker = await nats.connect(
        pp.url, nkeys_seed_str=pp.seeds[ATTACKER], inbox_prefix=names.inbox_prefix(ATTACKER)
    )
    await attacker.jetstream().publish(names.publish_subject(ATTACKER, VICTIM), b"x" * 2048, timeout=5)
    await attacker.close()
    billing = await BridgeClient(pp.bridges[VICTIM], Credentials(nkey_seed=pp.seeds[VICTIM])).connect()
    consumer = billing.consumer(lambda event, delivery: None, fetch_timeout=0.2)
    task = asyncio.create_task(consumer.run())
    try:
        if former:
            await wait_for(lambda: consumer.stats.dlq_failures >= 1)
            assert await dead_letters(pp) == []
            return
        await wait_for(lambda: consumer.stats.dead_lettered == 1)
        [letter] = await dead_letters(pp)
        assert letter.data == b"" and letter.headers[DLQ_BODY_OMITTED] == "2048"
        assert consumer.stats.dlq_failures == 0
    finally:
        task.cancel()
        await billing.close()
