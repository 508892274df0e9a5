"""The GitHub Actions example, run as far as it goes offline: its render check on a fixture repository
(passes on committed documents, fails listing what a stack change alters) and its preview step with the
real Pulumi CLI on a local file backend (no server is needed to preview a new stack)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_support import REPO, copy_project, offline_env, pulumi_bin_dir

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
    assert "pull_request" in jobs["preview"]["if"] and jobs["preview"]["needs"] == "render-check"
    assert "push" in jobs["up"]["if"] and "refs/heads/main" in jobs["up"]["if"]
    assert jobs["up"]["environment"] == "production" and jobs["up"]["concurrency"]
    assert "render --stack" in step("render-check", "render-check") and "--check" in step(
        "render-check", "render-check"
    )
    assert "pulumi preview --diff" in step("preview", "preview")
    assert "pulumi up --yes" in step("up", "up")
    for name in ("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE"):
        assert name in flow["env"]


def test_render_check_step_on_a_fixture_repository(tmp_path):
    repo = tmp_path / "repo"
    (repo / "stacks").mkdir(parents=True)
    stack_file = repo / "stacks" / "Pulumi.prod.yaml"
    stack_file.write_text(STACK_FILE.format(dlq="true", admin=ADMIN_SECRET))
    env = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
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

    # A stack file YAML 1.1 tools would misread fails as a config problem, not as a diff.
    stack_file.write_text(STACK_FILE.format(dlq="off", admin=ADMIN_SECRET))
    misread = run_step(check, repo, env)
    assert misread.returncode == 2 and "YAML 1.1 reads off as a boolean" in misread.stderr


@pytest.mark.e2e
def test_preview_step_with_the_real_cli_on_a_file_backend(tmp_path):
    bin_dir = pulumi_bin_dir()
    project = copy_project(tmp_path / "project")
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
    assert "orders-billing-sync" in preview.stdout and "to create" in preview.stdout
