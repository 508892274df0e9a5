"""Spec -> least-privilege permission documents, one per app (JWT claims and nats-server config).

An app that never calls a JetStream management API needs exactly: publish to its own subject(s),
pull from its own durable, ack its own messages, and receive replies on its own inbox prefix.
Nothing broader: no `>`, no `$JS.API.>`, no `allow_responses`. Deterministic: the same spec always
renders byte-identical documents, so a diff in review is a real change. Pure: no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from jsb_infra import names
from jsb_infra.spec import Pair


@dataclass(frozen=True)
class AppPermissions:
    """What one app of one stream may publish and subscribe to."""

    stream: str
    app: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def claims(self) -> dict[str, dict[str, list[str]]]:
        """JWT user-claims form (nats-io/jwt v2), as nsc's --allow-pub / --allow-sub write it."""
        return {"pub": {"allow": list(self.publish)}, "sub": {"allow": list(self.subscribe)}}


def app_permissions(pair: Pair, app: str) -> AppPermissions:
    """The least-privilege set for `app` in `pair` (REFERENCE §2)."""
    durable = names.durable_name(app)
    publish = [names.publish_subject(app, pair.destination(app))]
    if pair.dlq:
        publish.append(names.dlq_subject(app))
    publish.append(names.msg_next_subject(pair.stream, durable))
    publish.extend(names.ack_subjects(pair.stream, durable))
    return AppPermissions(
        stream=pair.stream,
        app=app,
        publish=tuple(publish),
        subscribe=(f"{names.inbox_prefix(app)}.>",),
    )


def render_claims_json(perms: AppPermissions) -> str:
    """The claims document as stable JSON text."""
    return json.dumps(perms.claims(), indent=2, sort_keys=True) + "\n"


def _conf_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(item) for item in items) + "]"


def render_conf(perms: AppPermissions, nkey: str | None = None) -> str:
    """A nats-server `users` entry with these permissions.

    With `nkey` (the app's public user key) the entry authenticates that key; without one it names
    the user by app, for an operator to add a password or nkey to.
    """
    identity = f"nkey: {json.dumps(nkey)}" if nkey else f"user: {json.dumps(perms.app)}"
    return (
        f"# jsb-infra: app {perms.app!s} on stream {perms.stream!s}. Generated; do not edit.\n"
        "{\n"
        f"  {identity}\n"
        "  permissions: {\n"
        f"    publish: {{ allow: {_conf_list(perms.publish)} }}\n"
        f"    subscribe: {{ allow: {_conf_list(perms.subscribe)} }}\n"
        "  }\n"
        "}\n"
    )
