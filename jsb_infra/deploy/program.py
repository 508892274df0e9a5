"""The config-driven Pulumi program (`stacks/__main__.py`, what `make up` runs): a thin reader of the
`jsb:` stack config that builds the same public API a user's own program composes.

Every pair (and the server list) is validated before the first resource is registered: a bad stack
config fails the preview with the field and the rule, and leaves nothing half-created. Per pair one
`AppPair` (named by the pair's `id`, else its stream), then one `AppAccounts` for all of them; every
child reaches the servers through the default connection, the `jsb:` stack config keys.
"""

from __future__ import annotations

import time
from typing import Any

import pulumi

from jsb_infra.core.spec import ConfigError
from jsb_infra.deploy.app_accounts import AppAccounts, AppAccountsArgs
from jsb_infra.deploy.component import AppPair
from jsb_infra.deploy.connection import Connection
from jsb_infra.deploy.identities import read_auth
from jsb_infra.deploy.migration.state_migration import (
    APP_PAIR_LAYOUT,
    PAIR_STREAM_LAYOUT,
    older_layout_resources,
)
from jsb_infra.deploy.stack_settings import (  # noqa: F401  (the program's settings, also imported from here)
    CONFIG_NAMESPACE,
    StackSettings,
    parse_stack_settings,
    read_stack_settings,
)

LAYOUT = APP_PAIR_LAYOUT
"""The resource layout this program writes (stack output `layout`)."""

READ_STACK_OUTPUTS = "pulumi:pulumi:readStackOutputs"
READ_STACK_RESOURCES = "pulumi:pulumi:readStackResourceOutputs"


class StateLayoutError(pulumi.RunError):
    """The stack holds resources of another layout: `jsb-infra migrate-state` must convert them first."""


def layout_problem(previous_layout: Any, older_types: list[str]) -> str | None:
    """Why this program must not run on a stack whose last `layout` output and resource types of the
    older layout are these (None: it may)."""
    if previous_layout == PAIR_STREAM_LAYOUT:
        older_types = [f"{PAIR_STREAM_LAYOUT} (its `layout` output)", *older_types]
    elif previous_layout not in (None, LAYOUT):
        return (
            f"this stack was written by a jsb-infra whose resource layout is {previous_layout!r}; this "
            f"version writes {LAYOUT!r} and cannot manage it. Nothing was changed. Run the version "
            "that wrote the stack"
        )
    if not older_types:
        return None
    return (
        f"this stack's resources have an older layout ({', '.join(older_types)}); this version writes "
        f"{LAYOUT!r}: an AppPair component per pair with a Stream, a Consumer and a PermissionDocument "
        "per app, and an AppAccounts component with an AppCredential per app. Nothing was changed. "
        "Convert the state first, which keeps every stream, consumer and app key: `jsb-infra "
        "migrate-state --stack <stack>`, then run `pulumi up` again"
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
        older = [
            f"{layout}: {', '.join(found_resources[:3])}{', ...' if len(found_resources) > 3 else ''}"
            for layout, found_resources in sorted(older_layout_resources(found.get("outputs") or {}).items())
        ]
    problem = layout_problem(layout, older)
    if problem:
        raise StateLayoutError(problem)


def build(config: pulumi.Config | None = None) -> dict[str, Any]:
    """Validate the whole stack config, then register every resource; returns the stack outputs.

    `bridges` (apps read it) and `permissions` (what a reviewer reads) derive from the spec alone, so
    `pulumi preview --diff` shows their changes; `credentials` is secret (NKey seeds, or JWT-mode
    `.creds`); `accounts_conf` is the nats-server include for config-file auth.
    """
    config = config or pulumi.Config(CONFIG_NAMESPACE)
    settings = read_stack_settings(config)
    auth = read_auth(config)
    check_state_layout()
    connection = Connection.from_stack_config(config)
    pairs = [
        AppPair(pair.resource_name, pair, connection=connection, app_servers=settings.bridge_servers)
        for pair in settings.pairs
    ]
    accounts = AppAccounts(
        "accounts",
        AppAccountsArgs(
            pairs=pairs,
            app_servers=settings.bridge_servers,
            jetstream_account=settings.jetstream_account,
            deploy_user=settings.deploy,
            auth=auth,
            capacity=settings.capacity,
        ),
    )
    return {
        # Plain values where the spec alone decides: exported as they are, and known at preview.
        "layout": LAYOUT,
        "bridges": {p.pair.stream: p.bridges for p in pairs},
        "credentials": accounts.credentials,
        "permissions": accounts.permissions,
        "accounts_conf": accounts.accounts_conf,
        "documents": accounts.documents.files,
    }


def main() -> None:
    """Entry point of `stacks/__main__.py`: a bad config ends the run with its problems, not a traceback."""
    try:
        exports = build()
    except ConfigError as err:
        raise pulumi.RunError(str(err)) from None
    for name, value in exports.items():
        pulumi.export(name, value)
