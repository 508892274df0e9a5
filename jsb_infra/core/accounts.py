"""All pairs -> the account layout that makes least privilege hold, rendered as a nats-server include.

Subject permissions inside one shared JetStream account are not enough: the server itself sends
replies (a pull's 404/408 status, a PubAck, an ack_sync confirmation) to whatever reply subject the
requester chose, inside the account, so an app could aim them at `$JS.API.STREAM.DELETE.<any>` or at
another stream's subjects. The layout therefore is:

- one JetStream account holding every stream and consumer and the deploy user, nothing else;
- one account per app, without JetStream, holding that app's single user (one identity per app,
  across all its pairs), which reaches the streams only through service imports of exactly what its
  runtime needs, each exported by the JetStream account to that app's account alone.

A reply subject that crosses a service import is rewritten by the server to a private `_R_` subject in
the exporting account and the answer is delivered back in the app's own account, which has no
JetStream and no stream subjects: reply tricks land nowhere. App users may only open ordinary client
connections (`allowed_connection_types: ["STANDARD"]`): over a leafnode connection the server does not
refuse a client's own `$JS.ACK` reply subjects.

Every app account is limited (`AppLimits`): its connections, each connection's subscriptions and
message size, and no leafnode connections, so one app's key cannot take the connections, memory or
bandwidth the server gives every app. Pure: no I/O; the same pairs render the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jsb_infra.core import names
from jsb_infra.core.capacity import JetStreamLimits, jetstream_limits
from jsb_infra.core.permissions import Rights, Service, app_permissions, conf_list
from jsb_infra.core.spec import AppLimits, Capacity, Pair, ResolvedAppLimits

STANDARD_CONNECTIONS = ("STANDARD",)
"""The only connection type an app user may open (no leafnode, websocket or MQTT)."""
APP_LEAFNODES = 0
"""Leafnode connections of an app account: none (a second wall behind STANDARD_CONNECTIONS)."""
DEFAULT_APP_LIMITS = AppLimits()


@dataclass(frozen=True, kw_only=True)
class AppAccount(Rights):
    """One app's account: the services it imports from the JetStream account and its user's rights."""

    app: str
    account: str
    streams: tuple[str, ...]
    limits: ResolvedAppLimits

    def document(self) -> dict[str, Any]:
        """What a reviewer reads: keyed by subject, so a diff names the subject added or removed."""
        return {
            "account": self.account,
            "streams": list(self.streams),
            "connection_types": list(STANDARD_CONNECTIONS),
            "limits": {**self.limits.model_dump(), "leafnodes": APP_LEAFNODES},
            **self.reasons(),
        }

    def conf_limits(self) -> str:
        """The account's `limits` block (nats-server opts.go parseAccountLimits). The config file has
        no user limits and no data limit; with one user per account, the account's are the user's."""
        limits = self.limits
        return (
            f"limits: {{max_connections: {limits.connections}, max_subscriptions: {limits.subscriptions}, "
            f"max_payload: {limits.payload}, max_leafnodes: {APP_LEAFNODES}}}"
        )


@dataclass(frozen=True)
class DeployUser:
    """The deploy's identity in the JetStream account: an NKey public key, or a user whose password
    the server reads from an environment variable (so no secret is written into the file)."""

    nkey: str | None = None
    user: str | None = None
    password_env: str | None = None

    def is_identity(self, user: str | None = None, nkey: str | None = None) -> bool:
        """Whether a connection as `user` (a user name) or `nkey` (an NKey public key) is this identity."""
        return bool((self.user and user == self.user) or (self.nkey and nkey == self.nkey))

    def conf_entry(self) -> str | None:
        if self.nkey:
            return f"{{nkey: {_q(self.nkey)}}}"
        if self.user:
            env = self.password_env or "JSB_DEPLOY_PASSWORD"
            return f"{{user: {_q(self.user)}, password: ${env}}}"
        return None


READ_ONLY_PUBLISH = (
    "$JS.API.INFO",
    "$JS.API.STREAM.NAMES",
    "$JS.API.STREAM.LIST",
    "$JS.API.STREAM.INFO.*",
    "$JS.API.CONSUMER.NAMES.*",
    "$JS.API.CONSUMER.LIST.*",
    "$JS.API.CONSUMER.INFO.*.*",
)
"""The JetStream API requests that only read (account, stream and consumer info and names): every
request `pulumi preview --refresh` makes. Creating, updating, deleting, purging and message requests
(`$JS.API.STREAM.MSG.DELETE.*`, `...MSG.GET.*`, `$JS.API.DIRECT.GET.*`) are not in it."""
READ_ONLY_SUBSCRIBE = (f"{names.READ_ONLY_INBOX_PREFIX}.>",)
"""Where the answers to those requests come back: the read-only identities' own reply prefix, never
`_INBOX.>`, where the replies to every other user of the account arrive."""


def read_only_conf_entry(reader: DeployUser) -> str | None:
    """The read-only (preview) user's `users` entry in the JetStream account: the identity of
    `reader` (an NKey, or a user whose password the server reads from an environment variable) with
    publish rights on `READ_ONLY_PUBLISH` only, on ordinary client connections."""
    identity = reader.conf_entry()
    if identity is None:
        return None
    return (
        f"{identity[:-1]}, allowed_connection_types: {json.dumps(list(STANDARD_CONNECTIONS))}, "
        f"permissions: {{publish: {{allow: {json.dumps(list(READ_ONLY_PUBLISH))}}}, "
        f"subscribe: {{allow: {json.dumps(list(READ_ONLY_SUBSCRIBE))}}}}}}}"
    )


@dataclass(frozen=True)
class AccountLayout:
    """The JetStream account and every app account of one deployment."""

    jetstream_account: str
    apps: tuple[AppAccount, ...]
    jetstream_limits: JetStreamLimits = field(default_factory=JetStreamLimits)
    """The JetStream account's storage limits (the declared capacity) and max_bytes_required."""

    def app(self, name: str) -> AppAccount:
        for account in self.apps:
            if account.app == name:
                return account
        raise KeyError(f"{name!r} is not an app of this deployment")

    def exports(self) -> list[tuple[Service, str]]:
        """Every service the JetStream account exports, with the one account it is exported to."""
        return [(service, account.account) for account in self.apps for service in account.services]


