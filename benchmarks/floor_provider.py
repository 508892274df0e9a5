"""The engine floor for benchmarks/provision.py: jsb-infra's resource layout with providers that do nothing.

`program()` is the whole Pulumi program of the throwaway `floor` project: for every pair of the stack
config `floor:pairs` ([{name, apps}], the jsb stack's pairs) an `AppPair` component with the children
the jsb program registers (a Stream, per app a Consumer and a PermissionDocument), and one
`AppAccounts` component with an AppCredential per app and the ServerDocuments (layout-spec.md). Every
child is a dynamic resource of `TrivialProvider`: create answers at once with small outputs, read
echoes the state, diff reports no change. What the floor's `pulumi up` costs is then the engine, the
language host and the dynamic provider host alone: what jsb-infra cannot go below with this layout.

The provider is defined here, in an importable module, so that dill pickles it by reference: the
provider host imports `floor_provider` (benchmarks/ is on the PYTHONPATH that provision.py hands the
Pulumi CLI) instead of unpickling a class body sent in every resource's state.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, Resource, ResourceProvider


class TrivialProvider(ResourceProvider):
    """No I/O: the id is the resource's name, the outputs are its (small) inputs. Like jsb-infra's
    providers (JsbProvider), its pickled reference is stored in clear, not encrypted per resource."""

    serialize_as_secret_always = False

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(props["name"], {"name": props["name"], "created": "floor"})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_, dict(props))

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return DiffResult(changes=False)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        return None


PROVIDER = TrivialProvider()


def _child(kind: type[Resource], name: str, parent: pulumi.Resource) -> Resource:
    return kind(PROVIDER, name, {"name": name}, pulumi.ResourceOptions(parent=parent))


# The same type tokens as jsb-infra's, in the `floor` module: pulumi-python:dynamic/floor:<Name>.
class Stream(Resource, module="floor", name="Stream"):
    pass


class Consumer(Resource, module="floor", name="Consumer"):
    pass


class PermissionDocument(Resource, module="floor", name="PermissionDocument"):
    pass


class AppCredential(Resource, module="floor", name="AppCredential"):
    pass


class ServerDocuments(Resource, module="floor", name="ServerDocuments"):
    pass


class AppPair(pulumi.ComponentResource):
    def __init__(self, name: str, apps: list[str]) -> None:
        super().__init__("floor:index:AppPair", name, None)
        _child(Stream, f"{name}-stream", self)
        for app in apps:
            _child(Consumer, f"{name}-{app}-consumer", self)
            _child(PermissionDocument, f"{name}-{app}-permissions", self)
        self.register_outputs({})


class AppAccounts(pulumi.ComponentResource):
    def __init__(self, name: str, apps: list[str]) -> None:
        super().__init__("floor:index:AppAccounts", name, None)
        for app in apps:
            _child(AppCredential, f"{name}-{app}-credential", self)
        _child(ServerDocuments, f"{name}-server-documents", self)
        self.register_outputs({})


def expected_resources(pairs: list[dict[str, Any]]) -> int:
    """What `program()` registers for these pairs, the stack resource included."""
    apps = {app for p in pairs for app in p["apps"]}
    return 1 + sum(2 + 2 * len(p["apps"]) for p in pairs) + 1 + len(apps) + 1


def program() -> None:
    pairs: list[dict[str, Any]] = pulumi.Config("floor").require_object("pairs")
    for p in pairs:
        AppPair(p["name"], list(p["apps"]))
    AppAccounts("accounts", sorted({app for p in pairs for app in p["apps"]}))
