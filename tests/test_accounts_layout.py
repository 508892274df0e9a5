"""The rendered account layout, loaded by a real nats-server as is, carries every app of every pair.

`jsb-infra render` writes `accounts.conf`; a server whose config is that file and nothing else (a
listen address and a JetStream store aside) starts, the deploy user provisions the pairs, and each
app, as its one identity over one connection (billing is in two pairs), publishes and consumes on all
its pairs through its imports, while `doctor` passes for every app of every pair.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import shutil
from pathlib import Path

import nats
import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, DEPLOY, DEPLOY_PASSWORD_ENV, provision

from jsb_infra.cli import main
from jsb_infra.core import names
from jsb_infra.core.accounts import STANDARD_CONNECTIONS, account_layout, render_accounts_conf
from jsb_infra.core.credentials import new_user_keypair, public_key_of
from jsb_infra.core.outputs import bridge_outputs
from jsb_infra.core.spec import load_config, parse_pairs
from jsb_infra.local.server import LocalNatsServer
from jsb_infra.runtime import BridgeClient, Credentials, Delivery, Event, doctor

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pairs.yaml"


@pytest.fixture
async def layout_server(tmp_path):
    config = load_config(EXAMPLE)
    apps = sorted({app for pair in config.pairs for app in pair.apps})
    keys = {app: new_user_keypair() for app in apps}
    out = tmp_path / "rendered"
    argv = ["render", str(EXAMPLE), "--out", str(out), "--deploy-user", ADMIN_USER]
    argv += [arg for app in apps for arg in ("--nkey", f"{app}={keys[app][1]}")]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    store = tmp_path / "server"
    store.mkdir()
    shutil.copy(out / "accounts.conf", store / "accounts.conf")
    server = LocalNatsServer(
        store_dir=store, extra_config='include "accounts.conf"\n', env={DEPLOY_PASSWORD_ENV: ADMIN_PASSWORD}
    ).start()
    for pair in config.pairs:
        await provision(server.url, pair)
    yield server, config, {app: seed for app, (seed, _) in keys.items()}
    server.stop()


def test_render_matches_the_pure_layout():
    config = load_config(EXAMPLE)
    text = render_accounts_conf(account_layout(config.pairs))
    assert text == render_accounts_conf(account_layout(config.pairs)), "byte-stable"
    assert text.count("jetstream:") == 1, "only the JetStream account has JetStream"
    assert "jetstream: {max_bytes_required: true}" in text, "every stream must reserve its max_bytes"
    limited = render_accounts_conf(account_layout(config.pairs, capacity=config.capacity))
    assert f"jetstream: {{max_file: {8 * 2**30}, max_mem: {2**30}, max_bytes_required: true}}" in limited
    layout = account_layout(config.pairs)
    billing = layout.app("billing")
    assert billing.streams == ("orders-billing-sync", "billing-shipping-sync")
    assert len(billing.services) == 7, "publish, dlq, pull and ack on the first pair; no dlq on the second"
    assert STANDARD_CONNECTIONS == ("STANDARD",)
    for _, account in layout.exports():
        assert account.startswith("APP_"), "every export goes to exactly one app account"


async def test_every_app_of_every_pair_works_over_one_connection(layout_server):
    server, config, seeds = layout_server
    bridges = {
        (pair.stream, app): bridge_outputs(pair, app, [server.url])
        for pair in config.pairs
        for app in pair.apps
    }
    owners: dict[str, BridgeClient] = {}
    clients: dict[tuple[str, str], BridgeClient] = {}
    for (stream, app), bridge in bridges.items():
        if app not in owners:
            owners[app] = await BridgeClient(bridge, Credentials(nkey_seed=seeds[app])).connect()
            clients[(stream, app)] = owners[app]
        else:
            clients[(stream, app)] = owners[app].sharing(bridge)
    received: dict[tuple[str, str], list[Event]] = {key: [] for key in clients}

    def handler(key: tuple[str, str]):
        async def handle(event: Event, delivery: Delivery) -> None:
            received[key].append(event)

        return handle

    consumers = [client.consumer(handler(key), fetch_timeout=0.3) for key, client in clients.items()]
    tasks = [asyncio.create_task(c.run()) for c in consumers]
    try:
        for (stream, app), client in clients.items():
            ack = await client.publish("test.event", "thing", f"{stream}/{app}", {"from": app})
            assert ack.stream == stream
        deadline = asyncio.get_running_loop().time() + 10
        while any(len(v) < 1 for v in received.values()):
            assert asyncio.get_running_loop().time() < deadline, {k: len(v) for k, v in received.items()}
            await asyncio.sleep(0.05)
        for (stream, app), events in received.items():
            peer = bridges[(stream, app)].destination
            assert [e.producer for e in events] == [peer]
            assert events[0].resource_id == f"{stream}/{peer}"
    finally:
        for consumer in consumers:
            await consumer.stop()
        for task in tasks:
            await task
        for owner in owners.values():
            assert owner.permission_violation_count == 0, owner.permission_violations
            await owner.close()
    assert len({id(c.nc) for c in clients.values()}) == len(owners) == 3, "one connection per app"


async def test_doctor_passes_for_every_app_of_every_pair(layout_server, tmp_path):
    server, config, seeds = layout_server
    for pair in config.pairs:
        for app in pair.apps:
            bridge_file = tmp_path / f"{pair.stream}-{app}.json"
            bridge_file.write_text(bridge_outputs(pair, app, [server.url]).model_dump_json())
            parser = argparse.ArgumentParser()
            doctor.add_arguments(parser)
            args = parser.parse_args(["--bridge", str(bridge_file), "--nkey-seed", seeds[app]])
            out = io.StringIO()
            code = await doctor.run_async(args, out=out)
            assert code == 0, out.getvalue()
            assert "DENIED" not in out.getvalue()


async def _publish_as(url: str, seed: str, app: str, subject: str) -> str:
    nc = await nats.connect(url, nkeys_seed_str=seed, inbox_prefix=names.inbox_prefix(app))
    try:
        ack = await nc.jetstream().publish(subject, b"x", timeout=1)
        return ack.stream
    except Exception as err:  # no PubAck: the import answered nothing
        return type(err).__name__
    finally:
        await nc.close()


async def test_reload_applies_new_pairs_of_existing_accounts_but_new_accounts_need_a_restart(make_server):
    """How an operator applies a changed layout (nats-server 2.15.1): a SIGHUP reload adds users, and
    new imports and exports of accounts the server already has; the imports of an account created by
    the reload answer nothing until a restart. `make up` restarts in that case; docs/permissions.md
    tells operators. If a server release fixes it, this test says so."""
    first = parse_pairs([{"stream": "ob", "apps": ["orders", "billing"]}]).pairs
    both = [*first, *parse_pairs([{"stream": "oc", "apps": ["orders", "carrier"], "dlq": False}]).pairs]
    seeds = {app: new_user_keypair()[0] for app in ("orders", "billing", "carrier")}
    keys = {app: public_key_of(seed) for app, seed in seeds.items()}
    server = make_server(render_accounts_conf(account_layout(first), keys, DEPLOY))
    for pair in both:
        await provision(server.url, pair)
    server.extra_config = render_accounts_conf(account_layout(both), keys, DEPLOY)
    server.reload()
    await asyncio.sleep(0.5)
    assert await _publish_as(server.url, seeds["orders"], "orders", "orders.sync.carrier") == "oc"
    assert await _publish_as(server.url, seeds["carrier"], "carrier", "carrier.sync.orders") == (
        "NoStreamResponseError"
    )
    server.stop()
    server.start()
    assert await _publish_as(server.url, seeds["carrier"], "carrier", "carrier.sync.orders") == "oc"


async def test_a_read_only_nkey_user_reads_the_jetstream_api_and_may_write_nothing(make_server):
    """`jsb:previewUser: {nkey: U...}`: the server loads the rendered entry; its user gets answers to
    info and names requests, and every write is refused at the publish."""
    from jsb_infra.core.accounts import DeployUser

    seed, public = new_user_keypair()
    layout = account_layout(load_config(EXAMPLE).pairs)
    server = make_server(render_accounts_conf(layout, {}, DEPLOY, DeployUser(nkey=public)))
    errors: list[str] = []

    async def on_error(err: Exception) -> None:
        errors.append(str(err).lower())

    nc = await nats.connect(
        server.url, nkeys_seed_str=seed, inbox_prefix=names.READ_ONLY_INBOX_PREFIX, error_cb=on_error
    )
    try:
        reply = await nc.request("$JS.API.STREAM.NAMES", b"", timeout=2)
        assert b"streams" in reply.data  # the JetStream account answers it
        with pytest.raises(nats.errors.TimeoutError):
            await nc.request("$JS.API.STREAM.CREATE.intruder", b'{"name": "intruder"}', timeout=0.5)
        await nc.flush()
    finally:
        await nc.close()
    assert any('publish to "$js.api.stream.create.intruder"' in e for e in errors), errors
