"""The main job on the embedded default: `make up` / `make down` (python -m jsb_infra.local.dev up|down).

`up` starts a loopback nats-server whose whole auth config is the account layout the stack renders
(`<out>/accounts.conf`, included as is; before the first `up`, a bootstrap one with only the JetStream
account and its deploy user), logs the Pulumi CLI in to a file backend under `.jsb/state`, runs
`pulumi up --yes` on the `dev` stack (which writes the real `accounts.conf`), reloads the server so
the app accounts and users take effect, and writes each app's bridge config and credentials beside it.
`down` destroys the stack, stops the server and removes the apps' credential files. Nothing leaves
the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
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
from jsb_infra.files import replace_file
from jsb_infra.local.server import LocalNatsServer

# The project dir (Pulumi.yaml); tests point it at a throwaway copy.
ROOT = Path(os.environ.get("JSB_DEV_ROOT") or Path(__file__).resolve().parents[2])
STATE = ROOT / ".jsb"
STACK = "dev"
DEV_PORT_ENV = "JSB_DEV_PORT"  # the one setting for another port: the server and the stack's jsb:servers
DEFAULT_DEV_PORT = 4222
DEV_ADMIN_USER = "admin"
# The dev server listens on loopback only. Its deploy user's password: the server and the providers
# both read it from DEPLOY_PASSWORD_ENV (the dev stack's jsb:deployUser and jsb:admin.password name it).
DEV_ADMIN_PASSWORD = "jsb-dev-admin"
DEV_PASSPHRASE = "jsb-local-dev"
DEPLOY_PASSWORD_ENV = "JSB_DEPLOY_PASSWORD"  # jsb:deployUser of the dev stack names this variable
DEV_DEPLOY = DeployUser(user=DEV_ADMIN_USER, password_env=DEPLOY_PASSWORD_ENV)


def dev_port() -> int:
    """The dev server's port: $JSB_DEV_PORT, else 4222; anything but a TCP port stops with one line."""
    given = os.environ.get(DEV_PORT_ENV, "").strip()
    if not given:
        return DEFAULT_DEV_PORT
    if not given.isascii() or not given.isdecimal() or not 1 <= int(given) <= 65535:
        raise SystemExit(f"{DEV_PORT_ENV}: must be a TCP port (1-65535), got {given!r}")
    return int(given)


def dev_server_url() -> str:
    return f"nats://127.0.0.1:{dev_port()}"


def committed_stack_file() -> Path:
    return ROOT / "stacks" / f"Pulumi.{STACK}.yaml"


def stack_config_file() -> Path:
    """The dev stack's config as `pulumi up` reads it (`--config-file`): the committed
    stacks/Pulumi.dev.yaml with `jsb:servers` set to the dev server's URL, so that $JSB_DEV_PORT alone
    moves both. Written under .jsb/ on every run; the committed file is never edited. Its secrets and
    encryption salt are copied as they are (the same passphrase decrypts them)."""
    document = yaml.safe_load(committed_stack_file().read_text())
    document["config"]["jsb:servers"] = [dev_server_url()]
    path = STATE / f"Pulumi.{STACK}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"# Written by `make up` from {_shown(committed_stack_file())} with jsb:servers from "
        f"{DEV_PORT_ENV}; edit that file, not this one.\n" + yaml.safe_dump(document, sort_keys=False)
    )
    return path


def stack_flags() -> list[str]:
    """`--stack dev --config-file <that copy>`, for every Pulumi command that reads the stack's config."""
    return ["--stack", STACK, "--config-file", str(stack_config_file())]


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
    config = yaml.safe_load(committed_stack_file().read_text())["config"]
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
        port=dev_port(),
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


def _running_port() -> int | None:
    """The port in the running dev server's config (`listen: "127.0.0.1:<port>"`), if it can be read."""
    try:
        text = (STATE / "nats" / "nats-server.conf").read_text()
    except OSError:
        return None
    found = re.search(r'^listen: "[^"]*:(\d+)"$', text, re.MULTILINE)
    return int(found.group(1)) if found else None


