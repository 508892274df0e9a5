"""The shared fixture really enforces the rendered permissions (a sanity check of the test layer)."""

import asyncio

import nats

from jsb_infra.spec import Pair


async def test_app_can_publish_and_gets_puback(provisioned_pair):
    pp = provisioned_pair
    bridge = pp.bridges["orders"]
    errors: list[Exception] = []

    async def on_error(e: Exception) -> None:
        errors.append(e)

    nc = await nats.connect(
        pp.url, nkeys_seed_str=pp.seeds["orders"], inbox_prefix=bridge.inbox_prefix, error_cb=on_error
    )
    js = nc.jetstream()
    ack = await js.publish(bridge.publish_subject, b"hi")
    assert ack.stream == pp.pair.stream and ack.seq == 1
    await nc.publish("billing.sync.orders", b"forbidden")
    await nc.flush()
    await asyncio.sleep(0.2)
    await nc.close()
    assert isinstance(pp.pair, Pair)
    assert any("permissions violation" in str(e).lower() for e in errors)
