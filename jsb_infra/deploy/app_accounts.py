"""`AppAccounts`: what spans the pairs of one NATS deployment, as a Pulumi ComponentResource.

    accounts = AppAccounts("accounts", AppAccountsArgs(pairs=[orders_billing, orders_shipping]))

Least privilege needs one account per app (without JetStream) and one JetStream account holding the
streams; an app is one identity across all its pairs. So the identities and the server documents
are derived from all the pairs of a deployment together. Children, parented to the component and
named after it (`<name>-...`, so one program can hold several):

- config mode: `<name>-<app>-credential`, one `AppCredential` per app (its NKey user; the seed is a secret
  output). Replacing one (`pulumi up --replace <its URN>`) rotates that app's key and nobody else's;
- JWT mode: the JetStream account's JWT and one account JWT (with its user) per app;
- `<name>-server-documents`: every rendered document (`accounts.conf`, `apps/<app>.json`, per pair the stream,
  consumer and permission documents), written to `output_dir` when one is set;
- `<name>-include`: config mode with `jsb:auth.accounts_file`, the include delivered and reloaded.

A program that manages several deployments holds one `AppAccounts` each, with its own `output_dir`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from jsb_infra.core import names
from jsb_infra.core.accounts import AccountLayout, DeployUser, account_layout
from jsb_infra.core.auth import AuthSettings, parse_auth
from jsb_infra.core.capacity import capacity_problems, capacity_report
from jsb_infra.core.documents import DocumentShape, deployment_accounts_conf, deployment_documents
from jsb_infra.core.spec import AppLimits, Capacity, ConfigError, Pair, check_pairs_disjoint, problems_of
from jsb_infra.deploy.component import AppPair, validated_pair
from jsb_infra.deploy.identities import accounts_include, jwt_identities
from jsb_infra.deploy.providers.credential import AppCredential
from jsb_infra.deploy.providers.documents import ServerDocuments

TYPE = "jsb:index:AppAccounts"


@dataclass
class AppAccountsArgs:
    """The pairs of one deployment (AppPair components or pair specs) and how identities reach it.

    `app_servers`: the URLs apps are told (default: the first AppPair's connection servers);
    `jetstream_account`: the account holding the streams; `deploy_user`: the deploy's identity in it
    (nothing secret); `reader`: a read-only identity in it, for previews (`jsb:previewUser`);
    `auth`: config or JWT mode (`jsb:auth`); `output_dir`: where the documents are
    written (None: the stack config's `jsb:outputDir`, if any); `app_limits`: the limits of every app
    account, with per-app overrides (`AppLimits`, or a mapping written like the spec's `app_limits`;
    default: its defaults); `capacity`: the JetStream storage declared for the deployment
    (`jsb:capacity`): the JetStream account's limit, and the pairs' reservations must fit in it (None:
    not limited, not checked)."""

    pairs: Sequence[AppPair | Pair]
    app_servers: Sequence[str] = ()
    jetstream_account: str = names.DEFAULT_JETSTREAM_ACCOUNT
    deploy_user: DeployUser | None = None
    reader: DeployUser | None = None
    auth: AuthSettings = field(default_factory=lambda: parse_auth(None))
    output_dir: str | None = None
    app_limits: AppLimits | Mapping[str, Any] = field(default_factory=AppLimits)
    capacity: Capacity | None = None

    def specs(self) -> list[Pair]:
        """The pair specs, each validated, and checked disjoint (no shared subject or identity)."""
        pairs = [
            p.pair if isinstance(p, AppPair) else validated_pair(p, f"pairs[{i}]")
            for i, p in enumerate(self.pairs)
        ]
        problems: list[str] = []
        if not pairs:
            problems.append("AppAccountsArgs.pairs: list at least one pair")
        problem = names.jetstream_account_problem(self.jetstream_account)
        if problem:
            problems.append(f"AppAccountsArgs.jetstream_account: {problem}")
        if problems:
            raise ConfigError(problems)
        try:
            check_pairs_disjoint(pairs)
            self.limits().check_apps(app for pair in pairs for app in pair.apps)
        except PydanticCustomError as err:
            raise ConfigError([f"AppAccountsArgs.{err.message()}"]) from None
        capacity = capacity_problems(pairs, self.capacity)
        if capacity:
            raise ConfigError([f"AppAccountsArgs.{p}" for p in capacity])
        return pairs

    def limits(self) -> AppLimits:
        """`app_limits`, validated; raises ConfigError naming each bad field."""
        if isinstance(self.app_limits, AppLimits):
            return self.app_limits
        try:
            return AppLimits.model_validate(self.app_limits)
        except ValidationError as err:
            raise ConfigError(problems_of(err, "AppAccountsArgs.app_limits")) from None

    def servers(self) -> list[str]:
        if self.app_servers:
            return list(self.app_servers)
        for p in self.pairs:
            if isinstance(p, AppPair):
                return list(p.connection.servers)
        return []


class AppAccounts(pulumi.ComponentResource):
    """The app identities, the account layout and the server documents of one deployment."""

    layout: AccountLayout
    credentials: pulumi.Output[dict[str, Any]]
    public_keys: dict[str, pulumi.Output[str]]
    accounts_conf: pulumi.Output[str]
    documents: ServerDocuments
    permissions: dict[str, dict[str, Any]]

    def __init__(
        self,
        resource_name: str,
        args: AppAccountsArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        pairs = args.specs()
        super().__init__(TYPE, resource_name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.layout = layout = account_layout(pairs, args.jetstream_account, args.limits(), args.capacity)
        for line in capacity_report(pairs, args.capacity).lines():
            pulumi.log.info(f"jsb capacity: {line}", self)
        self.permissions = {a.app: a.document() for a in layout.apps}
        if args.auth.mode == "jwt":
            entries = jwt_identities(layout, args.auth, prefix=resource_name, opts=child)
            self.public_keys = {}  # the users are in the account JWTs, not in an accounts include
            self.credentials = pulumi.Output.secret(entries)
        else:
            keys = {
                a.app: AppCredential(f"{resource_name}-{a.app}-credential", a.app, opts=child)
                for a in layout.apps
            }
            self.public_keys = {app: key.public_key for app, key in keys.items()}
            self.credentials = pulumi.Output.secret(
                {
                    a.app: {
                        "account": a.account,
                        "public_key": keys[a.app].public_key,
                        "seed": keys[a.app].seed,
                    }
                    for a in layout.apps
                }
            )
        # What does not depend on the generated keys is a plain value, known at preview; the
        # accounts include names each app's user by its key, so it waits for the credentials.
        # `render --stack` derives the same documents with the same arguments (core.documents).
        shaping: DocumentShape = {
            "app_servers": args.servers(),
            "jetstream_account": args.jetstream_account,
            "deploy_user": args.deploy_user,
            "auth": args.auth,
            "app_limits": args.limits(),
            "reader": args.reader,
            "capacity": args.capacity,
        }
        keyless = deployment_documents(pairs, {}, **shaping)
        self.accounts_conf = pulumi.Output.all(**self.public_keys).apply(
            lambda keys: deployment_accounts_conf(pairs, dict(keys), **shaping)
        )
        documents: dict[str, pulumi.Input[str]] = {str(path): text for path, text in keyless.items()}
        documents["accounts.conf"] = self.accounts_conf
        self.documents = ServerDocuments(
            f"{resource_name}-server-documents", documents, output_dir=args.output_dir, opts=child
        )
        accounts_include(
            args.auth, self.accounts_conf, prefix=resource_name, capacity=args.capacity, opts=child
        )
        # Nothing registered: the accounts include and the permissions of a fleet are hundreds of
        # kilobytes, stored and walked on every run; they are attributes a program exports as it needs.
        self.register_outputs({})
