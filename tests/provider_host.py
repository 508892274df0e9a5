"""Drive the real Pulumi dynamic-provider host (`python -u -m pulumi.dynamic`) over gRPC, as the engine does.

Properties are serialized with `pulumi.runtime.rpc.serialize_properties`, the pickled provider goes
in `__provider` (as `pulumi.dynamic.Resource` puts it there), and every response the host returns
is kept as text in `transcript`, so a test can prove that no admin secret ever comes back.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import nats
from google.protobuf import json_format, struct_pb2
from pulumi.dynamic import ResourceProvider
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime import rpc
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

from jsb_infra.nats_admin import JetStreamAdmin

PROVIDER_KEY = "__provider"
EXISTING = {"existing": True}
"""Old inputs standing for "the stack has this resource already" in a check."""
UNKNOWN = rpc.UNKNOWN


class ProviderCallError(RuntimeError):
    """The host aborted the call (the provider raised); `details` holds its traceback text."""

    def __init__(self, method: str, details: str):
        self.details = details
        super().__init__(f"{method} failed:\n{details}")


@dataclass
class DiffOutcome:
    changes: str  # "DIFF_NONE" | "DIFF_SOME" | "DIFF_UNKNOWN"
    replaces: list[str]
    delete_before_replace: bool


def _struct(props: dict[str, Any]) -> struct_pb2.Struct:
    return asyncio.run(rpc.serialize_properties(props, {}))


def _props(struct: struct_pb2.Struct) -> dict[str, Any]:
    out = rpc.deserialize_properties(struct, keep_unknowns=True)
    out.pop(PROVIDER_KEY, None)
    return dict(out)


class ProviderHost:
    """One host process; `configure` it once (like the engine), then call the resource methods."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-m", "pulumi.dynamic"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert self.process.stdout is not None
        port = int(self.process.stdout.readline().decode().strip())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = provider_pb2_grpc.ResourceProviderStub(self.channel)
        self.transcript: list[str] = []
        self.stderr = ""
        """What the host wrote to stderr (the engine shows it in the run's output), once closed."""

    def close(self) -> None:
        self.channel.close()
        self.process.kill()
        self.process.wait(timeout=10)
        if self.process.stderr is not None and not self.process.stderr.closed:
            self.stderr = self.process.stderr.read().decode(errors="replace")
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> ProviderHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------------------
    def _call(self, method: str, request: Any) -> Any:
        try:
            response = getattr(self.stub, method)(request, timeout=60)
        except grpc.RpcError as err:
            details = err.details() or str(err)
            self.transcript.append(details)
            raise ProviderCallError(method, details) from None
        self.transcript.append(json_format.MessageToJson(response))
        return response

    @staticmethod
    def _with_provider(provider: ResourceProvider, props: dict[str, Any]) -> dict[str, Any]:
        return {**props, PROVIDER_KEY: serialize_provider(provider)}

    # -- the ResourceProvider service ----------------------------------------------------------------
    def configure(self, config: dict[str, Any]) -> None:
        """Stack config as the engine sends it: full keys (`jsb:servers`), values as given."""
        self._call("Configure", provider_pb2.ConfigureRequest(args=_struct(config), acceptSecrets=False))

    def check(
        self, provider: ResourceProvider, news: dict[str, Any], olds: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        request = provider_pb2.CheckRequest(
            urn=urn(provider),
            olds=_struct(self._with_provider(provider, olds or {})),
            news=_struct(self._with_provider(provider, news)),
        )
        response = self._call("Check", request)
        return _props(response.inputs), [(f.property, f.reason) for f in response.failures]

    def diff(
        self, provider: ResourceProvider, id_: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> DiffOutcome:
        request = provider_pb2.DiffRequest(
            id=id_,
            urn=urn(provider),
            olds=_struct(self._with_provider(provider, olds)),
            news=_struct(self._with_provider(provider, news)),
        )
        response = self._call("Diff", request)
        return DiffOutcome(
            changes=provider_pb2.DiffResponse.DiffChanges.Name(response.changes),
            replaces=list(response.replaces),
            delete_before_replace=response.deleteBeforeReplace,
        )

    def create(self, provider: ResourceProvider, props: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        request = provider_pb2.CreateRequest(
            urn=urn(provider), properties=_struct(self._with_provider(provider, props))
        )
        response = self._call("Create", request)
        return response.id, _props(response.properties)

    def read(self, provider: ResourceProvider, id_: str, props: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        request = provider_pb2.ReadRequest(
            id=id_, urn=urn(provider), properties=_struct(self._with_provider(provider, props))
        )
        response = self._call("Read", request)
        return response.id, _props(response.properties)

    def update(
        self, provider: ResourceProvider, id_: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> dict[str, Any]:
        request = provider_pb2.UpdateRequest(
            id=id_,
            urn=urn(provider),
            olds=_struct(self._with_provider(provider, olds)),
            news=_struct(self._with_provider(provider, news)),
        )
        return _props(self._call("Update", request).properties)

    def delete(self, provider: ResourceProvider, id_: str, props: dict[str, Any]) -> None:
        request = provider_pb2.DeleteRequest(
            id=id_, urn=urn(provider), properties=_struct(self._with_provider(provider, props))
        )
        self._call("Delete", request)

    # -- the engine's sequences ----------------------------------------------------------------------
    def checked(
        self, provider: ResourceProvider, news: dict[str, Any], olds: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Check of a resource the stack already has (`olds`: its old inputs; by default a stand-in,
        as a check only asks whether there are any), as before a diff; it must pass. Returns the
        inputs the engine would carry on. A failure is raised as the engine reports it."""
        return self._passed(self.check(provider, news, olds or EXISTING))

    def up(self, provider: ResourceProvider, news: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Check + Create, as a first `pulumi up` does (the check of a create has no old inputs)."""
        return self.create(provider, self._passed(self.check(provider, news)))

    @staticmethod
    def _passed(checked: tuple[dict[str, Any], list[tuple[str, str]]]) -> dict[str, Any]:
        inputs, failures = checked
        if failures:
            raise ProviderCallError("Check", "\n".join(f"{prop}: {reason}" for prop, reason in failures))
        return inputs

    def change(
        self, provider: ResourceProvider, id_: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> tuple[DiffOutcome, dict[str, Any]]:
        """Check + Diff + Update, as a later `pulumi up` does for an in-place change."""
        inputs = self.checked(provider, news, olds)
        outcome = self.diff(provider, id_, olds, inputs)
        return outcome, self.update(provider, id_, olds, inputs)


def urn(provider: ResourceProvider) -> str:
    return f"urn:pulumi:test::jsb::pulumi-python:dynamic/jsb:{type(provider).__name__}::test"


# -- a server with an admin user whose password must never come back from the host ------------------
ADMIN_USER = "jsb-admin"
ADMIN_PASSWORD = "pw-7Qx9-distinctive-admin-secret"


def admin_server_config() -> str:
    from jsb_infra.local.server import accounts_config

    return accounts_config([], ADMIN_USER, ADMIN_PASSWORD)


def stack_config(url: str, output_dir: str | None = None) -> dict[str, Any]:
    """The stack config as the engine hands it to a provider: full keys, objects as JSON text."""
    import json

    config: dict[str, Any] = {
        "jsb:servers": json.dumps([url]),
        "jsb:admin": json.dumps({"user": ADMIN_USER, "password": ADMIN_PASSWORD}),
    }
    if output_dir:
        config["jsb:outputDir"] = output_dir
    return config


def assert_no_secret(host: ProviderHost) -> None:
    leaked = [text for text in host.transcript if ADMIN_PASSWORD in text]
    assert not leaked, f"the admin password came back in {len(leaked)} response(s)"


# -- the server side of provider tests: what an admin sees and does behind the provider's back -------
def admin_call(url: str, fn: Callable[[JetStreamAdmin], Any]) -> Any:
    """Run `fn` with an admin JetStreamAdmin on `url` (a fresh connection, closed afterwards)."""

    async def go() -> Any:
        nc = await nats.connect(url, user=ADMIN_USER, password=ADMIN_PASSWORD)
        try:
            return await fn(JetStreamAdmin(nc))
        finally:
            await nc.close()

    return asyncio.run(go())


def publish(url: str, subject: str, count: int) -> None:
    """Publish `count` small messages to `subject` as the admin."""

    async def go() -> None:
        nc = await nats.connect(url, user=ADMIN_USER, password=ADMIN_PASSWORD)
        try:
            for i in range(count):
                await nc.jetstream().publish(subject, f"m{i}".encode())
        finally:
            await nc.close()

    asyncio.run(go())
