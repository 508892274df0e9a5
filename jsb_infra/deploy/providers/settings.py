"""Provider settings (admin connection, output directory), held in the provider host process only.

The engine hands the stack config to each dynamic provider's `configure(req)` after unpickling it.
The settings are kept in this module's registry, never on the provider object: that object is
pickled into every resource's state (`__provider`), so anything stored on it would land in state.

Stack config keys (project `jsb`): `jsb:servers` (list of URLs), `jsb:admin` (secret object: user,
password, token, nkey_seed, creds_file, tls_ca, tls_cert, tls_key), `jsb:outputDir` (optional),
`jsb:retryBudget` (how long each management call retries through elections; default 60s),
`jsb:settleTimeout` (how long a change of replicas or placement may take to become real; default 180s),
and for JWT mode the secrets `jsb:operatorSigningKey` (SO... seed) and `jsb:systemCreds` (.creds text).
The engine passes structured values as JSON text (and may pass them decoded); both are accepted.

A resource may carry its own `connection` input (what `jsb_infra.Connection.as_input()` makes): its
servers, its admin credentials (a secret input, or the name of a stack config key holding them, which
keeps them out of state), its retry budget and settle timeout. `for_connection` resolves it against the
stack config; a resource without one (or with `{"stack_config": true}`) uses the `jsb:` keys above.
"""

from __future__ import annotations

import json
import threading
from contextlib import AbstractAsyncContextManager
from typing import Any

from nats.aio.client import Client as NATS
from pydantic import BaseModel, ConfigDict, ValidationError

from jsb_infra import resolver
from jsb_infra.core.durations import parse_duration
from jsb_infra.deploy.providers import connection
from jsb_infra.nats_admin import AdminConnection, JetStreamAdmin
from jsb_infra.retry import DEFAULT_BUDGET, RetryPolicy

PROJECT = "jsb"
SERVERS_KEY = f"{PROJECT}:servers"
ADMIN_KEY = f"{PROJECT}:admin"
OUTPUT_DIR_KEY = f"{PROJECT}:outputDir"
RETRY_BUDGET_KEY = f"{PROJECT}:retryBudget"
SETTLE_TIMEOUT_KEY = f"{PROJECT}:settleTimeout"
DEFAULT_SETTLE_TIMEOUT = 180.0
OPERATOR_SIGNING_KEY = f"{PROJECT}:operatorSigningKey"
SYSTEM_CREDS_KEY = f"{PROJECT}:systemCreds"
ADMIN_FIELDS = ("user", "password", "token", "nkey_seed", "creds_file", "tls_ca", "tls_cert", "tls_key")


class ProviderSettingsError(ValueError):
    """A stack config value the providers cannot use. Messages never repeat a value: it may be secret."""


class ProviderSettings(BaseModel):
    """What the providers need beyond their inputs. Lives in host memory; never an input or output."""

    model_config = ConfigDict(frozen=True)

    servers: list[str] = []
    admin: dict[str, str] = {}
    output_dir: str | None = None
    retry_budget: float = DEFAULT_BUDGET
    settle_timeout: float = DEFAULT_SETTLE_TIMEOUT

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(budget=self.retry_budget)

    operator_signing_key: str | None = None
    system_creds: str | None = None

    def signing_seed(self) -> str:
        """The operator signing key (JWT mode); raises with the config key to set when it is missing."""
        if not self.operator_signing_key:
            raise ProviderSettingsError(
                f"{OPERATOR_SIGNING_KEY} is not set: run "
                f"`pulumi config set --secret {OPERATOR_SIGNING_KEY} SO...`"
            )
        return self.operator_signing_key

    def system_user_creds(self) -> str:
        """The system account user's `.creds` text (JWT mode); raises with the key to set when missing."""
        if not self.system_creds:
            raise ProviderSettingsError(
                f"{SYSTEM_CREDS_KEY} is not set: run `pulumi config set --secret {SYSTEM_CREDS_KEY} "
                '"$(cat sys.creds)"`'
            )
        return self.system_creds

    def admin_connection(self) -> AdminConnection:
        """The admin connection; raises with the config key to set when no server is configured."""
        if not self.servers:
            raise ProviderSettingsError(
                f"{SERVERS_KEY} is not set: run `pulumi config set --path '{SERVERS_KEY}[0]' nats://host:4222`"
            )
        credentials: dict[str, Any] = dict(self.admin)
        return AdminConnection(servers=self.servers, **credentials)


