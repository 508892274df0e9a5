"""Provider settings (admin connection, output directory), held in the provider host process only.

The engine hands the stack config to each dynamic provider's `configure(req)` after unpickling it.
The settings are kept in this module's registry, never on the provider object: that object is
pickled into every resource's state (`__provider`), so anything stored on it would land in state.

Stack config keys (project `jsb`): `jsb:servers` (list of URLs), `jsb:admin` (object: user,
password, token, nkey_seed, creds_file, tls_ca, tls_cert, tls_key, inbox_prefix), `jsb:outputDir`
(optional), `jsb:previewUser` (the read-only identity: a connection as it gets its own reply prefix),
`jsb:retryBudget` (how long each management call retries through elections; default 60s),
`jsb:settleTimeout` (how long a change of replicas or placement may take to become real; default 180s),
and for JWT mode `jsb:operatorSigningKey` (SO... seed) and `jsb:systemCreds` (.creds text).
The engine passes structured values as JSON text (and may pass them decoded); both are accepted.

Where the secrets live. The Pulumi engine hands a dynamic provider the whole stack config as the
inputs of its default provider resource (`pulumi:providers:pulumi-python::default`), and keeps those
inputs in the state, in every checkpoint and backup (secret values encrypted). So a secret value set
in the stack config is in the state whatever the providers do with it. Each secret setting (every
`jsb:admin` field, `jsb:operatorSigningKey`, `jsb:systemCreds`) may therefore be a reference instead:
`{env: NAME}` (an environment variable of the `pulumi` process) or `{file: PATH}` (a file the provider
host reads; relative to the program directory). Only the reference is in the state; the value is
read when a provider needs it (`SecretRef`), held in host memory only, and never an input or output.

A resource may carry its own `connection` input (what `jsb_infra.Connection.as_input()` makes): its
servers, its admin credentials (each field a value, then the whole input is a secret, or a reference
as above; or the name of a stack config key holding them), its retry budget and settle timeout.
`for_connection` resolves it against the
stack config; a resource without one (or with `{"stack_config": true}`) uses the `jsb:` keys above.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import nkeys
from nats.aio.client import Client as NATS
from pydantic import BaseModel, ConfigDict, ValidationError

from jsb_infra import resolver
from jsb_infra.core.accounts import DeployUser
from jsb_infra.core.durations import parse_duration
from jsb_infra.core.names import READ_ONLY_INBOX_PREFIX
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
PREVIEW_USER_KEY = f"{PROJECT}:previewUser"
ADMIN_FIELDS = (
    "user",
    "password",
    "token",
    "nkey_seed",
    "creds_file",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "inbox_prefix",
)


class ProviderSettingsError(ValueError):
    """A stack config value the providers cannot use. Messages never repeat a value: it may be secret."""


REFERENCE_KINDS = ("env", "file")


class SecretRef(BaseModel):
    """Where a secret setting's value is read at run time: an environment variable or a file."""

    model_config = ConfigDict(frozen=True)

    env: str | None = None
    file: str | None = None

    def read(self, where: str) -> str:
        """The value now (a file's trailing line break dropped); raises naming `where` and the source."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise ProviderSettingsError(
                    f"{where}: the environment variable {self.env} it names is not set (or empty) "
                    "in the environment of the `pulumi` command"
                )
            return value
        assert self.file is not None
        try:
            text = Path(self.file).read_text().rstrip("\r\n")
        except OSError as err:
            raise ProviderSettingsError(
                f"{where}: cannot read the file it names ({self.file}): {err.strerror}"
            ) from None
        if not text:
            raise ProviderSettingsError(f"{where}: the file it names ({self.file}) is empty")
        return text


Secret = str | SecretRef
"""A secret setting: its value (which the engine keeps in the state), or where to read it."""


def is_reference(value: Any) -> bool:
    """Whether a setting names where its value is read (`{"env": ...}` / `{"file": ...}`)."""
    return isinstance(value, Mapping) and len(value) == 1 and set(value) <= set(REFERENCE_KINDS)


def secret_setting(where: str, value: Any) -> Secret | None:
    """A secret setting's value, or its `{env: NAME}` / `{file: PATH}` reference, checked for shape
    (never read here: a run that does not need it must not fail for it). Never repeats a value."""
    if value is None or isinstance(value, str):
        return value or None
    if is_reference(value):
        (kind, target), *_ = value.items()
        if isinstance(target, str) and target.strip():
            return SecretRef(**{kind: target})
    raise ProviderSettingsError(
        f"{where}: must be the value as text, or where to read it: {{env: VARIABLE}} or {{file: PATH}}"
    )


def reveal(where: str, value: Secret | None) -> str | None:
    """The value of a secret setting: as given, or read from where its reference points."""
    return value.read(where) if isinstance(value, SecretRef) else value


class ProviderSettings(BaseModel):
    """What the providers need beyond their inputs. Lives in host memory; never an input or output."""

    model_config = ConfigDict(frozen=True)

    servers: list[str] = []
    admin: dict[str, Secret] = {}
    admin_key: str = ADMIN_KEY
    output_dir: str | None = None
    retry_budget: float = DEFAULT_BUDGET
    settle_timeout: float = DEFAULT_SETTLE_TIMEOUT

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(budget=self.retry_budget)

    operator_signing_key: Secret | None = None
    system_creds: Secret | None = None
    reader: DeployUser | None = None
    """The read-only identity (`jsb:previewUser`): an admin connection as it takes its inbox prefix."""

    def signing_seed(self) -> str:
        """The operator signing key (JWT mode); raises with the config key to set when it is missing."""
        seed = reveal(OPERATOR_SIGNING_KEY, self.operator_signing_key)
        if not seed:
            raise ProviderSettingsError(
                f"{OPERATOR_SIGNING_KEY} is not set: name where the provider reads it, e.g. "
                f"`pulumi config set --path {OPERATOR_SIGNING_KEY}.file /secrets/operator-signing.nk`"
            )
        if not seed.startswith("SO"):
            raise ProviderSettingsError(f"{OPERATOR_SIGNING_KEY}: must be an operator NKey seed (SO...)")
        return seed

    def system_user_creds(self) -> str:
        """The system account user's `.creds` text (JWT mode); raises with the key to set when missing."""
        creds = reveal(SYSTEM_CREDS_KEY, self.system_creds)
        if not creds:
            raise ProviderSettingsError(
                f"{SYSTEM_CREDS_KEY} is not set: name where the provider reads it, e.g. "
                f"`pulumi config set --path {SYSTEM_CREDS_KEY}.file /secrets/sys.creds`"
            )
        if "BEGIN NATS USER JWT" not in creds:
            raise ProviderSettingsError(
                f"{SYSTEM_CREDS_KEY}: must be the text of a .creds file (a user JWT and seed)"
            )
        return creds

    def admin_connection(self) -> AdminConnection:
        """The admin connection, its secrets read now; raises with the config key to set when no
        server is configured, or naming the field whose reference cannot be read."""
        if not self.servers:
            raise ProviderSettingsError(
                f"{SERVERS_KEY} is not set: run `pulumi config set --path '{SERVERS_KEY}[0]' nats://host:4222`"
            )
        credentials: dict[str, Any] = {
            name: reveal(f"{self.admin_key}.{name}", value) for name, value in self.admin.items()
        }
        if "inbox_prefix" not in credentials and self._as_reader(credentials):
            credentials["inbox_prefix"] = READ_ONLY_INBOX_PREFIX
        try:
            return AdminConnection(servers=self.servers, **credentials)
        except ValidationError as err:  # never echo the values: they may be secret
            fields = ", ".join(sorted({f"{self.admin_key}.{e['loc'][0]}" for e in err.errors()}))
            raise ProviderSettingsError(f"invalid: {fields} ({err.errors()[0]['msg']})") from None

    def _as_reader(self, credentials: dict[str, Any]) -> bool:
        """Whether these admin credentials are the read-only identity's (by user name or NKey)."""
        if self.reader is None:
            return False
        seed = credentials.get("nkey_seed")
        try:
            nkey = nkeys.from_seed(seed.encode()).public_key.decode() if seed else None
        except (nkeys.NkeysError, ValueError):
            nkey = None  # the connect refuses the seed and says so
        return self.reader.is_identity(user=credentials.get("user"), nkey=nkey)


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

    admin = admin_setting(ADMIN_KEY, raw.get(ADMIN_KEY))

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
            servers=servers,
            admin=admin,
            output_dir=output_dir or None,
            reader=reader_setting(raw.get(PREVIEW_USER_KEY)),
            **timing,
            **jwt_secrets,
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


