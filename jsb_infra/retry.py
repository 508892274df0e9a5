"""Retrying JetStream management calls through leader elections and node loss, within a time budget.

In a cluster every `$JS.API` request is answered by the meta leader (stream and consumer CRUD) or
the object's own leader (INFO). While one is being elected (nats-server's raft election timeout is
4-9 s, server/raft.go) requests time out, find no responders, or get an error that says "not now".
Those are retried here with the same request, pausing with doubling backoff, until a time budget is
spent; then one `ManagementUnavailable` says what failed and that a re-run is safe.

Retrying is safe because every management request jsb-infra sends is idempotent: a stream or consumer
create with a config equal to the existing one succeeds again with its info (so a create that timed
out but happened is simply recognized), an update to the same config is a no-op, and a delete of
something already gone is reported as "not found", which callers treat as done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import nats.errors

log = logging.getLogger("jsb_infra.retry")

T = TypeVar("T")

# err_codes that mean "the cluster cannot do this right now" (nats-server
# server/jetstream_errors.json): 10004 incomplete results, 10008 JetStream system temporarily
# unavailable (no meta leader), 10009 cluster can not handle request (not the leader), 10124 stream
# move already in progress and 10226 stream reconfiguration already in progress (an earlier scale or
# move, perhaps made by hand, is still converging; it finishes by itself).
TRANSIENT_API_ERR_CODES = frozenset({10004, 10008, 10009, 10124, 10226})
# 10005 "no suitable peers for placement": transient when peers are offline (a node down or still
# rejoining), permanent when the request's own placement (cluster, tags) matches no server; only the
# former is retried.
NO_SUITABLE_PEERS = 10005

# Transport failures after which the same request may be sent again: no reply in time, nobody
# listening on `$JS.API` yet (a server starting), or the connection is moving to another node.
TRANSIENT_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    asyncio.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
)

DEFAULT_BUDGET = 60.0
"""Seconds a management call keeps retrying: a meta-leader election (4-9 s) several times over, plus
a reconnect to another node."""


class ManagementUnavailable(RuntimeError):
    """A management call that kept failing transiently until its budget was spent."""


@dataclass(frozen=True)
class RetryPolicy:
    """`budget` seconds in all; pauses from `first_wait`, doubling up to `max_wait`."""

    budget: float = DEFAULT_BUDGET
    first_wait: float = 0.25
    max_wait: float = 2.0


def is_transient(err: BaseException, request: dict[str, Any] | None = None) -> bool:
    """True for a failure of a management request that may succeed when sent again unchanged.

    `err` is a transport error or anything with an `err_code` (the API's error answer); `request` is
    the JSON body sent, used to tell a placement that matches no server from peers that are offline.
    """
    if isinstance(err, TRANSIENT_TRANSPORT_ERRORS):
        return True
    code = getattr(err, "err_code", None)
    if code in TRANSIENT_API_ERR_CODES:
        return True
    if code == NO_SUITABLE_PEERS:
        return not _asks_for_placement(request)
    return False


def _asks_for_placement(request: dict[str, Any] | None) -> bool:
    if not request:
        return False
    config = request.get("config", request)  # consumer requests wrap the config
    return bool(isinstance(config, dict) and config.get("placement"))


async def retrying(
    call: Callable[[], Awaitable[T]],
    what: str,
    policy: RetryPolicy,
    request: dict[str, Any] | None = None,
) -> T:
    """Await `call()` until it succeeds, fails for good, or the budget is spent (then
    `ManagementUnavailable`). A budget of 0 makes exactly one attempt and re-raises its failure."""
    deadline = time.monotonic() + policy.budget
    pause = policy.first_wait
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except (nats.errors.ConnectionClosedError, nats.errors.NoServersError) as err:
            raise ManagementUnavailable(
                f"{what} failed: the connection to every server was lost ({describe(err)}). Nothing was "
                "left half-done; re-running is safe once the cluster is reachable"
            ) from None
        except Exception as err:
            if not is_transient(err, request):
                raise
            if policy.budget <= 0:
                raise
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ManagementUnavailable(
                    f"{what} kept failing for {policy.budget:g}s ({attempt} attempts, last: "
                    f"{describe(err)}): the JetStream cluster is electing a leader or missing nodes. "
                    "Nothing was left half-done; re-running is safe once the cluster is healthy"
                ) from None
            log.warning("%s failed (attempt %d, %.1fs left): %s", what, attempt, remaining, describe(err))
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, policy.max_wait)


def describe(err: BaseException) -> str:
    """One line for an error: nats-py's timeouts and no-responders have terse or empty texts."""
    text = str(err).strip()
    if isinstance(err, nats.errors.NoRespondersError):
        return "no responders"
    if isinstance(err, nats.errors.TimeoutError | asyncio.TimeoutError):
        return "no answer (timeout)"
    return text.splitlines()[0] if text else type(err).__name__
