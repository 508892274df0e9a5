"""How the program delivers identities per `jsb:auth` mode: the JWT-mode resources, and config mode's
accounts include with its reload hook. The program calls these; the layout is the same in both modes.
"""

from __future__ import annotations

from typing import Any

import pulumi

from jsb_infra.core.accounts import AccountLayout
from jsb_infra.core.auth import AuthSettings
from jsb_infra.core.spec import Capacity
from jsb_infra.deploy.providers.accounts_include import AccountsInclude
from jsb_infra.deploy.providers.jwt_accounts import AccountSigningKey, AppAccountJwt, JetStreamAccountJwt


def jwt_identities(
    layout: AccountLayout,
    auth: AuthSettings,
    prefix: str,
    opts: pulumi.ResourceOptions | None = None,
) -> dict[str, pulumi.Output[Any]]:
    """The JetStream account's JWT and one account + user per app; returns {app: credentials entry}.

    Each entry is what `jsb_infra.core.outputs.AppCredentials` describes: the user's key and seed, its
    account's key, and the `.creds` document (user JWT + seed) the runtime client connects with.
    """
    assert auth.jetstream_account is not None
    signing = AccountSigningKey(f"{prefix}-jetstream-signing-key", auth.jetstream_account, opts=opts)
    jetstream = JetStreamAccountJwt(
        f"{prefix}-jetstream-account",
        name=layout.jetstream_account,
        public_key=auth.jetstream_account,
        signing_key=signing.public_key,
        exports=[
            {"subject": service.subject, "response_type": service.response_type}
            for service, _ in layout.exports()
        ],
        signing_keys=list(auth.signing_keys),
        adopt=auth.adopt,
        opts=opts,
        jetstream_limits=layout.jetstream_limits.claims(),
    )
    entries: dict[str, pulumi.Output[Any]] = {}
    for account in layout.apps:
        app = AppAccountJwt(
            f"{prefix}-{account.app}-account",
            app=account.app,
            name=account.account,
            imports=[{"subject": s.subject, "response_type": s.response_type} for s in account.services],
            publish=list(account.publish),
            subscribe=list(account.subscribe),
            jetstream_account=auth.jetstream_account,
            jetstream_signing_seed=signing.seed,
            rotate=auth.rotate.get(account.app, ""),
            limits=account.limits.model_dump(),
            opts=pulumi.ResourceOptions.merge(
                opts, pulumi.ResourceOptions(depends_on=[jetstream])
            ),  # exports first
        )
        entries[account.app] = pulumi.Output.from_input(
            {
                "account": app.account_key,
                "public_key": app.user_key,
                "seed": app.user_seed,
                "creds": app.creds,
            }
        )
    return entries


def accounts_include(
    auth: AuthSettings,
    text: pulumi.Input[str],
    prefix: str,
    capacity: Capacity | None = None,
    opts: pulumi.ResourceOptions | None = None,
) -> AccountsInclude | None:
    """Config mode with `accounts_file`: the include written there, and the reload hook run (which
    refuses a declared `capacity` above the server's store, when it can read the store)."""
    if auth.mode != "config" or not auth.accounts_file:
        return None
    declared = capacity.model_dump(exclude_none=True) if capacity else None
    return AccountsInclude(
        f"{prefix}-include",
        auth.accounts_file,
        text,
        auth.reload.as_input() if auth.reload else None,
        capacity=declared or None,
        opts=opts,
    )
