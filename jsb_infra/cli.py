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
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jsb_infra.core import names
from jsb_infra.core.accounts import DeployUser
from jsb_infra.core.capacity import capacity_report
from jsb_infra.core.documents import deployment_documents, render_documents, render_json
from jsb_infra.core.spec import Capacity, Config, ConfigError, Pair, config_json_schema, load_config
from jsb_infra.deploy.stack_settings import StackFile, StackSettings, read_stack_settings
from jsb_infra.ops import export as export_command
from jsb_infra.ops import rendered_tree

EXIT_INVALID = 2
EXIT_DIFFERS = 1
_USER_PUBLIC_KEY = re.compile(r"^U[A-Z2-7]{55}$")


def parse_nkeys(given: list[str], pairs: Sequence[Pair], nkeys_file: str | None = None) -> dict[str, str]:
    """`APP=UPUBKEY` options (and the lines of `--nkeys-file`) -> {app: public key}; raises ConfigError
    naming each bad option or line."""
    apps = {app for pair in pairs for app in pair.apps}
    keys: dict[str, str] = {}
    problems: list[str] = []
    for where, item in [("--nkey", item) for item in given] + read_nkeys_file(nkeys_file):
        app, sep, key = item.partition("=")
        if not sep or not app:
            problems.append(f"{where} {item!r}: write APP=UPUBKEY")
        elif app not in apps:
            known = ", ".join(sorted(apps))
            problems.append(f"{where} {item!r}: {app!r} is not an app of this config ({known})")
        elif not _USER_PUBLIC_KEY.match(key):
            problems.append(f"{where} {item!r}: {key!r} is not an NKey user public key (U + 55 characters)")
        elif app in keys and keys[app] != key:
            problems.append(f"{where} {item!r}: {app!r} already has the key {keys[app]}")
        else:
            keys[app] = key
    if problems:
        raise ConfigError(problems)
    return keys


