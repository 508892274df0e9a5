"""JWT mode: the `JetStreamAccountJwt` and `AppAccountJwt` dynamic resources.

`JetStreamAccountJwt` re-issues the operator's JetStream account (its public key is given; the
account and its deploy user stay the operator's) read-modify-write: create, update and delete start
from the JWT the resolver holds and keep every claim the operator set (revocations, limits, scoped
signing keys, imports, mappings, its own exports, ...). They replace only the private service exports
(`token_req`) this stack pushed before with the layout's, add a signing key generated here (it signs
the activation tokens), and give JetStream to an account that has none. On delete it is pushed again
without those exports and without that signing key: every import of it stops working.

`AppAccountJwt` is one app: its account (generated key, no JetStream, one service import per layout
subject, each with an activation token for that account alone) and its single user (generated key,
the layout's allow lists, STANDARD connections only), exported as a `.creds` document. A change that
takes a subject away from the user, or `rotate`, re-issues the user and revokes what was issued
before (the account JWT's revocations: the server closes those connections and refuses them
afterwards). On delete the account is pushed without imports and with every user revoked.

Both sign account JWTs with the operator signing key and push them through the system account
(provider config, never inputs or outputs); seeds are outputs declared secret. `read` looks the
account up in the resolver, so `pulumi refresh` sees a JWT changed or removed behind Pulumi's back.
"""

from __future__ import annotations

import time
from typing import Any

import nkeys
import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    UpdateResult,
)

from jsb_infra import resolver
from jsb_infra.core import jwt_claims as jc
from jsb_infra.core.accounts import DEFAULT_APP_LIMITS
from jsb_infra.core.auth import ACCOUNT_PUBLIC_KEY
from jsb_infra.core.capacity import JetStreamLimits
from jsb_infra.core.spec import ResolvedAppLimits
from jsb_infra.deploy.providers import settings
from jsb_infra.deploy.providers.base import JsbProvider, ProviderError, is_unknown, plan_diff
from jsb_infra.nats_admin import normalize

RESPONSE_TYPES = ("Singleton", "Stream")


def _export_failures(value: Any, prop: str) -> list[CheckFailure]:
    if is_unknown(value):
        return []
    if not isinstance(value, list):
        return [CheckFailure(prop, f"{prop}: must be a list of {{subject, response_type}}")]
    failures = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("subject"), str) or not item["subject"]:
            failures.append(CheckFailure(prop, f"{prop}[{i}]: must be {{subject, response_type}}"))
        elif item.get("response_type", "Singleton") not in RESPONSE_TYPES:
            failures.append(CheckFailure(prop, f"{prop}[{i}].response_type: must be one of {RESPONSE_TYPES}"))
    return failures


def _account_key_failures(value: Any, prop: str) -> list[CheckFailure]:
    if is_unknown(value):
        return []
    if not (isinstance(value, str) and ACCOUNT_PUBLIC_KEY.match(value)):
        return [CheckFailure(prop, f"{prop}: must be an account public key (A + 55 characters)")]
    return []


def _services(value: list[dict[str, Any]]) -> list[jc.ServiceExport]:
    return sorted(
        (jc.ServiceExport(item["subject"], item.get("response_type") or "Singleton") for item in value),
        key=lambda e: e.subject,
    )


def _content(token: str | None) -> dict[str, Any] | None:
    return jc.content(jc.decode(token, verify=False)) if token else None


async def _push(*tokens: str) -> None:
    async with settings.system_session() as nc:
        for token in tokens:
            await _refuse_limits_beyond_the_stores(nc, token)
            await resolver.push(nc, token)


async def _refuse_limits_beyond_the_stores(nc: Any, token: str) -> None:
    """A server disables JetStream for an account whose storage limit exceeds its own store (measured
    on nats-server 2.15.1: "Error configuring jetstream for account ...: insufficient storage
    resources", then no responders), which would stop every pair: refuse such a JWT before the push."""
    limits = (jc.decode(token, verify=False).get("nats") or {}).get("limits") or {}
    wanted = JetStreamLimits(
        max_file=int(limits.get("disk_storage", -1)), max_mem=int(limits.get("mem_storage", -1))
    )
    if wanted.max_file < 0 and wanted.max_mem < 0:
        return
    for server, (max_storage, max_memory) in sorted((await resolver.jetstream_stores(nc)).items()):
        for problem in wanted.beyond_store(server, max_storage, max_memory):
            raise ProviderError(
                f"{problem}; the server would disable JetStream for the account and every pair would "
                "stop. Declare at most the smallest server's store (jsb:capacity)"
            )


