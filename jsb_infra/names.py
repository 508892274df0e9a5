"""The naming contract shared by the stream, the consumers, the permissions and the apps.

Kept in one place so that the subjects the stream captures, the subjects an app may publish to and
the subjects the runtime client uses can never disagree.
"""

from __future__ import annotations

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


def msg_next_subject(stream: str, durable: str) -> str:
    """The subject a pull `fetch` publishes to."""
    return f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"


def ack_subjects(stream: str, durable: str) -> list[str]:
    """Both forms of ack reply subjects: classic and the js_ack_fc_v2 form with domain and account hash."""
    return [f"$JS.ACK.{stream}.{durable}.>", f"$JS.ACK.*.*.{stream}.{durable}.>"]
