"""The naming contract shared by the stream, the consumers, the permissions and the apps.

Kept in one place so that the subjects the stream captures, the subjects an app may publish to and
the subjects the runtime client uses can never disagree.
"""

from __future__ import annotations

import re

DLQ_TOKEN = "dlq"


def publish_subject(app: str, destination: str) -> str:
    """Where `app` publishes events for `destination`."""
    return f"{app}.sync.{destination}"


def dlq_subject(app: str) -> str:
    """Where `app` parks messages it could not process."""
    return f"{app}.sync.{DLQ_TOKEN}"


def durable_name(app: str) -> str:
    """The durable pull consumer `app` reads through."""
    return f"{app}-workers"


def inbox_prefix(app: str) -> str:
    """A per-app reply prefix, so one app can never read another app's replies."""
    return f"_INBOX_{app}"


READ_ONLY_INBOX_PREFIX = "_INBOX_jsb_preview"
"""The reply prefix of the read-only (preview) identities, the only inboxes they may subscribe to.

Not nats-py's default `_INBOX`: every other user of the account (the deploy user among them) gets its
replies there, so a reader allowed `_INBOX.>` would receive them (message bodies of `STREAM.MSG.GET`,
the answers to management calls). A connection as a read-only identity must set this prefix."""


def msg_next_subject(stream: str, durable: str) -> str:
    """The subject a pull `fetch` publishes to."""
    return f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"


ACK_TOKENS_AFTER_DURABLE = 5
"""`$JS.ACK.<stream>.<durable>.<delivered>.<stream seq>.<consumer seq>.<timestamp>.<pending>`: five
tokens follow the durable in the ack reply subject nats-server gives every delivered message
(nats-server server/consumer.go, `ackReplyT`)."""


def ack_subject(stream: str, durable: str) -> str:
    """The acks of `durable` on `stream`, and nothing else: exactly as many tokens as a real ack subject.

    Never `.>` and never a `*` before the stream: `$JS.ACK.*.*.<S>.<D>.>` also matches
    `$JS.ACK.<S2>.<C2>.<S>.<D>.1.1.1`, which the server reads as an ack subject of consumer C2 of
    stream S2, and `$JS.ACK.<S>.<D>.>` matches the twelve-token form
    `$JS.ACK.<domain>.<account hash>.<S2>.<C2>...` with S and D standing for domain and hash.
    """
    return f"$JS.ACK.{stream}.{durable}" + ".*" * ACK_TOKENS_AFTER_DURABLE


DLQ_KEEPER = "dlq-keeper"
"""A durable on the pair's stream that reads nothing and never acks: it holds the DLQ messages.

On a workqueue stream, an ack from any consumer removes a message that no consumer is interested in
(nats-server server/stream.go, `ackMsg`), and an app may ack any sequence below its own durable's
delivery point through its ack import: without an interested consumer, an app could delete its peer's
dead-lettered messages. No app imports anything of this durable. Not an app's durable: app durables
end in `-workers`."""

DEFAULT_JETSTREAM_ACCOUNT = "JETSTREAM"
"""The account that holds every stream and consumer and the deploy user (and nothing else)."""


def jetstream_account_problem(name: object) -> str | None:
    """Why `name` cannot be the JetStream account's name (None when it can)."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        return f"must be 1-64 letters, digits, '_' or '-', got {name!r}"
    if name.startswith(app_account("")):
        return f"{name!r} starts with {app_account('')!r}, the prefix of the app accounts"
    return None


def app_account(app: str) -> str:
    """The account of `app`'s single user: no JetStream, only imports of its own services."""
    return f"APP_{app}"
