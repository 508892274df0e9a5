"""`AppPair`: everything one pair needs on a server, as one Pulumi component (type `jsb:index:AppPair`).

Children: the stream (protected unless told otherwise; names are fixed, so replacements delete
first), each app's durable consumer (tied to the stream incarnation through `stream_created`, and
protected with the stream: removing a pair must not delete the durables its apps read from, which on
an interest stream also drops their messages), each app's NKey credential and permission document
(never protected: nothing in them is lost by making them again). Outputs: `bridges` (from the
consumers' live config, so an app is told what the server holds), `credentials_output` (secret) and
`permissions`.
"""

from __future__ import annotations

from typing import Any

import pulumi

from jsb_infra.outputs import bridge_outputs_from_live
from jsb_infra.providers.consumer import Consumer
from jsb_infra.providers.credential import AppCredential
from jsb_infra.providers.permission_document import PermissionDocument
from jsb_infra.providers.stream import Stream
from jsb_infra.spec import Pair

COMPONENT_TYPE = "jsb:index:AppPair"


class AppPair(pulumi.ComponentResource):
    stream: Stream
    consumers: dict[str, Consumer]
    credentials: dict[str, AppCredential]
    permission_documents: dict[str, PermissionDocument]
    bridges: pulumi.Output[dict[str, Any]]
    credentials_output: pulumi.Output[dict[str, Any]]
    permissions: pulumi.Output[dict[str, Any]]

    def __init__(
        self,
        name: str,
        pair: Pair,
        servers: list[str],
        opts: pulumi.ResourceOptions | None = None,
        protect: bool | None = None,
    ) -> None:
        """`protect` overrides `pair.protect` for the stream and the consumers (None: follow the spec)."""
        super().__init__(COMPONENT_TYPE, name, None, opts)
        spec = pair.model_dump(mode="json")
        child = pulumi.ResourceOptions(parent=self)
        protected = pair.protect if protect is None else protect

        self.stream = Stream(
            f"{name}-stream",
            spec,
            opts=pulumi.ResourceOptions.merge(
                child, pulumi.ResourceOptions(protect=protected, delete_before_replace=True)
            ),
        )
        self.consumers = {}
        self.credentials = {}
        self.permission_documents = {}
        for app in pair.apps:
            self.consumers[app] = Consumer(
                f"{name}-{app}-consumer",
                spec,
                app,
                stream_created=self.stream.created,
                opts=pulumi.ResourceOptions.merge(
                    child,
                    pulumi.ResourceOptions(
                        protect=protected, depends_on=[self.stream], delete_before_replace=True
                    ),
                ),
            )
            self.credentials[app] = AppCredential(f"{name}-{app}-credential", pair.stream, app, opts=child)
            self.permission_documents[app] = PermissionDocument(
                f"{name}-{app}-permissions",
                spec,
                app,
                public_key=self.credentials[app].public_key,
                opts=child,
            )

        self.bridges = pulumi.Output.all(
            **{app: consumer.config for app, consumer in self.consumers.items()}
        ).apply(
            lambda live: {
                app: bridge_outputs_from_live(pair, app, servers, live[app]).model_dump(mode="json")
                for app in pair.apps
            }
        )
        self.credentials_output = pulumi.Output.secret(
            {
                app: {"public_key": cred.public_key, "seed": cred.seed}
                for app, cred in self.credentials.items()
            }
        )
        self.permissions = pulumi.Output.from_input(
            {app: {"claims": doc.claims, "conf": doc.conf} for app, doc in self.permission_documents.items()}
        )
        self.register_outputs(
            {
                "bridges": self.bridges,
                "credentials": self.credentials_output,
                "permissions": self.permissions,
            }
        )
