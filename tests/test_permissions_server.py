"""The least-privilege matrix of issue 2, on a server that enforces the rendered permissions.

Connected as an app (its NKey, its inbox prefix) everything the runtime needs works: publish + PubAck,
bind, fetch, ack, nak with a delay that really waits, term, repeated in_progress, DLQ publish. Every
management call, the other app's durable, subject and inbox, and the default `_INBOX` are denied.
Denials are seen as nats-py reports them: a request TimeoutError and an `error_cb` permissions violation.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from jsb_infra.core import names
from jsb_infra.core.accounts import account_layout, render_accounts_conf
from jsb_infra.core.permissions import app_permissions
from jsb_infra.core.spec import parse_pairs

APPS = ["orders", "billing"]
DENIAL_TIMEOUT = 0.5

# No backoff, so a nak delay is exact (a backoff adds backoff[n-1] - ack_wait); a 2s ack wait tells
# a lost nak (2s) from a working one (the delay), and lets in_progress prove it extends the deadline.
SHORT_PAIR = {
    "stream": "orders-billing-sync",
    "apps": APPS,
    "consumer": {"backoff": [], "ack_wait": "2s", "max_deliver": 5},
}
NO_DLQ_PAIR = {"stream": "orders-billing-sync", "apps": APPS, "dlq": False}
ACK_WAIT_S = 2.0


class Errors:
    """Async errors nats-py hands to error_cb (permission violations arrive only here)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def record(self, err: Exception) -> None:
        self.seen.append(str(err).lower())

    def violations(self) -> list[str]:
        return [e for e in self.seen if "permissions violation" in e]

    def denied(self, subject: str) -> bool:
        return any(f'"{subject.lower()}"' in e for e in self.violations())


async def connect_as(pp: Any, app: str, errors: Errors, inbox_prefix: str | None = "own") -> NATS:
    options: dict[str, Any] = {
        "nkeys_seed_str": pp.seeds[app],
        "error_cb": errors.record,
        "allow_reconnect": False,
    }
    if inbox_prefix == "own":
        options["inbox_prefix"] = pp.bridges[app].inbox_prefix
    elif inbox_prefix is not None:
        options["inbox_prefix"] = inbox_prefix
    return await nats.connect(pp.url, **options)


async def settle(nc: NATS) -> None:
    """Let the server's async -ERR for a denied publish/subscribe reach error_cb."""
    await nc.flush()
    await asyncio.sleep(0.1)


async def admin_api(pp: Any, subject: str) -> dict[str, Any]:
    admin = await pp.admin()
    try:
        return json.loads((await admin.request(subject, b"", timeout=2)).data)
    finally:
        await admin.close()


async def consumer_state(pp: Any, app: str) -> dict[str, Any]:
    return await admin_api(pp, f"$JS.API.CONSUMER.INFO.{pp.pair.stream}.{names.durable_name(app)}")


async def feed(pp: Any, app: str, payload: bytes) -> None:
    """The admin publishes a message for `app` (into app's durable) so consumer tests need no peer."""
    admin = await pp.admin()
    try:
        await admin.jetstream().publish(pp.bridges[app].consume_subject, payload)
    finally:
        await admin.close()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return await check()


# -- what the documents contain ---------------------------------------------------------------------


@pytest.mark.parametrize("app", APPS)
@pytest.mark.parametrize("dlq", [True, False])
def test_claims_are_exactly_least_privilege(app, dlq):
    pair = parse_pairs([{**NO_DLQ_PAIR, "dlq": dlq}]).pairs[0]
    other = pair.destination(app)
    perms = app_permissions(pair, app)
    durable = f"{app}-workers"
    expected_pub = [f"{app}.sync.{other}"] + ([f"{app}.sync.dlq"] if dlq else [])
    expected_pub += [
        f"$JS.API.CONSUMER.MSG.NEXT.orders-billing-sync.{durable}",
        f"$JS.ACK.orders-billing-sync.{durable}.*.*.*.*.*",
    ]
    assert perms.claims() == {"pub": {"allow": expected_pub}, "sub": {"allow": [f"_INBOX_{app}.>"]}}
    every = perms.publish + perms.subscribe
    assert ">" not in every and "$JS.API.>" not in every and "_INBOX.>" not in every
    assert not any(s.startswith("$JS.API.") and s.endswith(">") for s in every)
    assert not any(s.startswith("$JS.ACK.") and ("*" in s.split(".")[2:4] or s.endswith(">")) for s in every)
    conf = render_accounts_conf(account_layout([pair]), {app: "U" + "A" * 55})
    assert "allow_responses" not in conf and "deny" not in conf
    assert 'allowed_connection_types: ["STANDARD"]' in conf
    assert "allow_responses" not in json.dumps(perms.claims())


