"""Stream bounds and storage reservations: how much each pair may hold, and whether the pairs fit.

Measured on nats-server 2.15.1 (docs/permissions.md, "Volume"):

- With `discard: new` and `max_msgs_per_subject` (and `discard_new_per_subject`), a full subject refuses
  further publishes to that subject alone (err 10077 "maximum messages per subject exceeded"); the other
  subjects of the stream keep accepting. With `discard: old` the oldest messages are deleted instead,
  whoever published them.
- `max_msg_size` counts headers and body (err 10054). A stored message takes
  `len(subject) + len(headers) + len(body) + 30` bytes of the stream's `max_bytes` (file store: a 22-byte
  record header and an 8-byte hash; the memory store counts 16).
- So a stream whose `max_bytes` is at least, over its subjects, `max_msgs_per_subject x (max_msg_size +
  len(subject) + 30)` can never be filled by one subject: a flood of one direction is refused before it
  touches the other direction's unread messages or either DLQ.
- A stream's `max_bytes` is reserved in its account (x replicas) when it is created; an account whose
  JetStream config has `max_bytes_required` refuses a stream without `max_bytes` (err 10113), and a
  stream whose reservation exceeds the account's `max_file`/`max_mem` (err 10047).

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from jsb_infra.core.spec import Capacity, Pair, StreamOptions

STORED_MSG_OVERHEAD = 30
"""Bytes the server counts per stored message beyond subject, headers and body (file store: 22 + 8)."""

UNLIMITED = -1


def derived_max_bytes(opts: StreamOptions, subjects: Iterable[str]) -> int:
    """Every subject full to max_msgs_per_subject with messages of max_msg_size, as the server counts it."""
    return sum(
        opts.max_msgs_per_subject * (opts.max_msg_size + len(subject.encode()) + STORED_MSG_OVERHEAD)
        for subject in subjects
    )


def stream_max_bytes(pair: Pair) -> int:
    """The stream's `max_bytes`: the spec's, or derived from the per-subject bounds when left out."""
    opts = pair.stream_options
    return opts.max_bytes if opts.max_bytes is not None else derived_max_bytes(opts, pair.subjects())


def isolation_problems(pair: Pair) -> list[str]:
    """Why one subject of the pair's stream could evict or lock out another's messages ([] when it cannot)."""
    opts = pair.stream_options
    where = f"stream {pair.stream!r}"
    if opts.discard == "old":
        return [f"{where}: discard old: a full stream deletes its oldest messages, whoever published them"]
    problems = []
    if opts.max_msgs_per_subject == UNLIMITED:
        problems.append(f"{where}: max_msgs_per_subject -1: one subject can fill the stream")
    if opts.max_msg_size == UNLIMITED and opts.max_bytes != UNLIMITED:
        problems.append(f"{where}: max_msg_size -1: one subject's messages are not bounded in size")
    derived = derived_max_bytes(opts, pair.subjects())
    max_bytes = opts.max_bytes if opts.max_bytes is not None else derived  # stream_max_bytes, derived once
    if not problems and max_bytes != UNLIMITED and max_bytes < derived:
        problems.append(
            f"{where}: max_bytes {max_bytes} is less than its subjects' bounds "
            f"({derived}): one subject can fill the stream and lock the "
            "others out (refused, not evicted)"
        )
    per_subject_total = opts.max_msgs_per_subject * len(pair.subjects())
    if UNLIMITED not in (opts.max_msgs, opts.max_msgs_per_subject) and opts.max_msgs < per_subject_total:
        problems.append(
            f"{where}: max_msgs {opts.max_msgs} is less than its subjects' bounds: one subject can "
            "lock the others out"
        )
    return problems


@dataclass(frozen=True)
class Reservation:
    """What one pair's stream reserves in the JetStream account (None: unbounded, reserves nothing)."""

    stream: str
    storage: str
    max_bytes: int
    replicas: int

    @property
    def reserved(self) -> int | None:
        return None if self.max_bytes == UNLIMITED else self.max_bytes * self.replicas


def reservations(pairs: Iterable[Pair]) -> list[Reservation]:
    return [
        Reservation(
            stream=p.stream,
            storage=p.stream_options.storage,
            max_bytes=stream_max_bytes(p),
            replicas=p.stream_options.replicas,
        )
        for p in pairs
    ]


def _declared(capacity: Capacity | None, storage: str) -> int | None:
    if capacity is None:
        return None
    return capacity.file if storage == "file" else capacity.memory


