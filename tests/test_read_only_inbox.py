"""The read-only (preview) identity reads stream and consumer info and nothing else: not the replies
other users of the JetStream account get on the default `_INBOX` prefix.

A real nats-server loads the rendered `accounts.conf` (the deploy user and `jsb:previewUser`) as is.
The reader subscribes to everything it is allowed to (and tries `_INBOX.>` and `>`) while the deploy
user reads a message body with `STREAM.MSG.GET` and makes a management call: the reader receives none
of it. The control renders the old `_INBOX.>` allowance, and the same reader receives the body.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
from pathlib import Path

import nats
import pytest
from conftest import ADMIN_PASSWORD, ADMIN_USER, DEPLOY

from jsb_infra.cli import build_parser
from jsb_infra.core import accounts
from jsb_infra.core.accounts import DeployUser, account_layout, render_accounts_conf
from jsb_infra.core.credentials import new_user_keypair
from jsb_infra.core.names import READ_ONLY_INBOX_PREFIX
from jsb_infra.core.spec import load_config
from jsb_infra.deploy.providers.settings import ProviderSettingsError, settings_from_config
from jsb_infra.nats_admin import admin_session
from jsb_infra.ops import status

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pairs.yaml"
STREAM = "sniffed"
BODY = b"dead-lettered card 4111-1111-1111-1111"


async def _deploy_reads_a_message(url: str) -> None:
    """As the deploy user, on nats-py's default inbox prefix: a stream with one message, the message
    read back (`STREAM.MSG.GET`, as `jsb-infra dlq` does) and a management call (`STREAM.INFO`)."""
    nc = await nats.connect(url, user=ADMIN_USER, password=ADMIN_PASSWORD)
    try:
        js = nc.jetstream()
        await js.add_stream(name=STREAM, subjects=[f"{STREAM}.>"], max_bytes=1 << 20)
        await js.publish(f"{STREAM}.dlq", BODY)
        got = await nc.request(f"$JS.API.STREAM.MSG.GET.{STREAM}", b'{"seq": 1}', timeout=2)
        assert base64.b64decode(json.loads(got.data)["message"]["data"]) == BODY  # the deploy got it
        info = await nc.request(f"$JS.API.STREAM.INFO.{STREAM}", b"", timeout=2)
        assert json.loads(info.data)["state"]["messages"] == 1
    finally:
        await nc.close()


async def _sniff(url: str, seed: str, inbox_prefix: str) -> tuple[list[bytes], list[str]]:
    """What the reader receives, subscribed to every subject it may (and `_INBOX.>`, `>`), while the
    deploy user works; and the errors the server sent it."""
    errors: list[str] = []

    async def on_error(err: Exception) -> None:
        errors.append(str(err).lower())

    received: list[bytes] = []

    async def on_msg(msg: nats.aio.msg.Msg) -> None:
        received.append(msg.data)

    reader = await nats.connect(url, nkeys_seed_str=seed, inbox_prefix=inbox_prefix, error_cb=on_error)
    try:
        for subject in (*accounts.READ_ONLY_SUBSCRIBE, "_INBOX.>", ">"):
            await reader.subscribe(subject, cb=on_msg)
        await reader.flush()
        await _deploy_reads_a_message(url)
        await asyncio.sleep(0.3)
        await reader.flush()
        sniffed = list(received)
        # what the preview needs still works on its own prefix
        names = await reader.request("$JS.API.STREAM.NAMES", b"", timeout=2)
        assert STREAM in json.loads(names.data)["streams"]
    finally:
        await reader.close()
    return sniffed, errors


def _layout_conf(reader_key: str) -> str:
    return render_accounts_conf(
        account_layout(load_config(EXAMPLE).pairs), {}, DEPLOY, DeployUser(nkey=reader_key)
    )


async def test_the_read_only_identity_receives_no_reply_of_the_deploy_user(make_server):
    seed, public = new_user_keypair()
    server = make_server(_layout_conf(public))
    received, errors = await _sniff(server.url, seed, READ_ONLY_INBOX_PREFIX)
    assert received == []
    assert any('subscription to "_inbox.>"' in e for e in errors), errors
    assert any('subscription to ">"' in e for e in errors), errors


async def test_control_with_the_old_inbox_allowance_the_reader_receives_the_message_body(
    make_server, monkeypatch
):
    monkeypatch.setattr(accounts, "READ_ONLY_SUBSCRIBE", ("_INBOX.>",))
    seed, public = new_user_keypair()
    server = make_server(_layout_conf(public))
    received, _ = await _sniff(server.url, seed, "_INBOX")
    assert base64.b64encode(BODY) in b"".join(received)


@pytest.mark.parametrize("as_reader", [True, False])
async def test_the_provider_connects_as_the_reader_on_its_prefix_and_as_the_deploy_on_the_default(
    make_server, as_reader
):
    """The provider settings take the prefix from `jsb:previewUser`: a connection as that identity
    reads stream info on `READ_ONLY_INBOX_PREFIX`; the deploy user's stays on `_INBOX`, unchanged."""
    seed, public = new_user_keypair()
    server = make_server(_layout_conf(public))
    await _deploy_reads_a_message(server.url)
    admin = {"nkey_seed": seed} if as_reader else {"user": ADMIN_USER, "password": ADMIN_PASSWORD}
    settings = settings_from_config(
        {"jsb:servers": [server.url], "jsb:admin": admin, "jsb:previewUser": {"nkey": public}}
    )
    conn = settings.admin_connection()
    assert conn.connect_options().get("inbox_prefix") == (READ_ONLY_INBOX_PREFIX if as_reader else None)
    async with admin_session(conn) as admin_api:
        info = await admin_api.stream_info(STREAM)
    assert info is not None and info["state"]["messages"] == 1


