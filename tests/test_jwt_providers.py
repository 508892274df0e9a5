"""The JWT-mode providers against a real operator-mode server: read-modify-write of the operator's
JetStream account, adopt, refusals and read.

The providers run in this process, in a thread as the host runs them; their I/O is real (the
resolver of a nats-server in operator mode with a full directory resolver). The engine's part is
covered by tests/test_e2e_jwt.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import nkeys
import pytest
from nats.aio.client import RawCredentials
from operator_support import Operator, provider_settings, user_creds
from provider_host import ProviderCallError, ProviderHost

from jsb_infra import resolver
from jsb_infra.core import jwt_claims as jc
from jsb_infra.deploy.providers import settings
from jsb_infra.deploy.providers.base import ProviderError
from jsb_infra.deploy.providers.jwt_accounts import AppAccountJwtProvider, JetStreamAccountJwtProvider
from jsb_infra.local.server import LocalNatsServer
from jsb_infra.resolver import ResolverError

EXPORTS = [{"subject": "orders.sync.billing", "response_type": "Singleton"}]


def js_props(
    operator: Operator, adopt: bool = False, exports: list[dict[str, str]] = EXPORTS
) -> dict[str, Any]:
    return {
        "name": "JETSTREAM",
        "public_key": operator.jetstream_key,
        "signing_key": jc.public_key(jc.new_seed(nkeys.PREFIX_BYTE_ACCOUNT)),
        "exports": exports,
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


async def live_account(server: LocalNatsServer, operator: Operator) -> dict[str, Any]:
    async with resolver.system_session([server.url], operator.system_creds) as nc:
        return jc.decode(await resolver.lookup(nc, operator.jetstream_key) or "")


async def test_an_export_of_a_subject_the_stack_exports_is_taken_over_only_when_asked(operator_server):
    """The account already exports one of the layout's subjects (an earlier stack's, state lost):
    refused without adopt; with it the export becomes the stack's. Another export is kept either way."""
    operator, server = operator_server
    claims = operator.jetstream_claims()
    claims["nats"]["exports"] = [
        jc.ServiceExport("orders.sync.billing", "Stream").claim(),
        jc.ServiceExport("payroll.requests").claim(),
    ]
    await push_as_operator(server, operator, claims)
    with provider_settings(server.url, operator):
        with pytest.raises(ProviderError, match=r"already exports \['orders.sync.billing'\].*adopt: true"):
            await asyncio.to_thread(JetStreamAccountJwtProvider().create, js_props(operator))
        assert "response_type" in (await live_account(server, operator))["nats"]["exports"][0]  # untouched
        created = await asyncio.to_thread(
            JetStreamAccountJwtProvider().create, js_props(operator, adopt=True)
        )
        await asyncio.to_thread(JetStreamAccountJwtProvider().delete, operator.jetstream_key, created.outs)
    live = await live_account(server, operator)
    assert [e["subject"] for e in live["nats"]["exports"]] == ["payroll.requests"]


# -- read-modify-write: what the operator set on the JetStream account survives create, update, delete --
async def connects(server: LocalNatsServer, creds: str) -> bool:
    async def quiet(_: Exception) -> None:
        pass

    try:
        nc = await nats.connect(
            server.url,
            user_credentials=RawCredentials(creds),
            allow_reconnect=False,
            connect_timeout=2,
            error_cb=quiet,
        )
    except Exception:
        return False
    await nc.close()
    return True


async def streams(server: LocalNatsServer, deploy_creds: str) -> list[str]:
    async with await nats.connect(server.url, user_credentials=RawCredentials(deploy_creds)) as nc:
        reply = await nc.request("$JS.API.STREAM.NAMES", b"", timeout=2)
        return list(json.loads(reply.data).get("streams") or [])


async def monitor_tries_to_delete(server: LocalNatsServer, creds: str, stream: str) -> dict[str, Any]:
    """The scoped monitor user asks for account info (its template allows it), then deletes `stream`."""
    errors: list[str] = []

    async def note(err: Exception) -> None:
        errors.append(str(err))

    async with await nats.connect(
        server.url, user_credentials=RawCredentials(creds), error_cb=note, allow_reconnect=False
    ) as nc:
        info = json.loads((await nc.request("$JS.API.INFO", b"", timeout=2)).data)
        assert info["type"] == "io.nats.jetstream.api.v1.account_info_response", info
        with contextlib.suppress(nats.errors.TimeoutError):  # a denied request gets no answer
            await nc.request(f"$JS.API.STREAM.DELETE.{stream}", b"", timeout=0.5)
        await nc.flush()
    return {"errors": errors, "limits": info.get("limits")}


