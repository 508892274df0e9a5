"""An operator of our own, offline: the keys and JWTs an operator would make with nsc, and a server in
operator mode with a full (directory) resolver that trusts them.

What an operator hands jsb-infra in production is what `Operator` holds: the operator signing key
(secret), the system account user's `.creds` (secret), the JetStream account's public key and a
deploy user's `.creds` in that account (jsb:admin).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nkeys
from nats.aio.client import RawCredentials

from jsb_infra import resolver
from jsb_infra.core import jwt_claims as jc
from jsb_infra.core.accounts import DEFAULT_APP_LIMITS, account_layout
from jsb_infra.core.spec import AppLimits, Capacity, Pair
from jsb_infra.deploy.providers import settings
from jsb_infra.deploy.providers.jwt_accounts import (
    AccountSigningKeyProvider,
    AppAccountJwtProvider,
    JetStreamAccountJwtProvider,
)
from jsb_infra.local.server import LocalNatsServer


def user_creds(name: str, account: str, signing_seed: str) -> str:
    """A `.creds` document for a new, unrestricted user of `account`, issued with its signing key."""
    seed = jc.new_seed(nkeys.PREFIX_BYTE_USER)
    claims = jc.user_claims(name, jc.public_key(seed), [], [], issuer_account=account)
    claims["nats"].pop("allowed_connection_types")
    claims["nats"]["pub"] = {}
    claims["nats"]["sub"] = {}
    return jc.creds_document(jc.encode(claims, signing_seed), seed)


def _account_seed() -> str:
    return jc.new_seed(nkeys.PREFIX_BYTE_ACCOUNT)


@dataclass
class Operator:
    """An operator with a signing key and strict signing key usage (as `nsc edit operator
    --require-signing-keys` makes it: no JWT signed by an identity key but its own), a system account
    and a JetStream account, each with a signing key, and a deploy user in the JetStream account."""

    name: str = "test-operator"
    operator_seed: str = field(default_factory=lambda: jc.new_seed(nkeys.PREFIX_BYTE_OPERATOR))
    signing_seed: str = field(default_factory=lambda: jc.new_seed(nkeys.PREFIX_BYTE_OPERATOR))
    system_seed: str = field(default_factory=lambda: jc.new_seed(nkeys.PREFIX_BYTE_ACCOUNT))
    jetstream_seed: str = field(default_factory=_account_seed)
    jetstream_signing_seed: str = field(default_factory=_account_seed)
    system_signing_seed: str = field(default_factory=_account_seed)

    def __post_init__(self) -> None:
        self.system_key = jc.public_key(self.system_seed)
        self.jetstream_key = jc.public_key(self.jetstream_seed)
        self.jetstream_signing_key = jc.public_key(self.jetstream_signing_seed)
        operator = jc.operator_claims(
            self.name, jc.public_key(self.operator_seed), self.system_key, [jc.public_key(self.signing_seed)]
        )
        operator["nats"]["strict_signing_key_usage"] = True
        self.operator_jwt = jc.encode(operator, self.operator_seed)
        system = jc.plain_account_claims("SYS", self.system_key)
        system["nats"]["signing_keys"] = [jc.public_key(self.system_signing_seed)]
        self.system_jwt = jc.encode(system, self.signing_seed)
        self.jetstream_jwt = jc.encode(self.jetstream_claims(), self.signing_seed)
        self.system_creds = user_creds("sys", self.system_key, self.system_signing_seed)
        self.deploy_creds = user_creds("deploy", self.jetstream_key, self.jetstream_signing_seed)

    def jetstream_claims(self) -> dict[str, Any]:
        """The JetStream account as the operator made it: JetStream on, its own signing key, no exports."""
        return jc.jetstream_account_claims("JETSTREAM", self.jetstream_key, [], [self.jetstream_signing_key])

    def server_config(self, resolver_dir: Path) -> str:
        """Operator mode with a full directory resolver; the system and JetStream accounts preloaded."""
        preload = {self.system_key: self.system_jwt, self.jetstream_key: self.jetstream_jwt}
        entries = "\n".join(f"    {key}: {json.dumps(token)}" for key, token in preload.items())
        return (
            f"operator: {json.dumps(self.operator_jwt)}\n"
            f"system_account: {json.dumps(self.system_key)}\n"
            f"resolver: {{\n  type: full\n  dir: {json.dumps(str(resolver_dir))}\n  allow_delete: false\n}}\n"
            f"resolver_preload: {{\n{entries}\n}}\n"
        )

    async def push_account(self, url: str, claims: dict[str, Any]) -> None:
        """Sign account `claims` with the operator signing key and push them to the server's resolver
        (as an operator would with `nsc push`), as the system user."""
        nc = await nats.connect(url, user_credentials=RawCredentials(self.system_creds))
        try:
            await resolver.push(nc, jc.encode(claims, self.signing_seed))
        finally:
            await nc.close()

    def write_creds(self, directory: Path) -> tuple[Path, Path]:
        """The system and deploy `.creds` as files (paths: system, deploy)."""
        directory.mkdir(parents=True, exist_ok=True)
        system, deploy = directory / "sys.creds", directory / "deploy.creds"
        system.write_text(self.system_creds)
        deploy.write_text(self.deploy_creds)
        return system, deploy


def operator_server(
    make_server: Callable[..., LocalNatsServer], operator: Operator, tmp: Path
) -> LocalNatsServer:
    return make_server(operator.server_config(tmp / "resolver"))


@contextmanager
def provider_settings(url: str, operator: Operator) -> Iterator[None]:
    """The providers' settings as `pulumi up` would configure them for JWT mode (then cleared)."""
    settings.configure(
        {
            settings.SERVERS_KEY: [url],
            settings.ADMIN_KEY: {},
            settings.OPERATOR_SIGNING_KEY: operator.signing_seed,
            settings.SYSTEM_CREDS_KEY: operator.system_creds,
        }
    )
    try:
        yield
    finally:
        settings._current = None


