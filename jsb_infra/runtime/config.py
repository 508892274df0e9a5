"""Where an app's bridge and credentials come from: a dict, the stack-output JSON, or the environment.

The bridge is one app's `BridgeOutputs` (the contract in `jsb_infra.outputs`). A file may hold that one
bridge, or the whole `bridges` map (`pulumi stack output bridges --json`), or all stack outputs; a map
is narrowed with `stream`/`app` (implied when there is only one choice). Every problem is reported as
`field: rule`, before anything connects.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys
from nats.aio.client import RawCredentials
from pydantic import ValidationError

from jsb_infra.jwt_claims import JwtError, decode, parse_creds
from jsb_infra.outputs import SCHEMA_VERSION, AppCredentials, BridgeOutputs, ConsumerOutputs
from jsb_infra.spec import problems_of

ENV_BRIDGE_FILE = "JSB_BRIDGE_FILE"
ENV_STREAM = "JSB_STREAM"
ENV_APP = "JSB_APP"
ENV_CREDENTIALS_FILE = "JSB_CREDENTIALS_FILE"
ENV_NKEY_SEED = "JSB_NKEY_SEED"
ENV_CREDS_FILE = "JSB_CREDS_FILE"
ENV_USER = "JSB_USER"
ENV_PASSWORD = "JSB_PASSWORD"
ENV_TOKEN = "JSB_TOKEN"


class BridgeConfigError(ValueError):
    """Bad bridge or credentials input; `problems` lists `field: rule` lines."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid jsb-infra runtime config:\n" + "\n".join(f"  - {p}" for p in problems))


def _read_json(path: str | Path, what: str) -> Any:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise BridgeConfigError([f"{what}: cannot read {str(path)!r}: {err.strerror or err}"]) from None
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
    """One app's bridge from a dict, a JSON file, or `JSB_BRIDGE_FILE` (with `JSB_STREAM`/`JSB_APP`)."""
    env = os.environ if env is None else env
    stream = stream or env.get(ENV_STREAM) or None
    app = app or env.get(ENV_APP) or None
    if source is None:
        path = env.get(ENV_BRIDGE_FILE)
        if not path:
            raise BridgeConfigError(
                [f"bridge: no bridge given; pass a dict or file, or set {ENV_BRIDGE_FILE}"]
            )
        source = path
    doc = source if isinstance(source, Mapping) else _read_json(source, "bridge")
    if isinstance(doc, Mapping) and _is_single_bridge(doc):
        bridge = parse_bridge(doc)
        for name, wanted, got in (("stream", stream, bridge.stream), ("app", app, bridge.app)):
            if wanted is not None and wanted != got:
                raise BridgeConfigError([f"{name}: asked for {wanted!r} but the bridge is for {got!r}"])
        return bridge
    selected, where = _select(doc, stream, app, "bridges")
    return parse_bridge(selected, where)


@dataclass(frozen=True)
class Credentials:
    """How the app authenticates. At most one method; none means an open server (local benchmarks)."""

    nkey_seed: str | None = None
    creds_file: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
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

    def describe(self) -> str:
        """The method and a public identity, never a secret."""
        if self.creds:
            return f"user JWT {nkeys.from_seed(parse_creds(self.creds)[1].encode()).public_key.decode()}"
        if self.nkey_seed:
            return f"nkey {nkeys.from_seed(self.nkey_seed.encode()).public_key.decode()}"
        if self.creds_file:
            return f"creds file {self.creds_file}"
        if self.user:
            return f"user {self.user}"
        return self.method

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for `nats.connect`."""
        if self.creds:
            return {"user_credentials": RawCredentials(self.creds)}
        if self.nkey_seed:
            return {"nkeys_seed_str": self.nkey_seed}
        if self.creds_file:
            return {"user_credentials": self.creds_file}
        if self.user:
            return {"user": self.user, "password": self.password or ""}
        if self.token:
            return {"token": self.token}
        return {}


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
    if problems:
        raise BridgeConfigError(problems)
    return creds


def _is_app_keyed(doc: Any) -> bool:
    """The `credentials` output: {app: {public_key, seed, account}} (one identity per app). Stacks made
    before the account layout exported {stream: {app: {public_key, seed}}}; that shape is read too."""
    return (
        isinstance(doc, Mapping)
        and bool(doc)
        and all(isinstance(v, Mapping) and "seed" in v for v in doc.values())
    )


def _select_app(doc: Mapping[str, Any], app: str | None) -> tuple[Any, str]:
    if app is None:
        if len(doc) != 1:
            raise BridgeConfigError(
                [f"app: required: credentials holds {sorted(doc)}; pass app= or set {ENV_APP}"]
            )
        app = next(iter(doc))
    if app not in doc:
        raise BridgeConfigError([f"app: {app!r} is not in credentials (it holds {sorted(doc)})"])
    return doc[app], f"credentials.{app}"


def parse_app_credentials(data: Any, where: str = "credentials") -> Credentials:
    """One `{public_key, seed}` entry of the stack's `credentials` output; the key must match the seed."""
    if not isinstance(data, Mapping):
        raise BridgeConfigError(
            [f"{where}: expected an object {{public_key, seed}}, got a {type(data).__name__}"]
        )
    try:
        entry = AppCredentials.model_validate(dict(data))
    except ValidationError as err:
        raise BridgeConfigError(problems_of(err, root=where)) from None
    creds = _checked(Credentials(nkey_seed=entry.seed), where)
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
    env: Mapping[str, str] | None = None,
) -> Credentials:
    """Credentials from arguments, else the `credentials` output (dict or JSON file), else the environment.

    Environment: JSB_NKEY_SEED, JSB_CREDS_FILE, JSB_USER/JSB_PASSWORD, JSB_TOKEN, or JSB_CREDENTIALS_FILE
    (the `credentials` output as JSON, narrowed with JSB_STREAM/JSB_APP).
    """
    env = os.environ if env is None else env
    explicit = Credentials(nkey_seed, creds_file, user, password, token)
    if explicit.method != "none" or password:
        return _checked(explicit, "credentials")
    if credentials is None and env.get(ENV_CREDENTIALS_FILE):
        credentials = env[ENV_CREDENTIALS_FILE]
    if credentials is not None:
        doc = credentials if isinstance(credentials, Mapping) else _read_json(credentials, "credentials")
        if isinstance(doc, Mapping) and "seed" in doc:
            return parse_app_credentials(doc)
        if isinstance(doc, Mapping) and "credentials" in doc and isinstance(doc["credentials"], Mapping):
            doc = doc["credentials"]  # all stack outputs
        if _is_app_keyed(doc):
            entry, where = _select_app(doc, app or env.get(ENV_APP) or None)
            return parse_app_credentials(entry, where)
        entry, where = _select(doc, stream or env.get(ENV_STREAM), app or env.get(ENV_APP), "credentials")
        return parse_app_credentials(entry, where)
    from_env = Credentials(
        nkey_seed=env.get(ENV_NKEY_SEED) or None,
        creds_file=env.get(ENV_CREDS_FILE) or None,
        user=env.get(ENV_USER) or None,
        password=env.get(ENV_PASSWORD) or None,
        token=env.get(ENV_TOKEN) or None,
    )
    return _checked(from_env, "environment")