_lock = threading.Lock()
_current: ProviderSettings | None = None
_raw_config: Any = None
CONNECTION_FIELDS = ("name", "servers", "admin", "admin_config_key", "retry_budget", "settle_timeout")


def _decoded(key: str, value: Any) -> Any:
    """Config values arrive as JSON text for lists and objects; plain strings stay as they are."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise ProviderSettingsError(f"{key}: not valid JSON") from None
    return value


def settings_from_config(raw: Any) -> ProviderSettings:
    """Build settings from a `pulumi.dynamic.Config` (or any object with `get(full_key)`)."""
    servers = _decoded(SERVERS_KEY, raw.get(SERVERS_KEY))
    if servers is None:
        servers = []
    elif isinstance(servers, str):
        servers = [s.strip() for s in servers.split(",") if s.strip()]
    if not isinstance(servers, list) or not all(isinstance(s, str) and s for s in servers):
        raise ProviderSettingsError(f"{SERVERS_KEY}: must be a list of server URLs")

    admin = _decoded(ADMIN_KEY, raw.get(ADMIN_KEY)) or {}
    if not isinstance(admin, dict):
        raise ProviderSettingsError(f"{ADMIN_KEY}: must be an object with keys {', '.join(ADMIN_FIELDS)}")
    unknown = sorted(set(admin) - set(ADMIN_FIELDS))
    if unknown:
        raise ProviderSettingsError(
            f"{ADMIN_KEY}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(ADMIN_FIELDS)}"
        )
    not_text = sorted(k for k, v in admin.items() if v is not None and not isinstance(v, str))
    if not_text:
        raise ProviderSettingsError(f"{ADMIN_KEY}: {', '.join(not_text)} must be text")
    admin = {k: v for k, v in admin.items() if v is not None}

    output_dir = raw.get(OUTPUT_DIR_KEY)
    if output_dir is not None and not isinstance(output_dir, str):
        raise ProviderSettingsError(f"{OUTPUT_DIR_KEY}: must be a directory path")
    timing = {
        field: _seconds(key, raw.get(key))
        for field, key in (("retry_budget", RETRY_BUDGET_KEY), ("settle_timeout", SETTLE_TIMEOUT_KEY))
        if raw.get(key) is not None
    }
    jwt_secrets = jwt_settings(raw)
    try:
        return ProviderSettings(
            servers=servers, admin=admin, output_dir=output_dir or None, **timing, **jwt_secrets
        )
    except ValidationError as err:  # never echo the values: they may be secret
        fields = ", ".join(sorted({".".join(map(str, e["loc"])) for e in err.errors()}))
        raise ProviderSettingsError(f"provider settings invalid in field(s): {fields}") from None


def _seconds(key: str, value: Any) -> float:
    """A duration setting (`90s`, `2m`, or seconds) in seconds; its value is not secret."""
    try:
        return parse_duration(_decoded(key, value)) / 1e9
    except ValueError as err:
        raise ProviderSettingsError(f"{key}: {err}") from None


def jwt_settings(raw: Any) -> dict[str, str | None]:
    """The JWT-mode secrets: an operator signing key seed (`SO...`) and the system user's `.creds` text."""
    signing = raw.get(OPERATOR_SIGNING_KEY)
    if signing is not None and not (isinstance(signing, str) and signing.startswith("SO")):
        raise ProviderSettingsError(f"{OPERATOR_SIGNING_KEY}: must be an operator NKey seed (SO...)")
    creds = raw.get(SYSTEM_CREDS_KEY)
    if creds is not None and not (isinstance(creds, str) and "BEGIN NATS USER JWT" in creds):
        raise ProviderSettingsError(
            f"{SYSTEM_CREDS_KEY}: must be the text of a .creds file (a user JWT and seed)"
        )
    return {"operator_signing_key": signing or None, "system_creds": creds or None}