async def test_create_update_delete_keep_what_the_operator_set_on_the_jetstream_account(
    make_server: Callable[..., LocalNatsServer], tmp_path: Path
):
    operator = Operator()
    leaked_creds = user_creds("leaked", operator.jetstream_key, operator.jetstream_signing_seed)
    leaked_key = jc.public_key(jc.parse_creds(leaked_creds)[1])
    scoped_seed = jc.new_seed(nkeys.PREFIX_BYTE_ACCOUNT)
    scope = {
        "kind": "user_scope",
        "key": jc.public_key(scoped_seed),
        "role": "monitor",
        "template": {"pub": {"allow": ["$JS.API.INFO"]}, "sub": {"allow": ["_INBOX.>"]}, "subs": -1},
    }
    monitor_seed = jc.new_seed(nkeys.PREFIX_BYTE_USER)
    monitor_user = {  # no permissions of its own: they come from the scope of the key that issued it
        "name": "monitor",
        "sub": jc.public_key(monitor_seed),
        "nats": {"type": "user", "version": 2, "issuer_account": operator.jetstream_key},
    }
    monitor_creds = jc.creds_document(jc.encode(monitor_user, scoped_seed), monitor_seed)
    claims = operator.jetstream_claims()
    nats_claims = claims["nats"]
    nats_claims["revocations"] = {leaked_key: int(time.time())}  # nsc revocations add-user
    nats_claims["limits"].update({"disk_storage": 8 << 20, "mem_storage": 1 << 20, "streams": 5})
    nats_claims["signing_keys"] = [operator.jetstream_signing_key, scope]
    nats_claims["exports"] = [jc.ServiceExport("payroll.requests").claim()]
    nats_claims["tags"] = ["team:payments"]
    operator.jetstream_jwt = jc.encode(claims, operator.signing_seed)
    server = make_server(operator.server_config(tmp_path / "resolver"))
    async with await nats.connect(server.url, user_credentials=RawCredentials(operator.deploy_creds)) as nc:
        config = {"name": "victim", "subjects": ["victim.>"], "max_bytes": 1 << 20}
        reply = await nc.request("$JS.API.STREAM.CREATE.victim", json.dumps(config).encode(), timeout=2)
        assert "error" not in json.loads(reply.data), reply.data

    async def operator_part_unchanged(our_exports: set[str], our_key: str | None) -> None:
        live = (await live_account(server, operator))["nats"]
        assert live["revocations"] == nats_claims["revocations"]
        assert live["limits"] == nats_claims["limits"]
        assert live["tags"] == ["team:payments"]
        assert {e["subject"] for e in live.get("exports") or []} == {"payroll.requests"} | our_exports
        keys = live["signing_keys"]
        assert operator.jetstream_signing_key in keys and scope in keys  # the scope with its template
        assert {jc.signing_key_of(k) for k in keys} - {operator.jetstream_signing_key, scope["key"]} == (
            {our_key} if our_key else set()
        )
        assert not await connects(server, leaked_creds), "the revoked user was let in"
        attempt = await monitor_tries_to_delete(server, monitor_creds, "victim")
        assert any("permissions violation" in e.lower() for e in attempt["errors"]), attempt
        assert await streams(server, operator.deploy_creds) == ["victim"]  # the deletion did not happen
        assert attempt["limits"]["max_storage"] == 8 << 20  # the server applies the operator's limits

    await operator_part_unchanged(set(), None)
    provider = JetStreamAccountJwtProvider()
    with provider_settings(server.url, operator):
        props = js_props(operator)
        time.sleep(1)  # the resolver keeps the stored JWT if ours was issued earlier
        created = (await asyncio.to_thread(provider.create, props)).outs
        await operator_part_unchanged({"orders.sync.billing"}, props["signing_key"])
        moved = {**props, "exports": [{"subject": "billing.sync.orders", "response_type": "Singleton"}]}
        updated = (await asyncio.to_thread(provider.update, operator.jetstream_key, created, moved)).outs
        await operator_part_unchanged({"billing.sync.orders"}, props["signing_key"])
        await asyncio.to_thread(provider.delete, operator.jetstream_key, updated)
    await operator_part_unchanged(set(), None)


async def test_a_jwt_signed_by_an_untrusted_key_is_refused_before_the_push(operator_server):
    operator, server = operator_server
    stranger = Operator()  # another operator's signing key
    with provider_settings(server.url, stranger), pytest.raises(ProviderError) as err:
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