async def _lookup(account_key: str) -> str | None:
    async with settings.system_session() as nc:
        return await resolver.lookup(nc, account_key)


# -- the JetStream account -----------------------------------------------------------------------------
def owned_exports(state: dict[str, Any]) -> set[str]:
    """The export subjects this stack pushed (its `exports` output): the only ones it replaces or removes."""
    return {item["subject"] for item in state.get("exports") or []}


def _jetstream_limits(props: dict[str, Any]) -> dict[str, Any] | None:
    """The layout's JetStream limits as JWT claims want them: Pulumi carries numbers as floats, the
    server's JSON decoder refuses `-1.0` for an int64."""
    limits = props.get("jetstream_limits")
    return normalize(limits) if isinstance(limits, dict) else None


def jetstream_claims(
    props: dict[str, Any],
    live: dict[str, Any] | None,
    owned: set[str] | None = None,
    deployed: bool = True,
    drop_signing_keys: set[str] | None = None,
) -> dict[str, Any]:
    """The JetStream account as deployed, or (`deployed=False`) as a destroy leaves it: without our
    exports and our signing key, so every activation token it signed stops working.

    `live`: the claims the resolver holds; everything the operator set in them is kept (see
    `jwt_claims.reissued_jetstream_account`). `owned`: the export subjects pushed before (default:
    `props`' own). With no live JWT (the resolver does not hold the account) the account is built
    from `props`: JetStream, `signing_keys` and the exports."""
    ours = props["signing_key"]
    if live is None:
        keys = list(props.get("signing_keys") or []) + ([ours] if deployed else [])
        exports = _services(props.get("exports") or []) if deployed else []
        return jc.jetstream_account_claims(
            props["name"], props["public_key"], exports, keys, _jetstream_limits(props)
        )
    try:
        return jc.reissued_jetstream_account(
            live,
            _services(props.get("exports") or []) if deployed else [],
            owned_exports(props) if owned is None else owned,
            ours if deployed else None,
            (drop_signing_keys or set()) | ({ours} if not deployed else set()),
            _jetstream_limits(props) if deployed else None,
        )
    except jc.JwtError as err:
        raise ProviderError(str(err)) from None


def _live_claims(account_key: str) -> dict[str, Any] | None:
    token = JsbProvider.run(_lookup(account_key))
    return jc.decode(token, verify=False) if token else None


class AccountSigningKeyProvider(JsbProvider):
    """A signing key for an account, generated once (like an NKey user): no server I/O."""

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        return CheckResult(dict(news), _account_key_failures(news.get("account"), "account"))

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        identity = {"account": (olds.get("account"), news.get("account"))}
        return plan_diff({}, {}, immutable={}, identity=identity).result()

    def create(self, props: dict[str, Any]) -> CreateResult:
        seed = jc.new_seed(nkeys.PREFIX_BYTE_ACCOUNT)
        return CreateResult(jc.public_key(seed), {**props, "public_key": jc.public_key(seed), "seed": seed})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_, dict(props))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        """Nothing to remove: the key lives in state; the account JWT stops listing it."""


class AccountSigningKey(Resource, module="jsb", name="AccountSigningKey"):
    """A signing key of `account`. Outputs: public_key, seed (secret)."""

    public_key: pulumi.Output[str]
    seed: pulumi.Output[str]

    def __init__(self, resource_name: str, account: str, opts: pulumi.ResourceOptions | None = None) -> None:
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["seed"]))
        props = {"account": account, "public_key": None, "seed": None}
        super().__init__(AccountSigningKeyProvider(), resource_name, props, opts)


