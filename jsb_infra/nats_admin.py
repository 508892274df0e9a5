"""The only module that talks JetStream management: stream and consumer CRUD over `$JS.API`.

It sends and reads the raw API JSON (durations in nanoseconds), so the configs rendered by
`topology` reach the server byte for byte and come back comparable field by field, with no client
library dataclass converting units in between. Admin credentials live in `AdminConnection`, which
providers build in the host process from a resource's `connection` input: from the stack config
(never in state), or from a secret input (encrypted in state as a Pulumi secret).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NATS
from pydantic import BaseModel, ConfigDict, Field

from jsb_infra.core.jwt_claims import creds_inbox_prefix
from jsb_infra.retry import RetryPolicy, retrying

API = "$JS.API"
STREAM_NOT_FOUND = 10059
CONSUMER_NOT_FOUND = 10014
NO_MESSAGE_FOUND = 10037


class StoredMessage(BaseModel):
    """One message as `STREAM.MSG.GET` returns it, headers and body decoded."""

    model_config = ConfigDict(frozen=True)

    stream: str
    seq: int
    subject: str
    time: str
    headers: dict[str, str]
    data: bytes


def parse_headers(block: bytes) -> dict[str, str]:
    """A NATS header block (`NATS/1.0` line, `Key: value` lines) as a dict; a repeated key: the last."""
    headers: dict[str, str] = {}
    for line in block.decode(errors="replace").split("\r\n")[1:]:
        key, sep, value = line.partition(":")
        if sep and key:
            headers[key.strip()] = value.strip()
    return headers


STREAM_NAME_IN_USE = 10058
"""STREAM.CREATE of an existing stream whose config differs (an equal one is answered with its info)."""
CONSUMER_ALREADY_EXISTS = 10148
"""CONSUMER.CREATE with action create of an existing consumer whose config differs (nats-server 2.15.1)."""


INBOX_PREFIX_PATTERN = r"^[^\s.*>]+(\.[^\s.*>]+)*$"
"""A reply prefix: subject tokens without wildcards or white space (a reply subject is the prefix,
a dot and a unique token)."""


class AdminConnection(BaseModel):
    """How the deploy reaches the server with management rights. Every field but servers is optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    servers: list[str] = Field(min_length=1)
    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkey_seed: str | None = None
    creds_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    inbox_prefix: str | None = Field(default=None, pattern=INBOX_PREFIX_PATTERN)
    """Where this connection's replies arrive; None: nats-py's `_INBOX`, or, with `creds_file`, the
    read-only identities' own prefix when the user JWT in it allows only that (`inbox_prefix_of`)."""
    timeout: float = 5.0

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for `nats.connect`."""
        opts: dict[str, Any] = {
            "servers": self.servers,
            "connect_timeout": self.timeout,
            # Reconnect (to another node of a cluster) rather than fail the provider call: requests in
            # the meantime time out and are retried (jsb_infra.retry) within the retry budget.
            "allow_reconnect": True,
            "max_reconnect_attempts": 3,
            "reconnect_time_wait": 0.5,
        }
        if self.user is not None:
            opts["user"] = self.user
            opts["password"] = self.password or ""
        if self.token is not None:
            opts["token"] = self.token
        if self.nkey_seed is not None:
            opts["nkeys_seed_str"] = self.nkey_seed
        if self.creds_file is not None:
            opts["user_credentials"] = self.creds_file
        prefix = self.inbox_prefix or self._creds_inbox_prefix()
        if prefix:
            opts["inbox_prefix"] = prefix
        if self.tls_ca or self.tls_cert:
            ctx = ssl.create_default_context(cafile=self.tls_ca)
            if self.tls_cert:
                ctx.load_cert_chain(self.tls_cert, self.tls_key)
            opts["tls"] = ctx
        return opts

    def _creds_inbox_prefix(self) -> str | None:
        """The reply prefix the user JWT of `creds_file` calls for (None when unreadable: the connect
        then fails on the same file and says so)."""
        if self.creds_file is None:
            return None
        try:
            return creds_inbox_prefix(Path(self.creds_file).read_text())
        except OSError:
            return None


class JetStreamApiError(RuntimeError):
    """An error the server returned for a management request."""

    def __init__(self, subject: str, error: dict[str, Any]):
        self.subject = subject
        self.code = int(error.get("code", 0))
        self.err_code = int(error.get("err_code", 0))
        self.description = str(error.get("description", ""))
        super().__init__(f"{subject}: {self.description} (code {self.code}, err_code {self.err_code})")


class JetStreamAdmin:
    """Stream and consumer CRUD over an open admin connection.

    With a `retry` policy every request is retried on transient failures (timeouts, no responders,
    leader elections) within the policy's budget (`jsb_infra.retry`); without one, it is sent once.
    """

    def __init__(self, nc: NATS, timeout: float = 5.0, retry: RetryPolicy | None = None):
        self.nc = nc
        self.timeout = timeout
        self.retry = retry

    async def _request(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        if self.retry is None:
            return await self._request_once(subject, body)
        return await retrying(lambda: self._request_once(subject, body), subject, self.retry, body)

    async def _request_once(self, subject: str, body: dict[str, Any] | None) -> dict[str, Any]:
        payload = json.dumps(body).encode() if body is not None else b""
        msg = await self.nc.request(subject, payload, timeout=self.timeout)
        reply: dict[str, Any] = json.loads(msg.data)
        if "error" in reply:
            raise JetStreamApiError(subject, reply["error"])
        return reply

    # -- streams -----------------------------------------------------------------------------------
    async def stream_info(self, name: str) -> dict[str, Any] | None:
        """The stream's info (`config`, `state`, `created`), or None when it does not exist."""
        try:
            return await self._request(f"{API}.STREAM.INFO.{name}")
        except JetStreamApiError as err:
            if err.err_code == STREAM_NOT_FOUND:
                return None
            raise

    async def create_stream(self, config: dict[str, Any]) -> dict[str, Any]:
        """Create; answers with the stream's info, also for an existing stream with an equal config
        (its `did_create` is true either way), and refuses one that differs (STREAM_NAME_IN_USE)."""
        return await self._request(f"{API}.STREAM.CREATE.{config['name']}", config)

    async def update_stream(self, config: dict[str, Any]) -> dict[str, Any]:
        """Replace the stream's config; `config` must be whole (the server fills gaps with defaults)."""
        return await self._request(f"{API}.STREAM.UPDATE.{config['name']}", config)

    async def delete_stream(self, name: str) -> bool:
        """Delete the stream; False when it was already gone."""
        try:
            await self._request(f"{API}.STREAM.DELETE.{name}")
            return True
        except JetStreamApiError as err:
            if err.err_code == STREAM_NOT_FOUND:
                return False
            raise

    async def stream_info_subjects(self, name: str, subjects_filter: str) -> dict[str, Any] | None:
        """Stream info whose `state.subjects` counts the messages per subject matching the filter."""
        try:
            return await self._request(f"{API}.STREAM.INFO.{name}", {"subjects_filter": subjects_filter})
        except JetStreamApiError as err:
            if err.err_code == STREAM_NOT_FOUND:
                return None
            raise

    async def get_message(
        self, stream: str, seq: int, next_by_subject: str | None = None
    ) -> StoredMessage | None:
        """The message at `seq`, or with `next_by_subject` the first one on that subject at or after `seq`;
        None when there is none."""
        body: dict[str, Any] = {"seq": seq}
        if next_by_subject is not None:
            body["next_by_subj"] = next_by_subject
        try:
            reply = await self._request(f"{API}.STREAM.MSG.GET.{stream}", body)
        except JetStreamApiError as err:
            if err.err_code == NO_MESSAGE_FOUND:
                return None
            raise
        message = reply["message"]
        return StoredMessage(
            stream=stream,
            seq=int(message["seq"]),
            subject=message["subject"],
            time=message.get("time", ""),
            headers=parse_headers(base64.b64decode(message["hdrs"])) if message.get("hdrs") else {},
            data=base64.b64decode(message.get("data") or b""),
        )

    async def messages(self, stream: str, subject: str, start_seq: int = 1) -> AsyncIterator[StoredMessage]:
        """Every message on `subject` from `start_seq` on, in stream order (one MSG.GET each)."""
        seq = start_seq
        while True:
            message = await self.get_message(stream, seq, next_by_subject=subject)
            if message is None:
                return
            yield message
            seq = message.seq + 1

    async def delete_message(self, stream: str, seq: int) -> bool:
        """Remove one message; False when it was not there (any more)."""
        try:
            reply = await self._request(f"{API}.STREAM.MSG.DELETE.{stream}", {"seq": seq, "no_erase": True})
        except JetStreamApiError as err:
            if err.err_code == NO_MESSAGE_FOUND or "not found" in err.description.lower():
                return False
            raise
        return bool(reply.get("success"))

    # -- consumers ---------------------------------------------------------------------------------
    async def consumer_info(self, stream: str, name: str) -> dict[str, Any] | None:
        """The consumer's info (`config`, `created`, ...), or None when it (or its stream) does not exist."""
        try:
            return await self._request(f"{API}.CONSUMER.INFO.{stream}.{name}")
        except JetStreamApiError as err:
            if err.err_code in (CONSUMER_NOT_FOUND, STREAM_NOT_FOUND):
                return None
            raise

    async def create_consumer(self, stream: str, config: dict[str, Any]) -> dict[str, Any]:
        """Create; answers with the consumer's info, also for an existing consumer with an equal config,
        and refuses (rather than changes) one that differs (CONSUMER_ALREADY_EXISTS)."""
        return await self._put_consumer(stream, config, "create")

    async def update_consumer(self, stream: str, config: dict[str, Any]) -> dict[str, Any]:
        """Update in place; the server refuses changes to fields it cannot update."""
        return await self._put_consumer(stream, config, "update")

    async def _put_consumer(self, stream: str, config: dict[str, Any], action: str) -> dict[str, Any]:
        body = {"stream_name": stream, "config": config, "action": action}
        return await self._request(f"{API}.CONSUMER.CREATE.{stream}.{config['name']}", body)

    async def stream_names(self) -> list[str]:
        """Names of the account's streams (every page)."""
        names: list[str] = []
        while True:
            reply = await self._request(f"{API}.STREAM.NAMES", {"offset": len(names)})
            page = reply.get("streams") or []
            names += page
            if not page or len(names) >= int(reply.get("total", 0)):
                return sorted(names)

    async def consumer_names(self, stream: str) -> list[str]:
        """Names of the stream's consumers (every page); [] when the stream does not exist."""
        names: list[str] = []
        while True:
            try:
                reply = await self._request(f"{API}.CONSUMER.NAMES.{stream}", {"offset": len(names)})
            except JetStreamApiError as err:
                if err.err_code == STREAM_NOT_FOUND:
                    return []
                raise
            page = reply.get("consumers") or []
            names += page
            if not page or len(names) >= int(reply.get("total", 0)):
                return sorted(names)

    async def delete_consumer(self, stream: str, name: str) -> bool:
        """Delete the consumer; False when it was already gone."""
        try:
            await self._request(f"{API}.CONSUMER.DELETE.{stream}.{name}")
            return True
        except JetStreamApiError as err:
            if err.err_code in (CONSUMER_NOT_FOUND, STREAM_NOT_FOUND):
                return False
            raise


