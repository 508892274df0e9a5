"""The main job on the embedded default: `make up` / `make down` (python -m jsb_infra.local.dev up|down).

`up` starts a loopback nats-server whose whole auth config is the account layout the stack renders
(`<out>/accounts.conf`, included as is; before the first `up`, a bootstrap one with only the JetStream
account and its deploy user), logs the Pulumi CLI in to a file backend under `.jsb/state`, runs
`pulumi up --yes` on the `dev` stack (which writes the real `accounts.conf`), reloads the server so
the app accounts and users take effect, and writes each app's bridge config and credentials beside it.
`down` destroys the stack and stops the server. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from jsb_infra.core.accounts import DeployUser, account_layout, render_accounts_conf
from jsb_infra.core.names import app_account
from jsb_infra.core.spec import Pair, parse_pairs
from jsb_infra.local.server import LocalNatsServer

# The project dir (Pulumi.yaml) and the dev server's port; tests point them at a throwaway copy.
ROOT = Path(os.environ.get("JSB_DEV_ROOT") or Path(__file__).resolve().parents[2])
STATE = ROOT / ".jsb"
STACK = "dev"
DEV_PORT = int(os.environ.get("JSB_DEV_PORT", "4222"))  # must match jsb:servers of the dev stack
DEV_ADMIN_USER = "admin"
# The dev server listens on loopback only. Its deploy user's password: the server and the providers
# both read it from DEPLOY_PASSWORD_ENV (the dev stack's jsb:deployUser and jsb:admin.password name it).
DEV_ADMIN_PASSWORD = "jsb-dev-admin"
DEV_PASSPHRASE = "jsb-local-dev"
DEPLOY_PASSWORD_ENV = "JSB_DEPLOY_PASSWORD"  # jsb:deployUser of the dev stack names this variable
DEV_DEPLOY = DeployUser(user=DEV_ADMIN_USER, password_env=DEPLOY_PASSWORD_ENV)


def pulumi_env(state_dir: Path = STATE) -> dict[str, str]:
    """The environment for an offline Pulumi CLI: local file backend, no update check, no plugin downloads."""
    env = dict(os.environ)
    env.setdefault("PULUMI_CONFIG_PASSPHRASE", DEV_PASSPHRASE)
    env[DEPLOY_PASSWORD_ENV] = DEV_ADMIN_PASSWORD  # jsb:admin.password: {env: ...}, as the dev server
    # State once per update instead of after every step (quadratic in stack size on a file backend);
    # a killed `up` then converges on the next one (tests/test_e2e_crash.py). See docs/performance.md.
    env.setdefault("PULUMI_SKIP_CHECKPOINTS", "true")
    env.update(
        {
            "PULUMI_BACKEND_URL": f"file://{state_dir / 'state'}",
            "PULUMI_HOME": str(state_dir / "pulumi-home"),
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        }
    )
    (state_dir / "state").mkdir(parents=True, exist_ok=True)
    return env


def accounts_file(out_dir: Path) -> Path:
    """The account layout the stack writes (its `ServerDocuments`), which the dev server includes."""
    return out_dir / "accounts.conf"


def dev_pairs() -> list[Pair]:
    """The pairs of the dev stack file (`jsb:pairs`), validated like the program does."""
    config = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{STACK}.yaml").read_text())["config"]
    return list(parse_pairs(config["jsb:pairs"]).pairs)


def ensure_accounts_file(out_dir: Path) -> Path:
    """Before the first `up` there is no layout yet: a bootstrap one, rendered from the dev stack's
    pairs without keys (every account and import, no app user yet), lets the providers connect. The
    stack's own file replaces it and a reload adds the app users."""
    path = accounts_file(out_dir)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_accounts_conf(account_layout(dev_pairs()), {}, DEV_DEPLOY))
    return path


def app_accounts(conf: str) -> set[str]:
    """The app accounts an accounts file defines."""
    return set(re.findall(rf'^  "({re.escape(app_account(""))}[^"]*)" {{', conf, re.MULTILINE))


def _loaded_file() -> Path:
    return STATE / "nats" / "accounts.loaded"


def server_config(out_dir: Path, store_dir: Path) -> str:
    """Nothing but the stack's account layout: `include` takes a path relative to the config file."""
    relative = os.path.relpath(ensure_accounts_file(out_dir), store_dir)
    return f"include {json.dumps(relative)}\n"


def dev_server(out_dir: Path) -> LocalNatsServer:
    store = STATE / "nats"
    return LocalNatsServer(
        store_dir=store,
        extra_config=server_config(out_dir, store),
        port=DEV_PORT,
        env={DEPLOY_PASSWORD_ENV: DEV_ADMIN_PASSWORD},
    )


def _pid_file() -> Path:
    return STATE / "nats.pid"


def _running_pid() -> int | None:
    try:
        pid = int(_pid_file().read_text())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None