@dataclass
class IssuedLayout:
    """What the JWT-mode providers issued for a layout: the JetStream account's and each app's state."""

    jetstream: dict[str, Any]
    apps: dict[str, dict[str, Any]]

    def creds(self, app: str) -> str:
        return str(self.apps[app]["creds"])


def issue_layout(
    url: str,
    operator: Operator,
    pairs: list[Pair],
    app_limits: AppLimits = DEFAULT_APP_LIMITS,
    capacity: Capacity | None = None,
) -> IssuedLayout:
    """Create the JetStream account's and every app's JWTs with the providers `pulumi up` runs, in
    this process (their I/O is real: the pushes go to the server's resolver). Call from a thread
    when an event loop runs (the providers run their own). `capacity`: the declared capacity."""
    layout = account_layout(pairs, app_limits=app_limits, capacity=capacity)
    with provider_settings(url, operator):
        signing = AccountSigningKeyProvider().create({"account": operator.jetstream_key}).outs
        js_props = {
            "name": layout.jetstream_account,
            "signing_key": signing["public_key"],
            "public_key": operator.jetstream_key,
            "exports": [
                {"subject": s.subject, "response_type": s.response_type} for s, _ in layout.exports()
            ],
            "signing_keys": [operator.jetstream_signing_key],
            "adopt": False,
            "jetstream_limits": layout.jetstream_limits.claims(),
        }
        jetstream = JetStreamAccountJwtProvider().create(js_props).outs
        apps = {}
        for account in layout.apps:
            props = {
                "app": account.app,
                "name": account.account,
                "imports": [
                    {"subject": s.subject, "response_type": s.response_type} for s in account.services
                ],
                "publish": list(account.publish),
                "subscribe": list(account.subscribe),
                "jetstream_account": operator.jetstream_key,
                "jetstream_signing_seed": signing["seed"],
                "rotate": "",
                "limits": account.limits.model_dump(),
            }
            apps[account.app] = AppAccountJwtProvider().create(props).outs
    return IssuedLayout(jetstream, apps)
