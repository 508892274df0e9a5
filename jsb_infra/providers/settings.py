"""Provider settings (admin connection, output directory), held in the provider host process only.

The engine hands the stack config to each dynamic provider's `configure(req)` after unpickling it.
The settings are kept in this module's registry, never on the provider object: that object is
pickled into every resource's state (`__provider`), so anything stored on it would land in state.

Stack config keys (project `jsb`): `jsb:servers` (list of URLs), `jsb:admin` (secret object: user,
password, token, nkey_seed, creds_file, tls_ca, tls_cert, tls_key), `jsb:outputDir` (optional).
The engine passes structured values as JSON text (and may pass them decoded); both are accepted.
"""

from __future__ import annotations

import json
import threading
from contextlib import AbstractAsyncContextManager
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from jsb_infra.nats_admin import AdminConnection, JetStreamAdmin
from jsb_infra.providers import connection

PROJECT = "jsb"
SERVERS_KEY = f"{PROJECT}:servers"
ADMIN_KEY = f"{PROJECT}:admin"
OUTPUT_DIR_KEY = f"{PROJECT}:outputDir"
ADMIN_FIELDS = ("user", "password", "token", "nkey_seed", "creds_file", "tls_ca", "tls_cert", "tls_key")


class ProviderSettingsError(ValueError):
    """A stack config value the providers cannot use. Messages never repeat a value: it may be secret."""


class ProviderSettings(BaseModel):
    """What the providers need beyond their inputs. Lives in host memory; never an input or output."""

    model_config = ConfigDict(frozen=True)

    servers: list[str] = []
    admin: dict[str, str] = {}
    output_dir: str | None = None

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
    try:
        return ProviderSettings(servers=servers, admin=admin, output_dir=output_dir or None)
    except ValidationError as err:  # never echo the values: they may be secret
        fields = ", ".join(sorted({".".join(map(str, e["loc"])) for e in err.errors()}))
        raise ProviderSettingsError(f"provider settings invalid in field(s): {fields}") from None


def configure(raw: Any) -> None:
    """Record the settings for this host process (called from every provider's `configure`)."""
    global _current
    settings = settings_from_config(raw)
    with _lock:
        _current = settings


def current() -> ProviderSettings:
    """The settings of this host process; empty settings when the engine sent no config."""
    with _lock:
        return _current if _current is not None else ProviderSettings()


def admin_session() -> AbstractAsyncContextManager[JetStreamAdmin]:
    """An admin session on the host's shared connection (see `connection`), with the configured settings.

    Await it on the shared loop only: `JsbProvider.run` puts every provider call there."""
    return connection.shared.session(current().admin_connection())
