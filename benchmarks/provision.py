"""Provisioning at fleet scale: jsb-infra's `pulumi up` against the NATS CLI recipe and a raw loop.

One local nats-server (admin user, monitoring port) serves every phase; for each N (pairs):
- cli: the seed's recipe, `nats stream add` + two `nats consumer add` per pair (one process each,
  as a provisioning script runs them), then `nats stream rm -f` per pair;
- raw: one nats-py admin connection, STREAM.CREATE + 2 CONSUMER.CREATE per pair, then an INFO of
  each (what a refresh must read), then STREAM.DELETE per pair;
- jsb: the real Pulumi CLI on a file backend: create (`up`), no-op `up`, no-op `up --refresh`,
  `destroy`. During both no-op runs the server's API audit advisories are counted (writes =
  CREATE/UPDATE/DELETE requests) and so are the client connections opened (monitoring `varz`);
- floor: the same four commands, the same CLI, backend and environment, on a throwaway `floor`
  project that registers jsb's resource layout for the same pairs (per pair an AppPair component with
  its Stream, Consumers and PermissionDocuments; one AppAccounts with an AppCredential per app and the
  ServerDocuments) as dynamic resources whose provider does nothing (benchmarks/floor_provider.py):
  the engine, language host and provider host alone. Each phase runs jsb then floor, back to back,
  and the registered resources of both stacks are counted from `pulumi stack export` (they must match).
Times are wall clock on a possibly shared machine: read the ratios, printed per N, and time per pair.
The report states the targets: create <= the NATS CLI recipe; no-op up and no-op up --refresh
<= 1.3x the floor; no API write on a no-op.
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
import statistics
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e_support import ApiAudit, kill_tree
from floor_provider import expected_resources

from jsb_infra.core.spec import Pair, parse_pairs
from jsb_infra.core.topology import consumer_config, stream_config
from jsb_infra.local.server import LocalNatsServer, accounts_config, free_port
from jsb_infra.nats_admin import JetStreamAdmin

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
ADMIN_USER, ADMIN_PASSWORD = "admin", "bench-admin"
PASSPHRASE = "jsb-bench"
NOOP_TARGET = 1.3  # no-op up and no-op refresh: at most this many times the floor


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
                    # sized for a fleet: the default bounds reserve ~657 MB per pair, and a server
                    # refuses reservations beyond its store (100 pairs here reserve ~6.6 GB)
                    "stream_options": {"max_msgs_per_subject": 1000, "max_msg_size": 16384},
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


# -- jsb-infra and the floor through the Pulumi CLI ----------------------------------------------------
def pulumi_env(scratch: Path, bin_dir: Path, *, checkpoints: bool) -> dict[str, str]:
    """One environment for every Pulumi run, jsb's and the floor's: file backend, passphrase, no update
    check, no plugin acquisition, checkpoints as asked; this repo and benchmarks/ (the floor's provider
    module, imported by reference by the provider host) first on PYTHONPATH."""
    (scratch / "state").mkdir(exist_ok=True)
    path = [str(BENCH), str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {
        **os.environ,
        "PULUMI_BACKEND_URL": f"file://{scratch / 'state'}",
        "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
        "PULUMI_HOME": str(scratch / "home"),
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.prefix) / "bin"), os.environ["PATH"]]),
        "PYTHONPATH": os.pathsep.join(path),
    }
    if not checkpoints:
        env["PULUMI_SKIP_CHECKPOINTS"] = "true"
    return env


class PulumiProject:
    """A throwaway project directory, run with the shared env; one stack per N."""

    def __init__(self, directory: Path, config_dir: Path, env: dict[str, str], log: Path, *, preview: bool):
        self.dir, self.config_dir, self.env, self.log, self.preview = directory, config_dir, env, log, preview

    def init_stack(self, name: str, config: dict[str, object]) -> None:
        (self.config_dir / f"Pulumi.{name}.yaml").write_text(json.dumps({"config": config}))
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

    def export(self, stack: str) -> bytes:
        return subprocess.run(
            ["pulumi", "stack", "export", "--stack", stack], cwd=self.dir, env=self.env, capture_output=True
        ).stdout


class JsbProject(PulumiProject):
    """A copy of this repo's project (`stacks/__main__.py`, the config-driven program)."""

    def __init__(self, scratch: Path, env: dict[str, str], url: str, *, preview: bool):
        directory = scratch / "project"
        (directory / "stacks").mkdir(parents=True)
        shutil.copy(REPO / "stacks" / "__main__.py", directory / "stacks" / "__main__.py")
        project = (REPO / "Pulumi.yaml").read_text().replace("virtualenv: .venv", f"virtualenv: {sys.prefix}")
        (directory / "Pulumi.yaml").write_text(project)
        super().__init__(directory, directory / "stacks", env, scratch / "pulumi.log", preview=preview)
        self.url, self.scratch = url, scratch

    def stack(self, name: str, pairs: list[Pair]) -> None:
        config = {
            "jsb:servers": [self.url],
            "jsb:admin": {"user": ADMIN_USER, "password": ADMIN_PASSWORD},
            "jsb:outputDir": str(self.scratch / "out" / name),
            "jsb:pairs": [p.model_dump(mode="json") for p in pairs],
        }
        self.init_stack(name, config)


