"""The `jsb-infra` command: render the documents of a config, print its schema, run the doctor.

`render` derives everything in memory first and writes only when the whole config is valid, so a bad
config never leaves half a directory behind. An invalid config exits with status 2 and one
`field: rule` line per problem on stderr.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsb_infra import names
from jsb_infra.accounts import DeployUser
from jsb_infra.documents import render_documents, render_json
from jsb_infra.spec import Config, ConfigError, config_json_schema, load_config

EXIT_INVALID = 2
_USER_PUBLIC_KEY = re.compile(r"^U[A-Z2-7]{55}$")


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


def parse_deploy(nkey: str | None, user: str | None) -> DeployUser | None:
    """The deploy user of the JetStream account from `--deploy-nkey` / `--deploy-user`."""
    if nkey and user:
        raise ConfigError(["--deploy-nkey and --deploy-user: give one of them"])
    if nkey:
        if not _USER_PUBLIC_KEY.match(nkey):
            raise ConfigError([f"--deploy-nkey: {nkey!r} is not an NKey user public key (U + 55 characters)"])
        return DeployUser(nkey=nkey)
    if user:
        return DeployUser(user=user, password_env=DEPLOY_PASSWORD_ENV)
    return None


DEPLOY_PASSWORD_ENV = "JSB_DEPLOY_PASSWORD"


def cmd_render(args: argparse.Namespace) -> int:
    try:
        config = _load(args.config)
        files = render_documents(
            config.pairs,
            parse_nkeys(args.nkey, config),
            deploy=parse_deploy(args.deploy_nkey, args.deploy_user),
            jetstream_account=args.jetstream_account,
            servers=args.server or None,
        )
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
        help="the NKey public key of APP's user in accounts.conf (repeatable); without it the app's "
        "account has no user yet",
    )
    render.add_argument(
        "--deploy-nkey", metavar="UPUBKEY", help="the deploy user of the JetStream account, by NKey"
    )
    render.add_argument(
        "--deploy-user",
        metavar="NAME",
        help=f"the deploy user of the JetStream account, by name; the server reads its password from "
        f"the environment variable {DEPLOY_PASSWORD_ENV}",
    )
    render.add_argument(
        "--jetstream-account",
        default=names.DEFAULT_JETSTREAM_ACCOUNT,
        help="the account holding the streams (keep an existing account's name to keep its streams)",
    )
    render.add_argument(
        "--server", action="append", default=[], metavar="URL", help="also render each app's bridge"
    )
    render.set_defaults(handler=cmd_render)

    schema = subparsers.add_parser("schema", help="print the config's JSON Schema")
    schema.set_defaults(handler=cmd_schema)

    _add_doctor(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