class AdminConnectError(ConnectionError):
    """The admin connection failed; says where and as whom, never with a secret."""


DEPLOY_HINT = "check the stack config jsb:servers and the secret jsb:admin"

log = logging.getLogger(__name__)


def _identity(conn: AdminConnection) -> str:
    if conn.user is not None:
        return f"user {conn.user!r}"
    for field, label in (("nkey_seed", "an nkey"), ("creds_file", "a creds file"), ("token", "a token")):
        if getattr(conn, field) is not None:
            return label
    return "no credentials"


def connection_problem(err: BaseException) -> str:
    """One line for what the server or the network said: the server's own `-ERR` text (such as
    Authorization Violation), the errno text of a refused or unreachable address, else the error's text."""
    if isinstance(err, nats.errors.Error) and str(err).startswith("nats: "):
        text = str(err).removeprefix("nats: ").strip("'")
    elif isinstance(err, socket.gaierror) and err.strerror:
        text = f"{err.strerror} (name lookup)"
    elif isinstance(err, OSError) and err.errno:
        text = os.strerror(err.errno)  # asyncio's own text repeats the address the message already names
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


class ErrorsSeen:
    """nats-py's `error_cb`: keeps what went wrong instead of nats-py's default, which logs each error
    with its traceback at ERROR level (`nats: encountered error`); the caller reports them in one line."""

    def __init__(self) -> None:
        self.errors: deque[BaseException] = deque(maxlen=20)

    async def record(self, err: Exception) -> None:
        """The callback itself (nats-py takes only a coroutine function)."""
        self.errors.append(err)
        log.debug("admin connection: %r", err)

    def denials(self) -> list[str]:
        """The server's permission violations, as `connection_problem` words them."""
        return [connection_problem(e) for e in self.errors if "permissions violation" in str(e).lower()]

    def cause(self, fallback: BaseException) -> str:
        """Why the connect failed: what the server answered last (its `-ERR` text), else the last socket
        error, else `fallback` (nats-py's own 'no servers available')."""
        answered: list[BaseException] = [
            e
            for e in self.errors
            if isinstance(e, nats.errors.Error) and not isinstance(e, nats.errors.NoServersError)
        ]
        return connection_problem((answered or list(self.errors) or [fallback])[-1])


