"""The Pulumi program: stack config in, one AppPair per pair, stack outputs out.

`stacks/__main__.py` only calls `main()`. The logic lives here so mock tests can import and run it.
Every pair (and the server list) is validated before the first resource is registered: a bad stack
config fails the preview with the field and the rule, and leaves nothing half-created.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pulumi

from jsb_infra.component import AppPair
from jsb_infra.spec import ConfigError, Pair, parse_pairs

CONFIG_NAMESPACE = "jsb"
SERVER_SCHEMES = ("nats", "tls", "ws", "wss")
UNREADABLE = object()
"""A config value that could not be decoded; its problem is already listed."""


@dataclass(frozen=True)
class StackSettings:
    """The validated stack config the program builds from (admin and outputDir are the providers')."""

    pairs: tuple[Pair, ...]
    servers: tuple[str, ...]


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


def _check_servers(value: Any, problems: list[str]) -> tuple[str, ...]:
    key = f"{CONFIG_NAMESPACE}:servers"
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


def parse_stack_settings(pairs: Any, servers: Any) -> StackSettings:
    """Validate decoded `jsb:pairs` and `jsb:servers` together; raises ConfigError listing every problem."""
    problems: list[str] = []
    checked_servers = _check_servers(servers, problems)
    checked_pairs = _check_pairs(pairs, problems)
    if problems:
        raise ConfigError(problems)
    return StackSettings(pairs=checked_pairs, servers=checked_servers)


def read_stack_settings(config: pulumi.Config | None = None) -> StackSettings:
    """Read `jsb:pairs` and `jsb:servers` from the stack config and validate them (no resources touched)."""
    config = config or pulumi.Config(CONFIG_NAMESPACE)
    problems: list[str] = []
    pairs = _json_value(f"{CONFIG_NAMESPACE}:pairs", config.get("pairs"), problems)
    servers = _servers_value(config.get("servers"), problems)
    try:
        settings = parse_stack_settings(pairs, servers)
    except ConfigError as err:
        raise ConfigError(problems + err.problems) from None
    if problems:  # an unreadable value that parse_stack_settings skipped
        raise ConfigError(problems)
    return settings


def build(config: pulumi.Config | None = None) -> dict[str, pulumi.Output[Any]]:
    """Validate the whole stack config, then register one AppPair per pair; returns the stack outputs.

    `bridges` is public (apps read it), `credentials` is secret (NKey seeds), `permissions` is what a
    reviewer reads in `pulumi stack output` to see exactly what each app may do.
    """
    settings = read_stack_settings(config)
    servers = list(settings.servers)
    components = {pair.stream: AppPair(pair.stream, pair=pair, servers=servers) for pair in settings.pairs}
    return {
        "bridges": pulumi.Output.all(**{s: c.bridges for s, c in components.items()}),
        "credentials": pulumi.Output.secret(
            pulumi.Output.all(**{s: c.credentials_output for s, c in components.items()})
        ),
        "permissions": pulumi.Output.all(**{s: c.permissions for s, c in components.items()}),
    }


def main() -> None:
    """Entry point of `stacks/__main__.py`: a bad config ends the run with its problems, not a traceback."""
    try:
        exports = build()
    except ConfigError as err:
        raise pulumi.RunError(str(err)) from None
    for name, value in exports.items():
        pulumi.export(name, value)