class JetStreamAccountJwtProvider(JsbProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = _account_key_failures(news.get("public_key"), "public_key")
        failures += _export_failures(news.get("exports"), "exports")
        name = news.get("name")
        if not is_unknown(name) and not (isinstance(name, str) and name):
            failures.append(CheckFailure("name", "name: must be the account's name"))
        failures += _account_key_failures(news.get("signing_key"), "signing_key")
        for i, key in enumerate(news.get("signing_keys") or []):
            failures += _account_key_failures(key, f"signing_keys[{i}]")
        return CheckResult(dict(news), failures)

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        inputs: dict[str, tuple[Any, Any]] = {
            key: (olds.get(key), news.get(key))
            for key in ("name", "exports", "signing_key", "signing_keys", "adopt", "jetstream_limits")
        }
        if not is_unknown(news) and olds.get("jwt"):
            # drift: the resolver holds (state's `jwt`, after a refresh) another JWT than we would push
            held = jc.decode(olds["jwt"], verify=False)
            desired = jetstream_claims(news, held, owned=owned_exports(olds))
            inputs["jwt"] = (jc.canonical(held), jc.canonical(desired))
        return plan_diff(
            {},
            {},
            immutable={},
            identity={"public_key": (olds.get("public_key"), news.get("public_key"))},
            inputs=inputs,
        ).result()

    def create(self, props: dict[str, Any]) -> CreateResult:
        live = _live_claims(props["public_key"])
        self._refuse_foreign(props, live, owned=set())
        return CreateResult(props["public_key"], self._issue(props, live, owned=set()))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        live = self.run(_lookup(id_))
        if live is None:
            return ReadResult("", {})
        return ReadResult(id_, {**props, "jwt": live})

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        live = _live_claims(news["public_key"])
        owned = owned_exports(olds)
        self._refuse_foreign(news, live, owned)
        replaced = {olds["signing_key"]} - {news["signing_key"]} if olds.get("signing_key") else set()
        return UpdateResult(self._issue(news, live, owned, drop_signing_keys=replaced))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        claims = jetstream_claims(props, _live_claims(props["public_key"]), deployed=False)
        self.run(_push(jc.encode(claims, settings.current().signing_seed())))

    @staticmethod
    def _refuse_foreign(props: dict[str, Any], live: dict[str, Any] | None, owned: set[str]) -> None:
        """Unless `adopt`, refuse to take over an export of the live account that this stack did not
        push (`owned`) but whose subject it would now export; other exports are kept anyway."""
        if live is None or props.get("adopt"):
            return
        wanted = owned_exports(props) - owned
        foreign = sorted(
            e["subject"] for e in live["nats"].get("exports") or [] if e.get("subject") in wanted
        )
        if foreign:
            raise ProviderError(
                f"account {props['public_key']} already exports {foreign}, which this stack did not "
                "export before; set `adopt: true` in jsb:auth to take those exports over"
            )

    def _issue(
        self,
        props: dict[str, Any],
        live: dict[str, Any] | None,
        owned: set[str],
        drop_signing_keys: set[str] | None = None,
    ) -> dict[str, Any]:
        claims = jetstream_claims(props, live, owned, drop_signing_keys=drop_signing_keys)
        token = jc.encode(claims, settings.current().signing_seed())
        self.run(_push(token))
        return {**props, "jwt": token}


class JetStreamAccountJwt(Resource, module="jsb", name="JetStreamAccountJwt"):
    """The JetStream account's JWT, listing `signing_key` (ours, which signs the activations). Output: jwt."""

    jwt: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        name: str,
        public_key: str,
        signing_key: pulumi.Input[str],
        exports: list[dict[str, str]],
        signing_keys: list[str] | None = None,
        adopt: bool = False,
        opts: pulumi.ResourceOptions | None = None,
        jetstream_limits: dict[str, Any] | None = None,
    ) -> None:
        props = {
            "name": name,
            "public_key": public_key,
            "exports": exports,
            "jetstream_limits": dict(jetstream_limits or {}),
            "signing_keys": list(signing_keys or []),
            "adopt": adopt,
            "signing_key": signing_key,
            "jwt": None,
        }
        super().__init__(JetStreamAccountJwtProvider(), resource_name, props, opts)


