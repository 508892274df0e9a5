"""What the keyed `Nats-Msg-Id`s promise across processes, and what a credential rotation changes.

Two instances of an app with the same credential derive the same key: an event published by one and
retried by the other (an outbox row sent twice) is stored once. A rotation (the app's NKey replaced,
`pulumi up --replace` of its credential) changes the key: a row published before and retried after
is stored twice, and only the consumer's inbox (keyed by `event_id`) keeps its effect single. The
server here is open (no auth checks the NKey), so both seeds connect; the ids are the client's.
"""

from __future__ import annotations

import json

import pytest

from jsb_infra.core.credentials import new_user_keypair
from jsb_infra.runtime import BridgeClient, Credentials

PAIR = {"stream": "rotation-sync", "apps": ["orders", "billing"]}


async def stored(open_pair) -> int:
    nc = await open_pair.admin()
    try:
        reply = await nc.request(f"$JS.API.STREAM.INFO.{open_pair.pair.stream}", b"", timeout=2)
        return int(json.loads(reply.data)["state"]["messages"])
    finally:
        await nc.close()


@pytest.mark.parametrize("open_pair", [PAIR], indirect=True)
@pytest.mark.parametrize(("rotated", "copies"), [(False, 1), (True, 2)], ids=["same-seed", "rotated-seed"])
async def test_a_retry_from_another_instance_is_stored_once_unless_the_key_was_rotated(
    open_pair, rotated, copies
):
    before = new_user_keypair()[0]
    after = new_user_keypair()[0] if rotated else before
    bridge = open_pair.bridges["orders"]
    async with BridgeClient(bridge, Credentials(nkey_seed=before)) as first:
        event = first.event("order.created", "order", 1, {})
        await first.publish_event(event)
    async with BridgeClient(bridge, Credentials(nkey_seed=after)) as second:
        ack = await second.publish_event(event)  # the same outbox row, sent again by another process
    assert bool(ack.duplicate) is not rotated
    assert await stored(open_pair) == copies
