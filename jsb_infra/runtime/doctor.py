"""`jsb-infra doctor`: can this app, with these credentials, do its job? Says plainly what is denied.

Checks, all as the app and without any JetStream management call:
1. connect (with the bridge's inbox prefix);
2. publish to its subject, as a dry run that stores nothing and so never lands in the peer's work
   queue: the probe carries `Nats-Expected-Last-Subject-Sequence` with an impossible value, so the
   stream answers on the app's inbox with "wrong last sequence" (err 10071 or 10164). That answer proves the
   publish was permitted, the subject is captured by the bridge's stream, and the PubAck path
   works. The DLQ subject (when on) is probed the same way. `--publish-event` instead publishes a
   real probe event (header `Jsb-Probe: 1`) that the peer will receive;
3. pull from its durable: a `fetch`-style request to the durable's MSG.NEXT subject with
   `max_bytes: 1, no_wait: true`. The server answers 404 (empty) or 409 (message too big for the
   request) without delivering anything, so no delivery count moves. A timeout with a permission
   violation means denied.
Exit code 0 when everything passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from typing import TextIO

import nats.errors

from jsb_infra.core import names
from jsb_infra.nats_admin import connection_problem
from jsb_infra.runtime.client import BridgeClient
from jsb_infra.runtime.config import BridgeConfigError, load_bridge, load_credentials
from jsb_infra.runtime.probe import PROBE_HEADER, probe_publish


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `jsb-infra doctor` (each falls back to the runtime's environment variables)."""
    parser.add_argument(
        "--bridge",
        help="bridge JSON: one bridge or `pulumi stack output bridges --json` (default: $JSB_BRIDGE_FILE)",
    )
    parser.add_argument("--stream", help="stream to pick from a bridges map (default: $JSB_STREAM)")
    parser.add_argument("--app", help="app to pick from a bridges map (default: $JSB_APP)")
    parser.add_argument(
        "--credentials", help="the `credentials` output as JSON (default: $JSB_CREDENTIALS_FILE)"
    )
    parser.add_argument("--nkey-seed", help="NKey user seed (default: $JSB_NKEY_SEED)")
    parser.add_argument("--creds-file", help="NATS .creds file (default: $JSB_CREDS_FILE)")
    parser.add_argument("--user", help="user name (default: $JSB_USER)")
    parser.add_argument("--password", help="password (default: $JSB_PASSWORD)")
    parser.add_argument("--token", help="token (default: $JSB_TOKEN)")
    parser.add_argument("--tls-ca", help="CA file to verify the server by (default: $JSB_TLS_CA)")
    parser.add_argument("--tls-cert", help="client certificate for mutual TLS (default: $JSB_TLS_CERT)")
    parser.add_argument("--tls-key", help="client certificate key (default: $JSB_TLS_KEY)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for each answer")
    parser.add_argument(
        "--publish-event",
        action="store_true",
        help="publish a real probe event (header Jsb-Probe: 1) that the peer app WILL receive, "
        "instead of the default dry run that stores nothing",
    )


class _Report:
    def __init__(self, out: TextIO):
        self.out = out
        self.failed = False

    def ok(self, check: str, detail: str) -> None:
        print(f"ok      {check}: {detail}", file=self.out)

    def fail(self, check: str, detail: str) -> None:
        self.failed = True
        print(f"FAILED  {check}: {detail}", file=self.out)


def _denials(client: BridgeClient, subject: str) -> list[str]:
    return [v for v in client.permission_violations if subject.lower() in v.lower()]


async def _settle(client: BridgeClient) -> None:
    """Give the server's -ERR lines time to reach error_cb."""
    with contextlib.suppress(Exception):
        await client.nc.flush(timeout=1)
    await asyncio.sleep(0.1)


async def _check_publish(client: BridgeClient, report: _Report, subject: str, timeout: float) -> None:
    check = f"publish {subject}"
    probe = await probe_publish(client.nc, subject, timeout, body=b"jsb-infra doctor probe")
    if probe.outcome == "no_responders":
        report.fail(check, f"no stream captures {subject} (expected stream {client.bridge.stream})")
        return
    if probe.outcome == "timeout":
        await _settle(client)
        denied = _denials(client, subject)
        if denied:
            report.fail(check, f"DENIED: {denied[0]}")
        else:
            report.fail(
                check,
                f"no answer within {timeout}s (reply inbox {client.bridge.inbox_prefix}.> "
                "denied, or the server is slow)",
            )
        return
    if probe.answer is None:
        report.fail(check, f"unexpected answer {probe.raw[:200]!r}")
        return
    answer, stream = probe.answer, probe.stream
    if stream != client.bridge.stream:
        report.fail(check, f"captured by stream {stream!r}, expected {client.bridge.stream!r}: {answer}")
    elif probe.leader_answered(client.bridge.stream):
        report.ok(
            check,
            f"permitted; stream {stream} answered on {client.bridge.inbox_prefix} (dry run, nothing stored)",
        )
    elif "error" in answer:
        report.fail(check, f"stream {stream} refused: {answer['error']}")
    else:
        report.fail(check, f"the dry run was stored as seq {answer.get('seq')} (unexpected)")


