"""Pipelined JetStream publishes: each a plain publish whose PubAck comes back on one inbox subscription.

What nats-py's `js.publish_async` does, without what `publish_batch` does not need on its hot path: its
semaphore (`publish_batch` keeps its own bound), a random token per publish (a counter does, the inbox is
this connection's own), a done callback per future, and the generic `PubAck.from_response` for the common
answer. The answers are those of nats-py's `_handle_async_reply`: a `503` status (no stream took the
subject) fails the future with `NoStreamResponseError`, an `error` document with `APIError`.
"""

from __future__ import annotations

import asyncio
import json

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import PubAck
from nats.nuid import NUID

NO_RESPONDERS = "503"
_PLAIN_PUBACK_FIELDS = frozenset({"stream", "seq", "duplicate", "domain"})


class PubAckInbox:
    """One connection's pipelined publishes: `publish` returns a future completed by the PubAck."""

    def __init__(self, nc: NATS, inbox_prefix: str):
        self.nc = nc
        self._prefix = f"{inbox_prefix}.{NUID().next().decode()}."
        self.pending: dict[str, asyncio.Future[PubAck]] = {}  # token -> future, until answered or given up
        self._serial = 0
        self._sub: Subscription | None = None

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
            future.set_exception(nats.js.errors.APIError.from_error(resp["error"]))
        elif resp.keys() <= _PLAIN_PUBACK_FIELDS:
            future.set_result(PubAck(**resp))
        else:
            future.set_result(PubAck.from_response(resp))
