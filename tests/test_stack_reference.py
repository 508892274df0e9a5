"""`jsb_infra.deploy.stack_reference` in a real second Pulumi program: one stack exports what
jsb-infra exports,
another reads one app's bridge, credentials and runtime environment through a StackReference (real
CLI, local file backend, inline programs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
import pulumi.automation as auto
import pytest
from e2e_support import offline_env, pulumi_bin_dir, pulumi_command

from jsb_infra.core.credentials import new_user_keypair, public_key_of
from jsb_infra.core.outputs import bridge_outputs
from jsb_infra.core.spec import parse_pairs
from jsb_infra.deploy.stack_reference import app_outputs
from jsb_infra.runtime.config import load_bridge, load_credentials

pytestmark = pytest.mark.e2e

PROJECT = "jsb-consumer"
PAIR = parse_pairs([{"stream": "orders-billing-sync", "apps": ["orders", "billing"]}]).pairs[0]
SERVERS = ["tls://nats.example:4222"]


def workspace(scratch: Path, bin_dir: Path) -> auto.LocalWorkspaceOptions:
    return auto.LocalWorkspaceOptions(
        env_vars=offline_env(scratch, bin_dir, "stack-reference-test"),
        pulumi_home=str(scratch / "home"),
        pulumi_command=pulumi_command(bin_dir, scratch),
        project_settings=auto.ProjectSettings(name=PROJECT, runtime="python"),
    )


def inline_stack(name: str, program: Any, options: auto.LocalWorkspaceOptions) -> auto.Stack:
    return auto.create_or_select_stack(stack_name=name, project_name=PROJECT, program=program, opts=options)


def test_one_app_of_the_infra_stack_through_a_stack_reference(tmp_path):
    bin_dir = pulumi_bin_dir()
    options = workspace(tmp_path, bin_dir)
    seeds = {app: new_user_keypair()[0] for app in PAIR.apps}

    def infra() -> None:  # what jsb-infra's program exports (credentials: one identity per app)
        pulumi.export(
            "bridges",
            {
                PAIR.stream: {
                    app: bridge_outputs(PAIR, app, SERVERS).model_dump(mode="json") for app in PAIR.apps
                }
            },
        )
        identities = {app: {"public_key": public_key_of(seed), "seed": seed} for app, seed in seeds.items()}
        pulumi.export("credentials", pulumi.Output.secret(identities))

    def consumer() -> None:
        orders = app_outputs(pulumi.StackReference(f"organization/{PROJECT}/infra"), "orders")
        pulumi.export("bridge", orders.bridge.apply(lambda b: b.model_dump(mode="json")))
        pulumi.export("public_key", orders.credentials.apply(lambda c: c.public_key))
        pulumi.export("environment", orders.environment)

    inline_stack("infra", infra, options).up(on_output=lambda _: None)
    result = inline_stack("app", consumer, options).up(on_output=lambda _: None)
    outputs = result.outputs

    assert load_bridge(outputs["bridge"].value, env={}) == bridge_outputs(PAIR, "orders", SERVERS)
    assert outputs["public_key"].value == public_key_of(seeds["orders"]) and outputs["public_key"].secret
    environment = outputs["environment"]
    assert environment.secret, "the environment carries the seed: it must stay a Pulumi secret"
    assert load_bridge(env=environment.value) == bridge_outputs(PAIR, "orders", SERVERS)
    assert load_credentials(env=environment.value).nkey_seed == seeds["orders"]

    def wrong_app() -> None:
        pulumi.export(
            "env", app_outputs(pulumi.StackReference(f"organization/{PROJECT}/infra"), "shipping").environment
        )

    with pytest.raises(auto.CommandError) as failed:
        inline_stack("wrong", wrong_app, options).up(on_output=lambda _: None)
    assert "jsb-infra stack outputs for app 'shipping'" in str(failed.value)
    assert "'shipping' is not an app of stream 'orders-billing-sync'" in str(failed.value)
