"""`Connection`: how the children of an `AppPair` (and the identities) reach one NATS deployment.

Passed to a component the way a provider is, so one Pulumi program manages several clusters:

    east = Connection("east", servers=["nats://east-1:4222"], admin_config_key="jsb:eastAdmin")
    west = Connection("west", servers=["tls://west-1:4222"],
                      admin=AdminCredentials(user="deploy", password=config.require_secret("westPassword")))
    AppPair("orders-billing", pair, connection=east)

`Connection.from_stack_config()` is the default: servers, admin, retry budget and settle timeout come
from the `jsb:` stack config keys (docs/stack-config.md), and the admin credentials never enter state.

Where the admin credentials live:
- `admin_config_key`: the name of a (secret) stack config key holding them; the provider host reads
  it from the stack config on every run. Never in state. Rotating them changes no resource.
- `admin`: a secret Input. Every child carries it in its `connection` input (encrypted in state as a
  Pulumi secret), because `pulumi destroy` and `pulumi refresh` run without the program and must still
  reach the server. Rotating it shows as an in-place update of each child that writes nothing to the
  server.
Servers are plain values (not secret, known at preview): the bridges tell apps where to connect.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import pulumi

from jsb_infra.core.durations import parse_duration
from jsb_infra.core.servers import check_servers
from jsb_infra.core.spec import ConfigError
from jsb_infra.deploy.providers.settings import ADMIN_FIELDS
from jsb_infra.deploy.stack_settings import read_servers


class AdminCredentials(TypedDict, total=False):
    """The deploy's management identity on a connection. Every value may be a (secret) Input."""

    user: pulumi.Input[str]
    password: pulumi.Input[str]
    token: pulumi.Input[str]
    nkey_seed: pulumi.Input[str]
    creds_file: pulumi.Input[str]
    tls_ca: pulumi.Input[str]
    tls_cert: pulumi.Input[str]
    tls_key: pulumi.Input[str]


@dataclass(frozen=True)
class Connection:
    """One NATS deployment (a server or a cluster) and the deploy's identity on it. Validated at
    construction: a bad value fails the program naming the field, before anything registers."""

    name: str
    servers: Sequence[str] = ()
    admin: AdminCredentials | Mapping[str, Any] | None = None
    admin_config_key: str | None = None
    retry_budget: str | float | None = None
    settle_timeout: str | float | None = None
    stack_config: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        problems: list[str] = []
        label = f"Connection({self.name!r})"
        if not isinstance(self.name, str) or not self.name.strip():
            problems.append("Connection.name: must be a non-empty label")
        if not self.stack_config:
            servers = check_servers(list(self.servers) or None, problems, f"{label}.servers")
            object.__setattr__(self, "servers", servers)
            if self.admin is not None and self.admin_config_key:
                problems.append(f"{label}: give admin or admin_config_key, not both")
            if self.admin is not None:
                if not isinstance(self.admin, Mapping):
                    problems.append(f"{label}.admin: must be AdminCredentials(user=..., password=...)")
                else:
                    unknown = sorted(set(self.admin) - set(ADMIN_FIELDS))
                    if unknown:
                        problems.append(
                            f"{label}.admin: unknown key(s) {', '.join(unknown)}; allowed: "
                            f"{', '.join(ADMIN_FIELDS)}"
                        )
            if self.admin_config_key is not None and not (
                isinstance(self.admin_config_key, str) and ":" in self.admin_config_key
            ):
                problems.append(
                    f"{label}.admin_config_key: must be a full stack config key such as 'jsb:eastAdmin'"
                )
        for name in ("retry_budget", "settle_timeout"):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                seconds = parse_duration(value) / 1e9
            except ValueError as err:
                problems.append(f"{label}.{name}: {err}")
                continue
            if seconds <= 0:
                problems.append(f"{label}.{name}: must be positive")
        if problems:
            raise ConfigError(problems)

    @classmethod
    def from_stack_config(cls, config: pulumi.Config | None = None) -> Connection:
        """The default: the `jsb:` stack config keys (`jsb:servers`, `jsb:admin`, `jsb:retryBudget`,
        `jsb:settleTimeout`), resolved by the provider host; the admin credentials stay out of state.
        Servers are read here too (apps are told them); a missing or bad value fails naming the key."""
        return cls(name="stack-config", servers=read_servers(config), stack_config=True)

    def as_input(self) -> pulumi.Input[dict[str, Any]]:
        """What each child resource stores as its `connection` input (a secret when it holds the admin)."""
        if self.stack_config:
            return {"stack_config": True}
        value: dict[str, Any] = {"name": self.name, "servers": list(self.servers)}
        if self.admin_config_key:
            value["admin_config_key"] = self.admin_config_key
        for name in ("retry_budget", "settle_timeout"):
            if getattr(self, name) is not None:
                value[name] = parse_duration(getattr(self, name)) / 1e9
        if self.admin is not None:
            value["admin"] = dict(self.admin)
            return pulumi.Output.secret(value)
        return value
