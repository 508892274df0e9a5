"""The `jsb:` stack config keys, read and validated together: what the config-driven program and
`jsb-infra render --stack` both build from. A bad value is a ConfigError naming the key and the rule,
raised before any resource is registered.

`read_stack_settings` is the one reader: the program hands it `pulumi.Config("jsb")`, `render --stack`
a `StackFile` (the plain values of `stacks/Pulumi.<stack>.yaml`, in the text form the Pulumi engine
gives a program). A key read there reaches both; `StackSettings.accounts_args()` is what both hand to
the document derivation (`AppAccountsArgs` in the program, `core.documents.deployment_documents` in
`render`). Pulumi is not imported here, so `render --stack` works in a runtime-only install.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from jsb_infra.core import names, strict_yaml
from jsb_infra.core.accounts import DeployUser
from jsb_infra.core.auth import KEY as AUTH_KEY
from jsb_infra.core.auth import AuthSettings, parse_auth
from jsb_infra.core.capacity import capacity_problems
from jsb_infra.core.documents import DocumentShape
from jsb_infra.core.servers import UNREADABLE, check_servers
from jsb_infra.core.spec import AppLimits, Capacity, ConfigError, Pair, parse_pairs, problems_of

CONFIG_NAMESPACE = "jsb"


class ConfigSource(Protocol):
    """What the settings are read from: `pulumi.Config("jsb")` or a `StackFile`. `get(key)` returns the
    value of `jsb:<key>` as text (structured values as JSON text), None when it is not set."""

    def get(self, key: str) -> str | None: ...


USER_PUBLIC_KEY = re.compile(r"^U[A-Z2-7]{55}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class StackSettings:
    """The validated stack config the program builds from (admin and outputDir are the providers')."""

    pairs: tuple[Pair, ...]
    servers: tuple[str, ...]
    app_servers: tuple[str, ...] = ()
    jetstream_account: str = names.DEFAULT_JETSTREAM_ACCOUNT
    deploy: DeployUser | None = field(default=None)
    auth: AuthSettings = field(default_factory=AuthSettings)
    app_limits: AppLimits = field(default_factory=AppLimits)
    reader: DeployUser | None = field(default=None)
    capacity: Capacity | None = None

    @property
    def bridge_servers(self) -> list[str]:
        """The URLs apps are told: `jsb:appServers`, else the deploy's `jsb:servers`."""
        return list(self.app_servers or self.servers)

    def accounts_args(self) -> DocumentShape:
        """Every setting that shapes the deployment's documents, as the keyword arguments both
        `AppAccountsArgs` (the program) and `core.documents.deployment_documents` (`render --stack`)
        take: a setting added here reaches both, so what `render --check` compares is what `up` writes."""
        return {
            "app_servers": self.bridge_servers,
            "jetstream_account": self.jetstream_account,
            "deploy_user": self.deploy,
            "auth": self.auth,
            "app_limits": self.app_limits,
            "reader": self.reader,
            "capacity": self.capacity,
        }


def _json_value(key: str, raw: str | None, problems: list[str], expected: str = "a YAML list") -> Any:
    """Structured stack config arrives as JSON text; a missing or garbled value is a problem, not a crash."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        problems.append(f"{key}: must be {expected} in the stack config, got the plain string {raw!r}")
        return UNREADABLE


def _mapping_value(key: str, raw: str | None, problems: list[str]) -> Any:
    """A mapping in the stack file arrives as JSON text; a plain string there is a problem."""
    if raw is not None and raw.strip()[:1] != "{":
        problems.append(f"{key}: must be a YAML mapping in the stack config, got the plain string {raw!r}")
        return UNREADABLE
    return _json_value(key, raw, problems, expected="a YAML mapping")


def _servers_value(raw: str | None, problems: list[str]) -> Any:
    """A list in the stack file, or (as the providers also accept) `pulumi config set jsb:servers a,b`."""
    if raw is not None and raw.strip()[:1] != "[":
        return [s.strip() for s in raw.split(",") if s.strip()]
    return _json_value(f"{CONFIG_NAMESPACE}:servers", raw, problems)


def _check_pairs(value: Any, problems: list[str]) -> tuple[Pair, ...]:
    key = f"{CONFIG_NAMESPACE}:pairs"
    if value is UNREADABLE:
        return ()
    if value is None:
        problems.append(f"{key}: required; a list of app pairs (see docs/stack-config.md)")
        return ()
    if not isinstance(value, list):
        problems.append(f"{key}: must be a list of app pairs, got {type(value).__name__}")
        return ()
    try:
        return tuple(parse_pairs(value).pairs)
    except ConfigError as err:
        # spec problems read `pairs[0].apps: ...` or name `pairs[i]`: qualify them as stack keys.
        problems.extend(
            f"{CONFIG_NAMESPACE}:{p}" if p.startswith("pairs") else f"{key}: {p}" for p in err.problems
        )
        return ()


def _check_jetstream_account(value: Any, problems: list[str]) -> str:
    key = f"{CONFIG_NAMESPACE}:jetstreamAccount"
    if value is None:
        return names.DEFAULT_JETSTREAM_ACCOUNT
    problem = names.jetstream_account_problem(value)
    if problem:
        problems.append(f"{key}: {problem}")
        return names.DEFAULT_JETSTREAM_ACCOUNT
    return str(value)


def _check_deploy_user(
    value: Any,
    problems: list[str],
    key: str = f"{CONFIG_NAMESPACE}:deployUser",
    role: str = "the deploy's identity in the JetStream account",
) -> DeployUser | None:
    """`jsb:deployUser` (or another identity of the JetStream account, named `key`, that is `role`)."""
    if value is None or value is UNREADABLE:
        return None
    if not isinstance(value, dict) or set(value) - {"nkey", "user", "password_env"}:
        problems.append(
            f"{key}: must be {{nkey: U...}} or {{user: NAME, password_env: VAR}} ({role}; nothing "
            f"secret), got {value!r}"
        )
        return None
    nkey, user, env = value.get("nkey"), value.get("user"), value.get("password_env")
    if bool(nkey) == bool(user):
        problems.append(f"{key}: give exactly one of nkey or user")
        return None
    if nkey and not (isinstance(nkey, str) and USER_PUBLIC_KEY.match(nkey)):
        problems.append(f"{key}.nkey: must be an NKey user public key (U + 55 characters)")
        return None
    if user and not (isinstance(user, str) and user.strip()):
        problems.append(f"{key}.user: must be a non-empty name")
        return None
    if env is not None and not (isinstance(env, str) and ENV_NAME.match(env)):
        problems.append(f"{key}.password_env: must be an environment variable name, got {env!r}")
        return None
    return DeployUser(nkey=nkey, user=user, password_env=env)


def _check_app_limits(value: Any, pairs: tuple[Pair, ...], problems: list[str]) -> AppLimits:
    """`jsb:appLimits`: the spec's `app_limits` (every app account's limits, per-app overrides)."""
    key = f"{CONFIG_NAMESPACE}:appLimits"
    if value is None or value is UNREADABLE:
        return AppLimits()
    if not isinstance(value, dict):
        problems.append(f"{key}: must be a mapping like the spec's app_limits, got {type(value).__name__}")
        return AppLimits()
    try:
        limits = AppLimits.model_validate(value)
        if pairs:  # the overrides name apps of the pairs (unknown when the pairs are bad)
            limits.check_apps((app for pair in pairs for app in pair.apps), key)
    except ValidationError as err:
        problems.extend(problems_of(err, key))
        return AppLimits()
    except PydanticCustomError as err:
        problems.append(err.message())
        return AppLimits()
    return limits


def _check_auth(value: Any, problems: list[str]) -> AuthSettings:
    if value is UNREADABLE:
        return AuthSettings()
    try:
        return parse_auth(value)
    except ConfigError as err:
        problems.extend(err.problems)
        return AuthSettings()


def _check_reader(value: Any, problems: list[str]) -> DeployUser | None:
    """`jsb:previewUser`: the read-only identity rendered into the JetStream account (what a preview
    job connects as): `{nkey: U...}` or `{user: NAME, password_env: VAR}`; nothing secret."""
    key = f"{CONFIG_NAMESPACE}:previewUser"
    if value is None or value is UNREADABLE:
        return None
    reader = _check_deploy_user(value, problems, key, "the read-only identity a preview connects as")
    if reader is not None and reader.user and not reader.password_env:
        problems.append(f"{key}.password_env: required with user (the variable the server reads)")
        return None
    return reader


def _check_capacity(value: Any, problems: list[str]) -> Capacity | None:
    key = f"{CONFIG_NAMESPACE}:capacity"
    if value is None or value is UNREADABLE:
        return None
    try:
        return Capacity.model_validate(value)
    except ValidationError as err:
        problems.extend(problems_of(err, key))
        return None


def parse_stack_settings(
    pairs: Any,
    servers: Any,
    app_servers: Any = None,
    jetstream_account: Any = None,
    deploy_user: Any = None,
    auth: Any = None,
    app_limits: Any = None,
    preview_user: Any = None,
    capacity: Any = None,
) -> StackSettings:
    """Validate the decoded stack config together; raises ConfigError listing every problem."""
    problems: list[str] = []
    checked_servers = check_servers(servers, problems)
    checked_app_servers = (
        check_servers(app_servers, problems, f"{CONFIG_NAMESPACE}:appServers")
        if app_servers is not None
        else ()
    )
    account = _check_jetstream_account(jetstream_account, problems)
    deploy = _check_deploy_user(deploy_user, problems)
    checked_auth = _check_auth(auth, problems)
    reader = _check_reader(preview_user, problems)
    if reader is not None and deploy is not None and deploy.is_identity(user=reader.user, nkey=reader.nkey):
        problems.append(
            f"{CONFIG_NAMESPACE}:previewUser: must be another user than {CONFIG_NAMESPACE}:deployUser "
            "(one name, one set of rights)"
        )
    checked_pairs = _check_pairs(pairs, problems)
    limits = _check_app_limits(app_limits, checked_pairs, problems)
    checked_capacity = _check_capacity(capacity, problems)
    problems.extend(f"{CONFIG_NAMESPACE}:{p}" for p in capacity_problems(checked_pairs, checked_capacity))
    if problems:
        raise ConfigError(problems)
    return StackSettings(
        pairs=checked_pairs,
        servers=checked_servers,
        app_servers=checked_app_servers,
        jetstream_account=account,
        deploy=deploy,
        auth=checked_auth,
        app_limits=limits,
        reader=reader,
        capacity=checked_capacity,
    )


def _default_config() -> ConfigSource:
    import pulumi  # the program's config; only the deploy side has Pulumi installed

    return pulumi.Config(CONFIG_NAMESPACE)


def read_stack_settings(config: ConfigSource | None = None) -> StackSettings:
    """Read every `jsb:` key the program builds from (the stack config by default, or a StackFile) and
    validate them together (no resources touched)."""
    config = config or _default_config()
    problems: list[str] = []
    pairs = _json_value(f"{CONFIG_NAMESPACE}:pairs", config.get("pairs"), problems)
    servers = _servers_value(config.get("servers"), problems)
    raw_app_servers = config.get("appServers")
    app_servers = _servers_value(raw_app_servers, problems) if raw_app_servers is not None else None
    deploy_user = _json_value(f"{CONFIG_NAMESPACE}:deployUser", config.get("deployUser"), problems)
    auth = _json_value(AUTH_KEY, config.get("auth"), problems, expected="an object")
    app_limits = _mapping_value(f"{CONFIG_NAMESPACE}:appLimits", config.get("appLimits"), problems)
    capacity = _mapping_value(f"{CONFIG_NAMESPACE}:capacity", config.get("capacity"), problems)
    preview_user = _json_value(f"{CONFIG_NAMESPACE}:previewUser", config.get("previewUser"), problems)
    try:
        settings = parse_stack_settings(
            pairs,
            servers,
            app_servers,
            config.get("jetstreamAccount"),
            deploy_user,
            auth,
            app_limits,
            preview_user,
            capacity,
        )
    except ConfigError as err:
        raise ConfigError(problems + err.problems) from None
    if problems:  # an unreadable value that parse_stack_settings skipped
        raise ConfigError(problems)
    return settings


def read_servers(config: ConfigSource | None = None) -> tuple[str, ...]:
    """`jsb:servers` alone, checked (the default connection's servers)."""
    config = config or _default_config()
    problems: list[str] = []
    servers = check_servers(_servers_value(config.get("servers"), problems), problems)
    if problems:
        raise ConfigError(problems)
    return servers


class StackFile:
    """The plain `jsb:` values of a Pulumi stack file, as `pulumi.Config("jsb")` hands them to the program:
    a structured value as JSON text, a scalar as its text (`true`, `60`). A secret (`secure:`) value is
    refused when asked for: the settings that shape documents are plain, so rendering needs no
    passphrase; the secrets (`jsb:admin`, ...) are never asked for. The file is read as strict YAML.

    Project-level defaults (`config:` in Pulumi.yaml) and values from Pulumi ESC environments are not
    read: set the document-shaping keys in the stack file itself.
    """

    def __init__(self, path: str | Path, values: dict[str, Any]) -> None:
        self.path = str(path)
        self.values = values

    @classmethod
    def load(cls, path: str | Path) -> StackFile:
        try:
            document = strict_yaml.load_file(path)
        except OSError as err:
            raise ConfigError([f"{path}: cannot read the stack file: {err.strerror or err}"]) from None
        except strict_yaml.YamlProblem as err:
            raise ConfigError([str(err)]) from None
        if document is None:
            document = {}
        config = document.get("config", {}) if isinstance(document, dict) else None
        if not isinstance(config, dict):
            raise ConfigError([f"{path}: a Pulumi stack file is a mapping with a `config:` mapping"])
        project_keys = _project_config_keys(Path(path))
        if project_keys:
            raise ConfigError(
                [
                    f"{key}: set in the project file {project} for every stack; render --stack reads the "
                    "stack file alone, so move it into the stack file"
                    for project, key in project_keys
                ]
            )
        return cls(path, config)

    def get(self, key: str) -> str | None:
        name = f"{CONFIG_NAMESPACE}:{key}"
        value = self.values.get(name)
        if value is None:
            return None
        if _holds_secret(value):
            raise ConfigError(
                [
                    f"{name}: is a secret (`secure:`) in {self.path}; it shapes the rendered documents, so "
                    "keep it a plain value (render reads no secret and needs no passphrase)"
                ]
            )
        if isinstance(value, dict | list):
            return json.dumps(value)
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)


def _project_config_keys(stack_file: Path) -> list[tuple[Path, str]]:
    """`jsb:` keys the nearest Pulumi.yaml above the stack file sets for every stack (project-level
    config): the program would see them and render would not."""
    for directory in stack_file.resolve().parents:
        project = directory / "Pulumi.yaml"
        if project.is_file():
            try:
                document = strict_yaml.load_file(project)
            except (OSError, strict_yaml.YamlProblem):
                return []
            config = document.get("config") if isinstance(document, dict) else None
            if not isinstance(config, dict):
                return []
            prefix = f"{CONFIG_NAMESPACE}:"
            return [
                (project, str(key))
                for key, entry in config.items()
                if str(key).startswith(prefix)
                # a declaration (type, description) sets nothing; a value or a default does
                and not (isinstance(entry, dict) and not {"value", "default"} & set(entry))
            ]
    return []


def _holds_secret(value: Any) -> bool:
    if isinstance(value, dict):
        return set(value) == {"secure"} or any(_holds_secret(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_secret(v) for v in value)
    return False
