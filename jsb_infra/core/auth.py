"""The `jsb:auth` stack setting: how app identities reach the servers. Pure: parse and validate.

- `mode: config` (default): the rendered accounts include (`accounts.conf`) is written to
  `accounts_file` (besides `jsb:outputDir`, where the documents go), and `reload` runs after it
  changed: `{command: [argv...]}` or `{signal: HUP, pid_file: /path/nats-server.pid}`, with `varz`
  (the server's monitoring URL) to confirm the server applied it.
- `mode: jwt`: the operator's JetStream account (`jetstream_account: A...`) is re-issued with the
  layout's exports, keeping everything else the resolver holds for it (`signing_keys`: the account's
  keys, used only when the resolver holds no JWT for it yet); every app gets an account and a user.
  The secrets are separate keys, `jsb:operatorSigningKey` and `jsb:systemCreds`, read only by the
  providers. `rotate: {app: token}` re-issues an app's user whenever its token changes.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field
from typing import Any, Literal

from jsb_infra.core.spec import ConfigError

KEY = "jsb:auth"
MODES = ("config", "jwt")
ACCOUNT_PUBLIC_KEY = re.compile(r"^A[A-Z2-7]{55}$")
CONFIG_FIELDS = {"mode", "accounts_file", "reload"}
JWT_FIELDS = {"mode", "jetstream_account", "signing_keys", "adopt", "rotate"}
RELOAD_CHECK_FIELDS = {"varz", "apply_timeout"}
RELOAD_FIELDS = {"command", "command_timeout", "signal", "pid_file"} | RELOAD_CHECK_FIELDS


RELOAD_APPLY_TIMEOUT = 30.0
RELOAD_COMMAND_TIMEOUT = 30.0  # the hook command's own run time, unless `command_timeout` says


@dataclass(frozen=True)
class Reload:
    """What makes the servers re-read the accounts include: a command, or a signal to a pid file.
    With `varz` (the server's monitoring URL) the reload counts only once the server shows it applied
    the new config, within `apply_timeout` seconds. A command may run for `command_timeout` seconds
    (a multi-host rollout needs its copies, reloads and checks of every host to fit)."""

    command: tuple[str, ...] = ()
    command_timeout: float | None = None
    signal: str | None = None
    pid_file: str | None = None
    varz: str | None = None
    apply_timeout: float = RELOAD_APPLY_TIMEOUT

    def as_input(self) -> dict[str, Any]:
        how: dict[str, Any] = (
            {"command": list(self.command)}
            if self.command
            else {"signal": self.signal, "pid_file": self.pid_file}
        )
        if self.command_timeout is not None:
            how["command_timeout"] = self.command_timeout
        if self.varz:
            how.update(varz=self.varz, apply_timeout=self.apply_timeout)
        return how


@dataclass(frozen=True)
class AuthSettings:
    mode: Literal["config", "jwt"] = "config"
    accounts_file: str | None = None
    reload: Reload | None = None
    jetstream_account: str | None = None
    signing_keys: tuple[str, ...] = ()
    adopt: bool = False
    rotate: dict[str, str] = field(default_factory=dict)


def _reload_check(value: dict[str, Any], where: str, problems: list[str]) -> dict[str, Any]:
    """The optional `varz` and `apply_timeout` of a reload hook (how `up` confirms the server took it)."""
    varz, timeout = value.get("varz"), value.get("apply_timeout")
    if varz is None:
        if timeout is not None:
            problems.append(f"{where}.apply_timeout: only with varz (the time the server has to apply it)")
        return {}
    if not (isinstance(varz, str) and varz.startswith(("http://", "https://"))):
        problems.append(f"{where}.varz: must be the server's monitoring URL (http://127.0.0.1:8222/varz)")
        return {}
    if timeout is None:
        return {"varz": varz}
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 3600:
        problems.append(f"{where}.apply_timeout: must be a number of seconds in (0, 3600], got {timeout!r}")
        return {}
    return {"varz": varz, "apply_timeout": float(timeout)}


def _reload(value: Any, problems: list[str]) -> Reload | None:
    where = f"{KEY}.reload"
    if value is None:
        return None
    if not isinstance(value, dict) or not set(value) - RELOAD_CHECK_FIELDS or set(value) - RELOAD_FIELDS:
        problems.append(
            f"{where}: must be {{command: [argv...], command_timeout: SECONDS}} or "
            "{signal: HUP, pid_file: PATH}, optionally with varz and apply_timeout"
        )
        return None
    count = len(problems)
    check = _reload_check(value, where, problems)
    if len(problems) > count:
        return None
    value = {key: item for key, item in value.items() if key not in RELOAD_CHECK_FIELDS}
    if "command" in value:
        command = value["command"]
        if set(value) - {"command_timeout"} != {"command"}:
            problems.append(f"{where}: give either command or signal/pid_file, not both")
            return None
        if not isinstance(command, list) or not command or not all(isinstance(a, str) and a for a in command):
            problems.append(f"{where}.command: must be a non-empty list of arguments (no shell)")
            return None
        limit = value.get("command_timeout")
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int | float) or not 0 < limit <= 3600
        ):
            problems.append(
                f"{where}.command_timeout: must be a number of seconds in (0, 3600], got {limit!r}"
            )
            return None
        return Reload(
            command=tuple(command), command_timeout=None if limit is None else float(limit), **check
        )
    if "command_timeout" in value:
        problems.append(f"{where}.command_timeout: only with command (how long the command may run)")
        return None
    name, pid_file = value.get("signal", "HUP"), value.get("pid_file")
    if not isinstance(name, str) or not hasattr(signal, f"SIG{name.upper().removeprefix('SIG')}"):
        problems.append(f"{where}.signal: must be a signal name such as HUP, got {name!r}")
        return None
    if not isinstance(pid_file, str) or not pid_file:
        problems.append(
            f"{where}.pid_file: required with signal: the server's pid file (its `pid_file` option)"
        )
        return None
    return Reload(signal=name.upper().removeprefix("SIG"), pid_file=pid_file, **check)


def parse_auth(value: Any) -> AuthSettings:
    """Validate `jsb:auth`; raises ConfigError listing every problem as `jsb:auth.<field>: rule`."""
    if value is None:
        return AuthSettings()
    if not isinstance(value, dict):
        raise ConfigError([f"{KEY}: must be an object with mode: config or mode: jwt"])
    mode = value.get("mode", "config")
    if mode not in MODES:
        raise ConfigError([f"{KEY}.mode: must be one of {', '.join(MODES)}, got {mode!r}"])
    allowed = CONFIG_FIELDS if mode == "config" else JWT_FIELDS
    unknown = sorted(set(value) - allowed)
    problems: list[str] = []
    if unknown:
        problems.append(
            f"{KEY}: {', '.join(unknown)} not allowed in mode {mode}; allowed: {', '.join(sorted(allowed))}"
        )
    if mode == "config":
        accounts_file = value.get("accounts_file")
        if accounts_file is not None and not (isinstance(accounts_file, str) and accounts_file.strip()):
            problems.append(f"{KEY}.accounts_file: must be a file path")
        reload = _reload(value.get("reload"), problems)
        if problems:
            raise ConfigError(problems)
        return AuthSettings(mode="config", accounts_file=accounts_file or None, reload=reload)
    account = value.get("jetstream_account")
    if not (isinstance(account, str) and ACCOUNT_PUBLIC_KEY.match(account)):
        problems.append(
            f"{KEY}.jetstream_account: required in mode jwt: the JetStream account's public key "
            "(A + 55 characters)"
        )
    keys = value.get("signing_keys") or []
    if not isinstance(keys, list) or not all(
        isinstance(k, str) and ACCOUNT_PUBLIC_KEY.match(k) for k in keys
    ):
        problems.append(f"{KEY}.signing_keys: must be a list of account public keys (A...)")
        keys = []
    adopt = value.get("adopt", False)
    if not isinstance(adopt, bool):
        problems.append(f"{KEY}.adopt: must be true or false")
    rotate = value.get("rotate") or {}
    if not isinstance(rotate, dict) or not all(isinstance(v, str | int) for v in rotate.values()):
        problems.append(
            f"{KEY}.rotate: must map app names to a token (change it to re-issue that app's user)"
        )
        rotate = {}
    if problems:
        raise ConfigError(problems)
    return AuthSettings(
        mode="jwt",
        jetstream_account=account,
        signing_keys=tuple(keys),
        adopt=bool(adopt),
        rotate={str(k): str(v) for k, v in rotate.items()},
    )
