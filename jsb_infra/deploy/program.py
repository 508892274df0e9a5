"""The Pulumi program: stack config in, one PairStream per pair, stack outputs out.

`stacks/__main__.py` only calls `main()`. The logic lives here so mock tests can import and run it.
Every pair (and the server list) is validated before the first resource is registered: a bad stack
config fails the preview with the field and the rule, and leaves nothing half-created.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pulumi

from jsb_infra.core import names
from jsb_infra.core.accounts import DeployUser, account_layout, render_accounts_conf
from jsb_infra.core.documents import render_documents
from jsb_infra.core.spec import ConfigError, Pair, parse_pairs
from jsb_infra.deploy.bridge_check import checked_bridges
from jsb_infra.deploy.identities import accounts_include, jwt_identities, read_auth
from jsb_infra.deploy.migration.state_migration import OLD_TYPES
from jsb_infra.deploy.providers.base import canonical_pair
from jsb_infra.deploy.providers.credential import AppCredentials
from jsb_infra.deploy.providers.documents import ServerDocuments
from jsb_infra.deploy.providers.pair_stream import PairStream

CONFIG_NAMESPACE = "jsb"
SERVER_SCHEMES = ("nats", "tls", "ws", "wss")
UNREADABLE = object()
"""A config value that could not be decoded; its problem is already listed."""


LAYOUT = "pair-stream"
"""The resource layout this program writes (stack output `layout`): one PairStream per pair and one
AppCredentials, where stacks written before held an AppPair component with a Stream and two
Consumers per pair and an AppCredential per app."""

USER_PUBLIC_KEY = re.compile(r"^U[A-Z2-7]{55}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class StackSettings:
    """The validated stack config the program builds from (admin and outputDir are the providers')."""

    pairs: tuple[Pair, ...]
    servers: tuple[str, ...]
    app_servers: tuple[str, ...] = ()
    jetstream_account: str = names.DEFAULT_JETSTREAM_ACCOUNT
    deploy: DeployUser | None = field(default=None)

    @property
    def bridge_servers(self) -> list[str]:
        """The URLs apps are told: `jsb:appServers`, else the deploy's `jsb:servers`."""
        return list(self.app_servers or self.servers)


def _json_value(key: str, raw: str | None, problems: list[str]) -> Any:
    """Structured stack config arrives as JSON text; a missing or garbled value is a problem, not a crash."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        problems.append(f"{key}: must be a YAML list in the stack config, got the plain string {raw!r}")
        return UNREADABLE


def _servers_value(raw: str | None, problems: list[str]) -> Any:
    """A list in the stack file, or (as the providers also accept) `pulumi config set jsb:servers a,b`."""
    if raw is not None and raw.strip()[:1] != "[":
        return [s.strip() for s in raw.split(",") if s.strip()]
    return _json_value(f"{CONFIG_NAMESPACE}:servers", raw, problems)


def _check_servers(
    value: Any, problems: list[str], key: str = f"{CONFIG_NAMESPACE}:servers"
) -> tuple[str, ...]:
    if value is UNREADABLE:
        return ()
    if value is None:
        problems.append(f"{key}: required; list the NATS server URLs, e.g. ['nats://127.0.0.1:4222']")
        return ()
    if not isinstance(value, list) or not value:
        problems.append(f"{key}: must be a non-empty list of server URLs, got {value!r}")
        return ()
    servers: list[str] = []
    for i, url in enumerate(value):
        if not isinstance(url, str) or not url.strip():
            problems.append(f"{key}[{i}]: must be a non-empty string, got {url!r}")
            continue
        parts = urlsplit(url)
        if parts.username or parts.password:  # the URL is not echoed: it holds a secret
            problems.append(
                f"{key}[{i}]: must not contain credentials (they would reach every app's bridge config, "
                f"which is not secret); put the admin's in the secret {CONFIG_NAMESPACE}:admin"
            )
            continue
        if parts.scheme not in SERVER_SCHEMES or not parts.hostname:
            problems.append(
                f"{key}[{i}]: {url!r} is not a server URL; write scheme://host:port with scheme one of "
                f"{', '.join(SERVER_SCHEMES)}"
            )
            continue
        servers.append(url)
    return tuple(servers)


def _check_pairs(value: Any, problems: list[str]) -> tuple[Pair, ...]:
    key = f"{CONFIG_NAMESPACE}:pairs"
    if value is UNREADABLE:
        return ()
    if value is None:
        problems.append(f"{key}: required; a list of app pairs (see docs/stack-config.md)")
        return ()
    if not isinstance(value, list):
        problems.append(f"{key}: must be a list of app pairs, got {type(value).__name__}")
        return ()
    try:
        return tuple(parse_pairs(value).pairs)
    except ConfigError as err:
        # spec problems read `pairs[0].apps: ...` or name `pairs[i]`: qualify them as stack keys.
        problems.extend(
            f"{CONFIG_NAMESPACE}:{p}" if p.startswith("pairs") else f"{key}: {p}" for p in err.problems
        )
        return ()


def _check_jetstream_account(value: Any, problems: list[str]) -> str:
    key = f"{CONFIG_NAMESPACE}:jetstreamAccount"
    if value is None:
        return names.DEFAULT_JETSTREAM_ACCOUNT
    problem = names.jetstream_account_problem(value)
    if problem:
        problems.append(f"{key}: {problem}")
        return names.DEFAULT_JETSTREAM_ACCOUNT
    return str(value)


def _check_deploy_user(value: Any, problems: list[str]) -> DeployUser | None:
    key = f"{CONFIG_NAMESPACE}:deployUser"
    if value is None or value is UNREADABLE:
        return None
    if not isinstance(value, dict) or set(value) - {"nkey", "user", "password_env"}:
        problems.append(
            f"{key}: must be {{nkey: U...}} or {{user: NAME, password_env: VAR}} (the deploy's identity in "
            f"the JetStream account; nothing secret), got {value!r}"
        )
        return None
    nkey, user, env = value.get("nkey"), value.get("user"), value.get("password_env")
    if bool(nkey) == bool(user):
        problems.append(f"{key}: give exactly one of nkey or user")
        return None
    if nkey and not (isinstance(nkey, str) and USER_PUBLIC_KEY.match(nkey)):
        problems.append(f"{key}.nkey: must be an NKey user public key (U + 55 characters)")
        return None
    if user and not (isinstance(user, str) and user.strip()):
        problems.append(f"{key}.user: must be a non-empty name")
        return None
    if env is not None and not (isinstance(env, str) and ENV_NAME.match(env)):
        problems.append(f"{key}.password_env: must be an environment variable name, got {env!r}")
        return None
    return DeployUser(nkey=nkey, user=user, password_env=env)


def parse_stack_settings(
    pairs: Any,
    servers: Any,
    app_servers: Any = None,
    jetstream_account: Any = None,
    deploy_user: Any = None,
) -> StackSettings:
    """Validate the decoded stack config together; raises ConfigError listing every problem."""
    problems: list[str] = []
    checked_servers = _check_servers(servers, problems)
    checked_app_servers = (
        _check_servers(app_servers, problems, f"{CONFIG_NAMESPACE}:appServers")
        if app_servers is not None
        else ()
    )
    account = _check_jetstream_account(jetstream_account, problems)
    deploy = _check_deploy_user(deploy_user, problems)
    checked_pairs = _check_pairs(pairs, problems)
    if problems:
        raise ConfigError(problems)
    return StackSettings(
        pairs=checked_pairs,
        servers=checked_servers,
        app_servers=checked_app_servers,
        jetstream_account=account,
        deploy=deploy,
    )


def read_stack_settings(config: pulumi.Config | None = None) -> StackSettings:
    """Read `jsb:pairs` and `jsb:servers` from the stack config and validate them (no resources touched)."""
    config = config or pulumi.Config(CONFIG_NAMESPACE)
    problems: list[str] = []
    pairs = _json_value(f"{CONFIG_NAMESPACE}:pairs", config.get("pairs"), problems)
    servers = _servers_value(config.get("servers"), problems)
    raw_app_servers = config.get("appServers")
    app_servers = _servers_value(raw_app_servers, problems) if raw_app_servers is not None else None
    deploy_user = _json_value(f"{CONFIG_NAMESPACE}:deployUser", config.get("deployUser"), problems)
    try:
        settings = parse_stack_settings(
            pairs, servers, app_servers, config.get("jetstreamAccount"), deploy_user
        )
    except ConfigError as err:
        raise ConfigError(problems + err.problems) from None
    if problems:  # an unreadable value that parse_stack_settings skipped
        raise ConfigError(problems)
    return settings


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
