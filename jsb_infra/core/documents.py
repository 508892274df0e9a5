"""Spec -> every document a reviewer, a server or an app needs, as relative path -> text. Pure.

The same function feeds `jsb-infra render` (files in a directory, checked in for review) and the
stack's `ServerDocuments` resource (written where the stack says), so both always agree.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsb_infra.core import names
from jsb_infra.core.accounts import DeployUser, account_layout, render_accounts_conf
from jsb_infra.core.outputs import bridge_outputs
from jsb_infra.core.permissions import app_permissions, render_claims_json, render_conf
from jsb_infra.core.spec import Capacity, Pair
from jsb_infra.core.topology import consumer_configs, stream_config


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
    capacity: Capacity | None = None,
) -> dict[Path, str]:
    """Every file `render` writes, as relative path -> text, in a fixed order. Pure.

    `accounts.conf` is the whole account layout, loadable by nats-server as is; `apps/<app>.json` is
    what one app may do across all its pairs; per pair, the stream and consumer configs and each app's
    share of its permissions; with `servers`, each app's bridge (the `bridges` stack output).
    """
    nkeys = nkeys or {}
    layout = account_layout(pairs, jetstream_account, capacity)
    files: dict[Path, str] = {ACCOUNTS_FILE: render_accounts_conf(layout, nkeys, deploy)}
    for account in layout.apps:
        files[Path("apps") / f"{account.app}.json"] = render_json(account.document())
    for pair in pairs:
        root = Path(pair.stream)
        files[root / "stream.json"] = render_json(stream_config(pair))
        for durable, consumer in consumer_configs(pair).items():
            files[root / "consumers" / f"{durable}.json"] = render_json(consumer)
        for app in pair.apps:
            perms = app_permissions(pair, app)
            files[root / "permissions" / f"{app}.json"] = render_claims_json(perms)
            files[root / "permissions" / f"{app}.conf"] = render_conf(perms, jetstream_account)
            if servers:
                bridge = bridge_outputs(pair, app, servers).model_dump(mode="json")
                files[root / "bridges" / f"{app}.json"] = render_json(bridge)
    return files
