"""Provisioning at fleet scale: jsb-infra's `pulumi up` against the NATS CLI recipe and a raw loop.

One local nats-server (admin user, monitoring port) serves every phase; for each N (pairs):
- cli: the seed's recipe, `nats stream add` + two `nats consumer add` per pair (one process each,
  as a provisioning script runs them), then `nats stream rm -f` per pair;
- raw: one nats-py admin connection, STREAM.CREATE + 2 CONSUMER.CREATE per pair, then an INFO of
  each (what a refresh must read), then STREAM.DELETE per pair;
- jsb: the real Pulumi CLI on a file backend: create (`up`), no-op `up`, no-op `up --refresh`,
  `destroy`. During both no-op runs the server's API audit advisories are counted (writes =
  CREATE/UPDATE/DELETE requests) and so are the client connections opened (monitoring `varz`).
Times are wall clock on a possibly shared machine: read the ratios, printed per N, and time per pair.
With `--kill N`, a create of N pairs is SIGKILLed halfway and run again (it must converge). A last
section times `pulumi preview` started with SIGINT ignored (nohup, a background job of a
script) against one started normally: the language host must not make the CLI wait out a timeout.

    .venv/bin/python benchmarks/provision.py [--pairs 10,50,100] [--preview] [--checkpoints] [--kill 100]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import nats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from e2e_support import ApiAudit, kill_tree

from jsb_infra.core.spec import Pair, parse_pairs
from jsb_infra.core.topology import consumer_config, stream_config
from jsb_infra.local.server import LocalNatsServer, accounts_config, free_port
from jsb_infra.nats_admin import JetStreamAdmin

REPO = Path(__file__).resolve().parent.parent
ADMIN_USER, ADMIN_PASSWORD = "admin", "bench-admin"
PASSPHRASE = "jsb-bench"


def bench_pairs(n: int) -> list[Pair]:
    """N pairs as a platform team writes them; throwaway, so unprotected."""
    return list(
        parse_pairs(
            [
                {
                    "stream": f"bench{i:03d}-sync",
                    "apps": [f"left{i:03d}", f"right{i:03d}"],
                    "protect": False,
                    "allow_destroy_with_messages": True,
                }
                for i in range(n)
            ]
        ).pairs
    )


def ensure(script: str) -> Path | None:
    """The bin dir a scripts/ensure-* prints, or None (with its message) when it fails."""
    result = subprocess.run([str(REPO / "scripts" / script)], capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        return None
    return Path(result.stdout.strip())


@dataclass
class Server:
    """The bench's nats-server, with its monitoring port for connection counts."""

    scratch: Path
    http_port: int = field(default_factory=free_port)
    server: LocalNatsServer | None = None

    def start(self) -> str:
        extra = accounts_config([], ADMIN_USER, ADMIN_PASSWORD) + f"http: 127.0.0.1:{self.http_port}\n"
        self.server = LocalNatsServer(store_dir=self.scratch / "nats", extra_config=extra).start()
        return self.server.url

    def total_connections(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/varz", timeout=5) as resp:
            return int(json.load(resp)["total_connections"])

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


# -- the NATS CLI recipe ---------------------------------------------------------------------------------
def cli_recipe(nats_bin: Path, url: str, pairs: list[Pair]) -> dict[str, float]:
    """The seed's commands for each pair, one process per command, as a provisioning script runs them.

    Spelled as NATS CLI v0.5.0 accepts them: `--retention work`, `--subjects` once per subject,
    `--wait` for the ack wait; it has no flag for an explicit backoff list, so none is set."""
    base = [str(nats_bin), "--server", url, "--user", ADMIN_USER, "--password", ADMIN_PASSWORD]

    def run(args: list[str]) -> None:
        subprocess.run([*base, *args], check=True, capture_output=True, text=True)

    start = time.perf_counter()
    for pair in pairs:
        a, b = pair.apps
        subjects = [arg for subject in pair.subjects() for arg in ("--subjects", subject)]
        run(
            [
                "stream",
                "add",
                pair.stream,
                *subjects,
                "--retention",
                "work",
                "--storage",
                "file",
                "--defaults",
            ]
        )
        for app, source in ((a, b), (b, a)):
            run(
                [
                    *("consumer", "add", pair.stream, f"{app}-workers", "--filter", f"{source}.sync.{app}"),
                    *("--ack", "explicit", "--pull", "--deliver", "all", "--max-deliver", "5"),
                    *("--wait", "30s", "--replay", "instant", "--max-pending", "25000", "--defaults"),
                ]
            )
    created = time.perf_counter() - start
    start = time.perf_counter()
    for pair in pairs:
        run(["stream", "rm", "-f", pair.stream])
    return {"create": created, "destroy": time.perf_counter() - start}


# -- the raw loop -------------------------------------------------------------------------------------
async def raw_loop(url: str, pairs: list[Pair]) -> dict[str, float]:
    """One admin connection: the least any provisioning tool could do."""
    nc = await nats.connect(url, user=ADMIN_USER, password=ADMIN_PASSWORD)
    js = JetStreamAdmin(nc)
    try:
        start = time.perf_counter()
        for pair in pairs:
            await js.create_stream(stream_config(pair))
            for app in pair.apps:
                await js.create_consumer(pair.stream, consumer_config(pair, app))
        created = time.perf_counter() - start
        start = time.perf_counter()
        for pair in pairs:
            await js.stream_info(pair.stream)
            for app in pair.apps:
                await js.consumer_info(pair.stream, f"{app}-workers")
        read = time.perf_counter() - start
        start = time.perf_counter()
        for pair in pairs:
            await js.delete_stream(pair.stream)
        return {"create": created, "read": read, "destroy": time.perf_counter() - start}
    finally:
        await nc.close()


# -- jsb-infra through the Pulumi CLI -------------------------------------------------------------------
class PulumiProject:
    """A throwaway copy of the project with a file backend; one stack per N."""

    def __init__(self, scratch: Path, bin_dir: Path, url: str, *, preview: bool, checkpoints: bool):
        self.dir = scratch / "project"
        (self.dir / "stacks").mkdir(parents=True)
        shutil.copy(REPO / "stacks" / "__main__.py", self.dir / "stacks" / "__main__.py")
        project = (REPO / "Pulumi.yaml").read_text().replace("virtualenv: .venv", f"virtualenv: {sys.prefix}")
        (self.dir / "Pulumi.yaml").write_text(project)
        (scratch / "state").mkdir()
        self.url, self.scratch, self.preview = url, scratch, preview
        self.env = {
            **os.environ,
            "PULUMI_BACKEND_URL": f"file://{scratch / 'state'}",
            "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
            "PULUMI_HOME": str(scratch / "home"),
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.prefix) / "bin"), os.environ["PATH"]]),
        }
        if not checkpoints:
            self.env["PULUMI_SKIP_CHECKPOINTS"] = "true"
        self.log = scratch / "pulumi.log"

    def stack(self, name: str, pairs: list[Pair]) -> None:
        config = {
            "jsb:servers": [self.url],
            "jsb:admin": {"user": ADMIN_USER, "password": ADMIN_PASSWORD},
            "jsb:outputDir": str(self.scratch / "out" / name),
            "jsb:pairs": [p.model_dump(mode="json") for p in pairs],
        }
        (self.dir / "stacks" / f"Pulumi.{name}.yaml").write_text(json.dumps({"config": config}))
        self.pulumi("stack", "init", name)

    def pulumi(self, *args: str, sigint_ignored: bool = False) -> float:
        """Run `pulumi <args>`, its output appended to the log; the wall time."""
        with open(self.log, "a") as log:
            log.write(f"\n$ pulumi {' '.join(args)}\n")
            log.flush()
            start = time.perf_counter()
            result = subprocess.run(
                ["pulumi", *args],
                cwd=self.dir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None,
            )
            elapsed = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"`pulumi {' '.join(args)}` failed ({result.returncode}); see {self.log}")
        return elapsed

    def up(self, stack: str, *extra: str) -> float:
        skip = [] if self.preview else ["--skip-preview"]
        return self.pulumi("up", "--yes", *skip, "--stack", stack, *extra)

    def destroy(self, stack: str) -> float:
        skip = [] if self.preview else ["--skip-preview"]
        return self.pulumi("destroy", "--yes", *skip, "--stack", stack)


