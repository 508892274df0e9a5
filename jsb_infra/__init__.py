"""jsb-infra: two apps that sync over NATS JetStream, provisioned as Pulumi code with least privilege.

The public API a Pulumi program imports (needs the `deploy` extra, `pip install 'jsb-infra[deploy]'`):

    from jsb_infra import AdminCredentials, AppAccounts, AppAccountsArgs, AppPair, AppPairArgs, Connection

- `AppPair(name, AppPairArgs(...), connection=...)`: one pair's stream, consumers and permission
  documents (jsb_infra.deploy.component);
- `AppAccounts(name, AppAccountsArgs(pairs=[...]))`: the app identities, the account layout and the
  server documents of one deployment (jsb_infra.deploy.app_accounts);
- `Connection(...)` / `Connection.from_stack_config()` and `AdminCredentials`: how the children reach
  one NATS deployment (jsb_infra.deploy.connection).

This API follows semantic versioning (docs/api.md). The names load on first use, so an app that
installs only the runtime (no Pulumi) imports `jsb_infra.runtime` without pulling in the Pulumi SDK.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

PUBLIC_API = {
    "AppPair": "jsb_infra.deploy.component",
    "AppPairArgs": "jsb_infra.deploy.component",
    "AppAccounts": "jsb_infra.deploy.app_accounts",
    "AppAccountsArgs": "jsb_infra.deploy.app_accounts",
    "Connection": "jsb_infra.deploy.connection",
    "AdminCredentials": "jsb_infra.deploy.connection",
    "DeployUser": "jsb_infra.core.accounts",
    "ConfigError": "jsb_infra.core.spec",
}
__all__ = [
    "AdminCredentials",
    "AppAccounts",
    "AppAccountsArgs",
    "AppPair",
    "AppPairArgs",
    "ConfigError",
    "Connection",
    "DeployUser",
]
assert sorted(__all__) == sorted(PUBLIC_API)

if TYPE_CHECKING:
    from jsb_infra.core.accounts import DeployUser
    from jsb_infra.core.spec import ConfigError
    from jsb_infra.deploy.app_accounts import AppAccounts, AppAccountsArgs
    from jsb_infra.deploy.component import AppPair, AppPairArgs
    from jsb_infra.deploy.connection import AdminCredentials, Connection


def __getattr__(name: str) -> Any:
    module = PUBLIC_API.get(name)
    if module is None:
        raise AttributeError(f"module 'jsb_infra' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