def start_server(out_dir: Path) -> None:
    """Start the dev server in the background (it outlives this process); a no-op when it runs."""
    if _running_pid():
        print(f"nats-server already running (pid {_running_pid()}) on nats://127.0.0.1:{DEV_PORT}")
        return
    server = dev_server(out_dir)
    server.detach = True
    server.start()
    assert server.process is not None
    _pid_file().write_text(str(server.process.pid))
    _loaded_file().write_text(accounts_file(out_dir).read_text())
    print(f"nats-server started on {server.url} (pid {server.process.pid}, store {server.store_dir})")


def reload_server(out_dir: Path) -> None:
    """Apply the account layout the stack wrote: SIGHUP, or a restart when it adds an app account.

    nats-server 2.15.1 reloads new users, new exports and new imports of accounts it already has, but
    the imports of an account that a reload creates answer nothing (no responders) until a restart.
    """
    pid = _running_pid()
    if pid is None:
        raise SystemExit("the dev nats-server is not running; run `make up`")
    dev_server(out_dir).write_config()
    new = accounts_file(out_dir).read_text()
    loaded = _loaded_file().read_text() if _loaded_file().exists() else ""
    added = app_accounts(new) - app_accounts(loaded)
    if added:
        print(f"new app account(s) {', '.join(sorted(added))}: restarting the dev nats-server")
        stop_server()
        start_server(out_dir)
        return
    os.kill(pid, signal.SIGHUP)
    _loaded_file().write_text(new)
    time.sleep(0.3)


def stop_server() -> None:
    pid = _running_pid()
    if pid is None:
        print("nats-server not running")
        return
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    _pid_file().unlink(missing_ok=True)
    print(f"nats-server stopped (pid {pid})")


def pulumi(args: list[str], env: dict[str, str], capture: bool = False) -> str:
    """Run the Pulumi CLI in the repo root; raise SystemExit with its status when it fails."""
    cmd = ["pulumi", *args]
    result = subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=capture)
    if result.returncode != 0:
        if capture:
            sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"`{' '.join(cmd)}` failed with status {result.returncode}")
    return result.stdout if capture else ""


def select_stack(env: dict[str, str]) -> None:
    stacks = json.loads(pulumi(["stack", "ls", "--json"], env, capture=True) or "[]")
    if not any(s.get("name") == STACK for s in stacks):
        pulumi(["stack", "init", STACK], env, capture=True)
    pulumi(["stack", "select", STACK], env, capture=True)


def write_app_files(outputs: dict[str, Any], out_dir: Path) -> list[Path]:
    """Each app's bridge config per pair, and its one credential (an app is one identity)."""
    written = []
    for stream, apps in outputs.get("bridges", {}).items():
        for app, bridge in apps.items():
            path = out_dir / stream / "bridges" / f"{app}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(bridge, indent=2, sort_keys=True) + "\n")
            written.append(path)
    for app, creds in outputs.get("credentials", {}).items():
        cpath = out_dir / "credentials" / f"{app}.json"
        cpath.parent.mkdir(parents=True, exist_ok=True)
        cpath.touch(mode=0o600)
        cpath.chmod(0o600)  # also when an older file was there: it holds the app's seed
        cpath.write_text(json.dumps(creds, indent=2, sort_keys=True) + "\n")
        written.append(cpath)
    return written


def up(out_dir: Path) -> None:
    env = pulumi_env()
    start_server(out_dir)
    select_stack(env)
    pulumi(["up", "--yes", "--refresh", "--stack", STACK], env)  # --refresh: repair drift too
    reload_server(out_dir)
    outputs = json.loads(pulumi(["stack", "output", "--json", "--show-secrets"], env, capture=True))
    files = write_app_files(outputs, out_dir)
    print("\nProvisioned on the dev nats-server:")
    for stream, apps in outputs.get("bridges", {}).items():
        print(f"  stream {stream}")
        for app, bridge in apps.items():
            print(
                f"    app {app}: publishes {bridge['publish_subject']}, consumes {bridge['consume_subject']} "
                f"through {bridge['durable']}"
            )
    print("\nFiles for the apps (bridge config, credentials) and the server (accounts.conf):")
    documents = [accounts_file(out_dir), *out_dir.glob("apps/*.json")]
    for path in sorted({*files, *documents}):
        print(f"  {_shown(path)}")
    print(
        "\nThe server runs on accounts.conf: one account per app, reaching the streams only through its "
        "imports.\n`make down` destroys the stack and stops the server."
    )


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def down(out_dir: Path) -> None:
    env = pulumi_env()
    if _running_pid() is None:
        start_server(out_dir)
    stacks = json.loads(pulumi(["stack", "ls", "--json"], env, capture=True) or "[]")
    if any(s.get("name") == STACK for s in stacks):
        pulumi(["stack", "select", STACK], env, capture=True)
        pulumi(["destroy", "--yes", "--stack", STACK], env)
    stop_server()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jsb_infra.local.dev", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "start-server", "stop-server"])
    parser.add_argument("--out", type=Path, default=STATE / "out", help="where the stack writes documents")
    args = parser.parse_args(argv)
    out_dir: Path = args.out.resolve()
    {
        "up": up,
        "down": down,
        "start-server": start_server,
        "stop-server": lambda _out: stop_server(),
    }[args.command](out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
