"""The Pulumi program: stack config in, one PairStream per pair, stack outputs out.

`stacks/__main__.py` only calls `main()`. The logic lives here so mock tests can import and run it.
Every pair (and the server list) is validated before the first resource is registered: a bad stack
config fails the preview with the field and the rule, and leaves nothing half-created.
"""

from __future__ import annotations

import time
from typing import Any

import pulumi

from jsb_infra.core.accounts import account_layout, render_accounts_conf
from jsb_infra.core.documents import render_documents
from jsb_infra.core.spec import ConfigError
from jsb_infra.deploy.bridge_check import checked_bridges
from jsb_infra.deploy.identities import accounts_include, jwt_identities, read_auth
from jsb_infra.deploy.migration.state_migration import OLD_TYPES
from jsb_infra.deploy.providers.base import canonical_pair
from jsb_infra.deploy.providers.credential import AppCredentials
from jsb_infra.deploy.providers.documents import ServerDocuments
from jsb_infra.deploy.providers.pair_stream import PairStream
from jsb_infra.deploy.stack_settings import (  # noqa: F401  (the program's settings, also imported from here)
    CONFIG_NAMESPACE,
    StackSettings,
    parse_stack_settings,
    read_stack_settings,
)

LAYOUT = "pair-stream"
"""The resource layout this program writes (stack output `layout`): one PairStream per pair and one
AppCredentials, where stacks written before held an AppPair component with a Stream and two
Consumers per pair and an AppCredential per app."""

READ_STACK_OUTPUTS = "pulumi:pulumi:readStackOutputs"
READ_STACK_RESOURCES = "pulumi:pulumi:readStackResourceOutputs"


class StateLayoutError(pulumi.RunError):
    """The stack holds resources of another layout: `jsb-infra migrate-state` must convert them first."""


def layout_problem(previous_layout: Any, older_types: list[str]) -> str | None:
    """Why this program must not run on a stack whose last `layout` output and resource types of the
    older layout are these (None: it may)."""
    if previous_layout not in (None, LAYOUT):
        return (
            f"this stack was written by a jsb-infra whose resource layout is {previous_layout!r}; this "
            f"version writes {LAYOUT!r} and cannot manage it. Nothing was changed. Run the version "
            "that wrote the stack"
        )
    if not older_types:
        return None
    return (
        f"this stack's resources have an older layout ({', '.join(older_types)}: an AppPair "
        "component, a Stream and Consumers per pair, an AppCredential per app; this version writes "
        f"{LAYOUT!r}: one PairStream per pair and one AppCredentials). Nothing was changed. Convert "
        "the state first, which keeps every stream, consumer and app key: `jsb-infra migrate-state "
        "--stack <stack>`, then run `pulumi up` again"
    )


def read_own_stack(token: str, args: dict[str, Any], attempts: int = 20, pause: float = 0.1) -> Any:
    """A built-in invoke that reads this stack's last saved state, retried for up to two seconds: on
    a file backend with checkpoints on, such a read at the start of a new stack's first `up` failed
    once in the test suite with "failed to load checkpoint: EOF" and succeeded when run again."""
    for attempt in range(1, attempts + 1):
        try:
            return pulumi.runtime.invoke(token, args).value
        except Exception:
            if attempt == attempts:
                raise
            time.sleep(pause)
    return None


def check_state_layout() -> None:
    """Refuse, before any resource is registered, to run on a stack whose resources have another
    layout: a new key per app and a rewritten accounts include would lock every app out, and the old
    protected resources would fail the run halfway.

    Reads the stack's own last outputs through the engine's built-in `pulumi:pulumi:readStackOutputs`
    (what a StackReference reads, without a resource in state and in every preview); only when they
    carry no `layout` (a new stack, or one of the older layout, even one whose first `up` failed
    before writing outputs) are the types of its resources read (`readStackResourceOutputs`)."""
    name = f"{pulumi.get_organization()}/{pulumi.get_project()}/{pulumi.get_stack()}"
    outputs = (read_own_stack(READ_STACK_OUTPUTS, {"name": name}) or {}).get("outputs") or {}
    layout = outputs.get("layout")
    older: list[str] = []
    if layout is None:
        found = read_own_stack(READ_STACK_RESOURCES, {"stackName": name}) or {}
        types = {r.get("type") for r in (found.get("outputs") or {}).values() if isinstance(r, dict)}
        older = sorted(t for t in types if t in OLD_TYPES)
    problem = layout_problem(layout, older)
    if problem:
        raise StateLayoutError(problem)


