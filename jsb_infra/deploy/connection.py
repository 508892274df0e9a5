"""`Connection`: how the children of an `AppPair` (and the identities) reach one NATS deployment.

Passed to a component the way a provider is, so one Pulumi program manages several clusters:

    east = Connection("east", servers=["nats://east-1:4222"], admin_config_key="jsb:eastAdmin")
    west = Connection("west", servers=["tls://west-1:4222"],
                      admin=AdminCredentials(user="deploy", password={"env": "WEST_NATS_PASSWORD"}))
    AppPair("orders-billing", pair, connection=east)

`Connection.from_stack_config()` is the default: servers, admin, retry budget and settle timeout come
from the `jsb:` stack config keys (docs/stack-config.md); each child stores only that it uses them.

Where the admin credentials live. Each field (`user`, `password`, `token`, `nkey_seed`, `creds_file`,
TLS paths) is its value, or where the provider host reads it at run time: `{"env": "VARIABLE"}` (an
environment variable of the `pulumi` process) or `{"file": "/path"}`. A reference is stored as such;
the value it points to stays in the provider host's memory.
- `admin` whose secret fields (password, token, nkey_seed) are references: every child carries the
  admin in its `connection` input, plain (a user name, paths and references are no secrets).
  `pulumi destroy` and `pulumi refresh`, which run without the program, read the values from the
  same places. Rotating a password changes nothing in the program or the state.
- `admin` with a secret field's value (a literal or a secret Output): as before, every child carries
  it in its `connection` input, encrypted in the state as a Pulumi secret, because destroy and
  refresh must still reach the server. Rotating it shows as an in-place update of each child that
  writes nothing to the server. Prefer references: then no admin secret is in the state.
- `admin_config_key`: the name of a stack config key holding the object; the provider host reads it
  on every run. The Pulumi engine copies the whole stack config into the state (the dynamic
  providers' default provider inputs), so give references there too.
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
from jsb_infra.deploy.providers.settings import (
    ADMIN_FIELDS,
    ProviderSettingsError,
    is_reference,
    secret_setting,
)
from jsb_infra.deploy.stack_settings import read_servers


class FromEnv(TypedDict):
    """A setting read at run time from an environment variable of the `pulumi` process."""

    env: str


class FromFile(TypedDict):
    """A setting read at run time from a file (a relative path: from the program directory)."""

    file: str


AdminField = pulumi.Input[str] | FromEnv | FromFile


class AdminCredentials(TypedDict, total=False):
    """The deploy's management identity on a connection. Every value may be a (secret) Input, or
    where the provider host reads it (`{"env": NAME}`, `{"file": PATH}`), which keeps it out of state."""

    user: AdminField
    password: AdminField
    token: AdminField
    nkey_seed: AdminField
    creds_file: AdminField
    tls_ca: AdminField
    tls_cert: AdminField
    tls_key: AdminField
    inbox_prefix: AdminField


SECRET_FIELDS = ("password", "token", "nkey_seed")
"""The admin fields that hold a secret; the rest (user name, file paths) are plain values."""


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
                    problems.extend(_reference_problems(label, self.admin))
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
            admin: Mapping[str, Any] = self.admin
            value["admin"] = {name: dict(v) if is_reference(v) else v for name, v in admin.items()}
            if any(not is_reference(admin[name]) for name in SECRET_FIELDS if name in admin):
                return pulumi.Output.secret(value)  # a secret's value, not where to read it: encrypted
        return value


def _reference_problems(label: str, admin: Mapping[str, Any]) -> list[str]:
    """A mapping given for an admin field must be a reference the providers can read: the shape the
    provider host checks (`secret_setting`), refused here, before anything is registered."""
    problems = []
    for name, value in admin.items():
        if isinstance(value, Mapping):
            try:
                secret_setting(f"{label}.admin.{name}", value)
            except ProviderSettingsError as err:
                problems.append(str(err))
    return problems
