"""`BridgeClient.connect()` raises one public exception per failure mode, never a type of nats-py's.

Each mode is tried many times against a real nats-server: the refused login raised nats-py's private
`_StopConnecting` in about one of three tries before (the error callback raised it again while the
failed connection was being closed), so a single try proves nothing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_nats_admin import make_tls_files

from jsb_infra.core.credentials import new_user_keypair
from jsb_infra.core.outputs import bridge_outputs
from jsb_infra.local.server import accounts_config, free_port
from jsb_infra.runtime import (
    BridgeClient,
    ConnectAuthorizationError,
    ConnectGaveUp,
    ConnectTLSError,
    ConnectUnreachableError,
    Credentials,
    TlsOptions,
)
from jsb_infra.runtime.client import connect_failure_type

TRIES = 12  # each try takes a few ms; the race showed in about one of three


def bridge_for(pp, app: str, url: str):
    return bridge_outputs(pp.pair, app, [url])


async def expect(kind: type[ConnectGaveUp], client: BridgeClient) -> ConnectGaveUp:
    with pytest.raises(ConnectGaveUp) as caught:
        await asyncio.wait_for(client.connect(), 15)
    err = caught.value
    assert type(err) is kind, f"{type(err).__module__}.{type(err).__name__}: {err}"
    assert err.__cause__ is None and err.__suppress_context__, "no nats-py exception chained to it"
    assert client._nc is None, "a failed connect leaves no connection object behind"
    return err


async def test_a_refused_login_is_always_connect_authorization_error(provisioned_pair):
    pp = provisioned_pair
    stranger = new_user_keypair()[0]  # a valid seed the server does not know
    for attempts in [1] * TRIES + [2]:
        client = BridgeClient(
            pp.bridges["orders"],
            Credentials(nkey_seed=stranger),
            connect_attempts=attempts,
            reconnect_time_wait=0.01,
        )
        err = await expect(ConnectAuthorizationError, client)
        assert "authorization violation" in str(err).lower()
        assert len(client.errors) >= attempts  # the server's reasons stay readable
    # the right seed on the same server connects: the refusal was about the identity
    ok = BridgeClient(pp.bridges["orders"], Credentials(nkey_seed=pp.seeds["orders"]))
    await ok.connect()
    assert ok.nc.is_connected
    await ok.close()


async def test_no_server_is_always_connect_unreachable_error(provisioned_pair):
    url = f"nats://127.0.0.1:{free_port()}"
    for attempts in [1] * TRIES + [3]:
        client = BridgeClient(
            bridge_for(provisioned_pair, "orders", url), connect_attempts=attempts, reconnect_time_wait=0.01
        )
        err = await expect(ConnectUnreachableError, client)
        assert "refused" in str(err).lower()


async def test_tls_failures_are_always_connect_tls_error(make_server, provisioned_pair, tmp_path: Path):
    tls = make_tls_files(tmp_path)
    server = make_server(
        f'tls {{ cert_file: "{tls}/server.pem", key_file: "{tls}/server.key", ca_file: "{tls}/ca.pem", '
        "verify: true }\n" + accounts_config([], "admin", "pw")
    )
    url = f"tls://127.0.0.1:{server.port}"
    bridge = bridge_for(provisioned_pair, "orders", url)
    cases = {
        "server certificate not trusted (no CA given)": Credentials(user="admin", password="pw"),
        "no client certificate for a server that demands one": Credentials(
            user="admin", password="pw", tls=TlsOptions(ca_file=str(tls / "ca.pem"))
        ),
    }
    for _ in range(TRIES // 2):
        for credentials in cases.values():
            client = BridgeClient(
                bridge, credentials, connect_attempts=1, reconnect_time_wait=0.01, connect_timeout=0.5
            )
            await expect(ConnectTLSError, client)
    # control: the same server with the CA and the client certificate connects
    full = Credentials(
        user="admin",
        password="pw",
        tls=TlsOptions(
            ca_file=str(tls / "ca.pem"), cert_file=str(tls / "client.pem"), key_file=str(tls / "client.key")
        ),
    )
    ok = BridgeClient(bridge, full)
    await ok.connect()
    assert ok.nc.is_connected
    await ok.close()


@pytest.mark.parametrize(
    ("error", "tls", "kind"),
    [
        (Exception("nats: 'Authorization Violation'"), False, ConnectAuthorizationError),
        (Exception("nats: 'User Authentication Expired'"), True, ConnectAuthorizationError),
        (ConnectionRefusedError(111, "Connect call failed"), True, ConnectUnreachableError),
        (TimeoutError(), False, ConnectUnreachableError),
        (None, False, ConnectUnreachableError),
        # dropped after the TCP connect, the refusal's text lost to the reset
        (ConnectionResetError(104, "Connection reset by peer"), False, ConnectAuthorizationError),
        (ConnectionResetError("Connection lost"), True, ConnectTLSError),
        (BrokenPipeError(32, "Broken pipe"), True, ConnectTLSError),
    ],
)
def test_failure_type_of_each_error(error, tls, kind):
    assert connect_failure_type(error, tls) is kind