def admin_setting(key: str, value: Any) -> dict[str, Secret]:
    """The admin credentials object (`jsb:admin`, or the key a connection names): each field its
    value or a reference (`{env: NAME}` / `{file: PATH}`), read only when a connection is made."""
    admin = _decoded(key, value) or {}
    if not isinstance(admin, dict):
        raise ProviderSettingsError(f"{key}: must be an object with keys {', '.join(ADMIN_FIELDS)}")
    unknown = sorted(set(admin) - set(ADMIN_FIELDS))
    if unknown:
        raise ProviderSettingsError(
            f"{key}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(ADMIN_FIELDS)}"
        )
    fields = {name: secret_setting(f"{key}.{name}", field) for name, field in admin.items()}
    return {name: field for name, field in fields.items() if field is not None}


def reader_setting(value: Any) -> DeployUser | None:
    """The read-only identity `jsb:previewUser` names (`{user: NAME, ...}` or `{nkey: U...}`); the
    program checks its shape, so anything else is no identity here."""
    reader = _decoded(PREVIEW_USER_KEY, value)
    if not isinstance(reader, dict):
        return None
    user, nkey = reader.get("user"), reader.get("nkey")
    return DeployUser(
        user=user if isinstance(user, str) and user else None,
        nkey=nkey if isinstance(nkey, str) and nkey else None,
    )


