"""Where an app's bridge and credentials come from: a dict, the stack-output JSON, or the environment.

The bridge is one app's `BridgeOutputs` (the contract in `jsb_infra.core.outputs`). A file (or the inline
JSON of `JSB_BRIDGE_JSON`) may hold that one bridge, or the whole `bridges` map (`pulumi stack output
bridges --json`), or all stack outputs; a map is narrowed with `stream`/`app` (implied when there is
only one choice). Credentials are one app's `{public_key, seed}`, from a map keyed by app (or, as older
stacks exported them, by stream then app). TLS (a CA, and a client certificate for mutual TLS) comes
from arguments, a `tls` object beside the seed, or `JSB_TLS_CA`/`JSB_TLS_CERT`/`JSB_TLS_KEY`. Every
problem is reported as `field: rule`, before anything connects.
"""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys
from nats.aio.client import RawCredentials
from pydantic import ValidationError

from jsb_infra.core.jwt_claims import JwtError, decode, parse_creds
from jsb_infra.core.outputs import SCHEMA_VERSION, AppCredentials, BridgeOutputs, ConsumerOutputs
from jsb_infra.core.spec import problems_of

ENV_BRIDGE_FILE = "JSB_BRIDGE_FILE"
ENV_BRIDGE_JSON = "JSB_BRIDGE_JSON"
ENV_STREAM = "JSB_STREAM"
ENV_APP = "JSB_APP"
ENV_CREDENTIALS_FILE = "JSB_CREDENTIALS_FILE"
ENV_NKEY_SEED = "JSB_NKEY_SEED"
ENV_CREDS_FILE = "JSB_CREDS_FILE"
ENV_USER = "JSB_USER"
ENV_PASSWORD = "JSB_PASSWORD"
ENV_TOKEN = "JSB_TOKEN"
ENV_TLS_CA = "JSB_TLS_CA"
ENV_TLS_CERT = "JSB_TLS_CERT"
ENV_TLS_KEY = "JSB_TLS_KEY"


class BridgeConfigError(ValueError):
    """Bad bridge or credentials input; `problems` lists `field: rule` lines."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid jsb-infra runtime config:\n" + "\n".join(f"  - {p}" for p in problems))


def read_json(path: str | Path, what: str) -> Any:
    """A JSON file's content; unreadable, non-UTF-8 or non-JSON files are BridgeConfigErrors."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise BridgeConfigError([f"{what}: cannot read {str(path)!r}: {err.strerror or err}"]) from None
    except UnicodeDecodeError as err:
        raise BridgeConfigError(
            [f"{what}: {str(path)!r} is not UTF-8 (byte 0x{err.object[err.start]:02x} at offset {err.start})"]
        ) from None
    try:
        return json.loads(text)
    except ValueError as err:
        raise BridgeConfigError([f"{what}: {str(path)!r} is not JSON: {err}"]) from None


def _is_single_bridge(doc: Mapping[str, Any]) -> bool:
    return "publish_subject" in doc or "schema_version" in doc or "auto_provision" in doc


def _select(doc: Any, stream: str | None, app: str | None, what: str) -> tuple[Any, str]:
    """Narrow a `{stream: {app: X}}` map to one X; returns it with its location for messages."""
    if isinstance(doc, Mapping) and what in doc and isinstance(doc[what], Mapping):
        doc = doc[what]  # all stack outputs (`pulumi stack output --json`): take the named one
    if not isinstance(doc, Mapping) or not doc:
        raise BridgeConfigError([f"{what}: expected a JSON object {{stream: {{app: ...}}}}, got {doc!r}"])
    if stream is None:
        if len(doc) != 1:
            raise BridgeConfigError(
                [f"stream: required: {what} holds {sorted(doc)}; pass stream= or set {ENV_STREAM}"]
            )
        stream = next(iter(doc))
    if stream not in doc:
        raise BridgeConfigError([f"stream: {stream!r} is not in {what} (it holds {sorted(doc)})"])
    apps = doc[stream]
    if not isinstance(apps, Mapping) or not apps:
        raise BridgeConfigError([f"{what}.{stream}: expected an object {{app: ...}}, got {apps!r}"])
    if app is None:
        if len(apps) != 1:
            raise BridgeConfigError(
                [f"app: required: stream {stream!r} has apps {sorted(apps)}; pass app= or set {ENV_APP}"]
            )
        app = next(iter(apps))
    if app not in apps:
        raise BridgeConfigError([f"app: {app!r} is not an app of stream {stream!r} (it has {sorted(apps)})"])
    return apps[app], f"{what}.{stream}.{app}"


