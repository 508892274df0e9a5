"""NATS JWTs (nats-io/jwt v2) for the account layout: claims built from it, signed with NKeys. Pure.

Why our own encoder: the Python packages for NATS JWTs do not fit. `nats-jwt` (0.2.2) has no
activation claims (its source marks them "not supported"), pins `pytz<2025`, and calls itself "not
well-tested"; `nats-nsc` (0.4.1, 2023) only issues users from an nsc store and pins `nkeys~=0.1`.
The format is small: a JWT is `base64url(header).base64url(claims).base64url(ed25519 signature)`
(no padding), header `{"typ":"JWT","alg":"ed25519-nkey"}`, signed with the `nkeys` package, and the
claims are plain JSON whose shapes come from nats-io/jwt v2 (account_claims.go, exports.go,
imports.go, activation_claims.go, user_claims.go, operator_claims.go). Every JWT built here is
loaded by a real nats-server in operator mode in the tests, and read back by `nsc describe jwt`.

`jti` is base32 (no padding) of SHA-512/256, the hash nats-io/jwt v2 uses (`ClaimsData.hash`, which
covers only the standard claims); here it covers the whole claims with an empty `jti`, so JWTs that
differ only in their `nats` section get different ids. The server does not check it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import nkeys
from nacl.signing import VerifyKey

from jsb_infra.core.accounts import (
    APP_LEAFNODES,
    DEFAULT_APP_LIMITS,
    READ_ONLY_PUBLISH,
    READ_ONLY_SUBSCRIBE,
    STANDARD_CONNECTIONS,
)
from jsb_infra.core.names import READ_ONLY_INBOX_PREFIX
from jsb_infra.core.spec import ResolvedAppLimits

HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
VERSION = 2
NO_LIMIT = -1
ALL_USERS = "*"
"""The revocations key that revokes every user JWT issued up to its time (nats-io/jwt v2 `All`)."""

UNLIMITED_NATS = {"subs": NO_LIMIT, "data": NO_LIMIT, "payload": NO_LIMIT}
UNLIMITED_ACCOUNT = {
    "imports": NO_LIMIT,
    "exports": NO_LIMIT,
    "wildcards": True,
    "conn": NO_LIMIT,
    "leaf": NO_LIMIT,
}
UNLIMITED_JETSTREAM = {
    "mem_storage": NO_LIMIT,
    "disk_storage": NO_LIMIT,
    "streams": NO_LIMIT,
    "consumer": NO_LIMIT,
}
"""JetStream is enabled for an account whose mem or disk storage limit is not 0 (nats-io/jwt v2
`JetStreamLimits`); an account without these keys has no JetStream."""


class JwtError(ValueError):
    """A token that is not a NATS JWT, or whose signature does not verify."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def claim_id(claims: Mapping[str, Any]) -> str:
    """The `jti`: base32 of SHA-512/256 of the claims without their own id."""
    digest = hashlib.new("sha512_256", _json({**claims, "jti": ""})).digest()
    return base64.b32encode(digest).decode().rstrip("=")


def public_key(seed: str) -> str:
    return nkeys.from_seed(seed.encode()).public_key.decode()


def new_seed(prefix: int) -> str:
    """A fresh NKey seed of the given kind (nkeys.PREFIX_BYTE_ACCOUNT, _USER, _OPERATOR)."""
    return nkeys.encode_seed(os.urandom(32), prefix).decode()


def encode(claims: Mapping[str, Any], signer_seed: str, issued_at: int | None = None) -> str:
    """Sign `claims` (which carry `sub`, `name` and `nats`) as the key of `signer_seed`."""
    keys = nkeys.from_seed(signer_seed.encode())
    body: dict[str, Any] = {k: v for k, v in claims.items() if k not in ("jti", "iat", "iss")}
    body["iss"] = keys.public_key.decode()
    body["iat"] = int(time.time()) if issued_at is None else issued_at
    body["jti"] = claim_id(body)
    signing_input = f"{_b64(_json(HEADER))}.{_b64(_json(body))}"
    return f"{signing_input}.{_b64(keys.sign(signing_input.encode()))}"


def verify_key(public: str) -> VerifyKey:
    """The Ed25519 key of an NKey public key: base32 of prefix byte, 32 key bytes, CRC-16 (nkeys)."""
    raw = base64.b32decode(public + "=" * (-len(public) % 8))
    if len(raw) != 35 or nkeys.crc16(raw[:-2]) != int.from_bytes(raw[-2:], "little"):
        raise JwtError(f"{public[:8]}...: not an NKey public key")
    return VerifyKey(raw[1:33])


