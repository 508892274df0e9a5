"""The `jsb-infra` command: render the documents of a config, print its schema, run the doctor.

`render` derives everything in memory first and writes only when the whole config is valid, so a bad
config never leaves half a directory behind. An invalid config exits with status 2 and one
`field: rule` line per problem on stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsb_infra.permissions import app_permissions, render_claims_json, render_conf
from jsb_infra.spec import Config, ConfigError, config_json_schema, load_config
from jsb_infra.topology import consumer_configs, stream_config

EXIT_INVALID = 2
_USER_PUBLIC_KEY = re.compile(r"^U[A-Z2-7]{55}$")


def render_json(document: Any) -> str:
    """Stable JSON text: the same document always gives the same bytes."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def render_documents(config: Config, nkeys: dict[str, str] | None = None) -> dict[Path, str]:
    """Every file `render` writes, as relative path -> text, in a fixed order. Pure."""
    nkeys = nkeys or {}
    files: dict[Path, str] = {}
    for pair in config.pairs:
        root = Path(pair.stream)
        files[root / "stream.json"] = render_json(stream_config(pair))
        for durable, consumer in consumer_configs(pair).items():
            files[root / "consumers" / f"{durable}.json"] = render_json(consumer)
        for app in pair.apps:
            perms = app_permissions(pair, app)
            files[root / "permissions" / f"{app}.json"] = render_claims_json(perms)
            files[root / "permissions" / f"{app}.conf"] = render_conf(perms, nkey=nkeys.get(app))
    return files


def parse_nkeys(given: list[str], config: Config) -> dict[str, str]:
    """`APP=UPUBKEY` options -> {app: public key}; raises ConfigError naming each bad option."""
    apps = {app for pair in config.pairs for app in pair.apps}
    keys: dict[str, str] = {}
    problems: list[str] = []
    for item in given:
        app, sep, key = item.partition("=")
        if not sep or not app:
            problems.append(f"--nkey {item!r}: write APP=UPUBKEY")
        elif app not in apps:
            known = ", ".join(sorted(apps))
            problems.append(f"--nkey {item!r}: {app!r} is not an app of this config ({known})")
        elif not _USER_PUBLIC_KEY.match(key):
            problems.append(f"--nkey {item!r}: {key!r} is not an NKey user public key (U + 55 characters)")
        elif app in keys and keys[app] != key:
            problems.append(f"--nkey {item!r}: {app!r} already has the key {keys[app]}")
        else:
            keys[app] = key
    if problems:
        raise ConfigError(problems)
    return keys


def _load(path: str) -> Config:
    """load_config, with a missing or unreadable file reported like any other config problem."""
    try:
        return load_config(path)
    except OSError as err:
        raise ConfigError([f"{path}: cannot read the config file: {err.strerror or err}"]) from None


def _report_invalid(source: str, err: ConfigError) -> int:
    print(f"invalid config: {source}", file=sys.stderr)
    for problem in err.problems:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_INVALID


def cmd_render(args: argparse.Namespace) -> int:
    try:
        config = _load(args.config)
        files = render_documents(config, parse_nkeys(args.nkey, config))
    except ConfigError as err:
        return _report_invalid(args.config, err)
    out = Path(args.out)
    for relative, text in files.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(path)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(render_json(config_json_schema()))
    return 0


def _add_doctor(subparsers: Any) -> None:
    """Register `doctor` from jsb_infra.runtime.doctor; if that module cannot load, `render` and `schema`
    still work and `doctor` says why it is unavailable."""
    try:
        from jsb_infra.runtime import doctor
    except Exception as err:  # a broken or absent doctor must not take the other commands down
        reason = f"{type(err).__name__}: {err}"
        parser = subparsers.add_parser("doctor", help="check a running bridge (unavailable)")
        parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

        def unavailable(args: argparse.Namespace) -> int:
            print(f"doctor is unavailable: {reason}", file=sys.stderr)
            return EXIT_INVALID

        parser.set_defaults(handler=unavailable)
        return
    parser = subparsers.add_parser("doctor", help="check that an app's bridge works as deployed")
    doctor.add_arguments(parser)
    parser.set_defaults(handler=doctor.run)


def _add_reliability(subparsers: Any) -> None:
    """`relay` (outbox relay process), `dlq` and `status` (operator commands, admin credentials)."""
    from jsb_infra import dlq, status
    from jsb_infra.runtime import relay

    for name, module, help_text in (
        ("relay", relay, "publish an app's outbox rows (needs the db extra)"),
        ("dlq", dlq, "list, show, replay or purge an app's dead letters (admin)"),
        ("status", status, "pending, in flight, redelivered and DLQ per app (admin)"),
    ):
        parser = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(parser)
        parser.set_defaults(handler=module.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jsb-infra", description="Typed JetStream app-pair topology and least-privilege permissions."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)

    render = subparsers.add_parser(
        "render", help="write the stream, consumer and permission documents of a config"
    )
    render.add_argument("config", help="config YAML (`pairs: [...]`)")
    render.add_argument("--out", required=True, help="output directory")
    render.add_argument(
        "--nkey",
        action="append",
        default=[],
        metavar="APP=UPUBKEY",
        help="authenticate APP's .conf user by this NKey public key (repeatable)",
    )
    render.set_defaults(handler=cmd_render)

    schema = subparsers.add_parser("schema", help="print the config's JSON Schema")
    schema.set_defaults(handler=cmd_schema)

    _add_doctor(subparsers)
    _add_reliability(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
