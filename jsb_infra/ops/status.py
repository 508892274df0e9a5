"""`jsb-infra status`: per pair and app, what waits, what is in flight, what was left after max_deliver,
what was dead-lettered, and when the app last pulled or acked. Admin credentials: it reads
`CONSUMER.INFO` per app and one `STREAM.INFO` per stream (with a `subjects_filter` of `>`, for the DLQ
and work-subject counts), which no app credential may call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from jsb_infra.core import names
from jsb_infra.nats_admin import ErrorsSeen, JetStreamAdmin, admin_session
from jsb_infra.ops import admin_cli
from jsb_infra.ops.admin_cli import add_admin_arguments, checked_connection, name_problems

EXIT_FAILED = 1
EXIT_INVALID = 2
DURABLE_SUFFIX = names.durable_name("")


@dataclass(frozen=True)
class AppStatus:
    stream: str
    app: str
    durable: str
    pending: int | None  # stored, not yet delivered to the app
    ack_pending: int | None  # delivered, not yet acked
    redelivered: int | None  # of the ack-pending ones, delivered more than once
    waiting_pulls: int | None
    dlq: int  # messages on <app>.sync.dlq
    last_delivered: str | None
    last_acked: str | None
    problem: str | None = None
    # left in the work queue after max_deliver: never acked or termed, never delivered again
    max_delivered: int | None = None


def max_delivered_count(consumer: dict[str, Any], work_count: int | None) -> int | None:
    """Messages of the durable's work subject still in the stream that the server will not deliver
    again: in a work-queue stream every message of the subject is either not yet delivered
    (`num_pending`), delivered and awaiting its answer (`num_ack_pending`), or past max_deliver and never
    acked or termed. Pure; None when the subject count is unknown. Two reads a moment apart: on a busy
    durable the count can be off by what moved between them, never below 0."""
    if work_count is None:
        return None
    waiting = int(consumer.get("num_pending", 0)) + int(consumer.get("num_ack_pending", 0))
    return max(work_count - waiting, 0)


def work_subject(consumer: dict[str, Any] | None) -> str | None:
    """The subject the durable consumes (its filter), from its CONSUMER.INFO."""
    config = (consumer or {}).get("config") or {}
    subject = config.get("filter_subject") or next(iter(config.get("filter_subjects") or []), None)
    return str(subject) if subject else None


def app_status(
    stream: str, app: str, consumer: dict[str, Any] | None, dlq_count: int, work_count: int | None = None
) -> AppStatus:
    """One row from the durable's CONSUMER.INFO (None: not there), the DLQ count and the count of its
    work subject in the stream. Pure."""
    durable = names.durable_name(app)
    if consumer is None:
        return AppStatus(
            stream, app, durable, None, None, None, None, dlq_count, None, None, f"no durable {durable}"
        )
    stuck = max_delivered_count(consumer, work_count)
    return AppStatus(
        stream=stream,
        app=app,
        durable=durable,
        pending=int(consumer.get("num_pending", 0)),
        ack_pending=int(consumer.get("num_ack_pending", 0)),
        redelivered=int(consumer.get("num_redelivered", 0)),
        waiting_pulls=int(consumer.get("num_waiting", 0)),
        dlq=dlq_count,
        last_delivered=(consumer.get("delivered") or {}).get("last_active"),
        last_acked=(consumer.get("ack_floor") or {}).get("last_active"),
        problem=f"{stuck} past max_deliver: jsb-infra dlq rescue moves them to the DLQ" if stuck else None,
        max_delivered=stuck,
    )


async def pair_status(
    admin: JetStreamAdmin, stream: str, apps: list[str] | None, counts: SubjectCounts
) -> list[AppStatus]:
    """Rows for `apps`, or for every durable named `<app>-workers` on the stream; `counts`: the
    stream's messages per subject (`stream_subject_counts`)."""
    if apps is None:
        apps = [
            n.removesuffix(DURABLE_SUFFIX)
            for n in await admin.consumer_names(stream)
            if n.endswith(DURABLE_SUFFIX)
        ]
    rows = []
    for app in apps:
        dlq_count = await counts.of(names.dlq_subject(app))
        consumer = await admin.consumer_info(stream, names.durable_name(app))
        subject = work_subject(consumer)
        work_count = None if subject is None else await counts.of(subject)
        rows.append(app_status(stream, app, consumer, dlq_count, work_count))
    return rows


async def subject_count(admin: JetStreamAdmin, stream: str, subject: str) -> int:
    """How many messages of `subject` the stream holds (STREAM.INFO with `subjects_filter`)."""
    info = await admin.stream_info_subjects(stream, subject)
    return int(((info or {}).get("state", {}).get("subjects") or {}).get(subject, 0))


@dataclass(frozen=True)
class SubjectCounts:
    """A stream's messages per subject, read once for every row of the stream."""

    admin: JetStreamAdmin
    stream: str
    subjects: dict[str, int]
    complete: bool  # False: the server sent one page of a longer list

    async def of(self, subject: str) -> int:
        """What `subject_count` reads: the map's count (a wildcard is no key of it, so 0), or asked
        alone when the subject may be on a page the server did not send."""
        if subject in self.subjects or self.complete:
            return self.subjects.get(subject, 0)
        return await subject_count(self.admin, self.stream, subject)