# -- an app's account and user ---------------------------------------------------------------------------
def app_account_token(props: dict[str, Any], revocations: dict[str, int]) -> str:
    """The app account's JWT: activations signed by the JetStream account's signing key, the account
    signed by the operator signing key."""
    js_key, js_signing = props["jetstream_account"], props["jetstream_signing_seed"]
    imports = [
        (
            service.subject,
            jc.encode(jc.activation_claims(service.subject, props["account_key"], js_key), js_signing),
        )
        for service in _services(props.get("imports") or [])
    ]
    claims = jc.app_account_claims(
        props["name"],
        props["account_key"],
        imports,
        js_key,
        revocations,
        [props["signing_key"]],
        limits=_limits(props),
    )
    return jc.encode(claims, settings.current().signing_seed())


def _limits(props: dict[str, Any]) -> ResolvedAppLimits:
    """The app's limits (state written before limits existed has none: the defaults)."""
    given = props.get("limits")
    return ResolvedAppLimits.model_validate(given) if given else DEFAULT_APP_LIMITS.for_app(props["app"])


def app_account_content(props: dict[str, Any], revocations: dict[str, int]) -> dict[str, Any]:
    """What the app account JWT says, activation tokens reduced to their subjects (they carry a time)."""
    claims = jc.app_account_claims(
        props["name"],
        props.get("account_key") or "",
        [(s.subject, "") for s in _services(props.get("imports") or [])],
        props.get("jetstream_account") or "",
        revocations,
        [props["signing_key"]] if props.get("signing_key") else None,
        limits=_limits(props),
    )
    return claims


def _imports_of(token: str | None) -> dict[str, Any] | None:
    if not token:
        return None
    claims = jc.content(jc.decode(token, verify=False))
    for item in claims["nats"].get("imports") or []:
        item["token"] = ""
    return claims


