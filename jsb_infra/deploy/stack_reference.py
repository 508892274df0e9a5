"""Consume jsb-infra's stack outputs from another Pulumi program (an app's stack, a platform's).

    import pulumi
    from jsb_infra.deploy.stack_reference import app_outputs

    infra = pulumi.StackReference("acme/jsb-infra/prod")
    orders = app_outputs(infra, "orders")
    # orders.bridge: Output[BridgeOutputs]; orders.credentials: Output[AppCredentials] (secret);
    # orders.environment: Output[dict] of JSB_BRIDGE_JSON, JSB_NKEY_SEED, ... (secret), e.g. for a
    # Kubernetes Secret's string_data or a container's env.

Both outputs are validated with the models of `jsb_infra.core.outputs` (the same ones the runtime reads), so a
stack exporting a shape this version does not know fails the preview with the field and the rule.
`credentials` may be one identity per app (`{app: {public_key, seed}}`) or the older
`{stream: {app: ...}}`. Needs the `deploy` extra (Pulumi).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi

from jsb_infra.core.credentials import public_key_of
from jsb_infra.core.outputs import AppCredentials, BridgeOutputs
from jsb_infra.ops.export import app_environment, select_app
from jsb_infra.runtime.config import BridgeConfigError


class StackOutputsError(ValueError):
    """The referenced stack's outputs do not hold a valid bridge and credentials for the app."""


@dataclass(frozen=True)
class AppOutputs:
    """One app's side of a jsb-infra stack, as Outputs."""

    bridge: pulumi.Output[BridgeOutputs]
    credentials: pulumi.Output[AppCredentials]
    environment: pulumi.Output[dict[str, str]]


def _selected(bridges: Any, credentials: Any, app: str, stream: str | None) -> dict[str, Any]:
    try:
        bridge, creds = select_app(bridges, credentials, app, stream)
    except BridgeConfigError as err:
        raise StackOutputsError(
            f"jsb-infra stack outputs for app {app!r}: " + "; ".join(err.problems)
        ) from None
    assert creds.nkey_seed is not None  # parse_app_credentials always yields a seed
    return {
        "bridge": bridge,
        "credentials": AppCredentials(public_key=public_key_of(creds.nkey_seed), seed=creds.nkey_seed),
        "environment": app_environment(bridge, creds),
    }


def app_outputs(reference: pulumi.StackReference, app: str, stream: str | None = None) -> AppOutputs:
    """`app`'s bridge, credentials and runtime environment from a jsb-infra stack's outputs."""
    selected = pulumi.Output.all(
        reference.require_output("bridges"), reference.require_output("credentials")
    ).apply(lambda outputs: _selected(outputs[0], outputs[1], app, stream))
    return AppOutputs(
        bridge=selected.apply(lambda s: s["bridge"]),
        credentials=pulumi.Output.secret(selected.apply(lambda s: s["credentials"])),
        environment=pulumi.Output.secret(selected.apply(lambda s: s["environment"])),
    )
