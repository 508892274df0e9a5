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

The preview stack's file is not committed: the pull-request job writes it from the pull request's
stack file (`--stack-file-only`: the config, without the secrets provider) and previews
`<stack>-preview` with `PULUMI_CONFIG_PASSPHRASE` set to the preview stack's passphrase.

Never `up` the preview stack: its redacted seeds are not keys (and `up` needs the admin identity).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
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


def passphrase_salt(stack: str, cwd: Path, env: Mapping[str, str]) -> str:
    """The passphrase salt of `stack`: from its stack file, else (a fresh checkout, where the preview
    stack's file is not committed) from its state, which keeps the secrets provider it was written with."""
    path = stack_file(cwd, stack)
    salt = (yaml.safe_load(path.read_text()) or {}).get("encryptionsalt") if path.is_file() else None
    if not salt:
        deployment = json.loads(_pulumi(["stack", "export", "--stack", stack], cwd, env)).get("deployment")
        provider = (deployment or {}).get("secrets_providers") or {}
        salt = provider.get("state", {}).get("salt") if provider.get("type") == "passphrase" else None
    if not salt:
        raise PreviewStateError(f"stack {stack} has no passphrase salt, neither in {path} nor in its state")
    return str(salt)


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
    salt = passphrase_salt(target, cwd, target_env)
    if config:
        _pulumi(["config", "set-all", "--json", json.dumps(config), "--stack", target], cwd, target_env)
    deployment, count = preview_deployment(
        exported, project, source, target, {"type": "passphrase", "state": {"salt": salt}}
    )
    # A new file of its own (O_EXCL): a link planted at a fixed name would be followed.
    fd, name = tempfile.mkstemp(prefix=f".{target}.import.", suffix=".json", dir=cwd)
    state = Path(name)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(deployment, out)
        _pulumi(["stack", "import", "--file", str(state), "--stack", target], cwd, target_env)
    finally:
        state.unlink(missing_ok=True)
    return count


SECRETS_PROVIDER_KEYS = ("encryptionsalt", "secretsprovider", "encryptedkey")
"""The top-level keys of a stack file that belong to its secrets provider, not to its config."""


def secure_paths(value: Any, path: str = "") -> list[str]:
    """Where a stack file's config holds a `secure:` (encrypted) value: `jsb:admin.password`."""
    if isinstance(value, dict):
        if set(value) == {"secure"}:
            return [path]
        return [
            found
            for key, item in value.items()
            for found in secure_paths(item, f"{path}.{key}" if path else str(key))
        ]
    if isinstance(value, list):
        return [found for i, item in enumerate(value) for found in secure_paths(item, f"{path}[{i}]")]
    return []


def preview_stack_file(text: str, name: str) -> str:
    """The preview stack's file for a stack file's `text` (`name` in errors): its config line for line,
    without the secrets provider (the preview stack's own is in its state, and Pulumi reads it from
    there when the file has none). A secret value is refused: it would need the real passphrase."""
    loaded = yaml.safe_load(text) or {}
    if not isinstance(loaded, dict):
        raise PreviewStateError(f"{name}: not a stack file (a mapping with `config:`)")
    secure = secure_paths(loaded.get("config") or {})
    if secure:
        raise PreviewStateError(
            f"{name}: {', '.join(secure)}: a secret value; name where it is read instead "
            "({env: NAME} or {file: PATH}, docs/stack-config.md)"
        )
    kept = [line for line in text.splitlines(keepends=True) if not line.startswith(SECRETS_PROVIDER_KEYS)]
    left = yaml.safe_load("".join(kept)) or {}
    if any(key in left for key in SECRETS_PROVIDER_KEYS) or left.get("config") != loaded.get("config"):
        raise PreviewStateError(f"{name}: write {', '.join(SECRETS_PROVIDER_KEYS)} on one line each")
    return "".join(kept)


def write_preview_stack_file(source: str, target: str, cwd: Path) -> Path:
    """Write the preview stack `target`'s file from stack `source`'s (the pull request's config)."""
    origin, path = stack_file(cwd, source), stack_file(cwd, target)
    if not origin.is_file():
        raise PreviewStateError(f"{origin}: no such stack file")
    path.write_text(preview_stack_file(origin.read_text(), str(origin)))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jsb_infra.ops.preview_state", description=__doc__)
    parser.add_argument(
        "--stack", required=True, help="the stack to copy (its passphrase in the environment)"
    )
    parser.add_argument("--to", help="the preview stack (default <stack>-preview)")
    parser.add_argument("--cwd", default=".", help="the Pulumi project directory (default: here)")
    parser.add_argument(
        "--stack-file-only",
        action="store_true",
        help="the preview job's half: only write the preview stack's file from <stack>'s (its config, "
        "no secrets provider); runs no pulumi and needs no passphrase",
    )
    args = parser.parse_args(argv)
    target = args.to or f"{args.stack}-preview"
    if args.stack_file_only:
        try:
            written = write_preview_stack_file(args.stack, target, Path(args.cwd))
        except PreviewStateError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"stack {target}: {written} holds the config of {args.stack}")
        return 0
    passphrase = os.environ.get(PREVIEW_PASSPHRASE_ENV)
    if not passphrase:
        print(
            f"error: {PREVIEW_PASSPHRASE_ENV}: required, the preview stack's own passphrase", file=sys.stderr
        )
        return 2
    try:
        count = mirror(args.stack, target, Path(args.cwd), os.environ, passphrase)
    except PreviewStateError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"stack {target}: the state of {args.stack} with its {count} secret value(s) redacted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
