"""The `jsb-infra` command: render the documents of a config, print its schema, run the doctor.

`render` derives everything in memory first and swaps the whole output directory into place only when
every file is written (jsb_infra.ops.rendered_tree), so a bad config never leaves half a directory behind
and files of removed pairs are pruned. `render --check` compares instead of writing (for CI). An
invalid config exits with status 2 and one `field: rule` line per problem on stderr.

Nothing here imports Pulumi: `render`, `schema`, `export` and `doctor` work in a runtime-only install
(`migrate-state` imports the deploy side's providers only when it runs).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsb_infra.core import names, strict_yaml
from jsb_infra.core.accounts import DeployUser
from jsb_infra.core.capacity import capacity_report
from jsb_infra.core.documents import render_documents, render_json
from jsb_infra.core.spec import (
    Config,
    ConfigError,
    config_json_schema,
    load_config,
    parse_config,
)
from jsb_infra.ops import export as export_command
from jsb_infra.ops import rendered_tree

EXIT_INVALID = 2
EXIT_DIFFERS = 1
STACK_PAIRS_KEY = "jsb:pairs"
STACK_CAPACITY_KEY = "jsb:capacity"
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


def load_stack_pairs(path: str) -> Config:
    """`jsb:pairs` of a Pulumi stack file (`stacks/Pulumi.<env>.yaml`), read strictly.

    Other keys, and secure (encrypted) values among them, are not read: rendering needs no secret.
    """
    try:
        document = strict_yaml.load_file(path)
    except OSError as err:
        raise ConfigError([f"{path}: cannot read the stack file: {err.strerror or err}"]) from None
    except strict_yaml.YamlProblem as err:
        raise ConfigError([str(err)]) from None
    config = document.get("config") if isinstance(document, dict) else None
    if not isinstance(config, dict) or STACK_PAIRS_KEY not in config:
        raise ConfigError([f"{STACK_PAIRS_KEY}: required in the stack file's `config:` section"])
    pairs = config[STACK_PAIRS_KEY]
    if isinstance(pairs, dict) and "secure" in pairs:
        raise ConfigError([f"{STACK_PAIRS_KEY}: is a secret; render needs the pairs as plain YAML"])
    try:
        return parse_config({"pairs": pairs, "capacity": config.get(STACK_CAPACITY_KEY)})
    except ConfigError as err:
        raise ConfigError(
            [
                STACK_PAIRS_KEY + p.removeprefix("pairs")
                if p.startswith("pairs")
                else "jsb:" + p
                if p.startswith("capacity")
                else p
                for p in err.problems
            ]
        ) from None


def _report_invalid(source: str, err: ConfigError | rendered_tree.TreeProblem) -> int:
    print(f"invalid config: {source}", file=sys.stderr)
    for problem in err.problems:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_INVALID


DEPLOY_PASSWORD_ENV = "JSB_DEPLOY_PASSWORD"


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


def cmd_render(args: argparse.Namespace) -> int:
    source = args.stack or args.config
    if bool(args.stack) == bool(args.config):
        print("render: give a config file or --stack STACKFILE (one of them)", file=sys.stderr)
        return EXIT_INVALID
    out = Path(args.out)
    try:
        config = load_stack_pairs(args.stack) if args.stack else _load(args.config)
        account_problem = names.jetstream_account_problem(args.jetstream_account)
        if account_problem:
            raise ConfigError([f"--jetstream-account: {account_problem}"])
        documents = render_documents(
            config.pairs,
            parse_nkeys(args.nkey, config),
            deploy=parse_deploy(args.deploy_nkey, args.deploy_user),
            jetstream_account=args.jetstream_account,
            servers=args.server or None,
            capacity=config.capacity,
        )
        for line in capacity_report(config.pairs, config.capacity).lines():
            print(f"capacity: {line}", file=sys.stderr)
        files = rendered_tree.with_manifest(documents)
        if args.check:
            difference = rendered_tree.compare(out, files)
        else:
            rendered_tree.write_tree(out, files)
    except (ConfigError, rendered_tree.TreeProblem) as err:
        return _report_invalid(source, err)
    except OSError as err:
        print(f"render: cannot write {out}: {err}; the previous output is unchanged", file=sys.stderr)
        return EXIT_DIFFERS
    if args.check:
        if difference:
            print(f"{out} is not what {source} renders (run `jsb-infra render` and commit):", file=sys.stderr)
            for line in difference.lines():
                print(f"  {line}", file=sys.stderr)
            return EXIT_DIFFERS
        print(f"{out} is up to date with {source} ({len(files)} files)")
        return 0
    for relative in files:
        if relative != rendered_tree.MANIFEST:
            print(out / relative)
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
    from jsb_infra.ops import dlq, status
    from jsb_infra.runtime import relay

    for name, module, help_text in (
        ("relay", relay, "publish an app's outbox rows (needs the db extra)"),
        ("dlq", dlq, "list, show, replay or purge an app's dead letters (admin)"),
        ("status", status, "pending, in flight, redelivered and DLQ per app (admin)"),
    ):
        parser = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(parser)
        parser.set_defaults(handler=module.run)


def _add_migrate_state(subparsers: Any) -> None:
    """`migrate-state`: a stack's state from an older resource layout to app-pair (runs `pulumi`)."""
    from jsb_infra.deploy.migration import migrate_state

    help_text = "move a stack's state from an older resource layout to app-pair (backup, then import)"
    parser = subparsers.add_parser("migrate-state", help=help_text, description=help_text)
    migrate_state.add_arguments(parser)
    parser.set_defaults(handler=migrate_state.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jsb-infra", description="Typed JetStream app-pair topology and least-privilege permissions."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)

    render = subparsers.add_parser(
        "render", help="write the stream, consumer and permission documents of a config"
    )
    render.add_argument("config", nargs="?", help="config YAML (`pairs: [...]`)")
    render.add_argument(
        "--stack", metavar="STACKFILE", help="read `jsb:pairs` from a Pulumi stack file instead"
    )
    render.add_argument(
        "--out", required=True, help="output directory (owned by render: replaced as a whole)"
    )
    render.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 listing the files that differ from a fresh render (for CI)",
    )
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

    export = subparsers.add_parser(
        "export", help="one app's bridge and credentials as env vars, a dotenv file or a Kubernetes Secret"
    )
    export_command.add_arguments(export)
    export.set_defaults(handler=export_command.run)

    _add_doctor(subparsers)
    _add_reliability(subparsers)
    _add_migrate_state(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