def read_nkeys_file(path: str | None) -> list[tuple[str, str]]:
    """The `APP=UPUBKEY` lines of a keys file (blank lines and `#` comments skipped), each with its place."""
    if path is None:
        return []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([f"--nkeys-file {path}: cannot read it: {err}"]) from None
    return [
        (f"{path}:{number}", line.strip())
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _load(path: str) -> Config:
    """load_config, with a missing or unreadable file reported like any other config problem."""
    try:
        return load_config(path)
    except OSError as err:
        raise ConfigError([f"{path}: cannot read the config file: {err.strerror or err}"]) from None


def load_stack_settings(path: str) -> StackSettings:
    """Every document-shaping `jsb:` key of a Pulumi stack file (`stacks/Pulumi.<env>.yaml`), read and
    validated by the program's own reader (`read_stack_settings`), so `render --stack` derives from
    exactly what `pulumi up` derives from. Secrets (`jsb:admin`, ...) are never read."""
    return read_stack_settings(StackFile.load(path))


STACK_DECIDES = {
    "jetstream_account": ("--jetstream-account", "jsb:jetstreamAccount"),
    "deploy_nkey": ("--deploy-nkey", "jsb:deployUser"),
    "deploy_user": ("--deploy-user", "jsb:deployUser"),
    "server": ("--server", "jsb:appServers / jsb:servers"),
}


def _print_capacity(pairs: Sequence[Pair], capacity: Capacity | None) -> None:
    """What the pairs reserve against the declared capacity, on stderr (stdout stays the tree's)."""
    for line in capacity_report(pairs, capacity).lines():
        print(f"capacity: {line}", file=sys.stderr)


def render_stack(args: argparse.Namespace) -> dict[Path, str]:
    """`render --stack`: the documents `pulumi up` writes for that stack file (AppAccounts' documents),
    with the app users' public keys from `--nkey` in config mode."""
    problems = [
        f"{option}: not with --stack; the stack file's {key} decides (set it there)"
        for attr, (option, key) in STACK_DECIDES.items()
        if getattr(args, attr)
    ]
    if problems:
        raise ConfigError(problems)
    settings = load_stack_settings(args.stack)
    if (args.nkey or args.nkeys_file) and settings.auth.mode == "jwt":
        raise ConfigError(
            [
                "--nkey/--nkeys-file: the stack's jsb:auth is mode jwt; app users are in the account JWTs, "
                "not in accounts.conf"
            ]
        )
    nkeys = parse_nkeys(args.nkey, settings.pairs, args.nkeys_file)
    documents = deployment_documents(settings.pairs, nkeys, **settings.accounts_args())
    _print_capacity(settings.pairs, settings.capacity)
    return documents


def render_config(args: argparse.Namespace) -> dict[Path, str]:
    """`render CONFIG`: the documents of a config file, shaped by the command-line options."""
    config = _load(args.config)
    jetstream_account = args.jetstream_account or names.DEFAULT_JETSTREAM_ACCOUNT
    account_problem = names.jetstream_account_problem(jetstream_account)
    if account_problem:
        raise ConfigError([f"--jetstream-account: {account_problem}"])
    documents = render_documents(
        config.pairs,
        parse_nkeys(args.nkey, config.pairs, args.nkeys_file),
        deploy=parse_deploy(args.deploy_nkey, args.deploy_user),
        jetstream_account=jetstream_account,
        servers=args.server or None,
        app_limits=config.app_limits,
        capacity=config.capacity,
    )
    _print_capacity(config.pairs, config.capacity)
    return documents


def _report_invalid(source: str, err: ConfigError | rendered_tree.TreeProblem) -> int:
    """`invalid config: <file>` and one `field: rule` line per problem; a problem with the file itself
    (unreadable, not text, not YAML), which names the file already, as the one line
    `invalid config: <file>...: <why>`."""
    if len(err.problems) == 1 and err.problems[0].startswith(f"{source}:"):
        print(f"invalid config: {err.problems[0]}", file=sys.stderr)
        return EXIT_INVALID
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
        documents = render_stack(args) if args.stack else render_config(args)
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
        "--stack",
        metavar="STACKFILE",
        help="render what `pulumi up` writes for this Pulumi stack file instead (its jsb:pairs, "
        "jsb:jetstreamAccount, jsb:deployUser, jsb:auth, jsb:appServers/jsb:servers; no secret read)",
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
        "--nkeys-file",
        metavar="FILE",
        help="APP=UPUBKEY lines (# comments allowed), as --nkey: the app keys `pulumi up` generated, "
        "committed beside the stack file so `render --stack --check` compares the whole accounts.conf",
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
        help="the account holding the streams (keep an existing account's name to keep its streams); "
        f"default {names.DEFAULT_JETSTREAM_ACCOUNT}",
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


EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
DEBUG_ENV = "JSB_DEBUG"
LOGGING_COMMANDS = frozenset({"relay"})  # long-running: logs what happens, with timestamps
_QUIET = logging.NullHandler()


def one_line(err: BaseException) -> str:
    """An unexpected error as one line: jsb-infra's own errors by their text, others with their type."""
    own = type(err).__module__.startswith("jsb_infra.")
    text = str(err) if own and str(err) else f"{type(err).__name__}: {err}".rstrip(": ")
    return " ".join(text.split())


def run_command(command: str, handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one subcommand so that it ends in its own report or in one line on stderr, never a traceback.

    Each command reports what it expects (bad input: exit 2 naming the flag or field; a server that is
    down, refuses the credentials or lacks the stream: exit 1 naming it). Anything else it raises is
    printed as one `jsb-infra <command>: <error>` line with exit 1; `JSB_DEBUG=1` shows the traceback
    and the libraries' debug logs instead. Library log records (such as the NATS client's connection
    errors) are not printed by the one-shot commands: the command's own line says what failed.
    """
    debug = bool(os.environ.get(DEBUG_ENV))
    root = logging.getLogger()
    quiet = not debug and command not in LOGGING_COMMANDS and _QUIET not in root.handlers
    if debug:
        logging.basicConfig(level=logging.DEBUG)
    elif quiet:
        root.addHandler(_QUIET)  # stands in for logging's last-resort handler, which prints warnings
    try:
        return handler(args)
    except KeyboardInterrupt:
        print(f"jsb-infra {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        if debug:
            raise
        print(f"jsb-infra {command}: {one_line(err)} (set {DEBUG_ENV}=1 for details)", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if quiet:
            root.removeHandler(_QUIET)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.command, args.handler, args)


if __name__ == "__main__":
    raise SystemExit(main())
