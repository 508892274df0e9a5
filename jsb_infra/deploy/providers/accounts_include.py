"""Config mode: the `AccountsInclude` dynamic resource writes the rendered accounts include where the
servers read it, and runs the reload hook after it changed, so `pulumi up` next to the servers applies
the app accounts and users at once (nats-server re-reads its config on SIGHUP or `--signal reload`,
without dropping clients).

Inputs: `path`, `text` (the whole `accounts { ... }` block), `reload` ({command: [argv...]}, with an
optional `command_timeout` in seconds (default 30), or
{signal: HUP, pid_file: PATH}, optionally with `varz` and `apply_timeout`). The file is replaced
atomically (a reloading server never reads half of it). `read` notices a file edited or removed behind
Pulumi's back, so the next `up` writes it again.

A hook that exits 0 does not mean the server took the file: `nats-server --signal reload` (like a
SIGHUP) exits 0 on a config the server refuses, which keeps running the previous one. With `varz`
(the server's monitoring URL) the update counts only once the server's `config_load_time` moves on;
otherwise it fails naming the cause, and the previous file is put back, so the file matches what the
server runs (a restart would otherwise refuse to start on it) and the next `up` tries again. Without
`varz`, `reloaded` says the reload is unconfirmed.
Delete leaves the file: the servers' config includes it and the deploy user may live in it; remove
the `include` first, then the file.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

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

from jsb_infra.commands import CommandFailed, run_command
from jsb_infra.config_load import NotApplied, confirm_reload, jetstream_store, load_time, read_varz
from jsb_infra.core.auth import RELOAD_APPLY_TIMEOUT, RELOAD_COMMAND_TIMEOUT
from jsb_infra.core.capacity import JetStreamLimits
from jsb_infra.deploy.providers.base import JsbProvider, ProviderError, is_unknown, plan_diff
from jsb_infra.deploy.providers.documents import digest, write_files
from jsb_infra.files import replace_file


def run_reload(reload: dict[str, Any]) -> str:
    """Run the hook; returns what was done. Raises ProviderError when it fails."""
    command = reload.get("command")
    if command:
        try:
            run_command(command, float(reload.get("command_timeout") or RELOAD_COMMAND_TIMEOUT))
        except CommandFailed as err:
            hint = " (jsb:auth.reload.command_timeout gives it longer)" if err.timed_out else ""
            raise ProviderError(f"reload {err}{hint}") from None
        return f"ran {command[0]}"
    pid_file, name = reload.get("pid_file"), reload.get("signal") or "HUP"
    try:
        pid = int(Path(str(pid_file)).read_text().strip())
    except (OSError, ValueError) as err:
        raise ProviderError(f"reload: cannot read a pid from {pid_file!r}: {err}") from None
    try:
        os.kill(pid, getattr(signal, f"SIG{name}"))
    except OSError as err:
        raise ProviderError(f"reload: cannot signal {name} to pid {pid} (from {pid_file}): {err}") from None
    return f"sent SIG{name} to {pid}"


class AccountsIncludeProvider(JsbProvider):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        path, text = news.get("path"), news.get("text")
        if not is_unknown(path) and not (isinstance(path, str) and path):
            failures.append(CheckFailure("path", "path: must be the file the servers include"))
        if not is_unknown(text) and not isinstance(text, str):
            failures.append(CheckFailure("text", "text: must be the rendered accounts block"))
        return CheckResult(dict(news), failures)

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        inputs = {key: (olds.get(key), news.get(key)) for key in ("path", "text", "reload")}
        if not is_unknown(news.get("text")):
            inputs["written"] = (olds.get("written"), digest(news["text"]))
        return plan_diff({}, {}, immutable={}, inputs=inputs).result()

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(str(props["path"]), self._apply(props))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        target = Path(str(props.get("path") or id_))
        written = digest(target.read_text()) if target.is_file() else None
        return ReadResult(id_, {**props, "written": written})

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(self._apply(news))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        """The file stays: see the module docstring."""

    @staticmethod
    def _apply(props: dict[str, Any]) -> dict[str, Any]:
        reloaded = apply_and_reload(
            str(props["path"]), props["text"], props.get("reload"), props.get("capacity")
        )
        return {**props, "written": digest(props["text"]), "reloaded": reloaded}


def apply_and_reload(
    path: str, text: str, reload: dict[str, Any] | None, capacity: dict[str, int] | None = None
) -> str:
    """Write the include and run the hook; returns what was done. With `varz`, first refuse a declared
    `capacity` ({file, memory} bytes) above the server's JetStream store, then wait until the server
    shows it applied a new config; when it does not, put the previous file back and raise ProviderError."""
    if not reload:
        write_files({path: text})
        return "no reload hook"
    varz = reload.get("varz")
    if not varz:
        write_files({path: text})
        return run_reload(reload) + " (not confirmed: no varz)"
    answer = read_varz(varz)
    before = load_time(answer)
    if answer is None or before is None:
        raise ProviderError(
            f"reload.varz: the server's monitoring endpoint {varz} does not answer; nothing written"
        )
    if capacity:
        # Pulumi passes numbers as floats.
        limits = JetStreamLimits(
            max_file=int(capacity.get("file") or -1), max_mem=int(capacity.get("memory") or -1)
        )
        for problem in limits.beyond_store(str(answer.get("server_name") or varz), *jetstream_store(answer)):
            raise ProviderError(
                f"{problem}: on reload the server would keep the previous limits (and say it reloaded), "
                "and its next start would exit. Declare at most the server's store (jsb:capacity); "
                "nothing written"
            )
    target = Path(path)
    previous = target.read_bytes() if target.is_file() else None
    write_files({path: text})
    try:
        done = run_reload(reload)
    except ProviderError:
        _put_back(target, previous)
        raise
    timeout = float(reload.get("apply_timeout") or RELOAD_APPLY_TIMEOUT)
    try:
        applied = confirm_reload(varz, before, timeout)
    except NotApplied as err:
        back = _put_back(target, previous)
        raise ProviderError(f"reload: {err}; {back}" + (", start it again" if err.down else "")) from None
    return f"{done}; applied (config_load_time {applied})"


def _put_back(target: Path, previous: bytes | None) -> str:
    """Restore the file the server runs on; says what the file now is."""
    if previous is None:
        return f"{target} keeps the new text (there was no previous file)"
    replace_file(target, previous)
    return f"{target} is the previous include again"


class AccountsInclude(Resource, module="jsb", name="AccountsInclude"):
    """The accounts include file. Outputs: written (sha256 of the text), reloaded (what the hook did)."""

    written: pulumi.Output[str]
    reloaded: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        path: str,
        text: pulumi.Input[str],
        reload: dict[str, Any] | None = None,
        capacity: dict[str, int] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props: dict[str, Any] = {
            "path": path,
            "text": text,
            "reload": reload,
            "written": None,
            "reloaded": None,
        }
        if capacity:  # only when declared: a stack without one keeps its inputs as they were
            props["capacity"] = capacity
        super().__init__(AccountsIncludeProvider(), resource_name, props, opts)