def parse_bridge(data: Any, where: str = "bridge") -> BridgeOutputs:
    """Validate one bridge; refuses outputs that allow provisioning or a schema this client does not know."""
    if not isinstance(data, Mapping):
        raise BridgeConfigError([f"{where}: expected a JSON object, got {data!r}"])
    problems = []
    if data.get("auto_provision", False) is not False:
        problems.append(
            f"{where}.auto_provision: must be false, got {data['auto_provision']!r}: this client never "
            "calls JetStream management APIs; the deploy provisions streams and consumers"
        )
    if "schema_version" in data and data["schema_version"] != SCHEMA_VERSION:
        problems.append(
            f"{where}.schema_version: this client reads bridge outputs version {SCHEMA_VERSION}, got "
            f"{data['schema_version']!r}; upgrade jsb-infra in the app"
        )
    if problems:
        raise BridgeConfigError(problems)
    try:
        bridge = BridgeOutputs.model_validate(dict(data))
    except ValidationError as err:
        raise BridgeConfigError(problems_of(err, root=where)) from None
    problems = consumer_problems(bridge.consumer, f"{where}.consumer")
    if problems:
        raise BridgeConfigError(problems)
    return bridge


def consumer_problems(consumer: ConsumerOutputs, where: str = "bridge.consumer") -> list[str]:
    """Consumer settings the client's redelivery logic could not honour, as `field: rule` lines.

    The client dead-letters on delivery `max_deliver` and computes nak delays from `ack_wait_ns` and
    `backoff_ns` as the server holds them (with a backoff, the server's ack wait is backoff[0]).
    """
    problems = []
    if consumer.max_deliver < 1:
        problems.append(
            f"{where}.max_deliver: must be at least 1, got {consumer.max_deliver}: the client dead-letters "
            "on the last delivery, so an unlimited max_deliver (-1) would retry a failing message forever"
        )
    if consumer.ack_wait_ns <= 0:
        problems.append(
            f"{where}.ack_wait_ns: must be a positive number of nanoseconds, got {consumer.ack_wait_ns}"
        )
    for index, ns in enumerate(consumer.backoff_ns):
        if ns <= 0:
            problems.append(
                f"{where}.backoff_ns[{index}]: must be a positive number of nanoseconds, got {ns}"
            )
    if consumer.backoff_ns:
        if consumer.ack_wait_ns != consumer.backoff_ns[0]:
            problems.append(
                f"{where}.ack_wait_ns: must equal backoff_ns[0] ({consumer.backoff_ns[0]}) when a backoff is "
                f"set, got {consumer.ack_wait_ns}: the server runs its ack wait at backoff[0], and the nak "
                "delays are computed from it"
            )
        if consumer.max_deliver >= 1 and len(consumer.backoff_ns) > consumer.max_deliver:
            problems.append(
                f"{where}.backoff_ns: has {len(consumer.backoff_ns)} entries but max_deliver is "
                f"{consumer.max_deliver}; the server refuses a backoff longer than max_deliver"
            )
    return problems


def load_bridge(
    source: Mapping[str, Any] | str | Path | None = None,
    *,
    stream: str | None = None,
    app: str | None = None,
    env: Mapping[str, str] | None = None,
) -> BridgeOutputs:
    """One app's bridge from a dict, a JSON file, `JSB_BRIDGE_JSON` (the JSON itself) or `JSB_BRIDGE_FILE`
    (with `JSB_STREAM`/`JSB_APP` to narrow a map)."""
    env = os.environ if env is None else env
    stream = stream or env.get(ENV_STREAM) or None
    app = app or env.get(ENV_APP) or None
    doc: Any
    if source is None and env.get(ENV_BRIDGE_JSON):
        try:
            doc = json.loads(env[ENV_BRIDGE_JSON])
        except ValueError as err:
            raise BridgeConfigError([f"bridge: {ENV_BRIDGE_JSON} is not JSON: {err}"]) from None
    elif source is None:
        path = env.get(ENV_BRIDGE_FILE)
        if not path:
            raise BridgeConfigError(
                [
                    f"bridge: no bridge given; pass a dict or file, or set {ENV_BRIDGE_JSON} "
                    f"or {ENV_BRIDGE_FILE}"
                ]
            )
        doc = read_json(path, "bridge")
    else:
        doc = source if isinstance(source, Mapping) else read_json(source, "bridge")
    if isinstance(doc, Mapping) and _is_single_bridge(doc):
        bridge = parse_bridge(doc)
        for name, wanted, got in (("stream", stream, bridge.stream), ("app", app, bridge.app)):
            if wanted is not None and wanted != got:
                raise BridgeConfigError([f"{name}: asked for {wanted!r} but the bridge is for {got!r}"])
        return bridge
    selected, where = _select(doc, stream, app, "bridges")
    return parse_bridge(selected, where)