class FloorProject(PulumiProject):
    """The engine floor: project `floor`, whose program (floor_provider.program) registers jsb's layout
    for the same pairs with a provider that does nothing."""

    def __init__(self, scratch: Path, env: dict[str, str], *, preview: bool):
        directory = scratch / "floor"
        directory.mkdir()
        (directory / "Pulumi.yaml").write_text(
            "name: floor\n"
            "description: the engine floor of benchmarks/provision.py\n"
            "runtime:\n"
            "  name: python\n"
            "  options:\n"
            "    toolchain: pip\n"
            f"    virtualenv: {sys.prefix}\n"
        )
        (directory / "__main__.py").write_text("from floor_provider import program\n\nprogram()\n")
        super().__init__(directory, directory, env, scratch / "pulumi-floor.log", preview=preview)

    @staticmethod
    def pairs_config(pairs: list[Pair]) -> list[dict[str, object]]:
        return [{"name": p.resource_name, "apps": list(p.apps)} for p in pairs]

    def stack(self, name: str, pairs: list[Pair]) -> None:
        self.init_stack(name, {"floor:pairs": self.pairs_config(pairs)})


def state_sizes(project: PulumiProject, stack: str) -> dict[str, float]:
    """Bytes of exported state: the whole deployment, and per resource of each kind (inputs + outputs);
    `resources`: how many were registered (the stack and every resource, default providers excluded)."""
    exported = project.export(stack)
    resources = json.loads(exported)["deployment"]["resources"]
    sizes: dict[str, list[int]] = {}
    for r in resources:
        sizes.setdefault(r["type"].rsplit(":", 1)[-1], []).append(len(json.dumps(r)))
    registered = sum(1 for r in resources if not r["type"].startswith("pulumi:providers:"))
    out = {"state_bytes": float(len(exported)), "resources": float(registered)}
    out.update({f"bytes_{kind}": sum(v) / len(v) for kind, v in sizes.items()})
    return out


async def jsb_and_floor_runs(
    project: JsbProject, floor: FloorProject, server: Server, pairs: list[Pair], repeat: int = 1
) -> tuple[dict[str, float], dict[str, float]]:
    """Each phase on jsb's stack, then at once the same on the floor's: the machine as alike as it gets.
    The no-op phases run `repeat` times, alternating, and report the median of each (single runs on a
    shared 2-core machine swing by a third)."""
    name = f"bench{len(pairs)}"
    project.stack(name, pairs)
    floor.stack(name, pairs)
    out: dict[str, float] = {"create": project.up(name)}
    base: dict[str, float] = {"create": floor.up(name)}
    out.update(state_sizes(project, name))
    base.update(state_sizes(floor, name))
    base["expected"] = expected_resources(floor.pairs_config(pairs))
    for label, extra in (("noop", ()), ("refresh", ("--refresh",))):
        mine: list[float] = []
        theirs: list[float] = []
        for _ in range(max(1, repeat)):
            before = server.total_connections()
            async with ApiAudit(project.url, ADMIN_USER, ADMIN_PASSWORD) as audit:
                mine.append(await asyncio.to_thread(project.up, name, *extra))
            out[f"{label}_api"] = audit.total
            out[f"{label}_writes"] = out.get(f"{label}_writes", 0.0) + audit.writes
            out[f"{label}_conns"] = server.total_connections() - before - 1  # the audit's own connection
            theirs.append(floor.up(name, *extra))
        out[label], base[label] = statistics.median(mine), statistics.median(theirs)
        if repeat > 1:
            print(
                f"  {label}: jsb {' '.join(f'{s:.2f}' for s in mine)}; "
                f"floor {' '.join(f'{s:.2f}' for s in theirs)} (medians used)",
                flush=True,
            )
    out["destroy"] = project.destroy(name)
    base["destroy"] = floor.destroy(name)
    return out, base


