"""The admin connection options shared by the operator commands (`dlq`, `status`): flags, else env.

Like the deploy, these commands use management rights (`$JS.API.STREAM.*`), which no app credential
has. Secrets are best given through the environment, so they stay out of shell history and `ps`.
"""

from __future__ import annotations

import argparse
import os
import sys

import nats.errors
from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from jsb_infra.core.names import READ_ONLY_INBOX_PREFIX
from jsb_infra.core.spec import MAX_NAME_LEN, _check_app_name, _check_nats_name
from jsb_infra.nats_admin import (
    AdminConnectError,
    AdminConnection,
    ErrorsSeen,
    JetStreamApiError,
    connection_problem,
)

# flag (argparse dest) -> environment variable
ADMIN_ENV = {
    "server": "JSB_ADMIN_SERVERS",
    "user": "JSB_ADMIN_USER",
    "password": "JSB_ADMIN_PASSWORD",
    "token": "JSB_ADMIN_TOKEN",
    "nkey_seed": "JSB_ADMIN_NKEY_SEED",
    "creds_file": "JSB_ADMIN_CREDS_FILE",
    "tls_ca": "JSB_ADMIN_TLS_CA",
    "tls_cert": "JSB_ADMIN_TLS_CERT",
    "tls_key": "JSB_ADMIN_TLS_KEY",
    "inbox_prefix": "JSB_ADMIN_INBOX_PREFIX",
}


ADMIN_HINT = "check --server (or JSB_ADMIN_SERVERS) and the admin credentials (the flags or JSB_ADMIN_*)"
"""What a failed admin connect of an operator command tells the operator to check."""

ADMIN_FAILURES = (AdminConnectError, JetStreamApiError, nats.errors.Error, OSError)
"""What an admin session of an operator command can fail with; `admin_failure` says it in one line."""


def admin_failure(err: BaseException, timeout: float, seen: ErrorsSeen) -> str:
    """One line for a failed admin session: the connect's own message, the server's API error, the
    permission the server denied (kept by `seen`), or what a request without an answer most likely means."""
    if isinstance(err, AdminConnectError | JetStreamApiError):
        return str(err)
    if isinstance(err, nats.errors.NoRespondersError):
        return "no responders to the JetStream API: JetStream is not enabled for the admin user's account"
    if isinstance(err, nats.errors.TimeoutError) and seen.denials():
        denial = seen.denials()[-1]
        if "subscription to" in denial:
            return (
                f"the server denied the admin user: {denial}; its replies need a prefix it may subscribe "
                f"to: --inbox-prefix (or {ADMIN_ENV['inbox_prefix']}), {READ_ONLY_INBOX_PREFIX} for the "
                "read-only identity"
            )
        return f"the server denied the admin user: {denial}; it needs publish rights on $JS.API.>"
    if isinstance(err, nats.errors.TimeoutError):
        return (
            f"no answer from the JetStream API within {timeout}s: the admin user may not be allowed "
            "$JS.API.>, or the server is overloaded (see --timeout)"
        )
    return f"the admin connection failed: {connection_problem(err)}"


class AdminOptionsError(ValueError):
    """Admin connection options that cannot work; the text names the flag and its variable."""


def add_admin_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("admin connection (each flag falls back to its environment variable)")
    group.add_argument(
        "--server",
        action="append",
        help="server URL, repeatable (default: $JSB_ADMIN_SERVERS, comma-separated)",
    )
    for dest, env in ADMIN_ENV.items():
        if dest != "server":
            group.add_argument(f"--{dest.replace('_', '-')}", dest=dest, help=f"(default: ${env})")
    group.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each answer")


def admin_connection(args: argparse.Namespace) -> AdminConnection:
    """The AdminConnection the flags and environment describe; raises AdminOptionsError."""
    servers = args.server or [
        s.strip() for s in os.environ.get(ADMIN_ENV["server"], "").split(",") if s.strip()
    ]
    if not servers:
        raise AdminOptionsError(
            f"--server: required (or set {ADMIN_ENV['server']}), e.g. nats://127.0.0.1:4222"
        )
    fields: dict[str, str] = {}
    for dest, env in ADMIN_ENV.items():
        if dest == "server":
            continue
        value = getattr(args, dest, None) or os.environ.get(env)
        if value:
            fields[dest] = value
    if "password" in fields and "user" not in fields:
        raise AdminOptionsError(f"--password: needs --user (or {ADMIN_ENV['user']})")
    try:
        return AdminConnection(servers=servers, timeout=args.timeout, **fields)
    except ValidationError as err:
        raise AdminOptionsError("; ".join(f"{e['loc'][0]}: {e['msg']}" for e in err.errors())) from None


def name_problems(stream: str | None, app: str | None) -> list[str]:
    """`--stream` and `--app` checked by the spec's own name rules."""
    problems = []
    checks = [
        ("--stream", stream, lambda v: _check_nats_name("stream", v, MAX_NAME_LEN)),
        ("--app", app, _check_app_name),
    ]
    for flag, value, check in checks:
        if value is None:
            continue
        try:
            check(value)
        except PydanticCustomError as err:
            problems.append(f"{flag}: {err.message()}")
    return problems


def checked_connection(command: str, args: argparse.Namespace, problems: list[str]) -> AdminConnection | None:
    """The admin connection, or None after printing every problem (the caller's and the options')."""
    try:
        conn = admin_connection(args)
    except AdminOptionsError as err:
        problems = [*problems, str(err)]
    for problem in problems:
        print(f"jsb-infra {command}: {problem}", file=sys.stderr)
    return None if problems else conn
