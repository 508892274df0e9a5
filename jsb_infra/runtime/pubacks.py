"""JetStream publishes whose PubAck comes back on one inbox subscription of the connection.

What nats-py's `js.publish_async` does, without what `publish_batch` does not need on its hot path: its
semaphore (`publish_batch` keeps its own bound), a random token per publish (a counter does, the inbox is
this connection's own), a done callback per future, and the generic `PubAck.from_response` for the common
answer. The answers are those of nats-py's `_handle_async_reply`: a `503` status (no stream took the
subject) fails the future with `NoStreamResponseError`, an `error` document with `APIError`.

`request` is the one-at-a-time form (a sequential publish): the same path, awaited, with its timeout
kept by one watchdog per inbox instead of a timer per publish (`asyncio.wait_for` schedules and cancels
one for every call), which fails an unanswered request with `nats.errors.TimeoutError`, as nats-py's
`js.publish` does.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import PubAck
from nats.nuid import NUID

NO_RESPONDERS = "503"
WATCHDOG_SLACK = 0.01
"""Seconds past the earliest deadline the watchdog wakes at (deadlines are kept to about this)."""
_PLAIN_PUBACK_FIELDS = frozenset({"stream", "seq", "duplicate", "domain"})


class PubAckInbox:
    """One connection's pipelined publishes: `publish` returns a future completed by the PubAck."""

    def __init__(self, nc: NATS, inbox_prefix: str):
        self.nc = nc
        self._prefix = f"{inbox_prefix}.{NUID().next().decode()}."
        self.pending: dict[str, asyncio.Future[PubAck]] = {}  # token -> future, until answered or given up
        self._serial = 0
        self._sub: Subscription | None = None
        self._deadlines: dict[asyncio.Future[PubAck], float] = {}  # the awaited requests' deadlines
        self._watchdog: asyncio.Task[None] | None = None
        self._wake_at = 0.0  # when the watchdog wakes next

    async def start(self) -> PubAckInbox:
        self._sub = await self.nc.subscribe(f"{self._prefix}*", cb=self._answer)
        return self

    async def publish(self, subject: str, body: bytes, headers: dict[str, str]) -> asyncio.Future[PubAck]:
        """Send one message with a reply on this inbox; a send that raises registers nothing."""
        self._serial += 1
        token = str(self._serial)
        future: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        self.pending[token] = future
        try:
            await self.nc.publish(subject, body, reply=self._prefix + token, headers=headers)
        except BaseException:
            del self.pending[token]
            raise
        return future

    async def request(self, subject: str, body: bytes, headers: dict[str, str], timeout: float) -> PubAck:
        """Publish and wait for the PubAck, at most `timeout` seconds (then `nats.errors.TimeoutError`)."""
        future = await self.publish(subject, body, headers)
        deadline = time.monotonic() + timeout
        self._deadlines[future] = deadline
        if self._watchdog is None or self._watchdog.done() or deadline < self._wake_at:
            if self._watchdog is not None:
                self._watchdog.cancel()  # it sleeps past this deadline
            self._watchdog = asyncio.get_running_loop().create_task(self._expire())
        try:
            return await future
        finally:
            del self._deadlines[future]
            if not future.done():  # the caller was cancelled: nothing waits for this answer any more
                future.cancel()
            if future.cancelled() or future.exception() is not None:
                self.forget([future])  # an answer pops its own entry

    async def _expire(self) -> None:
        """Fail each awaited request whose deadline has passed; sleeps until the earliest one."""
        while self._deadlines:
            now = time.monotonic()
            for future, deadline in list(self._deadlines.items()):
                if deadline <= now and not future.done():
                    future.set_exception(nats.errors.TimeoutError())
            self._wake_at = min(self._deadlines.values(), default=now) + WATCHDOG_SLACK
            await asyncio.sleep(max(self._wake_at - now, 0.0))
        self._wake_at = 0.0

    def close(self) -> None:
        """Stop the watchdog, unless a request still waits: it times that one out, then ends."""
        if self._watchdog is not None and not self._deadlines:
            self._watchdog.cancel()

    def forget(self, futures: list[asyncio.Future[PubAck] | None]) -> None:
        """Drop the table entries of `futures` that are done (answered, failed or cancelled)."""
        done = {id(f) for f in futures if f is not None and f.done()}
        if done:
            for token in [t for t, f in self.pending.items() if id(f) in done]:
                del self.pending[token]

    async def _answer(self, msg: Msg) -> None:
        future = self.pending.pop(msg.subject[len(self._prefix) :], None)
        if future is None or future.done():
            return  # given up on (cancelled), or an answer to an earlier attempt
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            resp = json.loads(msg.data)
        except ValueError as err:
            future.set_exception(nats.js.errors.Error(f"PubAck is not JSON: {err}"))
            return
        if "error" in resp:
            future.set_exception(api_error(resp["error"]))
        elif resp.keys() <= _PLAIN_PUBACK_FIELDS:
            future.set_result(PubAck(**resp))
        else:
            future.set_result(PubAck.from_response(resp))


def api_error(error: dict[str, Any]) -> nats.js.errors.APIError:
    """The nats-py exception of a JetStream error document (`{"code": 400, "err_code": 10077, ...}`).
    nats-py's `APIError.from_error` raises it rather than returning it: called inside the answer
    callback, the exception went to the connection's error callback and the publish waited for its
    timeout (and was retried for the whole publish budget) instead of failing at once."""
    try:
        nats.js.errors.APIError.from_error(error)
    except nats.js.errors.APIError as err:
        return err
    return nats.js.errors.APIError(**error)  # nats-py returned instead: the same error, built here