def account_layout(
    pairs: Iterable[Pair],
    jetstream_account: str = names.DEFAULT_JETSTREAM_ACCOUNT,
    app_limits: AppLimits = DEFAULT_APP_LIMITS,
    capacity: Capacity | None = None,
) -> AccountLayout:
    """Group every pair's per-app services by app: one account and one user per app, each limited by
    `app_limits` (with the app's override); the JetStream account limited to `capacity`, every stream
    required to reserve its max_bytes."""
    pairs = list(pairs)
    services: dict[str, list[Service]] = {}
    streams: dict[str, list[str]] = {}
    subscribe: dict[str, list[str]] = {}
    for pair in pairs:
        for app in pair.apps:
            perms = app_permissions(pair, app)
            services.setdefault(app, []).extend(perms.services)
            streams.setdefault(app, []).append(pair.stream)
            for subject in perms.subscribe:
                if subject not in subscribe.setdefault(app, []):
                    subscribe[app].append(subject)
    apps = tuple(
        AppAccount(
            app=app,
            account=names.app_account(app),
            streams=tuple(streams[app]),
            services=tuple(services[app]),
            subscribe=tuple(subscribe[app]),
            limits=app_limits.for_app(app),
        )
        for app in sorted(services)
    )
    return AccountLayout(
        jetstream_account=jetstream_account, apps=apps, jetstream_limits=jetstream_limits(pairs, capacity)
    )