def configure(raw: Any) -> None:
    """Record the settings for this host process (called from every provider's `configure`)."""
    global _current, _raw_config
    settings = settings_from_config(raw)
    with _lock:
        _current = settings
        _raw_config = raw


def connection_problem(value: Any) -> str | None:
    """Why a `connection` input cannot be used (None: it can). Never repeats a value."""
    if value is None:
        return None
    if not isinstance(value, dict):
        return "connection: must be an object (jsb_infra.Connection(...).as_input())"
    unknown = sorted(set(value) - set(CONNECTION_FIELDS) - {"stack_config"})
    if unknown:
        return f"connection: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(CONNECTION_FIELDS)}"
    if value.get("stack_config"):
        return None
    servers = value.get("servers")
    if not isinstance(servers, list) or not servers or not all(isinstance(s, str) and s for s in servers):
        return "connection.servers: must be a non-empty list of server URLs"
    admin = value.get("admin")
    if admin is not None and not isinstance(admin, dict):
        return f"connection.admin: must be an object with keys {', '.join(ADMIN_FIELDS)}"
    if isinstance(admin, dict) and set(admin) - set(ADMIN_FIELDS):
        return f"connection.admin: unknown key(s); allowed: {', '.join(ADMIN_FIELDS)}"
    if admin is not None and value.get("admin_config_key"):
        return "connection: give admin or admin_config_key, not both"
    return None


def for_connection(value: Any) -> ProviderSettings:
    """The settings a resource's `connection` input stands for (see the module docstring)."""
    base = current()
    if not isinstance(value, dict) or value.get("stack_config"):
        return base
    problem = connection_problem(value)
    if problem:
        raise ProviderSettingsError(problem)
    admin = value.get("admin")
    key = value.get("admin_config_key")
    if key:
        with _lock:
            raw = _raw_config
        admin = _decoded(key, raw.get(key)) if raw is not None else None
        if admin is None:
            raise ProviderSettingsError(
                f"connection {value.get('name')!r}: the stack config has no {key}; set it with "
                f"`pulumi config set --secret --path '{key}.password' ...`"
            )
        if not isinstance(admin, dict) or set(admin) - set(ADMIN_FIELDS):
            raise ProviderSettingsError(f"{key}: must be an object with keys {', '.join(ADMIN_FIELDS)}")
    timing = {
        field: float(value[field])
        for field in ("retry_budget", "settle_timeout")
        if value.get(field) is not None
    }
    return base.model_copy(
        update={
            "servers": list(value["servers"]),
            "admin": {k: str(v) for k, v in (admin or {}).items() if v is not None},
            **timing,
        }
    )


def current() -> ProviderSettings:
    """The settings of this host process; empty settings when the engine sent no config."""
    with _lock:
        return _current if _current is not None else ProviderSettings()


def admin_session(conn: Any = None) -> AbstractAsyncContextManager[JetStreamAdmin]:
    """An admin session on the host's shared connection (see `connection`) for a resource's
    `connection` input (None: the stack config), with its retry budget. Await it on the shared loop
    only: `JsbProvider.run` puts every provider call there."""
    settings = for_connection(conn)
    return connection.shared.session(settings.admin_connection(), retry=settings.retry_policy())


def system_session() -> AbstractAsyncContextManager[NATS]:
    """A connection as the system account's user (JWT mode), with the admin's servers and TLS."""
    current_settings = current()
    tls = current_settings.admin_connection().connect_options().get("tls")
    return resolver.system_session(current_settings.servers, current_settings.system_user_creds(), tls)