def system_user(operator: Operator, claims_of: Callable[[str, str, str], dict[str, Any]]) -> str:
    """A `.creds` of a system-account user with the rights `claims_of` gives it."""
    seed = jc.new_seed(nkeys.PREFIX_BYTE_USER)
    claims = claims_of("sys-user", jc.public_key(seed), operator.system_key)
    return jc.creds_document(jc.encode(claims, operator.system_signing_seed), seed)


async def test_read_with_a_system_user_refused_the_lookup_fails_instead_of_reporting_the_account_gone(
    operator_server,
):
    """A lookup the server refuses times out like one for an account it does not hold; taken as
    "gone", a refresh would drop the account from the state and the next `up` re-issue it with new
    keys. The read fails naming the permission; a user that may look up (the preview's) reads it."""
    operator, server = operator_server

    def no_lookup(name: str, key: str, account: str) -> dict[str, Any]:
        return jc.user_claims(name, key, ["$SYS.REQ.SERVER.PING.VARZ"], ["_INBOX.>"], account)

    reads = {}
    for label, creds in (
        ("refused", system_user(operator, no_lookup)),
        ("lookup only", system_user(operator, jc.claims_lookup_user_claims)),
    ):
        holder = Operator.__new__(Operator)
        holder.__dict__.update(operator.__dict__, system_creds=creds)
        with provider_settings(server.url, holder):
            try:
                reads[label] = await asyncio.to_thread(
                    JetStreamAccountJwtProvider().read, operator.jetstream_key, {"name": "X"}
                )
            except ProviderError as err:
                reads[label] = err
    assert isinstance(reads["refused"], ProviderError)
    assert "may not look up account JWTs ($SYS.REQ.ACCOUNT.*.CLAIMS.LOOKUP)" in str(reads["refused"])
    assert (
        not isinstance(reads["lookup only"], ProviderError)
        and reads["lookup only"].id == operator.jetstream_key
    )


def resolver_error_not_one_line() -> Any:
    """The control: the provider as it was before `ResolverError` was a one-line error. Defined as
    `__main__` code so that it is pickled by value (the provider host cannot import tests/)."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(
        """
from jsb_infra.deploy.providers.jwt_accounts import JetStreamAccountJwtProvider


class ResolverErrorNotOneLine(JetStreamAccountJwtProvider):
    def read(self, id_, props):
        # imported here: a module the method names as a global would be pickled with it
        from jsb_infra.deploy.providers import base
        from jsb_infra.resolver import ResolverError

        listed = base.ONE_LINE_ERRORS
        base.ONE_LINE_ERRORS = tuple(e for e in listed if e is not ResolverError)
        try:
            return type(self).__mro__[1].read(self, id_, props)
        finally:
            base.ONE_LINE_ERRORS = listed
""",
        namespace,
    )
    return namespace["ResolverErrorNotOneLine"]()


def test_a_resolver_failure_reaches_the_engine_as_one_line_from_the_provider_host(operator_server):
    """What `pulumi up`/`refresh` prints when the resolver refuses: the real provider host answers the
    read with the resolver's one line (what to fix), not a traceback. The control: the same refusal,
    with `ResolverError` taken off the one-line list in the host, comes back as a traceback."""
    operator, server = operator_server

    def no_lookup(name: str, key: str, account: str) -> dict[str, Any]:
        return jc.user_claims(name, key, ["$SYS.REQ.SERVER.PING.VARZ"], ["_INBOX.>"], account)

    config = {
        settings.SERVERS_KEY: [server.url],
        settings.ADMIN_KEY: {},
        settings.OPERATOR_SIGNING_KEY: operator.signing_seed,
        settings.SYSTEM_CREDS_KEY: system_user(operator, no_lookup),
    }
    details = {}
    with ProviderHost() as host:
        host.configure(config)
        for label, provider in (
            ("now", JetStreamAccountJwtProvider()),
            ("before", resolver_error_not_one_line()),
        ):
            with pytest.raises(ProviderCallError) as refused:
                host.read(provider, operator.jetstream_key, {"name": "X"})
            details[label] = refused.value.details.strip()
    assert "may not look up account JWTs ($SYS.REQ.ACCOUNT.*.CLAIMS.LOOKUP)" in details["now"]
    assert "Traceback" not in details["now"] and len(details["now"].splitlines()) == 1, details["now"]
    assert "Traceback (most recent call last)" in details["before"], details["before"]
    assert "ResolverError: the system account's user may not look up" in details["before"]