async def stream_subject_counts(admin: JetStreamAdmin, stream: str) -> SubjectCounts | None:
    """Every subject's count in one STREAM.INFO (`subjects_filter` `>`), or None without the stream.
    The server pages a long list (`total` subjects, at most `limit` of them sent)."""
    info = await admin.stream_info_subjects(stream, ">")
    if info is None:
        return None
    subjects = {s: int(n) for s, n in ((info.get("state") or {}).get("subjects") or {}).items()}
    return SubjectCounts(admin, stream, subjects, int(info.get("total", 0)) <= len(subjects))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value[:19].replace("T", " ")  # the server's RFC 3339 time, to the second
    return str(value)


def render_table(rows: list[AppStatus]) -> str:
    header = (
        "stream",
        "app",
        "pending",
        "ack pending",
        "redelivered",
        "max delivered",
        "dlq",
        "last delivered",
        "last acked",
    )
    table = [header] + [
        (
            r.stream,
            r.app,
            _cell(r.pending),
            _cell(r.ack_pending),
            _cell(r.redelivered),
            _cell(r.max_delivered),
            _cell(r.dlq),
            _cell(r.last_delivered),
            _cell(r.last_acked) + (f"  ({r.problem})" if r.problem else ""),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in table
    )


# (metric, help, AppStatus field) of the Prometheus exposition
PROMETHEUS_GAUGES = (
    ("jsb_status_pending", "Messages of the durable not yet delivered (num_pending)", "pending"),
    ("jsb_status_ack_pending", "Delivered, not yet acked (num_ack_pending)", "ack_pending"),
    ("jsb_status_redelivered", "Tracked messages delivered more than once (num_redelivered)", "redelivered"),
    ("jsb_status_max_delivered", "Left in the work queue after max_deliver", "max_delivered"),
    ("jsb_status_dlq", "Messages on the app's DLQ subject", "dlq"),
)


def render_prometheus(rows: list[AppStatus]) -> str:
    """The rows as Prometheus text exposition (one gauge per column, labelled stream and app; a
    missing durable's values as NaN plus `jsb_status_durable_present 0`). Pure."""
    lines: list[str] = []
    for metric, doc, attribute in PROMETHEUS_GAUGES:
        lines += [f"# HELP {metric} {doc}", f"# TYPE {metric} gauge"]
        for r in rows:
            value = getattr(r, attribute)
            lines.append(f"{metric}{_labels(r)} {'NaN' if value is None else value}")
    lines += [
        "# HELP jsb_status_durable_present 1 when the app's durable exists",
        "# TYPE jsb_status_durable_present gauge",
    ]
    lines += [f"jsb_status_durable_present{_labels(r)} {0 if r.pending is None else 1}" for r in rows]
    return "\n".join(lines) + "\n"


def _labels(row: AppStatus) -> str:
    # the app's name may come from any `*-workers` durable on the server, never checked by the CLI
    return f'{{stream="{_label_value(row.stream)}",app="{_label_value(row.app)}"}}'


def _label_value(text: str) -> str:
    """A Prometheus label value: backslash, double quote and line feed escaped (exposition format)."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stream", action="append", required=True, help="a pair's stream, repeatable")
    parser.add_argument(
        "--app", action="append", help="an app, repeatable (default: every <app>-workers durable)"
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument(
        "--prometheus",
        action="store_true",
        help="print the rows as Prometheus text exposition (for a textfile collector or a scrape wrapper)",
    )
    add_admin_arguments(parser)


async def run_async(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    problems = [p for stream in args.stream for p in name_problems(stream, None)]
    problems += [p for app in args.app or [] for p in name_problems(None, app)]
    conn = checked_connection("status", args, problems)
    if conn is None:
        return EXIT_INVALID
    rows: list[AppStatus] = []
    missing = []
    seen = ErrorsSeen()
    try:
        async with admin_session(conn, hint=admin_cli.ADMIN_HINT, seen=seen) as admin:
            for stream in args.stream:
                counts = await stream_subject_counts(admin, stream)
                if counts is None:
                    missing.append(stream)
                    continue
                rows += await pair_status(admin, stream, args.app, counts)
    except admin_cli.ADMIN_FAILURES as err:
        print(f"jsb-infra status: {admin_cli.admin_failure(err, conn.timeout, seen)}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2), file=out)
    elif getattr(args, "prometheus", False):
        print(render_prometheus(rows), file=out, end="")
    else:
        print(render_table(rows), file=out)
    for stream in missing:
        print(
            f"jsb-infra status: --stream: no stream {stream!r} on {', '.join(conn.servers)}", file=sys.stderr
        )
    return EXIT_FAILED if missing or any(r.problem for r in rows) else 0


def run(args: argparse.Namespace) -> int:
    """Entry point for `jsb-infra status`."""
    return asyncio.run(run_async(args))