def decode(token: str, verify: bool = True) -> dict[str, Any]:
    """The claims of a NATS JWT; with `verify`, its signature must be the issuer's (`iss`)."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise JwtError("not a JWT: expected three dot-separated parts")
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
        signature = _unb64(parts[2])
    except (ValueError, binascii.Error) as err:
        raise JwtError(f"not a JWT: {err}") from None
    if header.get("alg") != HEADER["alg"]:
        raise JwtError(f"unsupported JWT algorithm {header.get('alg')!r}")
    if verify:
        try:
            verify_key(claims["iss"]).verify(f"{parts[0]}.{parts[1]}".encode(), signature)
        except Exception:
            raise JwtError("the JWT's signature does not verify with its issuer key") from None
    return dict(claims)


def content(claims: Mapping[str, Any]) -> dict[str, Any]:
    """What a JWT says, without when and by which key it was signed (compared to find drift)."""
    return {k: v for k, v in claims.items() if k not in ("jti", "iat", "iss")}


# -- claims ------------------------------------------------------------------------------------------
def operator_claims(
    name: str, operator_key: str, system_account: str, signing_keys: list[str]
) -> dict[str, Any]:
    """An operator (self-signed by its identity key); jsb-infra never issues one outside tests and docs."""
    nats: dict[str, Any] = {"type": "operator", "version": VERSION, "system_account": system_account}
    if signing_keys:
        nats["signing_keys"] = list(signing_keys)
    return {"name": name, "sub": operator_key, "nats": nats}


def plain_account_claims(name: str, account_key: str, jetstream: bool = False) -> dict[str, Any]:
    """An account with default limits and nothing else (the system account, a test's JetStream account)."""
    limits = {**UNLIMITED_NATS, **UNLIMITED_ACCOUNT, **(UNLIMITED_JETSTREAM if jetstream else {})}
    return {
        "name": name,
        "sub": account_key,
        "nats": {"type": "account", "version": VERSION, "limits": limits},
    }


@dataclass(frozen=True)
class ServiceExport:
    """One private service export of the JetStream account (an activation token is needed to import it)."""

    subject: str
    response_type: str = "Singleton"

    def claim(self) -> dict[str, Any]:
        export: dict[str, Any] = {
            "name": self.subject,
            "subject": self.subject,
            "type": "service",
            "token_req": True,
        }
        if self.response_type != "Singleton":
            export["response_type"] = self.response_type
        return export


def jetstream_account_claims(
    name: str,
    account_key: str,
    exports: list[ServiceExport],
    signing_keys: list[str],
    jetstream_limits: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JetStream account: JetStream limits (it is the only account with JetStream; `jetstream_limits`:
    the layout's storage limits and max_bytes_required, `JetStreamLimits.claims()`), the exports."""
    nats: dict[str, Any] = {
        "type": "account",
        "version": VERSION,
        "limits": {**UNLIMITED_NATS, **UNLIMITED_ACCOUNT, **UNLIMITED_JETSTREAM, **(jetstream_limits or {})},
        "signing_keys": sorted(signing_keys),
    }
    if exports:
        nats["exports"] = [e.claim() for e in exports]
    return {"name": name, "sub": account_key, "nats": nats}


def signing_key_of(entry: Any) -> str:
    """The public key of a `signing_keys` entry: a plain key, or a scoped key's object (nats-io/jwt v2
    `SigningKeys` marshals a key with a scope as `{"kind": "user_scope", "key": ..., "template": ...}`)."""
    return str(entry.get("key") if isinstance(entry, Mapping) else entry)


def jetstream_enabled(limits: Mapping[str, Any]) -> bool:
    """Whether account limits give JetStream: a non-zero mem or disk storage, in the tiered limits when
    there are any, else in the flat ones (nats-io/jwt v2 `OperatorLimits.IsJSEnabled`)."""
    tiers = limits.get("tiered_limits") or {}
    scopes = list(tiers.values()) if tiers else [limits]
    return any(scope.get("mem_storage", 0) != 0 or scope.get("disk_storage", 0) != 0 for scope in scopes)


def reissued_jetstream_account(
    live: Mapping[str, Any],
    exports: list[ServiceExport],
    owned: set[str],
    add_signing_key: str | None,
    drop_signing_keys: set[str],
    jetstream_limits: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The live JetStream account with only jsb-infra's part changed (read-modify-write).

    Every claim the operator set stays as it is (name, revocations, limits, imports, mappings,
    default permissions, tags, scoped signing keys with their templates, exports of its own), except:
    the exports with an `owned` subject (what this stack exported before) or a subject of `exports`
    are replaced by `exports`; the `drop_signing_keys` leave `signing_keys` and `add_signing_key`
    joins it; an account without JetStream gets unlimited JetStream; and `jetstream_limits` (the
    layout's storage limits and max_bytes_required) are laid over the flat JetStream limits, or, when
    the operator set tiered limits, only max_bytes_required is set in every tier (the tiers' storage
    stays the operator's). Other limits are never changed."""
    claims: dict[str, Any] = json.loads(_json(live))
    nats = claims.setdefault("nats", {})
    replaced = owned | {e.subject for e in exports}
    kept = [e for e in nats.get("exports") or [] if e.get("subject") not in replaced]
    merged = kept + [e.claim() for e in sorted(exports, key=lambda e: e.subject)]
    if merged:
        nats["exports"] = merged
    else:
        nats.pop("exports", None)
    keys = [k for k in nats.get("signing_keys") or [] if signing_key_of(k) not in drop_signing_keys]
    if add_signing_key and add_signing_key not in {signing_key_of(k) for k in keys}:
        keys.append(add_signing_key)
    if keys:
        nats["signing_keys"] = keys
    else:
        nats.pop("signing_keys", None)
    if add_signing_key:  # deployed: the streams live in this account
        limits = nats.setdefault("limits", {})
        if not jetstream_enabled(limits):
            if limits.get("tiered_limits"):
                raise JwtError(
                    f"account {claims.get('sub')}: its JetStream tiered limits are all 0; give it JetStream "
                    "(nsc edit account --js-tier ...) or remove the tiers"
                )
            limits.update(UNLIMITED_JETSTREAM)
        if jetstream_limits:
            _lay_jetstream_limits(limits, jetstream_limits)
    return claims


def _lay_jetstream_limits(limits: dict[str, Any], wanted: Mapping[str, Any]) -> None:
    tiers = limits.get("tiered_limits") or {}
    if tiers:
        for tier in tiers.values():
            if wanted.get("max_bytes_required"):
                tier["max_bytes_required"] = True
            else:
                tier.pop("max_bytes_required", None)
        return
    limits.update({k: v for k, v in wanted.items() if k != "max_bytes_required"})
    if wanted.get("max_bytes_required"):
        limits["max_bytes_required"] = True
    else:
        limits.pop("max_bytes_required", None)


def canonical(claims: Mapping[str, Any]) -> dict[str, Any]:
    """`content` with exports and signing keys in key order (their order means nothing to a server)."""
    result: dict[str, Any] = json.loads(_json(content(claims)))
    nats = result.get("nats") or {}
    if "exports" in nats:
        nats["exports"] = sorted(nats["exports"], key=lambda e: str(e.get("subject")))
    if "signing_keys" in nats:
        nats["signing_keys"] = sorted(nats["signing_keys"], key=signing_key_of)
    return result


def activation_claims(subject: str, importer_key: str, exporter_key: str) -> dict[str, Any]:
    """The JetStream account's permission for one app account to import one service subject.
    Signed by a signing key of the exporter, so `issuer_account` names the exporter."""
    return {
        "name": subject,
        "sub": importer_key,
        "nats": {
            "type": "activation",
            "version": VERSION,
            "subject": subject,
            "kind": "service",
            "issuer_account": exporter_key,
        },
    }


def app_user_limits(limits: ResolvedAppLimits) -> dict[str, int]:
    """The NATS limits of an app's user (nats-io/jwt v2 `NatsLimits`): the server applies the smaller
    of the user's and the account's subs and payload to each connection (server/client.go
    applyAccountLimits)."""
    return {"subs": limits.subscriptions, "data": limits.data, "payload": limits.payload}


def app_account_limits(limits: ResolvedAppLimits, imports: int) -> dict[str, Any]:
    """An app account's limits: the app's connections (counted across the servers), subs and payload
    per connection, no leafnodes, exactly its `imports` and no exports (nats-io/jwt v2 refuses an
    account with more imports or exports than its limits). `data` is written for tools; nats-server
    2.15 does not enforce it."""
    return {
        **app_user_limits(limits),
        "conn": limits.connections,
        "leaf": APP_LEAFNODES,
        "imports": imports,
        "exports": 0,
        "wildcards": False,
    }


def app_account_claims(
    name: str,
    account_key: str,
    imports: list[tuple[str, str]],
    exporter_key: str,
    revocations: Mapping[str, int] | None = None,
    signing_keys: list[str] | None = None,
    limits: ResolvedAppLimits | None = None,
) -> dict[str, Any]:
    """An app account: no JetStream, one service import per (subject, activation token), the
    signing key its user is issued with (an operator with strict signing key usage refuses users
    signed by the account's identity key: nats-server server/accounts.go), and the app's limits
    (default: `AppLimits`' defaults)."""
    nats: dict[str, Any] = {
        "type": "account",
        "version": VERSION,
        "limits": app_account_limits(limits or DEFAULT_APP_LIMITS.for_app(name), len(imports)),
    }
    if signing_keys:
        nats["signing_keys"] = sorted(signing_keys)
    if imports:
        nats["imports"] = [
            {"name": subject, "subject": subject, "account": exporter_key, "token": token, "type": "service"}
            for subject, token in imports
        ]
    if revocations:
        nats["revocations"] = dict(sorted(revocations.items()))
    return {"name": name, "sub": account_key, "nats": nats}


def user_claims(
    name: str,
    user_key: str,
    publish: list[str],
    subscribe: list[str],
    issuer_account: str | None = None,
    limits: ResolvedAppLimits | None = None,
) -> dict[str, Any]:
    """An app's user: the layout's allow lists, ordinary client connections only, the app's limits
    (None: no limits of its own). `issuer_account`: the account, when a signing key of it signs the
    user."""
    nats: dict[str, Any] = {
        "type": "user",
        "version": VERSION,
        "pub": {"allow": list(publish)},
        "sub": {"allow": list(subscribe)},
        **(app_user_limits(limits) if limits else UNLIMITED_NATS),
        "allowed_connection_types": list(STANDARD_CONNECTIONS),
    }
    if issuer_account:
        nats["issuer_account"] = issuer_account
    return {"name": name, "sub": user_key, "nats": nats}


def creds_document(user_jwt: str, user_seed: str) -> str:
    """A `.creds` file, in the layout nsc writes and nats clients read."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user_seed}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )


def parse_creds(text: str) -> tuple[str, str]:
    """(user JWT, user seed) of a `.creds` document."""
    found = dict(re.findall(r"-{3,}BEGIN ([A-Z ]+?)-{3,}\s*\n\s*(\S+)\s*\n\s*-{3,}END", text))
    jwt, seed = found.get("NATS USER JWT"), found.get("USER NKEY SEED")
    if not jwt or not seed:
        raise JwtError("not a .creds document: expected a user JWT block and a user seed block")
    return jwt, seed


# -- read-only identities (previews) ---------------------------------------------------------------------
CLAIMS_LOOKUP = "$SYS.REQ.ACCOUNT.*.CLAIMS.LOOKUP"
"""The system account request that reads an account's JWT from the resolver (and writes nothing)."""


def read_only_user_claims(name: str, user_key: str, issuer_account: str | None = None) -> dict[str, Any]:
    """A JetStream-account user that may only read stream and consumer info and names (what `pulumi
    preview --refresh` asks): `accounts.READ_ONLY_PUBLISH`, replies on its own inbox prefix only."""
    return user_claims(name, user_key, list(READ_ONLY_PUBLISH), list(READ_ONLY_SUBSCRIBE), issuer_account)


def claims_lookup_user_claims(name: str, user_key: str, issuer_account: str | None = None) -> dict[str, Any]:
    """A system-account user that may only look account JWTs up (`CLAIMS_LOOKUP`): it cannot push
    (`$SYS.REQ.CLAIMS.UPDATE`) or delete one, nor send any other system request."""
    return user_claims(name, user_key, [CLAIMS_LOOKUP], list(READ_ONLY_SUBSCRIBE), issuer_account)


def inbox_prefix_of(user_jwt: str) -> str | None:
    """The reply prefix a connection as this user must set: `READ_ONLY_INBOX_PREFIX` when its JWT
    allows subscribing there (a read-only identity, whose replies must not come back on `_INBOX`,
    which it may not subscribe to), None (the client's default) for every other user."""
    try:
        claims = decode(user_jwt, verify=False)
    except JwtError:
        return None
    allowed = ((claims.get("nats") or {}).get("sub") or {}).get("allow") or []
    return READ_ONLY_INBOX_PREFIX if set(READ_ONLY_SUBSCRIBE) <= set(allowed) else None


def creds_inbox_prefix(creds: str) -> str | None:
    """`inbox_prefix_of` the user JWT in a `.creds` text (None when it is not one: the connect that
    uses it says so)."""
    try:
        user_jwt, _ = parse_creds(creds)
    except JwtError:
        return None
    return inbox_prefix_of(user_jwt)