# -- allowed: everything the runtime needs ----------------------------------------------------------


@pytest.mark.parametrize("app", APPS)
async def test_publish_gets_puback_and_the_peer_fetches_and_acks(provisioned_pair, app):
    pp = provisioned_pair
    peer = pp.pair.destination(app)
    sender_errors, receiver_errors = Errors(), Errors()
    sender = await connect_as(pp, app, sender_errors)
    receiver = await connect_as(pp, peer, receiver_errors)
    try:
        ack = await sender.jetstream().publish(pp.bridges[app].publish_subject, b"event-1", timeout=2)
        assert (ack.stream, ack.seq) == (pp.pair.stream, 1)

        bridge = pp.bridges[peer]
        sub = await receiver.jetstream().pull_subscribe_bind(durable=bridge.durable, stream=bridge.stream)
        [msg] = await sub.fetch(1, timeout=2)
        assert (msg.subject, msg.data) == (f"{app}.sync.{peer}", b"event-1")
        await msg.ack()
        await settle(receiver)

        async def gone() -> bool:  # workqueue: an acked message leaves the stream
            info = await admin_api(pp, f"$JS.API.STREAM.INFO.{pp.pair.stream}")
            return info["state"]["messages"] == 0

        assert await eventually(gone), "the ack did not reach the server"
    finally:
        await sender.close()
        await receiver.close()
    assert sender_errors.violations() == [] and receiver_errors.violations() == []


@pytest.mark.parametrize("app", APPS)
async def test_ack_sync_gets_its_reply_on_the_own_inbox(provisioned_pair, app):
    pp = provisioned_pair
    await feed(pp, app, b"x")
    errors = Errors()
    nc = await connect_as(pp, app, errors)
    try:
        bridge = pp.bridges[app]
        sub = await nc.jetstream().pull_subscribe_bind(durable=bridge.durable, stream=bridge.stream)
        [msg] = await sub.fetch(1, timeout=2)
        await msg.ack_sync(timeout=2)
        state = await consumer_state(pp, app)
        assert state["num_ack_pending"] == 0 and state["ack_floor"]["stream_seq"] == 1
    finally:
        await nc.close()
    assert errors.violations() == []


@pytest.mark.parametrize("provisioned_pair", [SHORT_PAIR], indirect=True)
@pytest.mark.parametrize("app", APPS)
async def test_nak_with_delay_really_waits(provisioned_pair, app):
    pp = provisioned_pair
    delay = 0.5
    await feed(pp, app, b"retry-me")
    errors = Errors()
    nc = await connect_as(pp, app, errors)
    try:
        bridge = pp.bridges[app]
        sub = await nc.jetstream().pull_subscribe_bind(durable=bridge.durable, stream=bridge.stream)
        [first] = await sub.fetch(1, timeout=2)
        assert first.metadata.num_delivered == 1
        naked_at = time.monotonic()
        await first.nak(delay=delay)
        [again] = await sub.fetch(1, timeout=ACK_WAIT_S + 2)
        waited = time.monotonic() - naked_at
        assert again.data == b"retry-me" and again.metadata.num_delivered == 2
        assert waited >= delay * 0.8, f"redelivered after {waited:.2f}s: the nak delay was not applied"
        # A nak lost to a permission denial would show up as the ack-wait redelivery instead.
        assert waited < ACK_WAIT_S * 0.8, (
            f"redelivered after {waited:.2f}s: that is the ack wait, not the nak"
        )
        await again.ack()
        await settle(nc)
    finally:
        await nc.close()
    assert errors.violations() == []