def state_sizes(project: PulumiProject, stack: str) -> dict[str, float]:
    """Bytes of exported state: the whole deployment, and per resource of each kind (inputs + outputs)."""
    exported = subprocess.run(
        ["pulumi", "stack", "export", "--stack", stack], cwd=project.dir, env=project.env, capture_output=True
    ).stdout
    resources = json.loads(exported)["deployment"]["resources"]
    sizes: dict[str, list[int]] = {}
    for r in resources:
        sizes.setdefault(r["type"].rsplit(":", 1)[-1], []).append(len(json.dumps(r)))
    out = {"state_bytes": float(len(exported))}
    out.update({f"bytes_{kind}": sum(v) / len(v) for kind, v in sizes.items()})
    return out


async def jsb_runs(project: PulumiProject, server: Server, pairs: list[Pair]) -> dict[str, float]:
    name = f"bench{len(pairs)}"
    project.stack(name, pairs)
    out: dict[str, float] = {"create": project.up(name)}
    out.update(state_sizes(project, name))
    for label, extra in (("noop", ()), ("refresh", ("--refresh",))):
        before = server.total_connections()
        async with ApiAudit(project.url, ADMIN_USER, ADMIN_PASSWORD) as audit:
            out[label] = await asyncio.to_thread(project.up, name, *extra)
        out[f"{label}_api"] = audit.total
        out[f"{label}_writes"] = audit.writes
        out[f"{label}_conns"] = server.total_connections() - before - 1  # the audit's own connection
    out["destroy"] = project.destroy(name)
    return out


