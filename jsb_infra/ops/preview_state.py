"""A preview stack: a copy of a stack's state without its secrets, for `pulumi preview` on pull requests.

`pulumi preview` decrypts the whole state it loads, and a jsb-infra state holds every app's seed (the
`credentials` output is the contract). A job that previews the real stack can therefore read them.
This copies the state into another stack of the same project (default `<stack>-preview`) with every
secret value replaced by `redacted`, re-encrypted by that stack's own passphrase, and the stack config
copied (which must hold no secret value: secrets are named where they are read, `{env: NAME}` /
`{file: PATH}`). The preview stack previews the same pending changes (nothing it compares is a
secret: inputs, the server's configs, public keys), so a pull-request job previews it with its own
passphrase and a read-only identity, and holds nothing that reveals a seed or changes a server.

Run it where the real stack's passphrase is (the deploy job, after each `up`):

    PULUMI_CONFIG_PASSPHRASE=... JSB_PREVIEW_PASSPHRASE=... python -m jsb_infra.ops.preview_state --stack prod

Never `up` the preview stack: its redacted seeds are not keys (and `up` needs the admin identity).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

SECRET_SIG = "4dabf18193072939515e22adb298388d"
"""The key that marks a secret value in a Pulumi deployment (`resource.SecretSig`)."""
REDACTED = "redacted"
PREVIEW_PASSPHRASE_ENV = "JSB_PREVIEW_PASSPHRASE"


class PreviewStateError(RuntimeError):
    """Why the preview stack cannot be made; never repeats a secret."""


def redacted(value: Any) -> tuple[Any, int]:
    """`value` (a deployment exported with --show-secrets) with every secret's plaintext replaced by
    `REDACTED`, still marked secret; and how many secrets there were."""
    if isinstance(value, dict):
        if SECRET_SIG in value:
            return {SECRET_SIG: value[SECRET_SIG], "plaintext": json.dumps(REDACTED)}, 1
        out: dict[str, Any] = {}
        count = 0
        for key, item in value.items():
            out[key], found = redacted(item)
            count += found
        return out, count
    if isinstance(value, list):
        pairs = [redacted(item) for item in value]
        return [item for item, _ in pairs], sum(found for _, found in pairs)
    return value, 0


def preview_deployment(
    exported: Mapping[str, Any], project: str, source: str, target: str, secrets_providers: Mapping[str, Any]
) -> tuple[dict[str, Any], int]:
    """The deployment of the preview stack: secrets redacted, every URN moved from stack `source` to
    `target` (the root stack resource is `<project>-<stack>`), encrypted by `secrets_providers`."""
    if "plaintext" not in json.dumps(exported) and "ciphertext" in json.dumps(exported):
        raise PreviewStateError("the deployment holds encrypted secrets: export it with --show-secrets")
    deployment, count = redacted(dict(exported))
    text = json.dumps(deployment)
    root_old, root_new = (
        f"pulumi:pulumi:Stack::{project}-{source}",
        f"pulumi:pulumi:Stack::{project}-{target}",
    )
    text = text.replace(f"urn:pulumi:{source}::{project}::", f"urn:pulumi:{target}::{project}::")
    text = text.replace(f'{root_old}"', f'{root_new}"')
    moved: dict[str, Any] = json.loads(text)
    moved["deployment"]["secrets_providers"] = dict(secrets_providers)
    return moved, count


def secret_config_keys(config: Mapping[str, Any]) -> list[str]:
    """The keys of `pulumi config --json` that hold a secret value (they cannot be copied)."""
    return sorted(key for key, entry in config.items() if isinstance(entry, dict) and entry.get("secret"))


def _pulumi(args: list[str], cwd: Path, env: Mapping[str, str]) -> str:
    result = subprocess.run(["pulumi", *args], cwd=cwd, env=dict(env), text=True, capture_output=True)
    if result.returncode != 0:
        raise PreviewStateError(
            f"pulumi {args[0]} {args[1] if len(args) > 1 else ''}: {result.stderr.strip()}"
        )
    return result.stdout


def stack_file(cwd: Path, stack: str) -> Path:
    """`Pulumi.<stack>.yaml` in the project's `stackConfigDir` (default: beside Pulumi.yaml)."""
    project = yaml.safe_load((cwd / "Pulumi.yaml").read_text())
    return cwd / (project.get("stackConfigDir") or ".") / f"Pulumi.{stack}.yaml"


def mirror(source: str, target: str, cwd: Path, env: Mapping[str, str], target_passphrase: str) -> int:
    """Make (or refresh) the preview stack `target` from `source`; returns how many secrets it redacted."""
    project = str(yaml.safe_load((cwd / "Pulumi.yaml").read_text())["name"])
    config = json.loads(_pulumi(["config", "--json", "--stack", source], cwd, env))
    secret = secret_config_keys(config)
    if secret:
        raise PreviewStateError(
            f"stack {source} holds secret config values ({', '.join(secret)}): name where each is read "
            "instead ({env: NAME} or {file: PATH}, docs/stack-config.md), then run this again"
        )
    exported = json.loads(_pulumi(["stack", "export", "--show-secrets", "--stack", source], cwd, env))
    target_env = {**env, "PULUMI_CONFIG_PASSPHRASE": target_passphrase}
    target_env.pop("PULUMI_CONFIG_PASSPHRASE_FILE", None)
    stacks = {s["name"] for s in json.loads(_pulumi(["stack", "ls", "--json"], cwd, env))}
    if target not in stacks:
        _pulumi(["stack", "init", target, "--secrets-provider", "passphrase", "--no-select"], cwd, target_env)
    salt = yaml.safe_load(stack_file(cwd, target).read_text()).get("encryptionsalt")
    if not salt:
        raise PreviewStateError(f"stack {target} has no passphrase salt in {stack_file(cwd, target)}")
    if config:
        _pulumi(["config", "set-all", "--json", json.dumps(config), "--stack", target], cwd, target_env)
    deployment, count = preview_deployment(
        exported, project, source, target, {"type": "passphrase", "state": {"salt": salt}}
    )
    state = cwd / f".{target}.import.json"
    try:
        state.write_text(json.dumps(deployment))
        _pulumi(["stack", "import", "--file", str(state), "--stack", target], cwd, target_env)
    finally:
        state.unlink(missing_ok=True)
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jsb_infra.ops.preview_state", description=__doc__)
    parser.add_argument(
        "--stack", required=True, help="the stack to copy (its passphrase in the environment)"
    )
    parser.add_argument("--to", help="the preview stack (default <stack>-preview)")
    parser.add_argument("--cwd", default=".", help="the Pulumi project directory (default: here)")
    args = parser.parse_args(argv)
    passphrase = os.environ.get(PREVIEW_PASSPHRASE_ENV)
    if not passphrase:
        print(
            f"error: {PREVIEW_PASSPHRASE_ENV}: required, the preview stack's own passphrase", file=sys.stderr
        )
        return 2
    target = args.to or f"{args.stack}-preview"
    try:
        count = mirror(args.stack, target, Path(args.cwd), os.environ, passphrase)
    except PreviewStateError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"stack {target}: the state of {args.stack} with its {count} secret value(s) redacted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