@pytest.mark.parametrize("provisioned_pair", [SHORT_PAIR], indirect=True)
@pytest.mark.parametrize("app", APPS)
async def test_term_stops_redelivery(provisioned_pair, app):
    pp = provisioned_pair
    await feed(pp, app, b"poison")
    errors = Errors()
    nc = await connect_as(pp, app, errors)
    try:
        bridge = pp.bridges[app]
        sub = await nc.jetstream().pull_subscribe_bind(durable=bridge.durable, stream=bridge.stream)
        [msg] = await sub.fetch(1, timeout=2)
        await msg.term()
        await settle(nc)

        async def terminated() -> bool:
            state = await consumer_state(pp, app)
            return state["num_ack_pending"] == 0 and state["ack_floor"]["stream_seq"] == 1

        assert await eventually(terminated, within=ACK_WAIT_S * 0.5), "the term did not reach the server"
    finally:
        await nc.close()
    assert errors.violations() == []


@pytest.mark.parametrize("provisioned_pair", [SHORT_PAIR], indirect=True)
@pytest.mark.parametrize("app", APPS)
async def test_in_progress_twice_then_ack_is_never_redelivered(provisioned_pair, app):
    pp = provisioned_pair
    await feed(pp, app, b"slow")
    errors = Errors()
    nc = await connect_as(pp, app, errors)
    try:
        bridge = pp.bridges[app]
        sub = await nc.jetstream().pull_subscribe_bind(durable=bridge.durable, stream=bridge.stream)
        [msg] = await sub.fetch(1, timeout=2)
        step = ACK_WAIT_S * 0.4
        for _ in range(2):  # total work time 3 * step > ack wait: only the +WPI keep it from redelivery
            await asyncio.sleep(step)
            await msg.in_progress()
        await asyncio.sleep(step)
        await msg.ack()
        await settle(nc)
        state = await consumer_state(pp, app)
        assert state["num_redelivered"] == 0 and state["delivered"]["consumer_seq"] == 1
        assert state["num_ack_pending"] == 0
        with pytest.raises(nats.errors.TimeoutError):
            await sub.fetch(1, timeout=DENIAL_TIMEOUT)
    finally:
        await nc.close()
    assert errors.violations() == []


@pytest.mark.parametrize("app", APPS)
async def test_publish_to_own_dlq(provisioned_pair, app):
    pp = provisioned_pair
    errors = Errors()
    nc = await connect_as(pp, app, errors)
    try:
        dlq = pp.bridges[app].dlq_subject
        assert dlq == f"{app}.sync.dlq"
        ack = await nc.jetstream().publish(dlq, b"dead", headers={"X-Reason": "test"}, timeout=2)
        assert ack.stream == pp.pair.stream
    finally:
        await nc.close()
    assert errors.violations() == []


# -- denied: management, the other app, foreign inboxes ---------------------------------------------


@pytest.mark.parametrize("app", APPS)
async def test_management_api_and_the_other_durable_are_denied(provisioned_pair, app):
    pp = provisioned_pair
    stream, own, other = pp.pair.stream, names.durable_name(app), names.durable_name(pp.pair.destination(app))
    config = json.dumps({"name": stream, "subjects": ["x.>"]}).encode()
    denied_requests = {
        f"$JS.API.STREAM.CREATE.{stream}x": config,
        f"$JS.API.STREAM.UPDATE.{stream}": config,
        f"$JS.API.STREAM.DELETE.{stream}": b"",
        f"$JS.API.STREAM.INFO.{stream}": b"",
        f"$JS.API.STREAM.PURGE.{stream}": b"",
        "$JS.API.STREAM.NAMES": b"",
        "$JS.API.INFO": b"",
        f"$JS.API.CONSUMER.CREATE.{stream}.{own}x": b"{}",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{own}x": b"{}",
        f"$JS.API.CONSUMER.DELETE.{stream}.{own}": b"",
        f"$JS.API.CONSUMER.DELETE.{stream}.{other}": b"",
        f"$JS.API.CONSUMER.INFO.{stream}.{own}": b"",
        f"$JS.API.CONSUMER.INFO.{stream}.{other}": b"",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{other}": json.dumps({"batch": 1}).encode(),
    }
    errors = Errors()
    nc = await connect_as(pp, app, errors)
    try:
        results = await asyncio.gather(
            *(nc.request(s, body, timeout=DENIAL_TIMEOUT) for s, body in denied_requests.items()),
            return_exceptions=True,
        )
        await settle(nc)
    finally:
        await nc.close()
    answered = [s for s, r in zip(denied_requests, results, strict=True) if not isinstance(r, Exception)]
    assert answered == [], f"{app} got answers from {answered}"
    assert all(isinstance(r, nats.errors.TimeoutError) for r in results)
    not_reported = [s for s in denied_requests if not errors.denied(s)]
    assert not_reported == [], f"no permissions violation reported for {not_reported}"
    # and nothing changed behind the denials
    assert "error" not in await admin_api(pp, f"$JS.API.STREAM.INFO.{stream}")
    for durable in (own, other):
        assert "error" not in await admin_api(pp, f"$JS.API.CONSUMER.INFO.{stream}.{durable}")