_CONF_ESCAPES = {"\\": "\\\\", '"': '\\"', "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _conf_char(ch: str) -> str:
    if ch in _CONF_ESCAPES:
        return _CONF_ESCAPES[ch]
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x20 or ord(ch) == 0x7F else ch


def _q(text: str) -> str:
    """`text` as a double-quoted string of the NATS config format. nats-server refuses the whole file
    on an escape other than \\xXX, \\t, \\n, \\r, \\" and \\\\ ("Invalid escape character 'u'" for the
    `\\u00e9` JSON writes for a non-ASCII character), and reads UTF-8 as is; `$` inside quotes is no
    variable reference."""
    return '"' + "".join(_conf_char(ch) for ch in text) + '"'


def _jetstream_lines(limits: JetStreamLimits) -> list[str]:
    """The JetStream account's `jetstream` entry, with what its limits mean."""
    lines = []
    if limits.max_bytes_required:
        lines.append(
            "    # every stream must reserve its max_bytes here (a pair that fills up stops only itself)"
        )
    if limits.max_file != -1 or limits.max_mem != -1:
        lines.append("    # max_file/max_mem: the declared capacity; at most the server's own store")
    return [*lines, f"    jetstream: {limits.conf()}"]


def render_accounts_conf(
    layout: AccountLayout,
    nkeys: Mapping[str, str] | None = None,
    deploy: DeployUser | None = None,
    reader: DeployUser | None = None,
) -> str:
    """The whole `accounts { ... }` block, loadable by nats-server as is (`include "accounts.conf"`).

    `nkeys` maps app -> its user's NKey public key; an app without one gets its account and imports but
    no user yet (a comment says how to add it). Without `deploy` the JetStream account has no user.
    `reader`: a read-only user in the JetStream account as well (`read_only_conf_entry`).
    """
    nkeys = nkeys or {}
    out = [
        "# jsb-infra: the NATS accounts of this deployment. Generated from the spec; do not edit.",
        '# Include it in the server config: include "accounts.conf"',
        "accounts {",
        f"  {_q(layout.jetstream_account)} {{",
        "    # Every stream and consumer, and the deploy user. Apps reach it only through the exports below.",
        *_jetstream_lines(layout.jetstream_limits),
    ]
    entry = deploy.conf_entry() if deploy else None
    users = [e for e in (entry, read_only_conf_entry(reader) if reader else None) if e]
    if users:
        out.append("    users: [\n" + "".join(f"      {e}\n" for e in users) + "    ]")
    else:
        out.append('    # users: [ {nkey: "U..."} ]  (the deploy user: none given)')
    out.append("    exports: [")
    for account in layout.apps:
        out.append(f"      # app {account.app}")
        for service in account.services:
            response = ', response_type: "Stream"' if service.response_type == "Stream" else ""
            out.append(
                f"      {{service: {_q(service.subject)}, accounts: [{_q(account.account)}]{response}}}"
            )
    out.append("    ]")
    out.append("  }")
    for account in layout.apps:
        out.append(f"  {_q(account.account)} {{")
        out.append(
            f"    # app {account.app} (streams: {', '.join(account.streams)}); no JetStream of its own"
        )
        out.append("    # max_connections: the app's in all; subscriptions, payload (bytes): per connection")
        out.append(f"    {account.conf_limits()}")
        key = nkeys.get(account.app)
        if key:
            out += [
                "    users: [",
                "      {",
                f"        nkey: {_q(key)}",
                f"        allowed_connection_types: {json.dumps(list(STANDARD_CONNECTIONS))}",
                "        permissions: {",
                f"          publish: {{allow: {conf_list(list(account.publish), '          ')}}}",
                f"          subscribe: {{allow: {conf_list(list(account.subscribe), '          ')}}}",
                "        }",
                "      }",
                "    ]",
            ]
        else:
            out.append(f"    # users: none yet; render with --nkey {account.app}=U... to add the app's user")
        out.append("    imports: [")
        for service in account.services:
            out.append(
                f"      {{service: {{account: {_q(layout.jetstream_account)}, "
                f"subject: {_q(service.subject)}}}}}"
            )
        out.append("    ]")
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"
