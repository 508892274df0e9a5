"""Pulling one durable: `MSG.NEXT` requests answered on one inbox subscription, no per-message futures.

Every pull request is a plain publish to `$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>` with `batch` and
`expires` (and `idle_heartbeat` when asked for) whose reply subject is `<inbox>.<n>`; one wildcard
subscription on `<inbox>.*` receives what the server sends for all of them (nats-server
server/consumer.go; nats-py's pull subscription handles the same statuses):

- a message of the stream, with its `$JS.ACK...` reply subject (and its own subject, not the inbox);
- `100 Idle Heartbeat`: the request is alive and has nothing to deliver;
- `408 Request Timeout` (and `408 Interest Expired`, `409 Message Size Exceeds MaxBytes`): the request
  ended, its header `Nats-Pending-Messages` says how many of its batch were not delivered;
- `409 Consumer Deleted`: every request of the durable ended; `409 Leadership Change`, `404 No Messages`:
  this one ended;
- `409 Exceeded ...`, `409 Consumer is push based`, `400 Bad Request ...`, `503` (no responders: the
  durable is not there): the request was refused on arrival, nothing of it was delivered.

A message always has a reply subject and a status never has one, which tells them apart without reading
headers. A status's subject names its request, but a delivered message carries its own subject, and a
fulfilled request ends silently. So the loop counts the messages still owed by all open requests
(`requested`): a delivery takes one off, an ending status what it left undelivered (statuses that do not
say leave it high until the last open request is over); when nothing is owed, every request is done.

Messages are drained from the subscription's queue in bulk into `buffer`; the next request is sent while
that buffer is still being processed, so the server fills it meanwhile. At most `window` messages are
requested or held at once (two batches, at most the durable's max_ack_pending). A request is over once
its `expires` plus a grace has passed (fulfilled in silence, or lost); after a reconnect, or when
heartbeats are on and nothing came for two of them, all open ones are presumed lost (nats-server drops a
request whose reply subject lost interest without a word, and a restarted server knows none) and the
loop pulls anew; whatever a request presumed lost still brings is processed all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.nuid import NUID

log = logging.getLogger("jsb_infra.runtime")

STATUS_HEARTBEAT = "100"
STATUS_NO_MESSAGES = "404"
STATUS_REQUEST_TIMEOUT = "408"
STATUS_CONFLICT = "409"
STATUS_NO_RESPONDERS = "503"
LEADERSHIP_CHANGE = "Leadership Change"
CONSUMER_DELETED = "Consumer Deleted"
PENDING_MESSAGES = "Nats-Pending-Messages"
LOST_GRACE_S = 1.0  # beyond `expires`, before a request that never ended counts as lost


@dataclass
class PullStats:
    """What the pull requests met; `conflicts`, `unavailable` and `errors` are also logged."""

    pulls: int = 0  # MSG.NEXT requests sent
    delivered: int = 0  # stream messages received
    heartbeats: int = 0  # 100 Idle Heartbeat
    expired: int = 0  # 404 / 408: a request ended with less than its batch
    conflicts: int = 0  # 409: consumer deleted, too many waiting requests, leadership change, ...
    unavailable: int = 0  # 503: no durable answered
    errors: int = 0  # 400 and any other status, and requests that could not be sent
    lost: int = 0  # times requests were given up as lost (a reconnect, a restarted server)
    last_status: str = ""  # e.g. "409 Consumer Deleted"
    # Health of the pulls (monotonic times): since when requests meet refusals or silence (None while
    # they are answered), and when the server last answered one (a message, a heartbeat, an expiry).
    failing_since: float | None = None
    answered_at: float | None = None
    # The durable's num_pending as the server last told it (a delivery's metadata; 0 when a pull
    # ended with nothing to deliver); None before any answer.
    server_pending: int | None = None
    server_pending_at: float | None = None  # when it was learnt (monotonic)
    # the connection's reconnect count when the pulls last took note of it: a newer one means pulls
    # on a new connection that no answer has proven yet
    seen_reconnects: int = 0


class Puller:
    """The pull side of one durable over one connection; `ConsumerLoop` drives it."""

    def __init__(
        self,
        nc: NATS,
        stream: str,
        durable: str,
        inbox_prefix: str,
        *,
        batch: int,
        expires: float,
        heartbeat: float,
        window: int,
        retry_wait: float,
        api_prefix: str = "$JS.API",
    ):
        self.nc = nc
        self.subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.durable = durable
        self.inbox_prefix = inbox_prefix
        self.window = max(1, window)
        self.batch = min(batch, self.window)
        self.expires = expires
        self.heartbeat = heartbeat
        self.retry_wait = retry_wait
        request: dict[str, int] = {"batch": self.batch, "expires": int(expires * 1e9)}
        if heartbeat > 0:
            request["idle_heartbeat"] = int(heartbeat * 1e9)
        self._request_body = json.dumps(request, separators=(",", ":")).encode()
        self.stats = PullStats()
        self.buffer: deque[Msg] = deque()  # received, not yet handed out
        self._open: dict[str, float] = {}  # reply subject -> when its request ends on the server
        self.requested = 0  # messages the open requests may still deliver (never less than the truth)
        self._heard_at = 0.0  # when anything last came on the inbox
        self._sub: Subscription | None = None
        self._inbox = ""
        self._serial = 0
        self._resume_at = 0.0  # no new request before this (after a refusal)
        self.stats.seen_reconnects = nc.stats["reconnects"]

    @property
    def open_requests(self) -> int:
        return len(self._open)

    @property
    def undrained(self) -> int:
        """What arrived and is not yet drained into `buffer` (deliveries, and the odd status)."""
        return self._sub._pending_queue.qsize() if self._sub is not None else 0

    async def start(self) -> None:
        self._inbox = f"{self.inbox_prefix}.{NUID().next().decode()}"
        # Without a callback nats-py only queues what arrives; `drain` reads that queue directly.
        self._sub = await self.nc.subscribe(f"{self._inbox}.*")

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as err:  # closed connection: nothing left to unsubscribe from
                log.debug("unsubscribe after consume: %r", err)
            self._sub = None

    # -- requests ---------------------------------------------------------------------------------
    def wants_more(self) -> bool:
        """Room for another whole batch in the window, and no pause after a refusal in force."""
        return self.requested + len(self.buffer) + self.batch <= self.window and (
            not self._resume_at or time.monotonic() >= self._resume_at
        )

    async def request(self) -> None:
        """Send one pull request for a batch."""
        self._resume_at = 0.0
        self._serial += 1
        reply = f"{self._inbox}.{self._serial}"
        now = time.monotonic()
        self._forget_ended(now)  # a busy loop may never wait, where the rest of the bookkeeping runs
        if not self._open:
            self._heard_at = now
        self._open[reply] = now + self.expires
        self.requested += self.batch
        self.stats.pulls += 1
        try:
            await self.nc.publish(self.subject, self._request_body, reply=reply)
        except Exception as err:  # draining, or the reconnect buffer is full: not sent, try later
            del self._open[reply]
            self.requested -= self.batch
            self.stats.errors += 1
            self._resume_at = time.monotonic() + self.retry_wait
            self._failing()
            log.warning(
                "pull from %s: request not sent (%r); next in %.1fs", self.durable, err, self.retry_wait
            )

    # -- health -----------------------------------------------------------------------------------
    def _answered(self) -> None:
        stats = self.stats
        stats.answered_at = time.monotonic()
        stats.failing_since = None

    def _failing(self) -> None:
        if self.stats.failing_since is None:
            self.stats.failing_since = time.monotonic()

    def _note_pending(self, msg: Msg) -> None:
        """The server's count of what waits behind `msg` (its ack subject; parsed once per drain)."""
        try:
            self.stats.server_pending = msg.metadata.num_pending
        except Exception:  # not a JetStream ack subject: nothing to learn
            return
        self.stats.server_pending_at = time.monotonic()

    def _settle(self) -> None:
        """Nothing owed any more: every open request is done."""
        if self.requested <= 0:
            self.requested = 0
            self._open.clear()
        elif not self._open:
            self.requested = 0  # what an ended request left unsaid can no longer come

    # -- receiving --------------------------------------------------------------------------------
    def drain(self) -> None:
        """Move what has arrived into `buffer`; statuses are handled here."""
        sub = self._sub
        if sub is None:
            return
        queue = sub._pending_queue
        if queue.empty():
            return
        delivered = self.stats.delivered
        while not queue.empty():
            self._take(queue.get_nowait())
            queue.task_done()
        self._heard_at = time.monotonic()
        if self.stats.delivered != delivered:
            self._answered()
            self._note_pending(self.buffer[-1])
        self._settle()

    def _take(self, msg: Msg) -> None:
        if not msg.reply:
            self._status(msg)
            return
        self._sub._pending_size -= len(msg.data)  # type: ignore[union-attr]  # nats-py's slow-consumer tally
        self.buffer.append(msg)
        self.stats.delivered += 1
        self.requested -= 1

    def _status(self, msg: Msg) -> None:
        headers = msg.headers or {}
        code = headers.get("Status", "")
        if code == STATUS_HEARTBEAT:
            self.stats.heartbeats += 1
            self._answered()
            return
        description = headers.get("Description", "")
        self.stats.last_status = f"{code} {description}".strip()
        open_request = self._open.pop(msg.subject, None) is not None
        pending = headers.get(PENDING_MESSAGES)
        if code == STATUS_CONFLICT and description == CONSUMER_DELETED:
            self._open.clear()
        elif pending is not None:
            if open_request:
                self.requested -= int(pending)
        elif code in (STATUS_NO_MESSAGES, STATUS_CONFLICT) and description in (
            "No Messages",
            LEADERSHIP_CHANGE,
        ):
            pass  # ended after some deliveries, how many is not said: `_settle` squares it
        elif open_request:
            self.requested -= self.batch  # refused on arrival: nothing of it came
        if code in (STATUS_NO_MESSAGES, STATUS_REQUEST_TIMEOUT):
            self.stats.expired += 1
            self._answered()
            if open_request and pending is not None and int(pending) == self.batch:
                self.stats.server_pending = 0  # a whole request ended empty: nothing was waiting
                self.stats.server_pending_at = time.monotonic()
            return
        self._failing()
        if code == STATUS_CONFLICT:
            self.stats.conflicts += 1
            if description == LEADERSHIP_CHANGE:
                log.info("pull from %s ended: %s", self.durable, self.stats.last_status)
                return
            log.warning(
                "pull from %s ended: %s; next pull in %.1fs",
                self.durable,
                self.stats.last_status,
                self.retry_wait,
            )
        elif code == STATUS_NO_RESPONDERS:
            self.stats.unavailable += 1
            log.warning(
                "pull from %s: no responders (is the durable there?); next pull in %.1fs",
                self.durable,
                self.retry_wait,
            )
        else:
            self.stats.errors += 1
            log.error(
                "pull from %s refused: %s; next pull in %.1fs",
                self.durable,
                self.stats.last_status,
                self.retry_wait,
            )
        self._resume_at = time.monotonic() + self.retry_wait

    def forget_lost(self, now: float) -> None:
        """Forget requests past their end plus a grace (fulfilled in silence, or lost); after a reconnect,
        or when heartbeats are on and nothing came for two of them, presume all open ones lost."""
        self._forget_ended(now)
        reconnects = self.nc.stats["reconnects"]
        silent = self.heartbeat > 0 and now - self._heard_at > 2 * self.heartbeat
        reconnected = reconnects != self.stats.seen_reconnects
        if reconnected:
            self._failing()  # a new connection: unproven until the server answers a pull on it
        if self._open and (silent or reconnected):
            self._open.clear()
        self.stats.seen_reconnects = reconnects
        if not self._open and self.requested > 0:
            self.stats.lost += 1
            self._failing()
            log.warning(
                "pull from %s: %d message(s) requested never came and the requests are over (a reconnect "
                "or a restarted server?); pulling anew",
                self.durable,
                self.requested,
            )
            self.requested = 0

    def _forget_ended(self, now: float) -> None:
        """Drop the requests past their end plus a grace: fulfilled in silence, or lost."""
        while self._open:
            reply, ends_at = next(iter(self._open.items()))  # in the order sent, so of their ends
            if now <= ends_at + LOST_GRACE_S:
                break
            del self._open[reply]

    def _next_deadline(self) -> float | None:
        deadlines = []
        if self._open:
            deadlines.append(next(iter(self._open.values())) + LOST_GRACE_S)  # the oldest ends first
            if self.heartbeat > 0:
                deadlines.append(self._heard_at + 2 * self.heartbeat)
        if self._resume_at:
            deadlines.append(self._resume_at)
        return min(deadlines) if deadlines else None

    async def wait(self, idle: float) -> None:
        """Wait for something on the inbox, a request's deadline or the end of a pause (`idle` without)."""
        sub = self._sub
        if sub is None or not sub._pending_queue.empty():
            return
        deadline = self._next_deadline()
        timeout = idle if deadline is None else max(0.0, deadline - time.monotonic())
        queue = sub._pending_queue
        getter = asyncio.ensure_future(queue.get())
        await asyncio.wait((getter,), timeout=timeout)
        if getter.done():
            msg = getter.result()
            self._take(msg)
            queue.task_done()
            if msg.reply:
                self._answered()
                self._note_pending(msg)
            self.drain()
            self._heard_at = time.monotonic()
            self._settle()
        else:
            getter.cancel()  # one that came meanwhile stays queued: Queue.get leaves it there when cancelled
            with contextlib.suppress(asyncio.CancelledError):
                await getter
        self.forget_lost(time.monotonic())
