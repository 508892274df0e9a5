"""Spec -> what one app of one pair may do at runtime: the services it imports, and its user's allow lists.

An app that never calls a JetStream management API needs exactly four kinds of request into the
JetStream account: publish its events (the PubAck is the response), publish to its DLQ, pull from its
own durable (`MSG.NEXT`, answered with a stream of messages), and ack its own messages. Each is a
service the JetStream account exports to that app's account alone (see `accounts`), and the same
subjects are the only ones its user may publish (a second wall). Replies come back on its inbox.
Deterministic: the same spec always renders byte-identical documents. Pure: no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from jsb_infra.core import names
from jsb_infra.core.spec import Pair

ResponseType = Literal["Singleton", "Stream"]
INBOX_WHY = "replies on the app's own inbox prefix: PubAcks, pulled messages, ack_sync confirmations"


@dataclass(frozen=True)
class Service:
    """One request subject an app sends into the JetStream account, and why it needs it."""

    subject: str
    response_type: ResponseType
    why: str


@dataclass(frozen=True)
class Rights:
    """Requests (imported services, also the user's publish allow list) and the subscribe allow list."""

    services: tuple[Service, ...]
    subscribe: tuple[str, ...]

    @property
    def publish(self) -> tuple[str, ...]:
        """The user's publish allow list: exactly the imported service subjects."""
        return tuple(s.subject for s in self.services)

    def claims(self) -> dict[str, dict[str, list[str]]]:
        """JWT user-claims form (nats-io/jwt v2), as nsc's --allow-pub / --allow-sub write it."""
        return {"pub": {"allow": list(self.publish)}, "sub": {"allow": list(self.subscribe)}}

    def reasons(self) -> dict[str, dict[str, str]]:
        """{"publish": {subject: why}, "subscribe": {subject: why}}: keyed by subject, so a review diff
        reads `- "orders.sync.dlq"` rather than a change of list position."""
        return {
            "publish": {s.subject: s.why for s in self.services},
            "subscribe": {subject: INBOX_WHY for subject in self.subscribe},
        }


@dataclass(frozen=True, kw_only=True)
class AppPermissions(Rights):
    """What one app of one stream may request (through its imports) and receive."""

    stream: str
    app: str


def app_services(pair: Pair, app: str) -> tuple[Service, ...]:
    """The requests `app` sends for `pair`, in a fixed order."""
    destination = pair.destination(app)
    durable = names.durable_name(app)
    services = [
        Service(
            names.publish_subject(app, destination),
            "Singleton",
            f"{app}'s events for {destination}; the stream answers with the PubAck",
        )
    ]
    if pair.dlq:
        services.append(
            Service(names.dlq_subject(app), "Singleton", f"{app} parks messages it could not process")
        )
    services.append(
        Service(
            names.msg_next_subject(pair.stream, durable),
            "Stream",
            f"pull from {durable}, and no other durable; one request is answered with many messages",
        )
    )
    services.append(
        Service(
            names.ack_subject(pair.stream, durable),
            "Singleton",
            f"ack, nak, in_progress and term of messages delivered by {durable} (ack_sync gets a reply)",
        )
    )
    return tuple(services)


def app_permissions(pair: Pair, app: str) -> AppPermissions:
    """The least-privilege set for `app` in `pair`."""
    return AppPermissions(
        stream=pair.stream,
        app=app,
        services=app_services(pair, app),
        subscribe=(f"{names.inbox_prefix(app)}.>",),
    )


def permission_document_inputs(pair: Pair, app: str) -> dict[str, Any]:
    """What the `PermissionDocument` resource of `app` in `pair` shows for review: the app, the stream,
    the app's account, its publish and subscribe allow lists keyed by subject with why it needs each,
    and the services it imports into its account {subject: response type}."""
    perms = app_permissions(pair, app)
    reasons = perms.reasons()
    return {
        "app": app,
        "stream": pair.stream,
        "account": names.app_account(app),
        "publish": reasons["publish"],
        "subscribe": reasons["subscribe"],
        "imports": {service.subject: service.response_type for service in perms.services},
    }


def render_claims_json(perms: AppPermissions) -> str:
    """The claims document as stable JSON text."""
    return json.dumps(perms.claims(), indent=2, sort_keys=True) + "\n"


def conf_list(items: tuple[str, ...] | list[str], indent: str) -> str:
    """A nats-server config array, one quoted item per line (a review diff shows one subject per line)."""
    if not items:
        return "[]"
    inner = "".join(f"{indent}  {json.dumps(item)}\n" for item in items)
    return f"[\n{inner}{indent}]"


def render_conf(perms: AppPermissions, jetstream_account: str = names.DEFAULT_JETSTREAM_ACCOUNT) -> str:
    """What this pair adds to the app's account in the server config: its imports and its user's allow
    lists, as a fragment for review (the whole, loadable block is `accounts.render_accounts_conf`)."""
    lines = [
        f"# jsb-infra: app {perms.app} on stream {perms.stream}: what this pair adds to account "
        f"{names.app_account(perms.app)}. Generated; do not edit.",
        "imports: [",
    ]
    for service in perms.services:
        lines.append(f"  # {service.why}")
        lines.append(
            f"  {{service: {{account: {json.dumps(jetstream_account)}, "
            f"subject: {json.dumps(service.subject)}}}}}"
        )
    lines.append("]")
    lines.append(f"publish_allow: {conf_list(list(perms.publish), '')}")
    lines.append(f"subscribe_allow: {conf_list(list(perms.subscribe), '')}")
    return "\n".join(lines) + "\n"
