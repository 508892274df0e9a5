"""`AppPair`: one app pair as a Pulumi ComponentResource, for any Pulumi Python program.

    from jsb_infra import AppPair, AppPairArgs, Connection

    pair = AppPair(
        "orders-billing",
        AppPairArgs(stream="orders-billing-sync", apps=("orders", "billing")),
        connection=Connection.from_stack_config(),
    )

Its children, parented to it and named from it (`<name>-<role>`), are one dynamic resource per
object: `<name>-stream` (the pair's `Stream`), `<name>-<app>-consumer` (each app's durable `Consumer`)
and `<name>-<app>-permissions` (each app's `PermissionDocument`: what it may do in this pair). Each
child carries its own rendered config (derived here from the spec by the pure core, so a review sees
the exact JSON the server gets) and the connection, not the whole pair: a consumer change previews as
that consumer's update, and `--target`, `protect`, `ignore_changes` and `retain_on_delete` apply to
one object. `child_opts` sets options per child (keyed by role: `stream`, `<app>-consumer`,
`<app>-permissions`); Pulumi transforms reach the children too, as they are parented to the
component.

Invalid args fail at construction with every problem, each naming the field and the rule, before
any resource is registered. The bridges (what each app is told: subjects, durable, redelivery
settings) are plain values derived from the spec, known at preview.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pulumi
from pydantic import ValidationError

from jsb_infra.core import names
from jsb_infra.core.outputs import bridge_outputs
from jsb_infra.core.permissions import permission_document_inputs
from jsb_infra.core.spec import ConfigError, Pair, problems_of
from jsb_infra.deploy.connection import Connection
from jsb_infra.deploy.providers.consumer import Consumer, consumer_inputs
from jsb_infra.deploy.providers.permission_document import PermissionDocument
from jsb_infra.deploy.providers.stream import Stream, stream_inputs

AppPairArgs = Pair
"""The typed args of an `AppPair`: the pair spec (docs/spec.md), a pydantic model."""

TYPE = "jsb:index:AppPair"
INHERITED = ("protect", "retain_on_delete", "custom_timeouts", "deleted_with")
"""Options of the component that its server-object children take too (Pulumi itself passes only
`protect` and providers down to children)."""


def validated_pair(args: Pair | Mapping[str, Any], where: str = "AppPair args") -> Pair:
    """The pair spec from a `Pair` or a plain mapping, validated with every rule of the spec."""
    if isinstance(args, Pair):
        args = args.model_dump(mode="json")  # re-checked: a model_construct() skips the rules
    if not isinstance(args, Mapping):
        raise ConfigError([f"{where}: must be AppPairArgs(...) or a mapping, got {type(args).__name__}"])
    try:
        return Pair.model_validate(dict(args))
    except ValidationError as err:
        raise ConfigError(problems_of(err, where)) from None


def child_role_keys(pair: Pair) -> list[str]:
    """The roles of a pair's children, which are also the suffixes of their resource names."""
    return [
        "stream",
        *(f"{app}-consumer" for app in pair.apps),
        *(f"{app}-permissions" for app in pair.apps),
    ]


class AppPair(pulumi.ComponentResource):
    """Two apps syncing over one JetStream stream: the stream, each app's durable consumer and each
    app's permission document, and the bridges the apps read."""

    pair: Pair
    connection: Connection
    stream: Stream
    consumers: dict[str, Consumer]
    permissions: dict[str, PermissionDocument]
    bridges: dict[str, dict[str, Any]]
    subjects: dict[str, str]

    def __init__(
        self,
        resource_name: str,
        args: Pair | Mapping[str, Any],
        *,
        connection: Connection | None = None,
        app_servers: Sequence[str] | None = None,
        child_opts: Mapping[str, pulumi.ResourceOptions] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        pair = validated_pair(args)
        connection = connection or Connection.from_stack_config()
        unknown_roles = sorted(set(child_opts or {}) - set(child_role_keys(pair)))
        if unknown_roles:
            raise ConfigError(
                [
                    f"AppPair {resource_name!r} child_opts: unknown role(s) {', '.join(unknown_roles)}; "
                    f"the roles are {', '.join(child_role_keys(pair))}"
                ]
            )
        super().__init__(TYPE, resource_name, None, opts)
        self.pair, self.connection = pair, connection
        servers = list(app_servers or connection.servers)
        self.bridges = {app: bridge_outputs(pair, app, servers).model_dump(mode="json") for app in pair.apps}
        self.subjects = {app: names.publish_subject(app, pair.destination(app)) for app in pair.apps}

        def options(role: str, server_object: bool) -> pulumi.ResourceOptions:
            inherited = {k: getattr(opts, k, None) for k in INHERITED} if opts else {}
            if server_object and inherited.get("protect") is None:
                inherited["protect"] = pair.protect
            base = pulumi.ResourceOptions(
                parent=self, **{k: v for k, v in inherited.items() if v is not None}
            )
            return base.merge((child_opts or {}).get(role))

        conn = connection.as_input()
        self.stream = Stream(
            f"{resource_name}-stream", **stream_inputs(pair, conn), opts=options("stream", server_object=True)
        )
        self.consumers = {
            app: Consumer(
                f"{resource_name}-{app}-consumer",
                **consumer_inputs(pair, app, self.stream.created, conn),
                opts=options(f"{app}-consumer", server_object=True),
            )
            for app in pair.apps
        }
        self.permissions = {
            app: PermissionDocument(
                f"{resource_name}-{app}-permissions",
                **permission_document_inputs(pair, app),
                opts=options(f"{app}-permissions", server_object=False),
            )
            for app in pair.apps
        }
        # Small on purpose: a component's registered outputs are stored and walked on every run, and
        # the bridges and subjects are attributes (plain values) a program exports as it needs.
        self.register_outputs({"stream": pair.stream})
