"""The harness of the end-to-end tests: the real Pulumi CLI, a throwaway project and a local file backend.

Nothing here writes into the repo: the project (Pulumi.yaml and the program) is copied into a temp
directory, with `virtualenv` pointing at the repo's venv; the state, PULUMI_HOME and the permission
documents live in temp directories too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import nats
import pulumi.automation as auto
import pytest
from semver import VersionInfo

from jsb_infra.core.accounts import DeployUser, account_layout, render_accounts_conf
from jsb_infra.core.spec import parse_pairs
from jsb_infra.local.server import LocalNatsServer
from jsb_infra.nats_admin import AdminConnection

REPO = Path(__file__).resolve().parent.parent
ENSURE_PULUMI = REPO / "scripts" / "ensure-pulumi"
PLUGINS = ("pulumi-language-python", "pulumi-resource-pulumi-python")
"""Besides `pulumi` itself, what `pulumi up` of a Python program with dynamic resources runs."""
SDK_VERSION = VersionInfo.parse(metadata.version("pulumi"))
"""The Python SDK; the CLI must be v3 and not older."""


def _usable_on_path() -> Path | None:
    """The bin dir of a `pulumi` on PATH that is v3, not older than the SDK, with the Python plugins."""
    found = shutil.which("pulumi")
    if not found or not all(shutil.which(plugin) for plugin in PLUGINS):
        return None
    try:
        out = subprocess.run(
            [found, "version"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PULUMI_SKIP_UPDATE_CHECK": "true"},
        ).stdout.strip()
        version = VersionInfo.parse(out.removeprefix("v"))
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if version.major != SDK_VERSION.major or version.compare(SDK_VERSION) < 0:
        return None
    return Path(found).resolve().parent


def pulumi_bin_dir() -> Path:
    """The CLI on PATH when it fits, else `scripts/ensure-pulumi` (which may build it); never a skip.

    CI must fail, not skip, when the CLI is missing: the end-to-end tests are the only proof that
    `pulumi up` works.
    """
    on_path = _usable_on_path()
    if on_path is not None:
        return on_path
    result = subprocess.run([str(ENSURE_PULUMI)], capture_output=True, text=True, cwd=REPO)
    bin_dir = Path(result.stdout.strip()) if result.stdout.strip() else None
    if result.returncode != 0 or bin_dir is None or not (bin_dir / "pulumi").exists():
        pytest.fail(
            f"the Pulumi CLI is missing and scripts/ensure-pulumi failed (status {result.returncode}):\n"
            f"{result.stderr}",
            pytrace=False,
        )
    return bin_dir


def pulumi_command(bin_dir: Path, scratch: Path) -> auto.PulumiCommand:
    """`PulumiCommand(root=...)` runs `<root>/bin/pulumi`; link a differently named bin dir into place.

    Its version check (major 3, at least 3.1.0) accepts the CLI v3.274.1 this project builds for the
    3.272.0 SDK, so the check stays on.
    """
    if bin_dir.name == "bin":
        return auto.PulumiCommand(root=str(bin_dir.parent))
    root = scratch / "pulumi-root"
    root.mkdir(parents=True, exist_ok=True)
    (root / "bin").symlink_to(bin_dir, target_is_directory=True)
    return auto.PulumiCommand(root=str(root))


def copy_project(target: Path) -> Path:
    """Pulumi.yaml and the program (not the dev stack file), with `virtualenv` made absolute."""
    (target / "stacks").mkdir(parents=True)
    shutil.copy(REPO / "stacks" / "__main__.py", target / "stacks" / "__main__.py")
    project = (REPO / "Pulumi.yaml").read_text()
    assert "virtualenv: .venv" in project, "Pulumi.yaml's runtime options changed; update the e2e harness"
    (target / "Pulumi.yaml").write_text(project.replace("virtualenv: .venv", f"virtualenv: {sys.prefix}"))
    return target


def offline_env(scratch: Path, bin_dir: Path, passphrase: str) -> dict[str, str]:
    """A local file backend, a private PULUMI_HOME, no update check, no plugin downloads."""
    (scratch / "state").mkdir(parents=True, exist_ok=True)
    return {
        "PULUMI_BACKEND_URL": f"file://{scratch / 'state'}",
        "PULUMI_CONFIG_PASSPHRASE": passphrase,
        "PULUMI_HOME": str(scratch / "home"),
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.prefix) / "bin"), os.environ.get("PATH", "")]),
    }


def local_stack(
    scratch: Path, name: str, passphrase: str, env: Mapping[str, str] | None = None
) -> auto.Stack:
    """A new stack `name` of a copy of the project (under `scratch`) on a local file backend, run by the
    CLI the tests use, with `env` added to its offline environment."""
    bin_dir = pulumi_bin_dir()
    project = copy_project(scratch / "project")
    options = auto.LocalWorkspaceOptions(
        work_dir=str(project),
        env_vars={**offline_env(scratch, bin_dir, passphrase), **(env or {})},
        pulumi_home=str(scratch / "home"),
        pulumi_command=pulumi_command(bin_dir, scratch),
    )
    return auto.create_or_select_stack(stack_name=name, work_dir=str(project), opts=options)


def set_plain_config(stack: auto.Stack, values: dict[str, Any]) -> None:
    """Structured values (lists, objects) as YAML in the stack file, as a user would write them."""
    payload = {
        key: (
            {"value": value, "secret": False}
            if isinstance(value, str)
            else {"value": json.dumps(value), "objectValue": value, "secret": False}
        )
        for key, value in values.items()
    }
    stack.workspace.set_all_config_json(stack.name, json.dumps(payload))


def set_admin(stack: auto.Stack, user: str, password: str) -> None:
    """`jsb:admin` as secret values (`pulumi config set --secret --path jsb:admin.user ...`): the
    form that works but lands in the state; docs/stack-config.md recommends naming where the
    password is read (tests/test_e2e_secrets.py)."""
    stack.set_config("jsb:admin.user", auto.ConfigValue(user, secret=True), path=True)
    stack.set_config("jsb:admin.password", auto.ConfigValue(password, secret=True), path=True)


def run_cli(stack: auto.Stack, *args: str) -> str:
    """A plain `pulumi <args> --stack <name>` in the stack's workspace; its stdout."""
    workspace = stack.workspace
    assert isinstance(workspace, auto.LocalWorkspace)
    result = workspace.pulumi_command.run(
        [*args, "--stack", stack.name], workspace.work_dir, workspace.env_vars
    )
    return result.stdout