@dataclass(frozen=True)
class CapacityReport:
    """Every pair's reservation, the totals per storage type, and the declared capacity."""

    reservations: tuple[Reservation, ...]
    capacity: Capacity | None
    caveats: tuple[str, ...] = ()
    """`isolation_problems` of every pair: where one direction's flood can harm the other's messages."""

    def reserved(self, storage: str) -> int:
        return sum(r.reserved or 0 for r in self.reservations if r.storage == storage)

    def unbounded(self) -> list[str]:
        return [r.stream for r in self.reservations if r.reserved is None]

    def problems(self) -> list[str]:
        """`capacity.<storage>: ...` for each storage type whose reservations exceed the declared capacity."""
        out = []
        for storage in ("file", "memory"):
            declared, total = _declared(self.capacity, storage), self.reserved(storage)
            if declared is not None and total > declared:
                biggest = sorted(
                    (r for r in self.reservations if r.storage == storage and r.reserved),
                    key=lambda r: -(r.reserved or 0),
                )[:3]
                shown = ", ".join(f"{r.stream} {r.reserved}" for r in biggest)
                out.append(
                    f"capacity.{storage}: the pairs reserve {total} bytes of {storage} storage (max_bytes x "
                    f"replicas; largest: {shown}), more than the declared {declared}; the server would "
                    "refuse the streams that do not fit (err 10047). Lower the pairs' stream_options "
                    "(max_bytes, or max_msgs_per_subject and max_msg_size it is derived from) or declare "
                    "more capacity"
                )
        if self.unbounded() and self.capacity is not None:
            for storage in ("file", "memory"):
                if _declared(self.capacity, storage) is not None and any(
                    r.storage == storage and r.reserved is None for r in self.reservations
                ):
                    out.append(
                        f"capacity.{storage}: stream(s) {', '.join(self.unbounded())} have max_bytes -1 and "
                        "reserve nothing, so no capacity can be guaranteed; give them a max_bytes or leave "
                        "capacity out"
                    )
                    break
        return out

    def lines(self) -> list[str]:
        """What `render` and the preview print: totals against the capacity, and the caveats."""
        out = []
        for storage in ("file", "memory"):
            declared = _declared(self.capacity, storage)
            total = self.reserved(storage)
            count = sum(1 for r in self.reservations if r.storage == storage)
            if not count and declared is None:
                continue
            shown = f"{declared} declared" if declared is not None else "no capacity declared (not checked)"
            out.append(f"{storage} storage: {total} bytes reserved by {count} stream(s), {shown}")
        unbounded = self.unbounded()
        if unbounded:
            out.append(
                "unbounded (max_bytes -1, no reservation; the account cannot require one): "
                + ", ".join(unbounded)
            )
        out += [f"not isolated: {caveat}" for caveat in self.caveats]
        return out


def capacity_report(pairs: Iterable[Pair], capacity: Capacity | None) -> CapacityReport:
    pairs = list(pairs)
    caveats = tuple(problem for pair in pairs for problem in isolation_problems(pair))
    return CapacityReport(tuple(reservations(pairs)), capacity, caveats)


def capacity_problems(pairs: Sequence[Pair], capacity: Capacity | None) -> list[str]:
    """What `capacity_report(...).problems()` says, without the isolation caveats it does not read."""
    return CapacityReport(tuple(reservations(pairs)), capacity).problems()


@dataclass(frozen=True)
class JetStreamLimits:
    """The JetStream account's limits: storage per type (-1: unlimited) and whether every stream must
    reserve (`max_bytes_required`, false as soon as one stream is unbounded: the server would refuse it)."""

    max_file: int = UNLIMITED
    max_mem: int = UNLIMITED
    max_bytes_required: bool = False

    def conf(self) -> str:
        """The account's `jetstream` value in a nats-server config (`enabled` when nothing is limited)."""
        if self == JetStreamLimits():
            return "enabled"
        parts = []
        if self.max_file != UNLIMITED:
            parts.append(f"max_file: {self.max_file}")
        if self.max_mem != UNLIMITED:
            parts.append(f"max_mem: {self.max_mem}")
        parts.append(f"max_bytes_required: {'true' if self.max_bytes_required else 'false'}")
        return "{" + ", ".join(parts) + "}"

    def beyond_store(self, server: str, max_storage: int, max_memory: int) -> list[str]:
        """`capacity.<storage>: ...` for each limit above `server`'s JetStream store (a store of 0 or
        less is unknown). nats-server gives no JetStream to such an account (measured on 2.15.1:
        "insufficient storage resources"): JWT mode disables it for the account, a config reload keeps
        the previous limits and the next start of the server exits."""
        return [
            f"capacity.{storage}: {limit} bytes is more than server {server}'s JetStream store "
            f"({store} bytes)"
            for storage, limit, store in (
                ("file", self.max_file, max_storage),
                ("memory", self.max_mem, max_memory),
            )
            if 0 < store < limit
        ]

    def claims(self) -> dict[str, Any]:
        """The same as JWT account limits (nats-io/jwt v2 `JetStreamLimits`)."""
        out: dict[str, Any] = {"disk_storage": self.max_file, "mem_storage": self.max_mem}
        if self.max_bytes_required:
            out["max_bytes_required"] = True
        return out


def jetstream_limits(pairs: Iterable[Pair], capacity: Capacity | None = None) -> JetStreamLimits:
    """The account limits of a layout: the declared capacity, and max_bytes_required unless a pair is
    unbounded. The limit is the capacity, not the sum of today's reservations, so that adding a pair
    that fits needs no account change before its stream is created."""
    pairs = list(pairs)
    return JetStreamLimits(
        max_file=capacity.file if capacity and capacity.file is not None else UNLIMITED,
        max_mem=capacity.memory if capacity and capacity.memory is not None else UNLIMITED,
        max_bytes_required=bool(pairs) and all(stream_max_bytes(p) != UNLIMITED for p in pairs),
    )