@pytest.mark.parametrize("app", APPS)
async def test_binding_to_the_other_apps_durable_fetches_nothing(provisioned_pair, app):
    pp = provisioned_pair
    other = pp.pair.destination(app)
    await feed(pp, other, b"not-yours")
    errors = Errors()
    nc = await connect_as(pp, app, errors)
    try:
        sub = await nc.jetstream().pull_subscribe_bind(
            durable=names.durable_name(other), stream=pp.pair.stream
        )
        with pytest.raises(nats.errors.TimeoutError):
            await sub.fetch(1, timeout=DENIAL_TIMEOUT)
        await settle(nc)
    finally:
        await nc.close()
    assert errors.denied(names.msg_next_subject(pp.pair.stream, names.durable_name(other)))
    assert (await consumer_state(pp, other))["num_pending"] == 1, "the other app's message is untouched"


@pytest.mark.parametrize("app", APPS)
async def test_publishing_to_the_other_apps_subjects_is_denied(provisioned_pair, app):
    pp = provisioned_pair
    other = pp.pair.destination(app)
    errors = Errors()
    nc = await connect_as(pp, app, errors)
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await nc.jetstream().publish(f"{other}.sync.{app}", b"forged", timeout=DENIAL_TIMEOUT)
        await nc.publish(f"{other}.sync.dlq", b"forged")
        await settle(nc)
    finally:
        await nc.close()
    assert errors.denied(f"{other}.sync.{app}") and errors.denied(f"{other}.sync.dlq")
    info = await admin_api(pp, f"$JS.API.STREAM.INFO.{pp.pair.stream}")
    assert info["state"]["messages"] == 0


@pytest.mark.parametrize("app", APPS)
async def test_subscribing_to_foreign_inboxes_is_denied(provisioned_pair, app):
    pp = provisioned_pair
    other_inbox = f"{pp.bridges[pp.pair.destination(app)].inbox_prefix}.>"
    errors = Errors()
    nc = await connect_as(pp, app, errors)
    try:
        await nc.subscribe("_INBOX.>")
        await nc.subscribe(other_inbox)
        await settle(nc)
    finally:
        await nc.close()
    assert errors.denied("_INBOX.>"), errors.seen
    assert errors.denied(other_inbox), errors.seen


@pytest.mark.parametrize("app", APPS)
async def test_default_inbox_prefix_gets_no_puback(provisioned_pair, app):
    """Connected without its own inbox prefix, the app's reply subscription is denied: no PubAck."""
    pp = provisioned_pair
    errors = Errors()
    nc = await connect_as(pp, app, errors, inbox_prefix=None)
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await nc.jetstream().publish(pp.bridges[app].publish_subject, b"x", timeout=DENIAL_TIMEOUT)
        await settle(nc)
    finally:
        await nc.close()
    assert any("subscription" in v and "_inbox." in v for v in errors.violations()), errors.seen


@pytest.mark.parametrize("provisioned_pair", [NO_DLQ_PAIR], indirect=True)
@pytest.mark.parametrize("app", APPS)
async def test_dlq_publish_is_denied_when_the_dlq_is_off(provisioned_pair, app):
    pp = provisioned_pair
    assert pp.bridges[app].dlq_subject is None
    errors = Errors()
    nc = await connect_as(pp, app, errors)
    try:
        await nc.publish(names.dlq_subject(app), b"dead")
        ack = await nc.jetstream().publish(pp.bridges[app].publish_subject, b"still-works", timeout=2)
        assert ack.seq == 1
        await settle(nc)
    finally:
        await nc.close()
    assert errors.denied(names.dlq_subject(app))
    assert errors.violations() == [v for v in errors.violations() if ".sync.dlq" in v]