def build(config: pulumi.Config | None = None) -> dict[str, Any]:
    """Validate the whole stack config, then register every resource; returns the stack outputs.

    Per pair one `PairStream` (its stream and consumers, protected unless the pair says otherwise:
    removing a pair must not delete the durables its apps read from); one `AppCredentials` with every
    app's key (an app is one account with one user, across all its pairs); one `ServerDocuments` with
    everything rendered (the accounts include file among them). Few resources on purpose: the engine
    costs milliseconds per registered resource on every run. `bridges` (apps read it) and `permissions`
    (what a reviewer reads) derive from the spec alone, so `pulumi preview --diff` shows their changes;
    `bridge_check` fails the `up` when a live consumer differs from its bridge; `credentials` is secret
    (NKey seeds); `accounts_conf` is the nats-server include for config-file auth.
    """
    settings = read_stack_settings(config)
    auth = read_auth(config or pulumi.Config(CONFIG_NAMESPACE))
    pairs = list(settings.pairs)
    layout = account_layout(pairs, settings.jetstream_account)
    check_state_layout()
    # JWT mode: accounts and users are JWTs (jsb_infra.deploy.identities)
    credentials = (
        AppCredentials("app-credentials", [a.app for a in layout.apps]) if auth.mode == "config" else None
    )
    pair_streams = {
        pair.stream: PairStream(
            pair.resource_name,
            canonical_pair(pair),
            opts=pulumi.ResourceOptions(protect=pair.protect),
        )
        for pair in pairs
    }
    bridges = {
        pair.stream: checked_bridges(pair_streams[pair.stream], pair, settings.bridge_servers)
        for pair in pairs
    }
    public_keys = credentials.public_keys if credentials else pulumi.Output.from_input({})

    # What does not depend on the generated keys is a plain value, known at preview; the accounts
    # include names each app's user by its key, so it waits for the credentials.
    rendered = render_documents(
        pairs,
        {},
        deploy=settings.deploy,
        jetstream_account=settings.jetstream_account,
        servers=settings.bridge_servers,
    )
    keyless: dict[str, pulumi.Input[str]] = {str(path): text for path, text in rendered.items()}
    accounts_conf = public_keys.apply(lambda keys: render_accounts_conf(layout, keys, settings.deploy))
    server_documents = ServerDocuments("server-documents", {**keyless, "accounts.conf": accounts_conf})
    accounts_include(auth, accounts_conf)  # config mode: where the servers include it, then reload
    return {
        # Plain values where the spec alone decides: exported as they are (an Output would be walked
        # into one Output per nested value, seconds for a fleet), and known at preview.
        "layout": LAYOUT,
        "bridges": {stream: b.bridges for stream, b in bridges.items()},
        "bridge_check": pulumi.Output.all(*(b.check for b in bridges.values())).apply(
            lambda checks: f"{len(checks)} pairs: consumers match the bridges"
        ),
        "credentials": pulumi.Output.secret(jwt_identities(layout, auth))
        if auth.mode == "jwt"
        else pulumi.Output.secret(
            {
                account.app: {
                    "account": account.account,
                    "public_key": credentials.public_keys[account.app],
                    "seed": credentials.seeds[account.app],
                }
                for account in layout.apps
            }
            if credentials
            else {}
        ),
        "permissions": {a.app: a.document() for a in layout.apps},
        "accounts_conf": accounts_conf,
        "documents": server_documents.files,
    }


def main() -> None:
    """Entry point of `stacks/__main__.py`: a bad config ends the run with its problems, not a traceback."""
    try:
        exports = build()
    except ConfigError as err:
        raise pulumi.RunError(str(err)) from None
    for name, value in exports.items():
        pulumi.export(name, value)
