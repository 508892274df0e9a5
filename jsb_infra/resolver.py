"""The servers' account resolver, reached as the system account's user: push and look up account JWTs.

`$SYS.REQ.CLAIMS.UPDATE` (body: an account JWT signed by the operator or one of its signing keys)
stores it in a `full` (directory) resolver and applies it at once to the account's connections;
each server answers `{"data": {"account", "code": 200, "message"}}` or `{"error": {"account",
"code", "description"}}` (nats-server server/accounts.go, respondToUpdate). A server keeps the
stored JWT when the pushed one was issued earlier (server/dirstore.go, saveIfNewer) and still
answers 200, so `push` looks the account up afterwards and refuses if the server holds another JWT.
`$SYS.REQ.ACCOUNT.<key>.CLAIMS.LOOKUP` answers with the stored JWT; a full resolver does not answer
for an account it does not hold.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.client import RawCredentials

from jsb_infra.jwt_claims import decode

UPDATE_SUBJECT = "$SYS.REQ.CLAIMS.UPDATE"
LOOKUP_SUBJECT = "$SYS.REQ.ACCOUNT.{}.CLAIMS.LOOKUP"


class ResolverError(RuntimeError):
    """The resolver refused or did not answer; the message names the account, never a secret."""


@asynccontextmanager
async def system_session(
    servers: list[str], system_creds: str, tls: Any = None, timeout: float = 5.0
) -> AsyncIterator[NATS]:
    """A connection as the system account's user (`system_creds`: the text of its `.creds`)."""
    options: dict[str, Any] = {
        "servers": servers,
        "user_credentials": RawCredentials(system_creds),
        "connect_timeout": timeout,
        "allow_reconnect": False,
    }
    if tls is not None:
        options["tls"] = tls
    try:
        nc = await nats.connect(**options)
    except Exception as err:
        raise ResolverError(
            f"cannot connect to {', '.join(servers)} as the system account's user "
            f"({type(err).__name__}: {err}); check jsb:systemCreds and jsb:servers"
        ) from None
    try:
        yield nc
    finally:
        await nc.close()


async def lookup(nc: NATS, account_key: str, timeout: float = 1.0) -> str | None:
    """The account JWT the resolver holds, or None when it holds none."""
    try:
        reply = await nc.request(LOOKUP_SUBJECT.format(account_key), b"", timeout=timeout)
    except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError):
        return None
    token = reply.data.decode().strip()
    return token or None


async def push(nc: NATS, account_jwt: str, timeout: float = 5.0) -> None:
    """Store and apply an account JWT; raises when the resolver refuses it or keeps another one."""
    account = decode(account_jwt, verify=False)["sub"]
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