@dataclass(frozen=True)
class TlsOptions:
    """TLS to the server: a CA to verify it by (else the system's), and a client certificate for mTLS."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def describe(self) -> str:
        parts = [f"CA {self.ca_file}" if self.ca_file else "system CAs"]
        if self.cert_file:
            parts.append(f"client certificate {self.cert_file}")
        return ("mutual TLS" if self.cert_file else "TLS") + f" ({', '.join(parts)})"

    def problems(self, where: str) -> list[str]:
        found = []
        if bool(self.cert_file) != bool(self.key_file):
            found.append(f"{where}: a client certificate needs both cert and key (mutual TLS), or neither")
        for name, path in (("ca", self.ca_file), ("cert", self.cert_file), ("key", self.key_file)):
            if path and not Path(path).is_file():
                found.append(f"{where}.{name}: no such file {path!r}")
        return found


@dataclass(frozen=True)
class Credentials:
    """How the app authenticates. At most one method; none means an open server (local benchmarks).

    `tls` adds TLS (and with a client certificate, mutual TLS) to whichever method is used.
    """

    nkey_seed: str | None = None
    creds_file: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    tls: TlsOptions | None = None
    creds: str | None = None
    """The text of a `.creds` document (JWT mode's `credentials` output), not a path."""

    @property
    def method(self) -> str:
        if self.creds:
            return "creds"
        if self.nkey_seed:
            return "nkey"
        if self.creds_file:
            return "creds_file"
        if self.user:
            return "user/password"
        if self.token:
            return "token"
        return "none"

    def creds_text(self) -> str | None:
        """The `.creds` document of JWT mode (`creds`, else `creds_file` read); None under any other
        method. Raises OSError or UnicodeDecodeError when the file cannot be read."""
        if self.creds:
            return self.creds
        if self.method == "creds_file" and self.creds_file:
            return Path(self.creds_file).read_text(encoding="utf-8")
        return None

    def describe(self) -> str:
        """The method, a public identity and the TLS in use, never a secret."""
        if self.creds:
            who = f"user JWT {nkeys.from_seed(parse_creds(self.creds)[1].encode()).public_key.decode()}"
        elif self.nkey_seed:
            who = f"nkey {nkeys.from_seed(self.nkey_seed.encode()).public_key.decode()}"
        elif self.creds_file:
            who = f"creds file {self.creds_file}"
        elif self.user:
            who = f"user {self.user}"
        else:
            who = self.method
        return f"{who} over {self.tls.describe()}" if self.tls else who

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for `nats.connect`."""
        options: dict[str, Any] = {"tls": self.tls.ssl_context()} if self.tls else {}
        if self.creds:
            options["user_credentials"] = RawCredentials(self.creds)
        elif self.nkey_seed:
            options["nkeys_seed_str"] = self.nkey_seed
        elif self.creds_file:
            options["user_credentials"] = self.creds_file
        elif self.user:
            options |= {"user": self.user, "password": self.password or ""}
        elif self.token:
            options["token"] = self.token
        return options


def _checked(creds: Credentials, where: str) -> Credentials:
    given = [
        name
        for name, value in (
            ("nkey_seed", creds.nkey_seed),
            ("creds_file", creds.creds_file),
            ("user", creds.user),
            ("token", creds.token),
        )
        if value
    ]
    problems = []
    if len(given) > 1:
        problems.append(f"{where}: give one of nkey_seed, creds_file, user/password, token; got {given}")
    if creds.password and not creds.user:
        problems.append(f"{where}.password: given without a user")
    if creds.nkey_seed:
        try:
            if not creds.nkey_seed.startswith("SU"):
                raise ValueError("not a user seed")
            nkeys.from_seed(creds.nkey_seed.encode())
        except Exception:
            problems.append(f"{where}.nkey_seed: not a valid NKey user seed (expected 'SU...')")
    if creds.creds_file and not Path(creds.creds_file).is_file():
        problems.append(f"{where}.creds_file: no such file {creds.creds_file!r}")
    if creds.tls:
        problems += creds.tls.problems(f"{where}.tls")
    if problems:
        raise BridgeConfigError(problems)
    return creds


def _tls_of(data: Any, where: str) -> TlsOptions | None:
    """The optional `tls: {ca, cert, key}` object beside a seed in a credentials document."""
    if data is None:
        return None
    if not isinstance(data, Mapping) or set(data) - {"ca", "cert", "key"}:
        raise BridgeConfigError([f"{where}: expected an object with ca, cert and/or key file paths"])
    return TlsOptions(data.get("ca"), data.get("cert"), data.get("key"))


def parse_app_credentials(data: Any, where: str = "credentials") -> Credentials:
    """One `{public_key, seed}` entry of the stack's `credentials` output; the key must match the seed.

    A `tls` object beside them (`{ca, cert, key}`: file paths) adds TLS, as a platform may write it.
    """
    if not isinstance(data, Mapping):
        raise BridgeConfigError(
            [f"{where}: expected an object {{public_key, seed}}, got a {type(data).__name__}"]
        )
    entry_fields = {k: v for k, v in data.items() if k != "tls"}
    try:
        entry = AppCredentials.model_validate(entry_fields)
    except ValidationError as err:
        raise BridgeConfigError(problems_of(err, root=where)) from None
    creds = _checked(Credentials(nkey_seed=entry.seed, tls=_tls_of(data.get("tls"), f"{where}.tls")), where)
    if nkeys.from_seed(entry.seed.encode()).public_key.decode() != entry.public_key:
        raise BridgeConfigError([f"{where}.public_key: does not belong to the seed given beside it"])
    if entry.creds is not None:  # JWT mode: the server wants the user JWT, signed with this seed
        try:
            user_jwt, seed = parse_creds(entry.creds)
            subject = decode(user_jwt)["sub"]
        except JwtError as err:
            raise BridgeConfigError([f"{where}.creds: {err}"]) from None
        if seed != entry.seed or subject != entry.public_key:
            raise BridgeConfigError([f"{where}.creds: its user is not the public_key/seed given beside it"])
        return Credentials(creds=entry.creds)
    return creds


def _is_identity(doc: Any) -> bool:
    return isinstance(doc, Mapping) and isinstance(doc.get("seed"), str)


def select_credentials(doc: Any, stream: str | None, app: str | None) -> tuple[Any, str]:
    """One app's entry of a `credentials` output: `{app: {public_key, seed}}` (one identity per app),
    or the older `{stream: {app: {...}}}`; all stack outputs are narrowed to `credentials` first."""
    if isinstance(doc, Mapping) and isinstance(doc.get("credentials"), Mapping):
        doc = doc["credentials"]
    if _is_identity(doc):
        return doc, "credentials"
    if isinstance(doc, Mapping) and doc and all(_is_identity(v) for v in doc.values()):
        if app is None:
            if len(doc) != 1:
                raise BridgeConfigError(
                    [f"app: required: credentials hold {sorted(doc)}; pass app= or set {ENV_APP}"]
                )
            app = next(iter(doc))
        if app not in doc:
            raise BridgeConfigError([f"app: {app!r} has no credentials (they hold {sorted(doc)})"])
        return doc[app], f"credentials.{app}"
    return _select(doc, stream, app, "credentials")


def _tls_from(ca: str | None, cert: str | None, key: str | None, env: Mapping[str, str]) -> TlsOptions | None:
    given = TlsOptions(ca, cert, key)
    if any((ca, cert, key)):
        return given
    from_env = TlsOptions(
        env.get(ENV_TLS_CA) or None, env.get(ENV_TLS_CERT) or None, env.get(ENV_TLS_KEY) or None
    )
    return from_env if any((from_env.ca_file, from_env.cert_file, from_env.key_file)) else None


def load_credentials(
    *,
    nkey_seed: str | None = None,
    creds_file: str | None = None,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    credentials: Mapping[str, Any] | str | Path | None = None,
    stream: str | None = None,
    app: str | None = None,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Credentials:
    """Credentials from arguments, else the `credentials` output (dict or JSON file), else the environment.

    Environment: JSB_NKEY_SEED, JSB_CREDS_FILE, JSB_USER/JSB_PASSWORD, JSB_TOKEN, or JSB_CREDENTIALS_FILE
    (the `credentials` output as JSON, narrowed with JSB_APP, and JSB_STREAM for the older shape).
    TLS: `tls_ca`/`tls_cert`/`tls_key`, else a `tls` object in the credentials document, else
    JSB_TLS_CA/JSB_TLS_CERT/JSB_TLS_KEY.
    """
    env = os.environ if env is None else env
    tls = _tls_from(tls_ca, tls_cert, tls_key, env)
    explicit = Credentials(nkey_seed, creds_file, user, password, token, tls)
    if explicit.method != "none" or password:
        return _checked(explicit, "credentials")
    if credentials is None and env.get(ENV_CREDENTIALS_FILE):
        credentials = env[ENV_CREDENTIALS_FILE]
    if credentials is not None:
        doc = credentials if isinstance(credentials, Mapping) else read_json(credentials, "credentials")
        entry, where = select_credentials(doc, stream or env.get(ENV_STREAM), app or env.get(ENV_APP))
        creds = parse_app_credentials(entry, where)
        if any((tls_ca, tls_cert, tls_key)) or creds.tls is None:
            creds = _checked(dataclasses.replace(creds, tls=tls), where)
        return creds
    from_env = Credentials(
        nkey_seed=env.get(ENV_NKEY_SEED) or None,
        creds_file=env.get(ENV_CREDS_FILE) or None,
        user=env.get(ENV_USER) or None,
        password=env.get(ENV_PASSWORD) or None,
        token=env.get(ENV_TOKEN) or None,
        tls=tls,
    )
    return _checked(from_env, "environment")
