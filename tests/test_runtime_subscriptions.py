"""An app's `subscriptions` limit must leave the runtime its own subscriptions, or the runtime stops.

The server refuses a subscription over `max_subscriptions`; nats-py answers that by closing the whole
client, so a consumer ends at its first pull. `app_limits` therefore refuses a limit below what the
runtime holds on one connection (`runtime_subscriptions`: 2 per pair of the app, plus 1). Measured
here on the rendered layout, loaded as is, with the app in two pairs on one connection (`sharing`):
publishing and consuming on both pairs plus a probe request hold no more than that on the server's
`/connz`, and at exactly that limit everything works; the control, one below, closes the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request

import pytest
from conftest import DEPLOY, provision
from test_msg_id_preemption import wait_for

from jsb_infra.core.accounts import account_layout, render_accounts_conf
from jsb_infra.core.credentials import new_user_keypair, public_key_of
from jsb_infra.core.outputs import bridge_outputs
from jsb_infra.core.spec import AppLimits, ConfigError, parse_config, parse_pairs, runtime_subscriptions
from jsb_infra.local.server import free_port
from jsb_infra.runtime import BridgeClient, Credentials
from jsb_infra.runtime.probe import probe_publish

SPECS = [
    {"stream": "hub-east", "apps": ["hub", "east"]},
    {"stream": "hub-west", "apps": ["hub", "west"], "dlq": False},  # an app has one DLQ subject
]
PAIRS = parse_pairs(SPECS).pairs
NEEDED = runtime_subscriptions(2)  # hub is in two pairs


async def run_hub(make_server, subscriptions: int) -> tuple[BridgeClient, int, int]:
    """hub on one connection for both pairs: publish, consume and probe on each. Returns the client,
    the events handled and the most subscriptions the server counted on hub's connection."""
    seeds = {app: new_user_keypair()[0] for app in ("hub", "east", "west")}
    http = free_port()
    layout = account_layout(PAIRS, app_limits=AppLimits(subscriptions=subscriptions))
    keys = {app: public_key_of(seed) for app, seed in seeds.items()}
    server = make_server(f'http: "127.0.0.1:{http}"\n' + render_accounts_conf(layout, keys, DEPLOY))
    for pair in PAIRS:
        await provision(server.url, pair)
    hub_account = next(a.account for a in layout.apps if a.app == "hub")

    def hub_subscriptions() -> int:
        url = f"http://127.0.0.1:{http}/connz?acc={hub_account}&subs=1"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return max(
                (c.get("subscriptions", 0) for c in json.loads(reply.read())["connections"]), default=0
            )

    handled: list[str] = []

    async def handler(event, delivery) -> None:
        handled.append(event.event_id)

    first = await BridgeClient(
        bridge_outputs(PAIRS[0], "hub", [server.url]), Credentials(nkey_seed=seeds["hub"])
    ).connect()
    clients = [first, first.sharing(bridge_outputs(PAIRS[1], "hub", [server.url]))]
    tasks, most = [], 0
    try:
        for client in clients:
            await client.publish_event(client.event("t", "r", 1, {}))
            tasks.append(asyncio.create_task(client.consumer(handler, fetch_timeout=0.2).run()))
            await probe_publish(client.nc, client.bridge.publish_subject, timeout=2)
            most = max(most, hub_subscriptions())
        for peer, pair in (("east", PAIRS[0]), ("west", PAIRS[1])):
            async with BridgeClient(
                bridge_outputs(pair, peer, [server.url]), Credentials(nkey_seed=seeds[peer])
            ) as p:
                await p.publish_event(p.event("t", "r", 2, {}))
        with contextlib.suppress(AssertionError):  # the control's client closes instead
            await wait_for(lambda: len(handled) == 2 or first.nc.is_closed, timeout=5)
        most = max(most, 0 if first.nc.is_closed else hub_subscriptions())
    finally:
        for task in tasks:
            task.cancel()
    return first, len(handled), most


async def test_at_the_limit_the_spec_allows_the_runtime_works_on_both_pairs(make_server):
    hub, handled, most = await run_hub(make_server, NEEDED)
    try:
        assert not hub.nc.is_closed and hub.nc.last_error is None
        assert handled == 2
        assert 0 < most <= NEEDED, f"the runtime held {most} subscriptions, more than the spec reserves"
    finally:
        await hub.close()


async def test_control_one_below_the_server_refuses_a_subscription_and_the_client_closes(make_server):
    hub, handled, _ = await run_hub(make_server, NEEDED - 1)
    try:
        await wait_for(lambda: hub.nc.is_closed)
        assert "maximum subscriptions exceeded" in str(hub.nc.last_error)
        assert handled < 2
    finally:
        await hub.close()


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"subscriptions": NEEDED - 1}, "app_limits.subscriptions: 4 is below what the runtime holds"),
        ({"overrides": {"hub": {"subscriptions": 3}}}, "app_limits.overrides.hub.subscriptions: 3"),
    ],
)
def test_a_limit_below_the_runtimes_subscriptions_is_refused_naming_the_field(limits, field):
    with pytest.raises(ConfigError) as refused:
        parse_config({"pairs": SPECS, "app_limits": limits})
    assert any(field in problem and "hub" in problem for problem in refused.value.problems), refused.value
    # east and west are in one pair each: 3 is enough for them, and -1 for everyone
    parse_config(
        {"pairs": SPECS, "app_limits": {"subscriptions": 3, "overrides": {"hub": {"subscriptions": 5}}}}
    )
    parse_config({"pairs": SPECS, "app_limits": {"subscriptions": -1}})
