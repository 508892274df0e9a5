"""Spec -> every document a reviewer, a server or an app needs, as relative path -> text. Pure.

The same function feeds `jsb-infra render` (files in a directory, checked in for review) and the
stack's `ServerDocuments` resource (written where the stack says), so both always agree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict, Unpack

from jsb_infra.core import names
from jsb_infra.core.accounts import DEFAULT_APP_LIMITS, DeployUser, account_layout, render_accounts_conf
from jsb_infra.core.auth import AuthSettings
from jsb_infra.core.outputs import bridge_outputs
from jsb_infra.core.permissions import app_permissions, render_claims_json, render_conf
from jsb_infra.core.spec import AppLimits, Capacity, Pair
from jsb_infra.core.topology import consumer_configs, dlq_keeper_config, stream_config


def render_json(document: Any) -> str:
    """Stable JSON text: the same document always gives the same bytes."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


ACCOUNTS_FILE = Path("accounts.conf")


def render_documents(
    pairs: Sequence[Pair],
    nkeys: dict[str, str] | None = None,
    *,
    deploy: DeployUser | None = None,
    jetstream_account: str = names.DEFAULT_JETSTREAM_ACCOUNT,
    servers: list[str] | None = None,
    app_limits: AppLimits = DEFAULT_APP_LIMITS,
    reader: DeployUser | None = None,
    capacity: Capacity | None = None,
) -> dict[Path, str]:
    """Every file `render` writes, as relative path -> text, in a fixed order. Pure.

    `accounts.conf` is the whole account layout, loadable by nats-server as is; `apps/<app>.json` is
    what one app may do across all its pairs; per pair, the stream and every consumer config (the DLQ
    keeper included, when the pair has a DLQ) and each app's share of its permissions; with `servers`,
    each app's bridge (the `bridges` stack output). `app_limits` limit every app account (and show in
    `apps/<app>.json`).
    """
    nkeys = nkeys or {}
    layout = account_layout(pairs, jetstream_account, app_limits, capacity)
    files: dict[Path, str] = {ACCOUNTS_FILE: render_accounts_conf(layout, nkeys, deploy, reader)}
    for account in layout.apps:
        files[Path("apps") / f"{account.app}.json"] = render_json(account.document())
    for pair in pairs:
        root = Path(pair.stream)
        files[root / "stream.json"] = render_json(stream_config(pair))
        for durable, consumer in consumer_configs(pair).items():
            files[root / "consumers" / f"{durable}.json"] = render_json(consumer)
        keeper = dlq_keeper_config(pair)
        if keeper is not None:  # the Stream provider creates it with the stream
            files[root / "consumers" / f"{names.DLQ_KEEPER}.json"] = render_json(keeper)
        for app in pair.apps:
            perms = app_permissions(pair, app)
            files[root / "permissions" / f"{app}.json"] = render_claims_json(perms)
            files[root / "permissions" / f"{app}.conf"] = render_conf(perms, jetstream_account)
            if servers:
                bridge = bridge_outputs(pair, app, servers).model_dump(mode="json")
                files[root / "bridges" / f"{app}.json"] = render_json(bridge)
    return files


class DocumentShape(TypedDict, total=False):
    """What shapes a deployment's documents beyond its pairs: the keyword arguments `AppAccountsArgs`,
    `deployment_documents` and `deployment_accounts_conf` share (`StackSettings.accounts_args()` gives
    them for a stack). A setting added here reaches the program's documents and `render --stack` alike."""

    app_servers: Sequence[str]  # the URLs apps are told (the bridges)
    jetstream_account: str
    deploy_user: DeployUser | None
    auth: AuthSettings  # config mode names the app users in accounts.conf; JWT mode does not
    app_limits: AppLimits  # every app account's connection, subscription and payload limits
    reader: DeployUser | None  # the read-only identity previews connect as (`jsb:previewUser`)
    capacity: Capacity | None  # the JetStream account's storage limit (`jsb:capacity`)


def deployment_accounts_conf(
    pairs: Sequence[Pair], public_keys: Mapping[str, str] | None = None, **shape: Unpack[DocumentShape]
) -> str:
    """The deployment's `accounts.conf`. Pure. In config mode it names each app's user by its public key
    (`public_keys`; an app without one has no user yet); in JWT mode the users are in the account JWTs,
    so it names none."""
    auth = shape.get("auth") or AuthSettings()
    users = dict(public_keys or {}) if auth.mode == "config" else {}
    layout = account_layout(
        pairs,
        shape.get("jetstream_account", names.DEFAULT_JETSTREAM_ACCOUNT),
        shape.get("app_limits", DEFAULT_APP_LIMITS),
        shape.get("capacity"),
    )
    return render_accounts_conf(layout, users, shape.get("deploy_user"), shape.get("reader"))


def deployment_documents(
    pairs: Sequence[Pair], public_keys: Mapping[str, str] | None = None, **shape: Unpack[DocumentShape]
) -> dict[Path, str]:
    """Every document the `AppAccounts` component of a deployment writes (its `ServerDocuments`): what
    `render --stack` writes. Pure."""
    files = render_documents(
        pairs,
        {},
        deploy=shape.get("deploy_user"),
        jetstream_account=shape.get("jetstream_account", names.DEFAULT_JETSTREAM_ACCOUNT),
        servers=list(shape.get("app_servers", ())) or None,
        app_limits=shape.get("app_limits", DEFAULT_APP_LIMITS),
        reader=shape.get("reader"),
        capacity=shape.get("capacity"),
    )
    files[ACCOUNTS_FILE] = deployment_accounts_conf(pairs, public_keys, **shape)
    return files