class AppAccountJwtProvider(JsbProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = _export_failures(news.get("imports"), "imports")
        failures += _account_key_failures(news.get("jetstream_account"), "jetstream_account")
        for prop in ("app", "name"):
            value = news.get(prop)
            if not is_unknown(value) and not (isinstance(value, str) and value):
                failures.append(CheckFailure(prop, f"{prop}: must be a non-empty name"))
        for prop in ("publish", "subscribe"):
            value = news.get(prop)
            if not is_unknown(value) and not (
                isinstance(value, list) and all(isinstance(s, str) for s in value)
            ):
                failures.append(CheckFailure(prop, f"{prop}: must be a list of subjects"))
        rotate = news.get("rotate")
        if rotate is not None and not is_unknown(rotate) and not isinstance(rotate, str):
            failures.append(CheckFailure("rotate", "rotate: must be text (change it to re-issue the user)"))
        return CheckResult(dict(news), failures)

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        keys = (
            "name",
            "imports",
            "publish",
            "subscribe",
            "jetstream_account",
            "jetstream_signing_seed",
            "rotate",
            "limits",
        )
        inputs: dict[str, tuple[Any, Any]] = {key: (olds.get(key), news.get(key)) for key in keys}
        if not is_unknown(news) and olds.get("jwt"):  # drift in the resolver
            desired = app_account_content(
                {**news, "account_key": olds.get("account_key"), "signing_key": olds.get("signing_key")},
                olds.get("revocations") or {},
            )
            inputs["jwt"] = (_imports_of(olds.get("jwt")), desired)
        return plan_diff(
            {}, {}, immutable={}, identity={"app": (olds.get("app"), news.get("app"))}, inputs=inputs
        ).result()

    def create(self, props: dict[str, Any]) -> CreateResult:
        account_seed = jc.new_seed(nkeys.PREFIX_BYTE_ACCOUNT)
        signing_seed = jc.new_seed(nkeys.PREFIX_BYTE_ACCOUNT)
        user_seed = jc.new_seed(nkeys.PREFIX_BYTE_USER)
        keys = {"account_seed": account_seed, "signing_seed": signing_seed, "user_seed": user_seed}
        props = {
            **props,
            "account_key": jc.public_key(account_seed),
            "signing_key": jc.public_key(signing_seed),
        }
        outs = self._issue(props, keys, {})
        return CreateResult(outs["account_key"], outs)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        live = self.run(_lookup(id_))
        if live is None or not props:
            return ReadResult("", {})
        return ReadResult(id_, {**props, "jwt": live})

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        revocations = dict(olds.get("revocations") or {})
        user_seed = olds["user_seed"]
        now = int(time.time())
        narrowed = set(olds.get("publish") or []) - set(news.get("publish") or []) or set(
            olds.get("subscribe") or []
        ) - set(news.get("subscribe") or [])
        if (news.get("rotate") or "") != (olds.get("rotate") or ""):
            revocations[olds["user_key"]] = now  # the old key, whatever it was issued
            user_seed = jc.new_seed(nkeys.PREFIX_BYTE_USER)
        elif narrowed:
            revocations[olds["user_key"]] = now  # JWTs of this key issued up to now; the new one is later
        props = {**news, "account_key": olds["account_key"], "signing_key": olds["signing_key"]}
        keys = {
            "account_seed": olds["account_seed"],
            "signing_seed": olds["signing_seed"],
            "user_seed": user_seed,
        }
        return UpdateResult(self._issue(props, keys, revocations, issued_after=now))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        claims = jc.app_account_claims(
            props["name"],
            props["account_key"],
            [],
            props["jetstream_account"],
            {jc.ALL_USERS: int(time.time())},
        )
        self.run(_push(jc.encode(claims, settings.current().signing_seed())))

    def _issue(
        self,
        props: dict[str, Any],
        keys: dict[str, str],
        revocations: dict[str, int],
        issued_after: int | None = None,
    ) -> dict[str, Any]:
        """Push the account JWT; issue the user with the account's signing key (`keys`: the seeds)."""
        account_jwt = app_account_token(props, revocations)
        user_seed = keys["user_seed"]
        user_key = jc.public_key(user_seed)
        user = jc.user_claims(
            props["app"],
            user_key,
            list(props.get("publish") or []),
            list(props.get("subscribe") or []),
            issuer_account=props["account_key"],
            limits=_limits(props),
        )
        # A user JWT must be issued after the revocation of its predecessors (revoked: issued at or before).
        issued_at = max(int(time.time()), (issued_after or 0) + 1)
        user_jwt = jc.encode(user, keys["signing_seed"], issued_at=issued_at)
        self.run(_push(account_jwt))
        return {
            **props,
            **keys,
            "user_key": user_key,
            "jwt": account_jwt,
            "user_jwt": user_jwt,
            "creds": jc.creds_document(user_jwt, user_seed),
            "revocations": revocations,
        }


APP_SECRET_OUTPUTS = ["account_seed", "signing_seed", "user_seed", "creds"]


class AppAccountJwt(Resource, module="jsb", name="AppAccountJwt"):
    """One app's account and user. Outputs: account_key, user_key, jwt, user_jwt, creds (secret), ..."""

    account_key: pulumi.Output[str]
    user_key: pulumi.Output[str]
    user_seed: pulumi.Output[str]
    jwt: pulumi.Output[str]
    user_jwt: pulumi.Output[str]
    creds: pulumi.Output[str]
    revocations: pulumi.Output[dict[str, int]]

    def __init__(
        self,
        resource_name: str,
        *,
        app: str,
        name: str,
        imports: list[dict[str, str]],
        publish: list[str],
        subscribe: list[str],
        jetstream_account: pulumi.Input[str],
        jetstream_signing_seed: pulumi.Input[str],
        rotate: str = "",
        limits: dict[str, int] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props: dict[str, Any] = {
            "limits": limits,
            "app": app,
            "name": name,
            "imports": imports,
            "publish": publish,
            "subscribe": subscribe,
            "jetstream_account": jetstream_account,
            "jetstream_signing_seed": jetstream_signing_seed,
            "rotate": rotate,
            **{
                key: None
                for key in (
                    "account_key",
                    "account_seed",
                    "signing_key",
                    "signing_seed",
                    "user_key",
                    "user_seed",
                    "jwt",
                    "user_jwt",
                )
            },
            "creds": None,
            "revocations": None,
        }
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=APP_SECRET_OUTPUTS)
        )
        super().__init__(AppAccountJwtProvider(), resource_name, props, opts)