async def stream_count(url: str) -> int:
    nc = await nats.connect(url, user=ADMIN_USER, password=ADMIN_PASSWORD)
    try:
        reply = json.loads((await nc.request("$JS.API.STREAM.NAMES", b"", timeout=5)).data)
        return len(reply.get("streams") or [])
    finally:
        await nc.close()


async def kill_and_converge(project: JsbProject, pairs: list[Pair]) -> str:
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

    def outputs(kind: str) -> list[dict]:
        return [r.get("outputs") or {} for r in resources if r["type"].endswith(f":{kind}")]

    adopted = sum(1 for o in outputs("Stream") if o.get("adopted"))
    adopted_consumers = sum(1 for o in outputs("Consumer") if o.get("adopted"))
    keys = {o.get("app"): o.get("public_key") for o in outputs("AppCredential")}
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


def sigint_stall(project: JsbProject) -> dict[str, float]:
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
PHASES = (
    ("create", "create"),
    ("noop", "no-op up"),
    ("refresh", "no-op up --refresh"),
    ("destroy", "destroy"),
)


def marginal_costs(runs: dict[int, dict[str, float]], floors: dict[int, dict[str, float]]) -> str:
    """What each further pair costs between consecutive N (the fixed start-up of the CLI, the program
    and the provider host cancels out): equal figures mean the cost is linear in the pairs."""
    ns = sorted(runs)
    lines = ["marginal ms per pair, jsb (floor) (between consecutive N; flat = linear):"]
    for label, _ in PHASES:
        steps = [
            f"{a}->{b}: {1000 * (runs[b][label] - runs[a][label]) / (b - a):.0f} "
            f"({1000 * (floors[b][label] - floors[a][label]) / (b - a):.0f})"
            for a, b in itertools.pairwise(ns)
        ]
        lines.append(f"  {label:<8} " + ", ".join(steps))
    return "\n".join(lines)


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def targets(cli: dict[str, float] | None, jsb: dict[str, float], floor: dict[str, float]) -> list[str]:
    """The targets, each with its figures and whether this run met it."""
    lines = ["targets:"]
    if cli:
        lines.append(
            f"  create <= NATS CLI recipe: {jsb['create']:.2f} s vs {cli['create']:.2f} s "
            f"({jsb['create'] / cli['create']:.2f}x) {verdict(jsb['create'] <= cli['create'])}"
        )
    else:
        lines.append("  create <= NATS CLI recipe: not measured (--no-cli)")
    for label, work in PHASES[1:3]:
        ratio = jsb[label] / floor[label]
        lines.append(
            f"  {work} <= {NOOP_TARGET}x floor: {jsb[label]:.2f} s vs {floor[label]:.2f} s "
            f"({ratio:.2f}x) {verdict(ratio <= NOOP_TARGET)}"
        )
    writes = jsb["noop_writes"] + jsb["refresh_writes"]
    lines.append(
        f"  0 API writes on a no-op: up {jsb['noop_writes']:.0f}, up --refresh {jsb['refresh_writes']:.0f} "
        f"{verdict(writes == 0)}"
    )
    return lines


