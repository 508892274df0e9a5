"""The servers' account resolver, reached as the system account's user: push and look up account JWTs.

`$SYS.REQ.CLAIMS.UPDATE` (body: an account JWT signed by the operator or one of its signing keys)
stores it in a `full` (directory) resolver and applies it at once to the account's connections;
each server answers `{"data": {"account", "code": 200, "message"}}` or `{"error": {"account",
"code", "description"}}` (nats-server server/accounts.go, respondToUpdate). A server keeps the
stored JWT when the pushed one was issued earlier (server/dirstore.go, saveIfNewer) and still
answers 200, so `push` looks the account up afterwards and refuses if the server holds another JWT.
`$SYS.REQ.ACCOUNT.<key>.CLAIMS.LOOKUP` answers with the stored JWT; a full resolver does not answer
for an account it does not hold. A full resolver also stores, and answers 200 for, an account JWT
signed by a key its operator does not trust (the account then never loads), so `push` first checks
the signer against the servers' trusted operators (`$SYS.REQ.SERVER.PING.VARZ`).
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.client import RawCredentials

from jsb_infra.core.jwt_claims import creds_inbox_prefix, decode
from jsb_infra.nats_admin import ErrorsSeen

UPDATE_SUBJECT = "$SYS.REQ.CLAIMS.UPDATE"
VARZ_SUBJECT = "$SYS.REQ.SERVER.PING.VARZ"
LOOKUP_SUBJECT = "$SYS.REQ.ACCOUNT.{}.CLAIMS.LOOKUP"


class ResolverError(RuntimeError):
    """The resolver refused or did not answer; the message names the account, never a secret."""


_REFUSED: weakref.WeakKeyDictionary[NATS, ErrorsSeen] = weakref.WeakKeyDictionary()
"""Per system session, the server's permission refusals (`-ERR 'Permissions Violation for Publish
to "..."'`, which nats-py hands the error callback, not the request): a lookup the user may not send
times out exactly like one for an account the resolver does not hold."""


def refused(nc: NATS, subject: str) -> bool:
    """Whether the server refused this session a publish to `subject`."""
    seen = _REFUSED.get(nc)
    wanted = f'publish to "{subject.lower()}"'
    return seen is not None and any(wanted in str(err).lower() for err in seen.errors)


@asynccontextmanager
async def system_session(
    servers: list[str], system_creds: str, tls: Any = None, timeout: float = 5.0
) -> AsyncIterator[NATS]:
    """A connection as the system account's user (`system_creds`: the text of its `.creds`); a
    lookup-only user gets its replies on the read-only identities' prefix (`inbox_prefix_of`)."""
    seen = ErrorsSeen()
    options: dict[str, Any] = {
        "servers": servers,
        "user_credentials": RawCredentials(system_creds),
        "connect_timeout": timeout,
        "allow_reconnect": False,
        "error_cb": seen.record,
    }
    if tls is not None:
        options["tls"] = tls
    prefix = creds_inbox_prefix(system_creds)
    if prefix:
        options["inbox_prefix"] = prefix
    try:
        nc = await nats.connect(**options)
    except Exception as err:
        raise ResolverError(
            f"cannot connect to {', '.join(servers)} as the system account's user "
            f"({type(err).__name__}: {err}); check jsb:systemCreds and jsb:servers"
        ) from None
    _REFUSED[nc] = seen
    try:
        yield nc
    finally:
        await nc.close()


async def lookup(nc: NATS, account_key: str, timeout: float = 1.0) -> str | None:
    """The account JWT the resolver holds, or None when it holds none. Raises when the server
    refused the system user the lookup: that is no answer about the account (a refresh taking it
    for one would drop the account from the state, and the next `up` re-create it with new keys)."""
    subject = LOOKUP_SUBJECT.format(account_key)
    try:
        reply = await nc.request(subject, b"", timeout=timeout)
    except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError):
        if refused(nc, subject):
            raise ResolverError(
                f"the system account's user may not look up account JWTs ({LOOKUP_SUBJECT.format('*')}): "
                "give it that publish permission (jsb:systemCreds)"
            ) from None
        return None
    token = reply.data.decode().strip()
    return token or None


async def trusted_signers(nc: NATS, timeout: float = 5.0) -> set[str]:
    """The operator keys (identity and signing keys) a server trusts to sign accounts."""
    try:
        reply = await nc.request(VARZ_SUBJECT, b"", timeout=timeout)
        operators = json.loads(reply.data)["data"].get("trusted_operators_claim") or []
    except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError, ValueError, KeyError):
        raise ResolverError("the servers did not say which operator they trust (no VARZ answer)") from None
    keys = set()
    for claims in operators:
        keys.add(claims.get("sub"))
        keys.update((claims.get("nats") or {}).get("signing_keys") or [])
    return keys


async def jetstream_stores(nc: NATS, wait: float = 0.5) -> dict[str, tuple[int, int]]:
    """Each answering server's JetStream store limits, {server name: (max_storage, max_memory)}, from
    its VARZ (every server answers the ping; the answers are gathered for `wait` seconds)."""
    stores: dict[str, tuple[int, int]] = {}
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish(VARZ_SUBJECT, b"", reply=inbox)
        deadline = asyncio.get_running_loop().time() + wait
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            try:
                data = json.loads(msg.data)["data"]
                config = (data.get("jetstream") or {}).get("config") or {}
                stores[str(data.get("server_name") or data.get("server_id"))] = (
                    int(config.get("max_storage", 0)),
                    int(config.get("max_memory", 0)),
                )
            except (ValueError, KeyError, TypeError):
                continue
    finally:
        await sub.unsubscribe()
    return stores


async def push(nc: NATS, account_jwt: str, timeout: float = 5.0) -> None:
    """Store and apply an account JWT; raises when the servers do not trust its signer, or the
    resolver refuses it or keeps another one."""
    claims = decode(account_jwt, verify=False)
    account = claims["sub"]
    if claims["iss"] not in await trusted_signers(nc, timeout):
        raise ResolverError(
            f"the servers' operator does not trust {claims['iss']}, which signed account {account}: "
            "jsb:operatorSigningKey must be a signing key of the operator the servers run with"
        )
    try:
        reply = await nc.request(UPDATE_SUBJECT, account_jwt.encode(), timeout=timeout)
    except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError) as err:
        raise ResolverError(
            f"no resolver answered the update of account {account} ({type(err).__name__}); the servers "
            "need `operator`, `system_account` and `resolver: {type: full, ...}` in their config"
        ) from None
    try:
        body = json.loads(reply.data)
    except ValueError:
        raise ResolverError(f"update of account {account}: unreadable answer {reply.data[:200]!r}") from None
    if "error" in body:
        error = body["error"]
        raise ResolverError(
            f"the resolver refused account {account}: {error.get('description')} (code {error.get('code')})"
        )
    if (body.get("data") or {}).get("code") != 200:
        raise ResolverError(f"update of account {account}: unexpected answer {body!r}")
    stored = await lookup(nc, account, timeout)
    if stored != account_jwt:
        raise ResolverError(
            f"the resolver kept another JWT for account {account} (one issued later than ours, or none)"
        )
