"""BridgeClient: one app's connection, publishing and consuming with nothing but its generated permissions.

No code path here calls a JetStream management API. Publishing is a request to the app's own subject
(the PubAck comes back on the app's inbox prefix); consuming pulls the durable the deploy created with
`MSG.NEXT` requests (`jsb_infra.runtime.pull`). Provisioning is the deploy's job;
there is deliberately no switch to turn it on.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import PubAck
from nats.js.client import JetStreamContext

from jsb_infra.core import jwt_claims
from jsb_infra.core.outputs import BridgeOutputs
from jsb_infra.runtime.config import Credentials
from jsb_infra.runtime.envelope import MSG_ID_HEADER, Event, encode, new_event
from jsb_infra.runtime.msg_ids import MsgIds
from jsb_infra.runtime.pubacks import PubAckInbox
from jsb_infra.runtime.pull import PullStats

log = logging.getLogger("jsb_infra.runtime")

PERMISSION_VIOLATION = "permissions violation"
KEPT_PERMISSION_VIOLATIONS = 100  # the newest ones; `permission_violation_count` counts them all

# Failures after which the same publish may simply be tried again, with the same `Nats-Msg-Id`: the
# reply did not come, or no stream leader took the subject (an election, a restarting server: "no
# responders"), or the buffer was full while reconnecting.
RETRYABLE_PUBLISH_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    asyncio.TimeoutError,
    nats.js.errors.NoStreamResponseError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    asyncio.CancelledError,  # only for futures cancelled by publish_batch itself, never our own task
)
# Answers of the stream that mean "not now" rather than "no" (nats-server server/jetstream_errors.json):
# 10158 "duplicate message id is in process": an earlier attempt with this id was proposed but not yet
# committed (typically while the stream's group has no quorum); the retry resolves to a PubAck or a
# duplicate PubAck. 10008 "JetStream system temporarily unavailable". 10167 "too many requests".
RETRYABLE_PUBLISH_API_ERRORS = frozenset({10158, 10008, 10167})
# The default publish budget covers a stream-leader election with room to spare: nats-server's raft
# election timeout is 4-9 s (server/raft.go), so the loss of a leader costs at most ~9 s plus the vote,
# a split vote one more round, plus a reconnect (measured on a 3-node cluster: 4.6-8.7 s per election).
DEFAULT_PUBLISH_BUDGET = 30.0


def is_retryable_publish_error(err: BaseException) -> bool:
    """True for a failure after which the same publish (same msg id) may be tried again."""
    if isinstance(err, RETRYABLE_PUBLISH_ERRORS):
        return True
    return isinstance(err, nats.js.errors.APIError) and err.err_code in RETRYABLE_PUBLISH_API_ERRORS


class PublishError(RuntimeError):
    """A publish that got no PubAck within the publish budget, or that could never be sent."""


class ConnectGaveUp(ConnectionError):
    """The first connect failed `connect_attempts` times on every server; `client.errors` says why.

    `connect()` raises one of its three subclasses, never this class itself and never a type of
    nats-py's: catch `ConnectGaveUp` for all of them.
    """


class ConnectAuthorizationError(ConnectGaveUp):
    """A server answered and refused the credentials ("Authorization Violation", an expired or revoked
    user, an authentication timeout)."""


class ConnectTLSError(ConnectGaveUp):
    """The TLS handshake failed: the server's certificate is not trusted or does not name the host, the
    server wants TLS or a client certificate the client does not offer, or the other way round."""


class ConnectUnreachableError(ConnectGaveUp):
    """No server answered: connection refused, no route, DNS failure, or no answer within
    `connect_timeout`."""


class _StopConnecting(Exception):
    """Raised from the error callback to leave nats-py's first-connect loop (deliberately no OSError,
    which that loop would catch and retry). Never leaves `connect()`."""


# "authentication" also covers "user authentication expired", "account authentication expired" and
# "user authentication revoked"
AUTHORIZATION_TEXTS = ("authorization violation", "authentication")
TLS_TEXTS = ("tls", "ssl", "certificate", "handshake")


# When the tries of one connect met several kinds of error, the most telling one names the failure: a
# refused login, else a failed handshake (a server that refuses a missing client certificate may also
# just drop the connection: "Connection lost"), else no answer.
FAILURE_PRIORITY: list[type[ConnectGaveUp]] = [
    ConnectUnreachableError,
    ConnectTLSError,
    ConnectAuthorizationError,
]


def connect_failure_type(err: BaseException | None, tls: bool = False) -> type[ConnectGaveUp]:
    """The public exception for one error a first connect met (`tls`: the client uses TLS).

    nats-py reports a refusal of the credentials as `nats.errors.Error("nats: 'Authorization
    Violation'")` (the server's `-ERR` line, not always its `AuthorizationError`), a failed handshake
    as an `ssl.SSLError` or an `Error` naming TLS, and no answer as an `OSError` or a timeout. A server
    that accepted the TCP connection and then dropped it during the login ("connection reset", "broken
    pipe", "Connection lost"; the reset can discard the refusal's text, a race nats-py loses now and
    then) refused the client: its TLS (a missing client certificate under TLS 1.3 shows so) when
    the client uses TLS, else its credentials.
    """
    if err is None:
        return ConnectUnreachableError
    text = str(err).lower()
    if isinstance(err, nats.errors.AuthorizationError) or any(t in text for t in AUTHORIZATION_TEXTS):
        return ConnectAuthorizationError
    if isinstance(err, ssl.SSLError) or any(t in text for t in TLS_TEXTS):
        return ConnectTLSError
    dropped = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, nats.errors.UnexpectedEOF)
    if isinstance(err, dropped) or "connection lost" in text:
        return ConnectTLSError if tls else ConnectAuthorizationError
    return ConnectUnreachableError


def said_by_server(err: BaseException) -> bool:
    """Whether `err` carries the server's refusal (an authorization or TLS error text) rather than a
    dropped connection that `connect_failure_type` only infers one from."""
    text = str(err).lower()
    return (
        isinstance(err, (nats.errors.AuthorizationError, ssl.SSLError))
        or any(t in text for t in AUTHORIZATION_TEXTS)
        or any(t in text for t in TLS_TEXTS)
    )


def headers_size(headers: Mapping[str, str]) -> int:
    """Bytes the header block takes on the wire (`NATS/1.0` line, `Key: value` lines, blank line).

    The server's max_payload limits headers and body together; nats-py checks only the body.
    """
    return 12 + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())


def creds_payload_limit(credentials: Credentials) -> int:
    """The `payload` limit of the user JWT in `.creds` credentials (JWT mode); 0 for none (no `.creds`,
    no limit, or a JWT that cannot be read: the connect reports that)."""
    try:
        text = credentials.creds_text()
    except (OSError, UnicodeDecodeError):
        return 0
    if not text:
        return 0
    try:
        payload = jwt_claims.decode(jwt_claims.parse_creds(text)[0], verify=False)["nats"].get("payload")
    except (jwt_claims.JwtError, KeyError, TypeError, AttributeError):
        return 0
    return payload if isinstance(payload, int) and payload > 0 else 0


def oversize_problem(body: bytes, headers: Mapping[str, str], limit: int) -> str | None:
    """Why a message cannot be sent under the server's `max_payload` (body and headers together), or
    None. nats-py checks the body alone; the server answers a bigger message with `-ERR 'Maximum Payload
    Violation'` and closes the connection, and nats-py then closes the client for good."""
    size = len(body) + headers_size(headers)
    if size > limit:
        return f"{size} bytes (body and headers) exceed the server's max_payload of {limit} bytes"
    return None


class BridgeClient:
    """Connect with `await client.connect()` or `async with BridgeClient(...) as client`."""

    def __init__(
        self,
        bridge: BridgeOutputs,
        credentials: Credentials | None = None,
        *,
        name: str | None = None,
        publish_timeout: float = 5.0,
        publish_budget: float = DEFAULT_PUBLISH_BUDGET,
        retry_wait: float = 0.25,
        retry_max_wait: float = 2.0,
        reconnect_time_wait: float = 1.0,
        connect_timeout: float = 2.0,
        connect_attempts: int = 3,
        error_cb: Callable[[Exception], Awaitable[None]] | None = None,
    ):
        if publish_budget < 0:
            raise ValueError(
                f"publish_budget: must be >= 0 seconds (0: a single attempt), got {publish_budget}"
            )
        if retry_wait <= 0 or retry_max_wait < retry_wait:
            raise ValueError(
                f"retry_wait: must be > 0 and <= retry_max_wait, got {retry_wait} and {retry_max_wait}"
            )
        if connect_attempts < 1:
            raise ValueError(
                f"connect_attempts: must be at least 1 (tries per server of the first connect), "
                f"got {connect_attempts}"
            )
        self.bridge = bridge
        self.credentials = credentials or Credentials()
        self.name = name or f"jsb-{bridge.app}@{bridge.stream}"
        self.publish_timeout = publish_timeout
        self.publish_budget = publish_budget
        self.retry_wait = retry_wait
        self.retry_max_wait = retry_max_wait
        # For health: when the last PubAck came, and since when publishes have been retrying without any
        # PubAck meanwhile (None while no publish is retrying).
        self.last_puback_at: float | None = None
        self.publish_failing_since: float | None = None
        self._publishes_retrying = 0
        self.reconnect_time_wait = reconnect_time_wait
        self.connect_timeout = connect_timeout
        self.connect_attempts = connect_attempts
        self._user_error_cb = error_cb
        self.errors: deque[Exception] = deque(maxlen=200)
        self.permission_violation_count = 0
        self._violations: deque[tuple[float, str]] = deque(maxlen=KEPT_PERMISSION_VIOLATIONS)
        self.reconnects = 0
        self._nc: NATS | None = None
        self._closing = False
        self._js: JetStreamContext | None = None
        self._puback_inbox: PubAckInbox | None = None
        self._msg_id_header = MSG_ID_HEADER
        self._msg_ids: MsgIds | None = None  # derived from the credentials on first use
        self._payload_claim: int | None = None  # the user JWT's payload limit (0: none); on first use
        # what the first connect met, in order; None when no first connect runs (nothing is counted)
        self._first_connect_errors: list[Exception] | None = None
        self._connection_owner: BridgeClient | None = None  # set on a client made by `sharing`
        # The pull statistics of the consumer loops running on this client (for health and metrics).
        self.running_pulls: list[PullStats] = []

    # -- connection ------------------------------------------------------------------------------
    async def connect(self) -> BridgeClient:
        """Connect with the bridge's inbox prefix; reconnect forever, logging every transition.

        The first connect gives up after `connect_attempts` tries per server (a wrong URL or password
        should fail the app's start, not hang it) with `ConnectGaveUp`; once connected, reconnecting
        never stops.
        """
        nc = NATS()
        # nats-py tries each server max_reconnect_attempts + 1 times, but reads 0 as "forever"; the
        # error callback therefore also counts the failures and gives up itself (connect_attempts=1).
        self._first_connect_errors = []
        try:
            await nc.connect(
                self.bridge.servers,
                name=self.name,
                inbox_prefix=self.bridge.inbox_prefix,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                closed_cb=self._on_closed,
                allow_reconnect=True,
                max_reconnect_attempts=max(self.connect_attempts - 1, 1),
                reconnect_time_wait=self.reconnect_time_wait,  # type: ignore[arg-type]  # float works
                connect_timeout=self.connect_timeout,  # type: ignore[arg-type]
                **self.credentials.connect_options(),
            )
        except Exception as err:  # whatever nats-py raised (or our _StopConnecting): one public type
            raise await self._first_connect_failed(nc, err) from None
        finally:
            self._first_connect_errors = None
        self._nc = nc
        self._closing = False
        nc.options["max_reconnect_attempts"] = -1  # from now on: reconnect forever
        self._js = self._nc.jetstream(timeout=self.publish_timeout)
        log.info("connected to %s as %s (%s)", self._nc.connected_url, self.name, self.credentials.describe())
        return self

    async def _first_connect_failed(self, nc: NATS, err: Exception) -> ConnectGaveUp:
        """Close what the failed first connect left and say why in a public exception.

        The error callback must stop raising `_StopConnecting` before the close: closing calls it again
        for a failed flush, and the exception would escape from here (nats-py's private type, seen in
        about one of three refused logins). The close is bounded: after a failed TLS handshake
        nats-py's close never returns."""
        errors, self._first_connect_errors = self._first_connect_errors or [], None
        self._closing = True
        try:
            # Bounded: after a failed TLS handshake nats-py's close waits forever for the transport.
            await asyncio.wait_for(nc.close(), timeout=self.connect_timeout)
        except Exception as close_err:  # nothing to keep open; the connect's error is the one to report
            log.debug("close after a failed connect: %r", close_err)
        seen = [e for e in errors if not isinstance(e, _StopConnecting)]
        if not isinstance(err, (_StopConnecting, nats.errors.NoServersError)):
            seen.append(err)
        tls = self.credentials.tls is not None or any(u.startswith("tls://") for u in self.bridge.servers)
        # The most telling kind; within it the server's own words (a dropped connection is only taken
        # for a refusal), then the latest error.
        ranked = [
            (FAILURE_PRIORITY.index(connect_failure_type(e, tls)), said_by_server(e), i, e)
            for i, e in enumerate(seen)
        ]
        rank, _, _, telling = max(ranked, default=(0, False, 0, None))
        return FAILURE_PRIORITY[rank](
            f"could not connect to {', '.join(self.bridge.servers)} as {self.credentials.describe()} "
            f"after {self.connect_attempts} attempt(s) per server: {telling!r}"
        )

    def sharing(self, bridge: BridgeOutputs, **options: Any) -> BridgeClient:
        """A client for another pair of the same app, on this client's connection.

        An app is one identity (one account, one user) across all its pairs, so it needs one
        connection: connect this client, then take one `sharing` client per other bridge. Closing a
        sharing client only flushes; the connection closes with this one.
        """
        if bridge.app != self.bridge.app or bridge.inbox_prefix != self.bridge.inbox_prefix:
            raise ValueError(
                f"bridge: a shared connection serves one app; this one is {self.bridge.app!r}, "
                f"the bridge is for {bridge.app!r}"
            )
        other = BridgeClient(bridge, self.credentials, name=self.name, **options)
        other._nc = self.nc
        other._js = other._nc.jetstream(timeout=other.publish_timeout)
        other._msg_ids = self.msg_ids
        other._payload_claim = self._payload_claim
        other._connection_owner = self
        return other

    async def close(self) -> None:
        """Flush what is buffered (acks included) and close."""
        if self._puback_inbox is not None:
            self._puback_inbox.close()
        if self._connection_owner is not None:
            if self._nc is not None and not self._nc.is_closed:
                await self._nc.flush()
            return
        if self._nc is not None and not self._nc.is_closed:
            self._closing = True
            try:
                await self._nc.drain()
            except Exception as err:  # drain fails when the server is gone; closing is all that is left
                log.warning("drain failed (%s); closing", err)
                await self._nc.close()

    async def __aenter__(self) -> BridgeClient:
        return await self.connect()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def nc(self) -> NATS:
        if self._nc is None:
            raise RuntimeError("BridgeClient is not connected; call `await client.connect()` first")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("BridgeClient is not connected; call `await client.connect()` first")
        return self._js

    @property
    def max_payload(self) -> int:
        """The largest message (body and headers) this connection may publish: the server's
        `max_payload`, or the payload limit of the user JWT in the app's `.creds` when smaller. The
        server applies that limit without announcing it (its INFO, sent before the client says who it
        is, carries `max_payload` only) and closes a connection that publishes more. A config-mode
        account limit (`max_payload` of the app account) is not visible to the client at all."""
        if self._payload_claim is None:
            self._payload_claim = creds_payload_limit(self.credentials)
        limit = self.nc.max_payload
        return min(limit, self._payload_claim) if self._payload_claim > 0 else limit

    @property
    def msg_ids(self) -> MsgIds:
        """The `Nats-Msg-Id`s this app writes, keyed by its credentials' secret (`runtime.msg_ids`)."""
        if self._msg_ids is None:
            self._msg_ids = MsgIds.for_credentials(self.credentials)
        return self._msg_ids

    @property
    def permission_violations(self) -> list[str]:
        """The newest permission violations (at most KEPT_PERMISSION_VIOLATIONS), oldest first."""
        return [text for _, text in self._violations]

    def recent_permission_violations(self, window: float) -> list[str]:
        """The kept violations reported within the last `window` seconds."""
        since = time.monotonic() - window
        return [text for at, text in self._violations if at >= since]

    async def _on_error(self, err: Exception) -> None:
        self.errors.append(err)
        text = str(err)
        if PERMISSION_VIOLATION in text.lower():
            self.permission_violation_count += 1
            self._violations.append((time.monotonic(), text))
            log.error("%s: denied by the server: %s", self.name, text)
        else:
            log.warning("%s: connection error: %r", self.name, err)
        if self._user_error_cb is not None:
            await self._user_error_cb(err)
        errors = self._first_connect_errors
        if errors is not None:
            errors.append(err)
            if len(errors) >= self.connect_attempts * len(self.bridge.servers):
                raise _StopConnecting()  # leaves nats-py's retry loop; connect() reports it

    async def _on_disconnected(self) -> None:
        if self._closing:
            return
        log.warning("%s: disconnected; reconnecting every %.1fs", self.name, self.reconnect_time_wait)

    async def _on_reconnected(self) -> None:
        self.reconnects += 1
        log.warning("%s: reconnected to %s", self.name, self._nc.connected_url if self._nc else "?")

    async def _on_closed(self) -> None:
        log.info("%s: connection closed", self.name)

    # -- publishing ------------------------------------------------------------------------------
    def event(
        self,
        event_type: str,
        resource_type: str,
        resource_id: str | int,
        payload: Any,
        *,
        trace_id: str | None = None,
        event_id: str | None = None,
    ) -> Event:
        """An envelope produced by this app (for `publish_batch`)."""
        return new_event(
            event_type,
            resource_type,
            resource_id,
            payload,
            producer=self.bridge.app,
            trace_id=trace_id,
            event_id=event_id,
        )

    async def publish(
        self,
        event_type: str,
        resource_type: str,
        resource_id: str | int,
        payload: Any,
        *,
        trace_id: str | None = None,
        event_id: str | None = None,
    ) -> PubAck:
        """Publish one event to the peer and wait for the PubAck (seq, duplicate)."""
        event = self.event(
            event_type, resource_type, resource_id, payload, trace_id=trace_id, event_id=event_id
        )
        return await self.publish_event(event)

    async def publish_event(self, event: Event, headers: Mapping[str, str] | None = None) -> PubAck:
        """Publish a built envelope; a publish that times out is retried with the same `Nats-Msg-Id`
        (the event id keyed by this app's secret: `msg_ids.event`)."""
        hdrs = {self._msg_id_header: self.msg_ids.event(event.event_id)}
        if headers:
            hdrs.update(headers)
        return await self.publish_raw(self.bridge.publish_subject, encode(event), hdrs)

    async def publish_raw(self, subject: str, body: bytes, headers: dict[str, str]) -> PubAck:
        """A JetStream publish retried for `publish_budget` seconds; the headers must carry a stable
        `Nats-Msg-Id`, so a retry of a publish that was in fact stored is a duplicate, not a second copy.
        A message over the server's max_payload raises PublishError unsent (`oversize_problem`)."""
        problem = oversize_problem(body, headers, self.max_payload)
        if problem:
            raise PublishError(f"publish to {subject} (msg id {headers.get(self._msg_id_header)}): {problem}")
        return await self._publish_until(subject, body, headers, time.monotonic() + self.publish_budget)

    async def _publish_until(
        self, subject: str, body: bytes, headers: dict[str, str], deadline: float
    ) -> PubAck:
        """Attempt, and on a retryable failure pause (`retry_wait`, doubling up to `retry_max_wait`) and
        attempt again while the monotonic `deadline` has not passed. The first attempt is always made
        with the full `publish_timeout`; later ones wait at most until the deadline."""
        pubacks = await self._pubacks()
        msg_id = headers.get(self._msg_id_header)
        pause = self.retry_wait
        timeout = self.publish_timeout
        attempt = 0
        retrying = False
        try:
            while True:
                attempt += 1
                try:
                    if pubacks.nc is not self.nc:  # a new connection (not a reconnect of this one)
                        pubacks = await self._pubacks()
                    ack = await pubacks.request(subject, body, headers, timeout)
                except Exception as err:
                    if not is_retryable_publish_error(err):
                        raise
                    now = time.monotonic()
                    if not retrying:
                        retrying = True
                        self._publishes_retrying += 1
                    if self.publish_failing_since is None:
                        self.publish_failing_since = now
                    remaining = deadline - now
                    if remaining <= 0:
                        raise PublishError(
                            f"publish to {subject} (msg id {msg_id}) got no PubAck within the publish "
                            f"budget of {self.publish_budget:g}s ({attempt} attempts): {err!r}"
                        ) from err
                    log.warning(
                        "publish to %s (msg id %s) attempt %d failed, retrying for %.1fs more: %r",
                        subject,
                        msg_id,
                        attempt,
                        remaining,
                        err,
                    )
                    await asyncio.sleep(min(pause, remaining))
                    pause = min(pause * 2, self.retry_max_wait)
                    timeout = max(min(self.publish_timeout, deadline - time.monotonic()), 0.05)
                    continue
                self._note_puback()
                return ack
        finally:
            if retrying:
                self._publishes_retrying -= 1
                if self._publishes_retrying == 0:
                    self.publish_failing_since = None

    @property
    def pull_failing_since(self) -> float | None:
        """Since when (monotonic) a consumer loop on this client has met only refusals or silence from
        its durable, or reconnected without an answer since; None while every running one is answered
        (or none runs)."""
        times = [stats.failing_since for stats in self.running_pulls if stats.failing_since is not None]
        if self._nc is not None and any(
            stats.seen_reconnects != self._nc.stats["reconnects"] for stats in self.running_pulls
        ):
            times.append(time.monotonic())  # reconnected, and the loop has not pulled on it yet
        return min(times) if times else None

    def _note_puback(self) -> None:
        self.last_puback_at = time.monotonic()
        self.publish_failing_since = None

    async def _pubacks(self) -> PubAckInbox:
        """The inbox of this connection's pipelined publishes (subscribed on first use)."""
        if self._puback_inbox is None or self._puback_inbox.nc is not self.nc:
            self._puback_inbox = await PubAckInbox(self.nc, self.bridge.inbox_prefix).start()
        return self._puback_inbox

    @staticmethod
    async def _wait_for_room(futures: list[asyncio.Future[PubAck] | None], oldest: int, bound: int) -> int:
        """Wait until fewer than `bound` of `futures[oldest:]` may be unanswered; returns the new `oldest`.

        The bound of `publish_batch`, kept without a callback per publish: PubAcks come back about in
        order, so skipping the answered ones from the front and waiting for the oldest unanswered one
        (counting every later one as unanswered, which can only err on the safe side) is enough.
        """
        while True:
            while oldest < len(futures) and (futures[oldest] is None or futures[oldest].done()):  # type: ignore[union-attr]
                oldest += 1
            if len(futures) - oldest < bound:
                return oldest
            pending = futures[oldest]
            assert pending is not None  # skipped above
            await asyncio.wait([pending])

    async def _cancel_stalled(self, futures: list[asyncio.Future[PubAck] | None]) -> None:
        """Watchdog: when the oldest pending PubAck has not come for `publish_timeout`, give up on all
        pending ones (freeing their in-flight slots); `publish_batch` retries them one by one."""
        oldest = 0
        while True:
            seen_at = oldest
            await asyncio.sleep(self.publish_timeout)
            while oldest < len(futures) and (futures[oldest] is None or futures[oldest].done()):  # type: ignore[union-attr]
                oldest += 1
            if oldest == seen_at and oldest < len(futures):
                log.warning(
                    "publish_batch: no PubAck for %.1fs; retrying the pending ones", self.publish_timeout
                )
                for future in futures[oldest:]:
                    if future is not None and not future.done():
                        future.cancel()

    def _prepare(self, events: Iterable[Event]) -> Iterator[tuple[bytes, dict[str, str]] | BaseException]:
        """Encode and size-check each event as it is about to be sent (so encoding overlaps the server's
        work on the ones before): an event that cannot be sent gets its error as its result, the others
        still go."""
        limit = self.max_payload
        header = self._msg_id_header
        header_overhead = headers_size({header: ""})
        msg_id_of = self.msg_ids.event
        for event in events:
            try:
                body = encode(event)
                msg_id = msg_id_of(event.event_id)  # ASCII: one byte per character
                headers = {header: msg_id}
                if len(body) + header_overhead + len(msg_id) > limit:
                    raise PublishError(f"event {event.event_id}: {oversize_problem(body, headers, limit)}")
                yield body, headers
            except Exception as err:
                yield err

    async def publish_batch(
        self, events: Iterable[Event], max_in_flight: int = 512
    ) -> list[PubAck | BaseException]:
        """Pipeline `events` (PubAcks on one inbox), at most `max_in_flight` unacknowledged at once.

        Returns one result per event, in order: its PubAck, or the error that remained for that event
        (one that cannot be encoded or is too large, a refusal by the stream, or a `PublishError` for a
        publish still unanswered when the budget was spent). Events whose pipelined publish failed in a
        retryable way are retried one by one with the same msg id, all within one `publish_budget` that
        starts when the retries do; once it is spent, an event is tried only while the one before it
        succeeded, so a batch against a dead cluster ends after about one budget. It never raises for
        a single event.
        """
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight: must be at least 1, got {max_in_flight}")
        prepared: list[tuple[bytes, dict[str, str]] | BaseException] = []
        pubacks = await self._pubacks()
        subject = self.bridge.publish_subject
        oldest = 0  # futures before this index are answered (or never sent)
        futures: list[asyncio.Future[PubAck] | None] = []
        results: list[PubAck | BaseException | None] = []
        watchdog = asyncio.create_task(self._cancel_stalled(futures))
        try:
            for index, item in enumerate(self._prepare(events)):
                prepared.append(item)
                results.append(None)
                if isinstance(item, BaseException):
                    results[index] = item
                    futures.append(None)
                    continue
                if len(futures) - oldest >= max_in_flight:
                    oldest = await self._wait_for_room(futures, oldest, max_in_flight)
                try:
                    sent = await pubacks.publish(subject, item[0], item[1])
                except Exception as err:
                    results[index] = err
                    futures.append(None)
                    continue
                futures.append(sent)
            for future in futures:  # replies come roughly in order: few of these actually wait
                if future is not None and not future.done():
                    await asyncio.wait([future])
        finally:
            watchdog.cancel()
            pubacks.forget(futures)
        for index, future in enumerate(futures):
            if future is None:
                continue
            if future.cancelled():
                results[index] = asyncio.CancelledError()
            else:
                results[index] = future.exception() or future.result()
        if any(isinstance(r, PubAck) for r in results):
            self._note_puback()
        deadline: float | None = None
        spent: PublishError | None = None
        for index, result in enumerate(results):
            if not isinstance(result, BaseException) or not is_retryable_publish_error(result):
                continue
            if deadline is None:
                deadline = time.monotonic() + self.publish_budget
            body, headers = prepared[index]  # type: ignore[misc]
            if spent is not None:
                results[index] = PublishError(f"not retried, the publish budget is spent: {spent}")
                continue
            try:
                results[index] = await self._publish_until(subject, body, headers, deadline)
            except PublishError as err:
                results[index] = spent = err
            except Exception as err:  # a refusal the retry got instead
                results[index] = err
        return results  # type: ignore[return-value]

    # -- consuming -------------------------------------------------------------------------------
    def consumer(self, handler: Any, **options: Any) -> Any:
        """A `ConsumerLoop` of this app's durable; see `jsb_infra.runtime.consumer.ConsumerLoop`."""
        from jsb_infra.runtime.consumer import ConsumerLoop

        return ConsumerLoop(self, handler, **options)

    async def consume(self, handler: Any, **options: Any) -> Any:
        """Run a consumer until it is stopped (or this task is cancelled); returns its stats."""
        consumer = self.consumer(handler, **options)
        await consumer.run()
        return consumer.stats
