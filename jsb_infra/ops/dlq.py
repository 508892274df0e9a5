"""DLQ operations for an operator: list, show, replay and purge one app's dead letters, and rescue what
the server left in the app's work queue after max_deliver (move it to the DLQ).

An app's DLQ subject (`<app>.sync.dlq`) lives in its pair's stream; the runtime consumer parks a
message there with the original body and headers saying why (`Jsb-Dlq-Reason`, `Jsb-Delivery-Count`,
`Jsb-Original-Subject`, `Jsb-Stream-Sequence`, `Jsb-Consumer`, `Jsb-Error`). These commands read it
with `STREAM.MSG.GET` (`next_by_subj`), so no consumer is created, and remove with `STREAM.MSG.DELETE`.

Replay republishes the body to the original subject with a `Nats-Msg-Id` fixed per DLQ message
(`replay_msg_id`), and only after the PubAck deletes the DLQ message: a replay interrupted between the
two and run again is dropped by the stream's duplicate window, so the event is stored once. The id
hashes the dead letter's own stored id and time, which only the admin reads, so the app that publishes
to the original subject cannot publish the replay's id first and have the replay dropped. The body
keeps its `event_id`, so an inbox still answers a redelivery of it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import sys
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from jsb_infra.core import names
from jsb_infra.nats_admin import ErrorsSeen, JetStreamAdmin, StoredMessage, admin_session
from jsb_infra.ops.admin_cli import (
    ADMIN_FAILURES,
    ADMIN_HINT,
    add_admin_arguments,
    admin_failure,
    checked_connection,
    name_problems,
)
from jsb_infra.ops.status import max_delivered_count, subject_count, work_subject
from jsb_infra.runtime.consumer import (
    DLQ_BODY_OMITTED,
    DLQ_CONSUMER,
    DLQ_DELIVERY_COUNT,
    DLQ_ERROR,
    DLQ_ORIGINAL_SUBJECT,
    DLQ_REASON,
    DLQ_STREAM_SEQUENCE,
    REASON_MAX_DELIVER,
)
from jsb_infra.runtime.envelope import MSG_ID_HEADER

EXIT_FAILED = 1
EXIT_INVALID = 2


@dataclass(frozen=True)
class DeadLetter:
    """One DLQ message, its headers read."""

    seq: int
    time: str
    reason: str
    delivery_count: str
    original_subject: str
    original_sequence: str
    consumer: str
    error: str
    event_id: str
    event_type: str
    body: bytes
    msg_id: str = ""  # the dead letter's own `Nats-Msg-Id` (keyed by the app that wrote it)
    body_omitted: str = ""  # the original body's size when it did not fit the dead letter

    @classmethod
    def from_message(cls, message: StoredMessage) -> DeadLetter:
        h = message.headers
        try:
            doc = json.loads(message.data)
        except ValueError:
            doc = None
        event = doc if isinstance(doc, dict) else {}
        return cls(
            seq=message.seq,
            time=message.time,
            reason=h.get(DLQ_REASON, "?"),
            delivery_count=h.get(DLQ_DELIVERY_COUNT, "?"),
            original_subject=h.get(DLQ_ORIGINAL_SUBJECT, ""),
            original_sequence=h.get(DLQ_STREAM_SEQUENCE, "?"),
            consumer=h.get(DLQ_CONSUMER, "?"),
            error=h.get(DLQ_ERROR, ""),
            event_id=str(event.get("event_id", "?")),
            event_type=str(event.get("event_type", "?")),
            body=message.data,
            msg_id=h.get(MSG_ID_HEADER, ""),
            body_omitted=h.get(DLQ_BODY_OMITTED, ""),
        )

    def summary(self) -> dict[str, Any]:
        fields = asdict(self)
        fields.pop("body")
        fields.pop("msg_id")
        if not self.body_omitted:
            fields.pop("body_omitted")
        return fields


def replay_msg_id(stream: str, letter: DeadLetter) -> str:
    """The `Nats-Msg-Id` of a replay: fixed per DLQ message, so replaying it twice stores it once.

    The replay goes to a subject the peer app publishes to, in the stream whose dedupe window it shares:
    an id it could predict (such as `replay:<stream>:<dlq seq>`) it could publish first, and the replay
    would come back `duplicate` and the dead letter be removed unreplayed. The id therefore hashes what
    the peer never sees: the dead letter's own id (keyed by the app that wrote it) and stored time.
    """
    return _hashed_id("replay", stream, letter.seq, letter.msg_id, letter.time)


def _hashed_id(prefix: str, *parts: object) -> str:
    """`<prefix>-` and 128 bits of SHA-256 over `parts`: a msg id fixed by what it hashes."""
    digest = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()[:16]
    return f"{prefix}-" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def replay_problem(letter: DeadLetter, app: str) -> str | None:
    """Why `letter` must not be replayed, or None. The target must be a subject `app` consumes
    (`<peer>.sync.<app>`): an admin publish could otherwise go anywhere a header says."""
    parts = letter.original_subject.split(".")
    if letter.body_omitted:
        return (
            f"{DLQ_BODY_OMITTED}: the original body ({letter.body_omitted} bytes) did not fit the dead letter"
        )
    if not letter.original_subject:
        return f"no {DLQ_ORIGINAL_SUBJECT} header"
    if len(parts) != 3 or parts[1] != "sync" or parts[2] != app or parts[0] == app:
        return (
            f"{DLQ_ORIGINAL_SUBJECT} {letter.original_subject!r} is not a subject {app} consumes "
            f"(<peer>.sync.{app})"
        )
    return None


async def dead_letters(admin: JetStreamAdmin, stream: str, app: str) -> list[DeadLetter]:
    return [DeadLetter.from_message(m) async for m in admin.messages(stream, names.dlq_subject(app))]


async def _selected(admin: JetStreamAdmin, args: argparse.Namespace) -> list[DeadLetter]:
    letters = await dead_letters(admin, args.stream, args.app)
    if getattr(args, "all", False):
        return letters
    wanted = set(args.seq or [])
    return [letter for letter in letters if letter.seq in wanted]


async def replay_one(admin: JetStreamAdmin, stream: str, letter: DeadLetter) -> str:
    """Publish the body to its original subject, then delete the DLQ message; returns what happened."""
    msg_id = replay_msg_id(stream, letter)
    reply = await admin.nc.request(
        letter.original_subject, letter.body, timeout=admin.timeout, headers={MSG_ID_HEADER: msg_id}
    )
    ack = json.loads(reply.data)
    if "error" in ack:
        raise RuntimeError(f"the stream refused the replay: {ack['error']}")
    if ack.get("stream") != stream:
        raise RuntimeError(
            f"{letter.original_subject} is captured by stream {ack.get('stream')!r}, not {stream!r}"
        )
    await admin.delete_message(stream, letter.seq)
    how = "already stored (duplicate)" if ack.get("duplicate") else "stored"
    return (
        f"replayed seq {letter.seq} to {letter.original_subject} as stream seq {ack['seq']}, {how}; removed"
    )


# -- messages left in the work queue after max_deliver ---------------------------------------------
RESCUE_ERROR = "left in the work queue after max_deliver on the server; moved by jsb-infra dlq rescue"


async def max_delivered_messages(
    admin: JetStreamAdmin, stream: str, app: str
) -> tuple[list[StoredMessage], int, dict[str, Any] | None]:
    """The messages of `app`'s work subject that the server will never deliver again (for certain),
    how many the counts say there are in all (`jsb-infra status`'s max delivered), and the durable's
    info they were read from.

    Certain: at or below the durable's ack floor (nothing there awaits an answer), or, while nothing of
    the durable is in flight (`num_ack_pending` 0), at or below its last delivered sequence. Redelivery
    comes only from what is in flight, so neither can be delivered again. Others, above the floor while
    messages are in flight, are found by a later run (or with the app stopped).
    """
    consumer = await admin.consumer_info(stream, names.durable_name(app))
    subject = work_subject(consumer)
    if consumer is None or subject is None:
        return [], 0, consumer
    limit = int((consumer.get("ack_floor") or {}).get("stream_seq", 0))
    if int(consumer.get("num_ack_pending", 0)) == 0:
        limit = max(limit, int((consumer.get("delivered") or {}).get("stream_seq", 0)))
    found = []
    async for message in admin.messages(stream, subject):
        if message.seq > limit:
            break
        found.append(message)
    total = max_delivered_count(consumer, await subject_count(admin, stream, subject)) or 0
    return found, max(total, len(found)), consumer


def rescue_headers(message: StoredMessage, stream: str, app: str, max_deliver: int) -> dict[str, str]:
    """The DLQ copy's headers, as the consumer writes them for a message past max_deliver."""
    return {
        DLQ_REASON: REASON_MAX_DELIVER,
        DLQ_DELIVERY_COUNT: str(max_deliver),
        DLQ_ORIGINAL_SUBJECT: message.subject,
        DLQ_STREAM_SEQUENCE: str(message.seq),
        DLQ_CONSUMER: names.durable_name(app),
        DLQ_ERROR: RESCUE_ERROR,
        MSG_ID_HEADER: rescue_msg_id(stream, message),
    }


def rescue_msg_id(stream: str, message: StoredMessage) -> str:
    """The `Nats-Msg-Id` of a rescue: fixed per work-queue message, so a rescue run again after an
    interruption stores the DLQ copy once. Like a replay's, it hashes what the peer app (which wrote the
    message and shares the stream's dedupe window) never sees, the stored time, so the peer cannot
    publish the id first and block the rescue."""
    return _hashed_id("rescue", stream, message.seq, message.time)


async def rescue_one(
    admin: JetStreamAdmin, stream: str, app: str, message: StoredMessage, max_deliver: int
) -> str:
    """Copy `message` to `app`'s DLQ subject, check the copy is there, then delete the original."""
    dlq_subject = names.dlq_subject(app)
    headers = rescue_headers(message, stream, app, max_deliver)
    reply = await admin.nc.request(dlq_subject, message.data, timeout=admin.timeout, headers=headers)
    ack = json.loads(reply.data)
    if "error" in ack:
        raise RuntimeError(f"the stream refused the DLQ copy: {ack['error']}")
    if ack.get("stream") != stream:
        raise RuntimeError(f"{dlq_subject} is captured by stream {ack.get('stream')!r}, not {stream!r}")
    if ack.get("duplicate"):
        # Another message may hold this msg id within the duplicate window (anyone who may publish to
        # the stream can pick one): the original is deleted only when the DLQ holds this very copy.
        stored = await admin.get_message(stream, int(ack["seq"]))
        if (
            stored is None
            or stored.subject != dlq_subject
            or stored.headers.get(DLQ_STREAM_SEQUENCE) != str(message.seq)
            or stored.data != message.data
        ):
            raise RuntimeError(
                f"msg id {headers[MSG_ID_HEADER]} is taken by stream seq {ack['seq']}, which is not this "
                "message's DLQ copy; left in the work queue"
            )
    await admin.delete_message(stream, message.seq)
    how = "already copied (duplicate)" if ack.get("duplicate") else "copied"
    return (
        f"moved seq {message.seq} ({message.subject}) to {dlq_subject} as stream seq {ack['seq']}, {how}; "
        "removed"
    )


# -- commands -------------------------------------------------------------------------------------
def shown(text: str) -> str:
    """`text` safe to print to an operator's terminal: control and format characters (escape
    sequences, line breaks, bidi overrides) as `\\x1b`-style escapes. A dead letter's body, its event
    type and id, and its error text (a handler's exception may quote the payload) are written by the
    peer app; printed raw they could rewrite the terminal or forge lines of this listing."""
    return "".join(
        ch if unicodedata.category(ch) not in ("Cc", "Cf") else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


def _row(letter: DeadLetter) -> str:
    error = letter.error if len(letter.error) <= 60 else letter.error[:57] + "..."
    when = letter.time[:19].replace("T", " ")
    return shown(
        f"{letter.seq:>7}  {when:<19}  {letter.reason:<11} {letter.delivery_count:>4}  "
        f"{letter.original_subject:<24} {letter.event_type:<20} {letter.event_id:<36}  {error}"
    )


async def cmd_list(admin: JetStreamAdmin, args: argparse.Namespace, out: TextIO) -> int:
    letters = await dead_letters(admin, args.stream, args.app)
    if args.json:
        print(json.dumps([letter.summary() for letter in letters], indent=2), file=out)
        return 0
    print(f"{len(letters)} message(s) on {names.dlq_subject(args.app)} in stream {args.stream}", file=out)
    if letters:
        print(
            f"{'seq':>7}  {'time':<19}  {'reason':<11} {'dlv':>4}  {'original subject':<24} "
            f"{'event type':<20} {'event id':<36}  error",
            file=out,
        )
    for letter in letters:
        print(_row(letter), file=out)
    return 0


async def cmd_show(admin: JetStreamAdmin, args: argparse.Namespace, out: TextIO) -> int:
    letters = await _selected(admin, args)
    missing = set(args.seq) - {letter.seq for letter in letters}
    for letter in letters:
        message = await admin.get_message(args.stream, letter.seq)
        assert message is not None
        if args.json:
            doc = {
                **letter.summary(),
                "headers": message.headers,
                "body": message.data.decode(errors="replace"),
            }
            print(json.dumps(doc, indent=2), file=out)
            continue
        print(f"seq {letter.seq} ({letter.time}) on {message.subject}", file=out)
        for key, value in message.headers.items():
            print(shown(f"  {key}: {value}"), file=out)
        print(f"  body: {shown(message.data.decode(errors='replace'))}", file=out)
    for seq in sorted(missing):
        print(f"seq {seq}: not on {names.dlq_subject(args.app)} in stream {args.stream}", file=sys.stderr)
    return EXIT_FAILED if missing else 0


async def cmd_replay(admin: JetStreamAdmin, args: argparse.Namespace, out: TextIO) -> int:
    failed = False
    for letter in await _selected(admin, args):
        problem = replay_problem(letter, args.app)
        if problem:
            failed = True
            print(f"seq {letter.seq}: not replayed: {problem}", file=out)
            continue
        msg_id = replay_msg_id(args.stream, letter)
        if args.dry_run:
            print(
                shown(
                    f"would replay seq {letter.seq} (event {letter.event_id}) to {letter.original_subject} "
                    f"with {MSG_ID_HEADER} {msg_id}, then remove it"
                ),
                file=out,
            )
            continue
        try:
            print(await replay_one(admin, args.stream, letter), file=out)
        except Exception as err:
            failed = True
            print(f"seq {letter.seq}: replay failed, left in the DLQ: {err}", file=out)
    return EXIT_FAILED if failed else 0


async def cmd_purge(admin: JetStreamAdmin, args: argparse.Namespace, out: TextIO) -> int:
    for letter in await _selected(admin, args):
        if args.dry_run:
            print(
                shown(f"would remove seq {letter.seq} (event {letter.event_id}, {letter.reason})"), file=out
            )
        elif await admin.delete_message(args.stream, letter.seq):
            print(shown(f"removed seq {letter.seq} (event {letter.event_id})"), file=out)
    return 0


async def cmd_rescue(admin: JetStreamAdmin, args: argparse.Namespace, out: TextIO) -> int:
    found, total, consumer = await max_delivered_messages(admin, args.stream, args.app)
    if consumer is None:
        print(
            f"jsb-infra dlq: --app: no durable {names.durable_name(args.app)!r} on stream {args.stream!r}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if args.seq:
        wanted = set(args.seq)
        found = [m for m in found if m.seq in wanted]
    max_deliver = int(((consumer or {}).get("config") or {}).get("max_deliver", 0))
    failed = False
    for message in found:
        if args.dry_run:
            print(
                f"would move seq {message.seq} ({message.subject}) to {names.dlq_subject(args.app)}", file=out
            )
            continue
        try:
            print(await rescue_one(admin, args.stream, args.app, message, max_deliver), file=out)
        except Exception as err:
            failed = True
            print(f"seq {message.seq}: not moved: {err}", file=out)
    left = total - len(found)
    if left > 0 and not args.seq:
        print(
            f"{left} more past max_deliver cannot be told apart from messages in flight yet: run again "
            "once the app has answered what it holds (or with the app stopped)",
            file=out,
        )
    if not found and total == 0:
        print(f"nothing past max_deliver on {args.stream} for {args.app}", file=out)
    return EXIT_FAILED if failed else 0


COMMANDS = {
    "list": cmd_list,
    "show": cmd_show,
    "replay": cmd_replay,
    "purge": cmd_purge,
    "rescue": cmd_rescue,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=list(COMMANDS),
        help="list | show | replay | purge | rescue (move what is left in the work queue after max_deliver "
        "to the DLQ)",
    )
    parser.add_argument("--stream", required=True, help="the pair's stream")
    parser.add_argument("--app", required=True, help="the app whose DLQ (<app>.sync.dlq) to read")
    parser.add_argument(
        "--seq", type=int, action="append", help="a DLQ message's stream sequence, repeatable"
    )
    parser.add_argument("--all", action="store_true", help="replay or purge every DLQ message")
    parser.add_argument(
        "--dry-run", action="store_true", help="say what replay or purge would do; change nothing"
    )
    parser.add_argument("--json", action="store_true", help="list and show as JSON")
    add_admin_arguments(parser)


def check_arguments(args: argparse.Namespace) -> list[str]:
    problems = []
    if args.action in ("replay", "purge") and not (args.seq or args.all):
        problems.append(f"{args.action}: name the messages with --seq N (repeatable) or --all")
    if args.action == "show" and not args.seq:
        problems.append("show: --seq N is required")
    if args.seq and args.all:
        problems.append("--all: not together with --seq")
    if any(seq < 1 for seq in args.seq or []):
        problems.append("--seq: stream sequences start at 1")
    return problems + name_problems(args.stream, args.app)


async def run_async(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    problems = check_arguments(args)
    conn = checked_connection("dlq", args, problems)
    if conn is None:
        return EXIT_INVALID
    seen = ErrorsSeen()
    try:
        async with admin_session(conn, hint=ADMIN_HINT, seen=seen) as admin:
            if await admin.stream_info(args.stream) is None:
                print(
                    f"jsb-infra dlq: --stream: no stream {args.stream!r} on {', '.join(conn.servers)}",
                    file=sys.stderr,
                )
                return EXIT_FAILED
            return await COMMANDS[args.action](admin, args, out)
    except ADMIN_FAILURES as err:
        print(f"jsb-infra dlq: {admin_failure(err, conn.timeout, seen)}", file=sys.stderr)
        return EXIT_FAILED


def run(args: argparse.Namespace) -> int:
    """Entry point for `jsb-infra dlq`."""
    return asyncio.run(run_async(args))