def report(
    n: int,
    cli: dict[str, float] | None,
    raw: dict[str, float],
    jsb: dict[str, float],
    floor: dict[str, float],
) -> None:
    print(f"\n== {n} pairs ==")
    registered, floor_registered = int(jsb["resources"]), int(floor["resources"])
    print(
        f"resources registered (stack export, default providers excluded): jsb {registered}, "
        f"floor {floor_registered} (the floor's layout: {floor['expected']:.0f})"
    )
    if registered != floor_registered:
        print(
            f"WARNING: the floor registers {floor_registered} resources, jsb {registered}: the floor does "
            "not mirror jsb's layout (benchmarks/floor_provider.py), so jsb/floor compares unlike work"
        )
    raw_of = {"create": raw["create"], "noop": raw["read"], "refresh": raw["read"], "destroy": raw["destroy"]}
    print(
        f"{'work':<20}{'jsb s':>9}{'ms/pair':>9}{'floor s':>9}{'jsb/flr':>9}"
        f"{'cli s':>9}{'jsb/cli':>9}{'raw s':>9}{'jsb/raw':>9}"
    )
    for label, work in PHASES:
        j, f, r = jsb[label], floor[label], raw_of[label]
        c = cli.get(label) if cli else None
        cli_cols = f"{c:>9.2f}{j / c:>9.2f}" if c else f"{'-':>9}{'-':>9}"
        print(
            f"{work:<20}{j:>9.2f}{1000 * j / n:>9.0f}{f:>9.2f}{j / f:>9.2f}{cli_cols}{r:>9.3f}{j / r:>9.0f}"
        )
    for label in ("noop", "refresh"):
        print(
            f"{label:<8} API requests {jsb[f'{label}_api']:.0f}, writes {jsb[f'{label}_writes']:.0f}, "
            f"connections opened {jsb[f'{label}_conns']:.0f}"
        )
    ratio, floor_ratio = jsb["destroy"] / jsb["create"], floor["destroy"] / floor["create"]
    print(f"destroy/create {ratio:.2f} (floor {floor_ratio:.2f})")
    per_kind = ", ".join(f"{k[6:]} {v:.0f}" for k, v in jsb.items() if k.startswith("bytes_"))
    print(
        f"state {jsb['state_bytes'] / 1024:.0f} KiB (floor {floor['state_bytes'] / 1024:.0f} KiB); "
        f"bytes per resource: {per_kind}"
    )
    print("\n".join(targets(cli, jsb, floor)))


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
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each no-op phase, alternating (medians; default 3)"
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.pairs.split(",") if n.strip()]

    pulumi_bin = ensure("ensure-pulumi")
    if pulumi_bin is None:
        return 1
    nats_bin = None if args.no_cli else ensure("ensure-natscli")
    scratch = Path(tempfile.mkdtemp(prefix="jsb-bench-provision-"))
    server = Server(scratch)
    url = server.start()
    env = pulumi_env(scratch, pulumi_bin, checkpoints=args.checkpoints)
    project = JsbProject(scratch, env, url, preview=args.preview)
    floor = FloorProject(scratch, env, preview=args.preview)
    preview = "with" if args.preview else "without"
    mode = f"{preview} preview, checkpoints {'on' if args.checkpoints else 'off'}"
    print(f"nats-server {url}; pulumi from {pulumi_bin} ({mode}); logs {project.log}, {floor.log}")
    try:
        per_pair: dict[int, float] = {}
        runs: dict[int, dict[str, float]] = {}
        floors: dict[int, dict[str, float]] = {}
        for n in counts:
            pairs = bench_pairs(n)
            cli = cli_recipe(nats_bin / "nats", url, pairs) if nats_bin else None
            raw = await raw_loop(url, pairs)
            jsb, base = await jsb_and_floor_runs(project, floor, server, pairs, args.repeat)
            report(n, cli, raw, jsb, base)
            per_pair[n] = jsb["create"] / n
            runs[n], floors[n] = jsb, base
        if len(per_pair) > 1:
            lo, hi = min(per_pair), max(per_pair)
            print(
                f"\ncreate time per pair: {lo} pairs {1000 * per_pair[lo]:.0f} ms, {hi} pairs "
                f"{1000 * per_pair[hi]:.0f} ms ({per_pair[hi] / per_pair[lo]:.2f}x)"
            )
            print(marginal_costs(runs, floors))
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