def preview_copy(stack: auto.Stack, passphrase: str, env: Mapping[str, str]) -> Callable[..., str]:
    """`python -m jsb_infra.ops.preview_state --stack <stack>`: the stack copied into `<stack>-preview`
    with every secret redacted, under its own `passphrase`. Returns a runner of `pulumi <args> --stack
    <stack>-preview` in the stack's project with exactly `env` (the preview job's environment) and that
    passphrase; it returns stdout and fails the test on a non-zero exit."""
    work = Path(stack.workspace.work_dir)
    made = subprocess.run(
        [sys.executable, "-m", "jsb_infra.ops.preview_state", "--stack", stack.name],
        cwd=work,
        env={**env, "JSB_PREVIEW_PASSPHRASE": passphrase},
        text=True,
        capture_output=True,
    )
    assert made.returncode == 0, made.stderr
    on_copy = {**env, "PULUMI_CONFIG_PASSPHRASE": passphrase}

    def pulumi(*args: str) -> str:
        result = subprocess.run(
            ["pulumi", *args, "--stack", f"{stack.name}-preview"],
            cwd=work,
            env=on_copy,
            text=True,
            capture_output=True,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    return pulumi


def ensure_nsc() -> Path:
    """`scripts/ensure-nsc` (builds nsc v2.15.0 from the Go module proxy once): the nsc binary; a
    failure fails the test."""
    result = subprocess.run([str(REPO / "scripts" / "ensure-nsc")], capture_output=True, text=True, cwd=REPO)
    path = Path(result.stdout.strip()) if result.stdout.strip() else None
    if result.returncode != 0 or path is None or not path.exists():
        pytest.fail(f"nsc is missing and scripts/ensure-nsc failed:\n{result.stderr}", pytrace=False)
    return path


def server_with_reader(
    store: Path,
    pairs: list[dict[str, Any]],
    deploy: DeployUser,
    reader: DeployUser,
    passwords: Mapping[str, str],
) -> LocalNatsServer:
    """A started nats-server including the rendered accounts of `pairs`, whose JetStream account holds
    the deploy user and the read-only user `reader`; `passwords` sets the environment variables their
    `password_env` name (the server reads the passwords from there)."""
    store.mkdir(parents=True, exist_ok=True)
    layout = account_layout(parse_pairs(pairs).pairs)
    (store / "accounts.conf").write_text(render_accounts_conf(layout, {}, deploy, reader))
    server = LocalNatsServer(store_dir=store, extra_config='include "accounts.conf"\n', env=dict(passwords))
    return server.start()


def admin_connection(url: str, user: str, password: str) -> AdminConnection:
    return AdminConnection(servers=[url], user=user, password=password)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process below it, as a machine crash would end them.

    The Pulumi CLI starts its plugins (language host, provider hosts) in process groups of their own,
    so killing the CLI's group leaves them running (orphaned, serving forever); find them first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    doomed, todo = [], [pid]
    while todo:
        current = todo.pop()
        doomed.append(current)
        todo.extend(children.get(current, []))
    for target in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)


WRITE_ACTIONS = (".CREATE.", ".UPDATE.", ".DELETE.")
"""The `$JS.API` requests that change the server."""


class ApiAudit:
    """Counts `$JS.API` requests by subject from the server's API audit advisories, as a user of the
    JetStream account (`async with ApiAudit(url, user, password) as audit: ...`)."""

    def __init__(self, url: str, user: str, password: str):
        self.url, self.user, self.password = url, user, password
        self.subjects: Counter[str] = Counter()

    async def __aenter__(self) -> ApiAudit:
        self.nc = await nats.connect(self.url, user=self.user, password=self.password)

        async def on_advisory(msg: Any) -> None:
            self.subjects[json.loads(msg.data).get("subject", "?")] += 1

        await self.nc.subscribe("$JS.EVENT.ADVISORY.API", cb=on_advisory)
        await self.nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.sleep(0.3)  # advisories trail the replies
        await self.nc.close()

    @property
    def total(self) -> int:
        return sum(self.subjects.values())

    @property
    def writes(self) -> int:
        return sum(n for s, n in self.subjects.items() if any(a in s for a in WRITE_ACTIONS))
