"""`jsb-infra migrate-state --stack S [--dry-run]`: move a stack's state to the app-pair layout.

Converts a stack of either older layout (before pair-stream: AppPair + Stream + Consumers per pair and
an AppCredential per app; pair-stream: a PairStream per pair and one AppCredentials) to the app-pair
layout the program writes now, keeping every stream, consumer and app key.

Runs in the project directory, with the environment `pulumi` needs there (backend, passphrase):
1. `pulumi stack export --show-secrets` (read into memory only) and `state_migration.migrate`;
   a refusal prints what it cannot map and changes nothing;
2. the report; with `--dry-run`, nothing more;
3. a backup, `pulumi stack export --file <backup>` (secrets stay encrypted in it: it can be imported
   back with the same passphrase);
4. `pulumi stack import`, from stdin (the plaintext seeds never touch the disk): the CLI encrypts every
   secret again with the stack's secrets provider;
5. a check: a plain `pulumi stack export` holds no seed in plain text, and migrating it again changes
   nothing. If that fails, the backup is imported back.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jsb_infra.deploy.migration.state_migration import (
    CREDENTIAL_TYPE,
    CREDENTIALS_TYPE,
    LAYOUT,
    MigrationRefused,
    migrate,
    reveal,
    serialized_providers,
)

EXIT_REFUSED = 2
EXIT_FAILED = 1


class PulumiFailed(RuntimeError):
    """A `pulumi` command exited non-zero; the message holds its stderr."""


def pulumi(args: argparse.Namespace, *command: str, stdin: str | None = None) -> str:
    try:
        result = subprocess.run(
            [args.pulumi, *command, "--stack", args.stack, "--non-interactive"],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=args.cwd,
        )
    except OSError as err:
        raise PulumiFailed(f"cannot run {args.pulumi!r} (give the CLI with --pulumi): {err}") from None
    if result.returncode != 0:
        raise PulumiFailed(
            f"`pulumi {' '.join(command)}` failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result.stdout


def seeds_of(document: dict[str, Any]) -> list[str]:
    """Every app seed a deployment holds (any layout), revealed."""
    found: list[str] = []
    for resource in document.get("deployment", document).get("resources") or []:
        outputs = resource.get("outputs") or {}
        if resource.get("type") == CREDENTIAL_TYPE:
            found.append(str(reveal(outputs.get("seed"), resource["urn"])))
        elif resource.get("type") == CREDENTIALS_TYPE:
            found.extend(str(seed) for seed in (reveal(outputs.get("seeds"), resource["urn"]) or {}).values())
    return found


def backup_path(args: argparse.Namespace) -> Path:
    if args.backup:
        return Path(args.backup)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path(args.cwd) / f"{args.stack}.before-{LAYOUT}.{stamp}.json"


def verify(args: argparse.Namespace, seeds: list[str]) -> list[str]:
    """What is wrong with the imported state (empty: nothing)."""
    problems = []
    encrypted = pulumi(args, "stack", "export")
    if any(seed in encrypted for seed in seeds):
        problems.append("an app seed is in plain text in the imported state")
    try:
        _, again = migrate(
            json.loads(pulumi(args, "stack", "export", "--show-secrets")), serialized_providers
        )
    except MigrationRefused as err:
        problems.extend(err.problems)
    else:
        if again.changed:
            problems.append("the imported state is not fully migrated: " + "; ".join(again.lines()))
    return problems


def run(args: argparse.Namespace) -> int:
    try:
        serialized_providers()
    except ImportError as err:
        print(
            f"migrate-state needs the deploy side (pip install 'jsb-infra[deploy]'): {err}", file=sys.stderr
        )
        return EXIT_FAILED
    try:
        before = json.loads(pulumi(args, "stack", "export", "--show-secrets"))
        after, report = migrate(before, serialized_providers)
    except MigrationRefused as err:
        print(
            f"migrate-state: stack {args.stack!r} cannot be migrated; nothing was changed:", file=sys.stderr
        )
        for problem in err.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_REFUSED
    except PulumiFailed as err:
        print(f"migrate-state: {err}", file=sys.stderr)
        return EXIT_FAILED
    for line in report.lines():
        print(line)
    if not report.changed:
        return 0
    if args.dry_run:
        print("dry run: the stack is unchanged")
        return 0
    backup = backup_path(args)
    if backup.exists():
        print(f"migrate-state: the backup {backup} exists already; give another --backup", file=sys.stderr)
        return EXIT_FAILED
    try:
        pulumi(args, "stack", "export", "--file", str(backup))
        pulumi(args, "stack", "import", stdin=json.dumps(after))
    except PulumiFailed as err:
        print(f"migrate-state: {err}; the backup is {backup}", file=sys.stderr)
        return EXIT_FAILED
    try:
        problems = verify(args, seeds_of(before))
    except PulumiFailed as err:
        problems = [str(err)]
    if problems:
        try:
            pulumi(args, "stack", "import", "--file", str(backup))
            restored = f"restored the backup {backup}"
        except PulumiFailed as err:
            restored = f"could not restore the backup {backup} ({err}); import it by hand"
        print(f"migrate-state: {restored}, because:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_FAILED
    print(f"migrated stack {args.stack!r}; backup of the previous state (secrets encrypted): {backup}")
    print(
        "next: `pulumi preview --diff` shows no replace, update or delete of a stream, consumer or app "
        "credential (the permission documents are created: they make no server request)"
    )
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stack", required=True, help="the stack to migrate")
    parser.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    parser.add_argument(
        "--cwd", default=".", help="the Pulumi project directory (default: the current directory)"
    )
    parser.add_argument(
        "--backup", help=f"where to write the backup (default: <cwd>/<stack>.before-{LAYOUT}.<time>.json)"
    )
    parser.add_argument("--pulumi", default="pulumi", help="the Pulumi CLI to run (default: pulumi on PATH)")
