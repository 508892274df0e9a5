"""The `jsb:` stack config keys, read and validated together: what the config-driven program and
`jsb-infra render --stack` both build from. Pure apart from reading `pulumi.Config`; a bad value is a
ConfigError naming the key and the rule, raised before any resource is registered.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pydantic import ValidationError

from jsb_infra.core import names
from jsb_infra.core.accounts import DeployUser
from jsb_infra.core.capacity import capacity_problems
from jsb_infra.core.servers import UNREADABLE, check_servers
from jsb_infra.core.spec import Capacity, ConfigError, Pair, parse_pairs, problems_of

CONFIG_NAMESPACE = "jsb"


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
    capacity: Capacity | None = None

    @property
    def bridge_servers(self) -> list[str]:
        """The URLs apps are told: `jsb:appServers`, else the deploy's `jsb:servers`."""
        return list(self.app_servers or self.servers)


def _json_value(key: str, raw: str | None, problems: list[str], shape: str = "list") -> Any:
    """Structured stack config arrives as JSON text; a missing or garbled value is a problem, not a crash."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        problems.append(f"{key}: must be a YAML {shape} in the stack config, got the plain string {raw!r}")
        return UNREADABLE


def _servers_value(raw: str | None, problems: list[str]) -> Any:
    """A list in the stack file, or (as the providers also accept) `pulumi config set jsb:servers a,b`."""
    if raw is not None and raw.strip()[:1] != "[":
        return [s.strip() for s in raw.split(",") if s.strip()]
    return _json_value(f"{CONFIG_NAMESPACE}:servers", raw, problems)


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


def _check_capacity(value: Any, problems: list[str]) -> Capacity | None:
    key = f"{CONFIG_NAMESPACE}:capacity"
    if value is None or value is UNREADABLE:
        return None
    try:
        return Capacity.model_validate(value)
    except ValidationError as err:
        problems.extend(problems_of(err, key))
        return None


def parse_stack_settings(
    pairs: Any,
    servers: Any,
    app_servers: Any = None,
    jetstream_account: Any = None,
    deploy_user: Any = None,
    capacity: Any = None,
) -> StackSettings:
    """Validate the decoded stack config together; raises ConfigError listing every problem."""
    problems: list[str] = []
    checked_servers = check_servers(servers, problems)
    checked_app_servers = (
        check_servers(app_servers, problems, f"{CONFIG_NAMESPACE}:appServers")
        if app_servers is not None
        else ()
    )
    account = _check_jetstream_account(jetstream_account, problems)
    deploy = _check_deploy_user(deploy_user, problems)
    checked_pairs = _check_pairs(pairs, problems)
    checked_capacity = _check_capacity(capacity, problems)
    problems.extend(f"{CONFIG_NAMESPACE}:{p}" for p in capacity_problems(checked_pairs, checked_capacity))
    if problems:
        raise ConfigError(problems)
    return StackSettings(
        pairs=checked_pairs,
        servers=checked_servers,
        app_servers=checked_app_servers,
        jetstream_account=account,
        deploy=deploy,
        capacity=checked_capacity,
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
    capacity = _json_value(f"{CONFIG_NAMESPACE}:capacity", config.get("capacity"), problems, "mapping")
    try:
        settings = parse_stack_settings(
            pairs, servers, app_servers, config.get("jetstreamAccount"), deploy_user, capacity
        )
    except ConfigError as err:
        raise ConfigError(problems + err.problems) from None
    if problems:  # an unreadable value that parse_stack_settings skipped
        raise ConfigError(problems)
    return settings


def read_servers(config: pulumi.Config | None = None) -> tuple[str, ...]:
    """`jsb:servers` alone, checked (the default connection's servers)."""
    config = config or pulumi.Config(CONFIG_NAMESPACE)
    problems: list[str] = []
    servers = check_servers(_servers_value(config.get("servers"), problems), problems)
    if problems:
        raise ConfigError(problems)
    return servers