def test_an_explicit_inbox_prefix_wins_and_a_bad_one_is_refused_naming_the_field():
    base = {"jsb:servers": ["nats://127.0.0.1:4222"], "jsb:previewUser": {"user": "preview"}}
    admin = {"user": "preview", "password": "pv-secret", "inbox_prefix": "_INBOX_mine"}
    conn = settings_from_config({**base, "jsb:admin": admin}).admin_connection()
    assert conn.connect_options()["inbox_prefix"] == "_INBOX_mine"
    for bad in ("_INBOX.>", "two words", "trailing."):
        settings = settings_from_config({**base, "jsb:admin": {**admin, "inbox_prefix": bad}})
        with pytest.raises(ProviderSettingsError, match=r"jsb:admin\.inbox_prefix") as err:
            settings.admin_connection()
        assert "pv-secret" not in str(err.value)
    # another user of the account (the deploy) is not the reader: nats-py's default prefix
    other = settings_from_config({**base, "jsb:admin": {"user": "deploy", "password": "d"}})
    assert "inbox_prefix" not in other.admin_connection().connect_options()


@pytest.mark.parametrize("prefix", [READ_ONLY_INBOX_PREFIX, None])
async def test_an_operator_command_as_the_reader_needs_its_prefix(make_server, prefix):
    """`jsb-infra status` as the read-only identity answers with `--inbox-prefix _INBOX_jsb_preview`;
    on the default prefix the server refuses its reply subscription and no answer comes back."""
    seed, public = new_user_keypair()
    server = make_server(_layout_conf(public))
    await _deploy_reads_a_message(server.url)
    deploy = await nats.connect(server.url, user=ADMIN_USER, password=ADMIN_PASSWORD)
    await deploy.jetstream().add_consumer(STREAM, durable_name="orders-workers", ack_policy="explicit")
    await deploy.close()
    argv = [
        "status",
        "--stream",
        STREAM,
        "--json",
        "--server",
        server.url,
        "--nkey-seed",
        seed,
        "--timeout",
        "1",
    ]
    args = build_parser().parse_args([*argv, *(["--inbox-prefix", prefix] if prefix else [])])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = await status.run_async(args, out)
    if prefix:
        assert code == 0, err.getvalue()
        rows = json.loads(out.getvalue())
        assert [(row["stream"], row["app"]) for row in rows] == [(STREAM, "orders")], rows
    else:
        assert code != 0 and 'subscription to "_inbox.' in err.getvalue(), err.getvalue()
        assert f"--inbox-prefix (or JSB_ADMIN_INBOX_PREFIX), {READ_ONLY_INBOX_PREFIX}" in err.getvalue()
