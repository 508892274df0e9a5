"""The JWT-mode providers against a real operator-mode server: adopt, refusals and read.

The providers run in this process, in a thread as the host runs them; their I/O is real (the
resolver of a nats-server in operator mode with a full directory resolver). The engine's part is
covered by tests/test_e2e_jwt.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import nkeys
import pytest
from operator_support import Operator, provider_settings

from jsb_infra import jwt_claims as jc
from jsb_infra import resolver
from jsb_infra.local_server import LocalNatsServer
from jsb_infra.providers.base import ProviderError
from jsb_infra.providers.jwt_accounts import AppAccountJwtProvider, JetStreamAccountJwtProvider
from jsb_infra.resolver import ResolverError

EXPORTS = [{"subject": "orders.sync.billing", "response_type": "Singleton"}]


def js_props(operator: Operator, adopt: bool = False) -> dict[str, object]:
    return {
        "name": "JETSTREAM",
        "public_key": operator.jetstream_key,
        "signing_key": jc.public_key(jc.new_seed(nkeys.PREFIX_BYTE_ACCOUNT)),
        "exports": EXPORTS,
        "signing_keys": [operator.jetstream_signing_key],
        "adopt": adopt,
    }


@pytest.fixture
def operator_server(
    make_server: Callable[..., LocalNatsServer], tmp_path: Path
) -> tuple[Operator, LocalNatsServer]:
    operator = Operator()
    return operator, make_server(operator.server_config(tmp_path / "resolver"))


async def push_as_operator(server: LocalNatsServer, operator: Operator, claims: dict[str, object]) -> None:
    async with resolver.system_session([server.url], operator.system_creds) as nc:
        await resolver.push(nc, jc.encode(claims, operator.signing_seed))


async def test_an_account_exporting_what_the_stack_does_not_is_adopted_only_when_asked(operator_server):
    operator, server = operator_server
    claims = operator.jetstream_claims()
    claims["nats"]["exports"] = [jc.ServiceExport("payroll.requests").claim()]
    await push_as_operator(server, operator, claims)
    with provider_settings(server.url, operator):
        with pytest.raises(ProviderError, match=r"already exports \['payroll.requests'\].*adopt: true"):
            await asyncio.to_thread(JetStreamAccountJwtProvider().create, js_props(operator))
        created = await asyncio.to_thread(
            JetStreamAccountJwtProvider().create, js_props(operator, adopt=True)
        )
        outs = created.outs
    async with resolver.system_session([server.url], operator.system_creds) as nc:
        live = jc.decode(await resolver.lookup(nc, operator.jetstream_key) or "")
    assert [e["subject"] for e in live["nats"]["exports"]] == ["orders.sync.billing"] and outs["jwt"]


async def test_a_jwt_signed_by_an_untrusted_key_is_refused_before_the_push(operator_server):
    operator, server = operator_server
    stranger = Operator()  # another operator's signing key
    with provider_settings(server.url, stranger), pytest.raises(ResolverError) as err:
        # the system user is the stranger's too: the connection itself is refused
        await asyncio.to_thread(JetStreamAccountJwtProvider().create, js_props(operator))
    assert "cannot connect" in str(err.value) and stranger.signing_seed not in str(err.value)
    claims = jc.plain_account_claims("X", jc.public_key(jc.new_seed(nkeys.PREFIX_BYTE_ACCOUNT)))
    async with resolver.system_session([server.url], operator.system_creds) as nc:
        with pytest.raises(ResolverError, match="the servers' operator does not trust O"):
            await resolver.push(nc, jc.encode(claims, stranger.signing_seed))
        assert await resolver.lookup(nc, claims["sub"]) is None  # nothing stored
        # why the check is needed: the full resolver itself stores such a JWT and answers 200
        reply = await nc.request(resolver.UPDATE_SUBJECT, jc.encode(claims, stranger.signing_seed).encode())
        assert json.loads(reply.data)["data"]["code"] == 200
        assert await resolver.lookup(nc, claims["sub"]) is not None


async def test_read_reports_an_account_the_resolver_does_not_hold_as_gone(operator_server):
    operator, server = operator_server
    missing = jc.public_key(jc.new_seed(nkeys.PREFIX_BYTE_ACCOUNT))
    with provider_settings(server.url, operator):
        gone = await asyncio.to_thread(AppAccountJwtProvider().read, missing, {"app": "orders"})
        held = await asyncio.to_thread(
            JetStreamAccountJwtProvider().read, operator.jetstream_key, {"name": "X"}
        )
    assert gone.id == "" and held.id == operator.jetstream_key
