"""Config mode on several hosts: put the rendered accounts include on every server and reload each, one
host at a time, checking that each server applied it before moving on. It is the `jsb:auth.reload`
command of a multi-host deployment: `pulumi up` writes the include to `accounts_file` (on the machine
that runs the deploy) and runs this, which ships that file.

    python -m jsb_infra.ops.ship_include --include /srv/jsb/accounts.conf --hosts /srv/jsb/hosts.json

`hosts.json` lists the servers in the order to reload them:

    [{"name": "nats-1",
      "copy": [["scp", "{include}", "nats-1:/etc/nats/accounts.conf.new"],
               ["ssh", "nats-1", "mv", "-f", "/etc/nats/accounts.conf.new", "/etc/nats/accounts.conf"]],
      "reload": ["ssh", "nats-1", "nats-server", "--signal", "reload=/var/run/nats/nats-server.pid"],
      "varz": "http://nats-1:8222/varz"},
     ...]

- `copy`: commands (argv lists, no shell; `{include}` is the include's path here) that put the file
  where that server's config includes it, replacing it in one step (write beside it, then `mv`), so a
  server never reads half of it. Or `path`: a path this machine writes directly (the same host, or a
  mount of the server's config directory); written atomically.
- `reload`: the command that makes the server re-read its config (`nats-server --signal reload=...`,
  `systemctl reload nats-server`, or a restart when the change adds an app account: a reload does not
  make a new account's imports work, a restart does).
- `varz`: the server's monitoring endpoint. nats-server reports `config_load_time` there; a reload it
  applied moves it forward, a config it refuses leaves it (and the running config) as it was, and
  `nats-server --signal reload` exits 0 either way. So the next host is touched only once this one
  shows a new `config_load_time`; otherwise this exits 1 naming the host, the hosts already done and
  the hosts left untouched (their file and config unchanged), and `pulumi up` fails with that message.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsb_infra.commands import CommandFailed, run_command
from jsb_infra.config_load import NotApplied, config_load_time, confirm_reload
from jsb_infra.files import replace_file

COMMAND_TIMEOUT = 60.0
APPLY_TIMEOUT = 30.0


class ShipProblem(RuntimeError):
    """One host could not be brought to the new include; the message says which and where things stand."""


@dataclass(frozen=True)
class Host:
    name: str
    reload: tuple[str, ...]
    varz: str
    copy: tuple[tuple[str, ...], ...] = ()
    path: str | None = None


def _argv(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, list) and value and all(isinstance(a, str) and a for a in value):
        return tuple(value)
    return None


def parse_hosts(value: Any, source: str = "hosts") -> list[Host]:
    """Validate the hosts list; raises ValueError listing every problem as `hosts[i].field: rule`."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"{source}: must be a non-empty list of hosts")
    problems: list[str] = []
    hosts: list[Host] = []
    for i, raw in enumerate(value):
        where = f"{source}[{i}]"
        if not isinstance(raw, dict):
            problems.append(f"{where}: must be an object with name, copy or path, reload, varz")
            continue
        unknown = sorted(set(raw) - {"name", "copy", "path", "reload", "varz"})
        if unknown:
            problems.append(f"{where}: unknown field(s) {', '.join(unknown)}")
        name = raw.get("name")
        if not (isinstance(name, str) and name):
            problems.append(f"{where}.name: required, a non-empty string")
        reload = _argv(raw.get("reload"))
        if reload is None:
            problems.append(f"{where}.reload: required, a non-empty list of arguments (no shell)")
        varz = raw.get("varz")
        if not (isinstance(varz, str) and varz.startswith(("http://", "https://"))):
            problems.append(f"{where}.varz: required, the server's monitoring URL (http://host:8222/varz)")
        copy_raw, path = raw.get("copy"), raw.get("path")
        if (copy_raw is None) == (path is None):
            problems.append(f"{where}: give exactly one of copy (commands) or path (a file written here)")
        copies: list[tuple[str, ...]] = []
        if copy_raw is not None:
            parsed = [_argv(c) for c in copy_raw] if isinstance(copy_raw, list) and copy_raw else [None]
            if any(c is None for c in parsed):
                problems.append(
                    f"{where}.copy: must be a non-empty list of commands, each a list of arguments"
                )
            copies = [c for c in parsed if c is not None]
        if path is not None and not (isinstance(path, str) and path):
            problems.append(f"{where}.path: must be a file path")
        if not problems:
            hosts.append(Host(str(name), reload or (), str(varz), tuple(copies), path))
    names = [h.name for h in hosts]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"{source}: host name(s) listed twice: {', '.join(duplicates)}")
    if problems:
        raise ValueError("\n".join(problems))
    return hosts


def _run(host: Host, what: str, argv: tuple[str, ...], include: Path) -> None:
    try:
        run_command([a.replace("{include}", str(include)) for a in argv], COMMAND_TIMEOUT)
    except CommandFailed as err:
        raise ShipProblem(f"{host.name}: the {what} {err}") from None


def _place(host: Host, include: Path) -> None:
    if host.path is not None:
        target = Path(host.path)
        try:
            replace_file(target, include.read_bytes())  # the server never reads half of it
        except OSError as err:
            raise ShipProblem(f"{host.name}: cannot write {target}: {err.strerror or err}") from None
        return
    for argv in host.copy:
        _run(host, "copy", argv, include)


def ship(include: Path, hosts: list[Host], apply_timeout: float = APPLY_TIMEOUT) -> list[str]:
    """Each host in order: place the include, reload, wait for a new `config_load_time`. Returns one
    line per host; raises ShipProblem at the first host that does not get there."""
    done: list[str] = []
    for index, host in enumerate(hosts):
        untouched = [h.name for h in hosts[index + 1 :]]
        try:
            before = config_load_time(host.varz)
            if before is None:
                raise ShipProblem(f"{host.name}: its monitoring endpoint {host.varz} does not answer")
            _place(host, include)
            _run(host, "reload", host.reload, include)
            try:
                now = confirm_reload(host.varz, before, apply_timeout)
            except NotApplied as err:
                kept = "" if err.down else "; its file is the new one, so fix the cause before it restarts"
                raise ShipProblem(f"{host.name}: {err}{kept}") from None
        except ShipProblem as err:
            applied = ", ".join(h.name for h in hosts[:index]) or "none"
            raise ShipProblem(
                f"{err}; applied on: {applied}; not touched: {', '.join(untouched) or 'none'}"
            ) from None
        done.append(f"{host.name}: applied (config_load_time {now})")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jsb_infra.ops.ship_include",
        description="Put the accounts include on every server host and reload them one at a time.",
    )
    parser.add_argument(
        "--include", required=True, help="the include `pulumi up` wrote (jsb:auth.accounts_file)"
    )
    parser.add_argument("--hosts", required=True, help="JSON file: the hosts, in the order to reload them")
    parser.add_argument("--apply-timeout", type=float, default=APPLY_TIMEOUT, help="seconds per host")
    args = parser.parse_args(argv)
    try:
        hosts = parse_hosts(json.loads(Path(args.hosts).read_text()), source=args.hosts)
        include = Path(args.include)
        if not include.is_file():
            raise ValueError(f"--include {include}: no such file")
        for line in ship(include, hosts, args.apply_timeout):
            print(line)
    except (OSError, ValueError, ShipProblem) as err:
        print(f"ship_include: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