def start_server(out_dir: Path) -> None:
    """Start the dev server in the background (it outlives this process); a no-op when it runs."""
    pid = _running_pid()
    if pid:
        port = _running_port()
        if port is not None and port != dev_port():
            raise SystemExit(
                f"the dev nats-server (pid {pid}) runs on port {port}, not {dev_port()}: run with "
                f"{DEV_PORT_ENV}={port}, or `make down {DEV_PORT_ENV}={port}` first"
            )
        print(f"nats-server already running (pid {pid}) on {dev_server_url()}")
        return
    server = dev_server(out_dir)
    server.detach = True
    try:
        server.start()
    except (RuntimeError, TimeoutError) as err:  # its message carries the whole server log
        raise SystemExit(_start_failure(server, err)) from None
    assert server.process is not None
    _pid_file().write_text(str(server.process.pid))
    _loaded_file().write_text(accounts_file(out_dir).read_text())
    print(f"nats-server started on {server.url} (pid {server.process.pid}, store {server.store_dir})")


def _start_failure(server: LocalNatsServer, err: Exception) -> str:
    """One line for a dev server that did not start: the server's own fatal line, and what to do."""
    log = server.store_dir / "nats-server.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    fatal = [
        re.sub(r"^.*?\[(?:FTL|ERR)\] ", "", line) for line in lines if re.search(r"\[(?:FTL|ERR)\] ", line)
    ]
    reason = fatal[-1] if fatal else str(err).splitlines()[0]
    hint = (
        f"; another server on port {dev_port()}? set {DEV_PORT_ENV} to a free port"
        if "listen" in reason
        else ""
    )
    return f"the dev nats-server did not start on {server.url}: {reason}{hint} (log: {_shown(log)})"


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
    try:
        result = subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=capture)
    except FileNotFoundError:
        raise SystemExit(
            "pulumi: not on PATH; `make up` puts the CLI of scripts/ensure-pulumi there (see README)"
        ) from None
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
        # it holds the app's seed: mode 0600, never written through a link planted there
        replace_file(cpath, (json.dumps(creds, indent=2, sort_keys=True) + "\n").encode("utf-8"), 0o600)
        written.append(cpath)
    return written


def up(out_dir: Path) -> None:
    env = pulumi_env()
    start_server(out_dir)
    select_stack(env)
    pulumi(["up", "--yes", "--refresh", *stack_flags()], env)  # --refresh: repair drift too
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
        "imports."
    )
    print("\nCheck that an app can work (connect, publish, pull; says plainly what is denied):")
    for command in doctor_commands(outputs, out_dir):
        print(f"  {command}")
    print("\n`make down` destroys the stack and stops the server.")


def doctor_commands(outputs: dict[str, Any], out_dir: Path) -> list[str]:
    """`jsb-infra doctor` per app of the stack, with the files `up` wrote, as a shell command run from the
    project directory."""
    cli = _shown(Path(sys.executable).absolute().parent / "jsb-infra")
    return [
        shlex.join(
            [
                cli,
                "doctor",
                "--bridge",
                _shown(out_dir / stream / "bridges" / f"{app}.json"),
                "--credentials",
                _shown(out_dir / "credentials" / f"{app}.json"),
            ]
        )
        for stream, apps in outputs.get("bridges", {}).items()
        for app in apps
    ]


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
        pulumi(["destroy", "--yes", *stack_flags()], env)
    stop_server()
    for path in remove_credential_files(out_dir):
        print(f"removed {_shown(path)} (the seed of a destroyed identity)")


def remove_credential_files(out_dir: Path) -> list[Path]:
    """Delete the apps' credential files `up` writes (`<out>/credentials/*.json`, each an app's NKey
    seed) and their folder when it is left empty; returns the files removed. Called once the stack is
    destroyed: the identities are gone, and their seeds must not stay on disk."""
    folder = out_dir / "credentials"
    removed = []
    for path in sorted(folder.glob("*.json")):
        path.unlink()
        removed.append(path)
    with contextlib.suppress(OSError):  # absent, or holding files `up` did not write
        folder.rmdir()
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jsb_infra.local.dev", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "start-server", "stop-server"])
    parser.add_argument("--out", type=Path, default=STATE / "out", help="where the stack writes documents")
    args = parser.parse_args(argv)
    dev_port()  # a bad JSB_DEV_PORT stops here, before anything starts
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