async def stream_count(url: str) -> int:
    nc = await nats.connect(url, user=ADMIN_USER, password=ADMIN_PASSWORD)
    try:
        reply = json.loads((await nc.request("$JS.API.STREAM.NAMES", b"", timeout=5)).data)
        return len(reply.get("streams") or [])
    finally:
        await nc.close()


async def kill_and_converge(project: PulumiProject, pairs: list[Pair]) -> str:
    """SIGKILL `pulumi up` once half the streams exist, `pulumi cancel` its lock, `up` again: what the
    server and state hold afterwards (tests/test_e2e_crash.py asserts the same on 20 pairs)."""
    name = f"kill{len(pairs)}"
    project.stack(name, pairs)
    skip = [] if project.preview else ["--skip-preview"]
    first = subprocess.Popen(
        ["pulumi", "up", "--yes", *skip, "--stack", name],
        cwd=project.dir,
        env=project.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while await stream_count(project.url) < len(pairs) // 2 and first.poll() is None:
        await asyncio.sleep(0.05)
    kill_tree(first.pid)
    first.wait()
    at_kill = await stream_count(project.url)
    project.pulumi("cancel", "--yes", "--stack", name)
    converge = project.up(name)
    exported = subprocess.run(
        ["pulumi", "stack", "export", "--stack", name], cwd=project.dir, env=project.env, capture_output=True
    )
    resources = json.loads(exported.stdout)["deployment"]["resources"]
    kinds = Counter(r["type"].rsplit(":", 1)[-1] for r in resources if "dynamic" in r["type"])
    pair_states = [r.get("outputs") or {} for r in resources if r["type"].endswith(":PairStream")]
    adopted = sum(1 for o in pair_states if (o.get("stream") or {}).get("adopted"))
    adopted_consumers = sum(
        1 for o in pair_states for c in (o.get("consumers") or {}).values() if c.get("adopted")
    )
    [credentials] = [r.get("outputs") or {} for r in resources if r["type"].endswith(":AppCredentials")]
    keys = credentials.get("public_keys") or {}
    apps = {app for p in pairs for app in p.apps}
    identities = (
        "one identity per app" if set(keys) == apps and len(set(keys.values())) == len(apps) else "WRONG"
    )
    streams = await stream_count(project.url)
    project.destroy(name)
    return (
        f"killed with {at_kill}/{len(pairs)} streams made; the next up took {converge:.1f} s and adopted "
        f"{adopted} streams and {adopted_consumers} consumers; server {streams} streams; state "
        f"{dict(kinds)}, {len(keys)} app keys for {len(apps)} apps ({identities})"
    )


def sigint_stall(project: PulumiProject) -> dict[str, float]:
    """`pulumi preview` of a 1-pair stack started normally vs with SIGINT ignored (best of 3 each,
    alternating)."""
    project.stack("sigint", bench_pairs(1))
    project.up("sigint")
    runs: dict[str, list[float]] = {"normal": [], "sigint_ignored": []}
    for _ in range(3):
        runs["normal"].append(project.pulumi("preview", "--stack", "sigint"))
        runs["sigint_ignored"].append(project.pulumi("preview", "--stack", "sigint", sigint_ignored=True))
    times = {label: min(values) for label, values in runs.items()}
    project.destroy("sigint")
    return times


# -- report -----------------------------------------------------------------------------------------------
def marginal_costs(runs: dict[int, dict[str, float]]) -> str:
    """What each further pair costs between consecutive N (the fixed start-up of the CLI, the program
    and the provider host cancels out): equal figures mean the cost is linear in the pairs."""
    ns = sorted(runs)
    lines = ["marginal ms per pair (between consecutive N; flat = linear):"]
    for label in ("create", "noop", "refresh", "destroy"):
        steps = [
            f"{a}->{b}: {1000 * (runs[b][label] - runs[a][label]) / (b - a):.0f}"
            for a, b in itertools.pairwise(ns)
        ]
        lines.append(f"  {label:<8} " + ", ".join(steps))
    return "\n".join(lines)


def report(n: int, cli: dict[str, float] | None, raw: dict[str, float], jsb: dict[str, float]) -> None:
    print(f"\n== {n} pairs ==")
    rows = [
        ("create", jsb["create"], cli["create"] if cli else None, raw["create"]),
        ("no-op up", jsb["noop"], None, raw["read"]),
        ("no-op up --refresh", jsb["refresh"], None, raw["read"]),
        ("destroy", jsb["destroy"], cli["destroy"] if cli else None, raw["destroy"]),
    ]
    print(f"{'work':<20}{'jsb s':>9}{'ms/pair':>9}{'cli s':>9}{'jsb/cli':>9}{'raw s':>9}{'jsb/raw':>9}")
    for label, j, c, r in rows:
        cli_cols = f"{c:>9.2f}{j / c:>9.2f}" if c else f"{'-':>9}{'-':>9}"
        print(f"{label:<20}{j:>9.2f}{1000 * j / n:>9.0f}{cli_cols}{r:>9.3f}{j / r:>9.0f}")
    for label in ("noop", "refresh"):
        print(
            f"{label:<8} API requests {jsb[f'{label}_api']:.0f}, writes {jsb[f'{label}_writes']:.0f}, "
            f"connections opened {jsb[f'{label}_conns']:.0f}"
        )
    print(f"destroy/create {jsb['destroy'] / jsb['create']:.2f}")
    per_kind = ", ".join(f"{k[6:]} {v:.0f}" for k, v in jsb.items() if k.startswith("bytes_"))
    print(f"state {jsb['state_bytes'] / 1024:.0f} KiB; bytes per resource: {per_kind}")


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", default="10,50,100", help="comma-separated N (default 10,50,100)")
    parser.add_argument("--preview", action="store_true", help="run up/destroy with their preview")
    parser.add_argument(
        "--checkpoints", action="store_true", help="keep the file backend's per-step checkpoints"
    )
    parser.add_argument("--no-cli", action="store_true", help="skip the NATS CLI recipe")
    parser.add_argument("--no-sigint", action="store_true", help="skip the SIGINT-ignored preview timing")
    parser.add_argument("--kill", type=int, default=0, help="kill test: SIGKILL a create of N pairs halfway")
    args = parser.parse_args()
    counts = [int(n) for n in args.pairs.split(",") if n.strip()]

    pulumi_bin = ensure("ensure-pulumi")
    if pulumi_bin is None:
        return 1
    nats_bin = None if args.no_cli else ensure("ensure-natscli")
    scratch = Path(tempfile.mkdtemp(prefix="jsb-bench-provision-"))
    server = Server(scratch)
    url = server.start()
    project = PulumiProject(scratch, pulumi_bin, url, preview=args.preview, checkpoints=args.checkpoints)
    preview = "with" if args.preview else "without"
    mode = f"{preview} preview, checkpoints {'on' if args.checkpoints else 'off'}"
    print(f"nats-server {url}; pulumi from {pulumi_bin} ({mode}); log {project.log}")
    try:
        per_pair: dict[int, float] = {}
        runs: dict[int, dict[str, float]] = {}
        for n in counts:
            pairs = bench_pairs(n)
            cli = cli_recipe(nats_bin / "nats", url, pairs) if nats_bin else None
            raw = await raw_loop(url, pairs)
            jsb = await jsb_runs(project, server, pairs)
            report(n, cli, raw, jsb)
            per_pair[n] = jsb["create"] / n
            runs[n] = jsb
        if len(per_pair) > 1:
            lo, hi = min(per_pair), max(per_pair)
            print(
                f"\ncreate time per pair: {lo} pairs {1000 * per_pair[lo]:.0f} ms, {hi} pairs "
                f"{1000 * per_pair[hi]:.0f} ms ({per_pair[hi] / per_pair[lo]:.2f}x)"
            )
            print(marginal_costs(runs))
        if args.kill:
            print(
                f"\nkill test ({args.kill} pairs): {await kill_and_converge(project, bench_pairs(args.kill))}"
            )
        if not args.no_sigint:
            stall = sigint_stall(project)
            print(
                f"\npulumi preview (1 pair): started normally {stall['normal']:.2f} s, "
                f"with SIGINT ignored {stall['sigint_ignored']:.2f} s"
            )
    finally:
        server.stop()
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