def jwt_settings(raw: Any) -> dict[str, Secret | None]:
    """The JWT-mode secrets: an operator signing key seed (`SO...`) and the system user's `.creds`
    text, or where to read each. A value given as such is checked now; a reference when it is read."""
    signing = secret_setting(
        OPERATOR_SIGNING_KEY, _decoded(OPERATOR_SIGNING_KEY, raw.get(OPERATOR_SIGNING_KEY))
    )
    if isinstance(signing, str) and not signing.startswith("SO"):
        raise ProviderSettingsError(f"{OPERATOR_SIGNING_KEY}: must be an operator NKey seed (SO...)")
    creds = secret_setting(SYSTEM_CREDS_KEY, _decoded(SYSTEM_CREDS_KEY, raw.get(SYSTEM_CREDS_KEY)))
    if isinstance(creds, str) and "BEGIN NATS USER JWT" not in creds:
        raise ProviderSettingsError(
            f"{SYSTEM_CREDS_KEY}: must be the text of a .creds file (a user JWT and seed)"
        )
    return {"operator_signing_key": signing, "system_creds": creds}


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
    if admin is not None and value.get("admin_config_key"):
        return "connection: give admin or admin_config_key, not both"
    if admin is not None:
        try:
            admin_setting("connection.admin", admin)
        except ProviderSettingsError as err:
            return str(err)
    return None


def for_connection(value: Any) -> ProviderSettings:
    """The settings a resource's `connection` input stands for (see the module docstring)."""
    base = current()
    if not isinstance(value, dict) or value.get("stack_config"):
        return base
    problem = connection_problem(value)
    if problem:
        raise ProviderSettingsError(problem)
    admin: Any = value.get("admin")
    where = "connection.admin"
    key = value.get("admin_config_key")
    if key:
        with _lock:
            raw = _raw_config
        admin = raw.get(key) if raw is not None else None
        where = key
        if admin is None:
            raise ProviderSettingsError(
                f"connection {value.get('name')!r}: the stack config has no {key}; name where the "
                f"provider reads it with `pulumi config set --path '{key}.password.env' VARIABLE`"
            )
    timing = {
        field: float(value[field])
        for field in ("retry_budget", "settle_timeout")
        if value.get(field) is not None
    }
    return base.model_copy(
        update={
            "servers": list(value["servers"]),
            "admin": admin_setting(where, admin),
            "admin_key": where,
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