async def connect_admin(
    conn: AdminConnection, hint: str = DEPLOY_HINT, seen: ErrorsSeen | None = None
) -> NATS:
    """An open admin connection; a failure says in one line where, as whom and why (never a secret),
    then `hint`: where the caller's servers and credentials come from. `seen` keeps the connection's
    errors for the caller (for the whole session: also a permission violation after connecting)."""
    seen = seen or ErrorsSeen()
    try:
        return await nats.connect(**conn.connect_options(), error_cb=seen.record)
    except Exception as err:
        raise AdminConnectError(
            f"cannot connect to {', '.join(conn.servers)} as {_identity(conn)}: {seen.cause(err)}; {hint}"
        ) from None


@asynccontextmanager
async def admin_session(
    conn: AdminConnection,
    retry: RetryPolicy | None = None,
    hint: str = DEPLOY_HINT,
    seen: ErrorsSeen | None = None,
) -> AsyncIterator[JetStreamAdmin]:
    """An admin connection of its own for the length of one session; always closed. With `retry`, every
    management request of the session is retried through leader elections (`jsb_infra.retry`)."""
    nc = await connect_admin(conn, hint, seen)
    try:
        yield JetStreamAdmin(nc, timeout=conn.timeout, retry=retry)
    finally:
        await nc.close()


def differences(desired: Mapping[str, Any], live: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields of `desired` whose live value differs: {field: (desired, live)}.

    Only desired fields count: the server adds defaults for everything jsb-infra leaves unset, and
    those are not drift. A field the server omits counts as its zero value (it omits empty values).
    """
    out: dict[str, tuple[Any, Any]] = {}
    for key, want in desired.items():
        have = live.get(key, zero_like(want))
        if normalize(want) != normalize(have):
            out[key] = (want, have)
    return out


def zero_like(value: Any) -> Any:
    """What the server means by leaving a key out: it omits empty values."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return 0
    if isinstance(value, str):
        return ""
    if isinstance(value, list):
        return []
    return None


def normalize(value: Any) -> Any:
    """Integral floats become ints, recursively, and None entries of dicts are dropped.

    Pulumi carries every number as a double and drops None properties; the server answers ints.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list | tuple):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items() if v is not None}
    return value