async def _check_publish_event(client: BridgeClient, report: _Report) -> None:
    check = f"publish event {client.bridge.publish_subject}"
    event = client.event("jsb.probe", "jsb.doctor", client.bridge.app, {"probe": True})
    try:
        ack = await client.publish_event(event, headers={PROBE_HEADER: "1"})
    except Exception as err:
        await _settle(client)
        denied = _denials(client, client.bridge.publish_subject)
        report.fail(check, f"DENIED: {denied[0]}" if denied else f"no PubAck: {err}")
        return
    report.ok(check, f"PubAck stream {ack.stream} seq {ack.seq} (event {event.event_id}, Jsb-Probe: 1)")


async def _check_pull(client: BridgeClient, report: _Report, timeout: float) -> None:
    bridge = client.bridge
    subject = names.msg_next_subject(bridge.stream, bridge.durable)
    check = f"pull {bridge.stream}/{bridge.durable}"
    inbox = client.nc.new_inbox()
    sub = await client.nc.subscribe(inbox)
    try:
        request = json.dumps({"batch": 1, "max_bytes": 1, "no_wait": True}).encode()
        await client.nc.publish(subject, request, reply=inbox)
        try:
            msg = await sub.next_msg(timeout=timeout)
        except nats.errors.TimeoutError:
            await _settle(client)
            denied = _denials(client, subject) + _denials(client, inbox.rsplit(".", 1)[0])
            if denied:
                report.fail(check, f"DENIED: {'; '.join(denied)}")
            else:
                report.fail(check, f"no answer within {timeout}s from {subject}")
            return
        status = (msg.headers or {}).get("Status", "")
        description = (msg.headers or {}).get("Description", "")
        if status == "503":
            report.fail(check, f"no consumer {bridge.durable} on stream {bridge.stream} (503 no responders)")
        elif status in ("404", "408") or (status == "409" and "MaxBytes" in description):
            detail = "empty" if status == "404" else "messages waiting"
            report.ok(check, f"permitted ({detail}; nothing delivered)")
        elif not status:
            report.fail(check, "a message was delivered to the probe (unexpected); it will be redelivered")
        else:
            report.fail(check, f"server answered {status} {description}")
    finally:
        await sub.unsubscribe()


def _plain_or_server_tls(servers: list[str]) -> str:
    if any(url.startswith("tls://") for url in servers):
        return "TLS (system CAs; set --tls-ca or JSB_TLS_CA for a private CA)"
    return "none configured (TLS only if the server asks for it, verified by the system CAs)"


async def run_async(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """The checks; prints one line each and returns the exit code."""
    report = _Report(out or sys.stdout)
    try:
        bridge = load_bridge(args.bridge, stream=args.stream, app=args.app)
        credentials = load_credentials(
            nkey_seed=args.nkey_seed,
            creds_file=args.creds_file,
            user=args.user,
            password=args.password,
            token=args.token,
            credentials=args.credentials,
            stream=bridge.stream,
            app=bridge.app,
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        )
    except BridgeConfigError as err:
        report.fail("config", "; ".join(err.problems))
        return 1
    report.ok("config", f"stream {bridge.stream}, app {bridge.app}, servers {', '.join(bridge.servers)}")
    report.ok("auth", credentials.describe().split(" over ")[0])
    report.ok("tls", credentials.tls.describe() if credentials.tls else _plain_or_server_tls(bridge.servers))
    client = BridgeClient(
        bridge,
        credentials,
        name=f"jsb-doctor-{bridge.app}",
        connect_attempts=1,
        reconnect_time_wait=0.2,
        connect_timeout=args.timeout,
        publish_timeout=args.timeout,
        publish_budget=args.timeout,  # a check answers within its timeout, not after an election's budget
    )
    try:
        await client.connect()
    except Exception as err:
        reasons = list(dict.fromkeys(connection_problem(e) for e in client.errors)) or [
            connection_problem(err)
        ]
        report.fail(
            "connect", f"{', '.join(bridge.servers)} as {credentials.describe()}: {'; '.join(reasons)}"
        )
        return 1
    try:
        report.ok("connect", f"{client.nc.connected_url.geturl()} as {credentials.describe()}")  # type: ignore[union-attr]
        if args.publish_event:
            await _check_publish_event(client, report)
        else:
            await _check_publish(client, report, bridge.publish_subject, args.timeout)
        if bridge.dlq_subject:
            await _check_publish(client, report, bridge.dlq_subject, args.timeout)
        await _check_pull(client, report, args.timeout)
        await _settle(client)
        for violation in client.permission_violations:
            report.fail("permissions", f"DENIED: {violation}")
    finally:
        await client.close()
    return 1 if report.failed else 0


def run(args: argparse.Namespace) -> int:
    """Entry point for `jsb-infra doctor`."""
    return asyncio.run(run_async(args))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jsb-infra doctor", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
