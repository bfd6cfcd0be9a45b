"""The whole pipeline on this machine: paid→sent latency and throughput per stage under a surge
of signed webhooks, next to the bare ceilings measured in the same run on the same broker and
database (a 3-hop aiokafka relay, a batched SKIP LOCKED claim), and each service's peak RSS.

Phases, in this order, each load from a separate load process (bench/load.py):
- "idle": no orders for TASLEEM_BENCH_IDLE_S (20 s): each part's CPU as % of one core;
- "quiet": one order once nothing was sent for TASLEEM_BENCH_QUIET_S (60 s): its latency;
- "steady": TASLEEM_BENCH_LOW_RATE (100) orders/s for TASLEEM_BENCH_LOW_SECONDS (30 s);
- "surge": TASLEEM_BENCH_RATE (1000) orders/s for TASLEEM_BENCH_SECONDS (60 s).
Steady and surge print the latency per hop (bench/hops.py) and the CPU per delivered order of
each part, read from outside before and after the phase (bench/cpu.py); the bare relay's CPU
per message is read the same way. Shorter runs: set the phases' seconds lower.
TASLEEM_BENCH_PROFILE=allocator,notifier samples those services with py-spy during the surge.
TASLEEM_BENCH_REPLICAS=allocator=2,notifier=2 runs that many processes of those stages, each in
its stage's consumer group (StackOptions.replicas); CPU figures are per stage, summed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil
from rich.console import Console

from bench import cpu, hops, load, profiling, relay
from bench.bench_allocator import ACCOUNT, SKUS, bare_claims
from bench.common import BenchResult, percentile, process_family
from bench.follow import Flow, Follower
from bench.plot import draw
from deploy.embedded.stack import Stack, StackOptions, parse_replicas
from services.allocator.main import SQL
from shared.db import migrate

RESULTS = Path(__file__).parent / "results"
MIB = 1024 * 1024


def _env(name: str, default: float) -> float:
    return float(os.environ.get(f"TASLEEM_BENCH_{name}", default))


RATE = _env("RATE", 1000)
SECONDS = _env("SECONDS", 60)
LOW_RATE = _env("LOW_RATE", 100)
LOW_SECONDS = _env("LOW_SECONDS", 30)
DRAIN_S = _env("DRAIN_S", 120)
IDLE_S = _env("IDLE_S", 20)
QUIET_S = _env("QUIET_S", 60)
PROFILE = [s for s in os.environ.get("TASLEEM_BENCH_PROFILE", "").split(",") if s]
REPLICAS = parse_replicas(os.environ.get("TASLEEM_BENCH_REPLICAS", ""))
BARE_CODES = 100_000
PROFILE_S = int(min(SECONDS, 30))
PROFILE_RATE = profiling.RATE
SERVICES = ("ingest", "allocator", "notifier", "restocker")
SYSTEM = (*SERVICES, "postgres", "broker")
# the budget per delivered order at 400/s (ms), as targets of the surge's figures
CPU_TARGETS = {
    "ingest": 0.25,
    "allocator": 0.10,
    "notifier": 0.25,
    "postgres": 0.20,
    "broker": 0.20,
    "system total": 1.0,
    "sandbox + load": 0.8,
}


class RssPeaks:
    """Samples each process's resident memory (PostgreSQL with its backends) twice a second."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.peak_mib: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            for name, process in self.stack.all_processes().items():
                family = process_family(process.pid, children=name == "postgres")
                with contextlib.suppress(psutil.Error):
                    rss = sum(p.memory_info().rss for p in family) / MIB
                    if family:
                        self.peak_mib[name] = max(rss, self.peak_mib.get(name, 0.0))
            await asyncio.sleep(0.5)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass
class Load:
    start: float  # wall times of the load process's run
    end: float
    acknowledged: int
    cpu_s: float  # the load process's CPU seconds


async def surge(home: Path, name: str, rate: float, seconds: float) -> Load:
    """One load profile from its own process."""
    out = home / f"load-{name}.json"
    started = time.time()
    process = await load.start(home, max(int(rate * seconds), 1), rate, out, tag=name.upper())
    tracked = cpu.Tracked(process.pid)
    if await process.wait() != 0:
        raise RuntimeError(f"the load process failed ({process.returncode})")
    orders = load.read(out)
    return Load(
        started, time.time(), sum(1 for o in orders if o.acknowledged), await tracked.stop()
    )


@dataclass
class PhaseCost:
    """What a loaded phase cost, from the readings before its load and after its drain."""

    used: dict[str, float]  # CPU seconds per part (the load process included)
    delivered: int  # messages sent between the two readings

    def per_order_ms(self) -> dict[str, float]:
        grouped = dict(self.used)
        grouped["system total"] = sum(self.used.get(n, 0.0) for n in SYSTEM)
        grouped["sandbox + load"] = self.used.get("sandbox", 0.0) + self.used.get("load", 0.0)
        return cpu.per_order_ms(grouped, self.delivered)


def stack_parts(stack: Stack) -> cpu.Parts:
    return cpu.Parts(lambda: {n: (p.pid, True) for n, p in stack.all_processes().items()})


def by_stage(used: dict[str, float]) -> dict[str, float]:
    """Replicas ("notifier-2") summed into their stage ("notifier")."""
    summed: dict[str, float] = {}
    for name, value in used.items():
        stage, _, number = name.rpartition("-")
        key = stage if number.isdigit() and stage else name
        summed[key] = summed.get(key, 0.0) + value
    return summed


async def drained(flow: Flow, limit_s: float) -> float:
    """Wait until every received order has a message sent (or `limit_s`); the seconds waited."""
    started = time.monotonic()
    await asyncio.sleep(0.5)  # the follower has read the last order.paid by then
    while time.monotonic() - started < limit_s:
        if flow.total("sent") >= flow.total("received"):
            break
        await asyncio.sleep(0.5)
    return time.monotonic() - started


def phase_latencies(flow: Flow, start: float, end: float) -> list[float]:
    return [lat.ms for lat in flow.latencies if start <= lat.paid_at < end]


def backlog_growth(flow: Flow, start: float, end: float) -> float:
    """Orders per second by which received − sent grew over the phase's second half."""

    def backlog(at: float) -> int:
        return flow.total("received", until=at) - flow.total("sent", until=at)

    middle = (start + end) / 2
    return (backlog(end) - backlog(middle)) / max(end - middle, 1e-9)


async def bare_skip_locked(dsn: str) -> float:
    """Codes/s claimed by the bare batched SKIP LOCKED loop, in a scratch schema of the same
    database (bench_allocator measures the same loop on a 1M-code vault)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP SCHEMA IF EXISTS bench_bare CASCADE")
        await migrate(conn, "bench_bare", SQL)
        rows = (
            (ACCOUNT, SKUS[i % len(SKUS)], os.urandom(32), "k1:sealed") for i in range(BARE_CODES)
        )
        await conn.copy_records_to_table(
            "codes",
            records=rows,
            columns=["account", "sku", "fingerprint", "sealed"],
            schema_name="bench_bare",
        )
        await conn.execute("ANALYZE bench_bare.codes")
        await conn.execute("SET search_path TO bench_bare")
        return await bare_claims(conn, BARE_CODES // 2)
    finally:
        await conn.execute("DROP SCHEMA IF EXISTS bench_bare CASCADE")
        await conn.close()


async def run(console: Console) -> BenchResult:
    result = BenchResult("pipeline")
    stamp = time.strftime("%Y%m%dT%H%M%S")
    RESULTS.mkdir(exist_ok=True)
    units = int((RATE * SECONDS + LOW_RATE * (LOW_SECONDS + 5)) * 1.5 / 3) + 1000
    with tempfile.TemporaryDirectory(prefix="tasleem-bench-") as tmp:
        home = Path(tmp)
        options = StackOptions(
            home=home,
            demo_stock_per_sku=units,
            database_url=None,
            kafka_bootstrap=None,
            replicas=REPLICAS,
        )
        stack = Stack(options)
        console.print(f"starting the stack with {units:,} codes per sku …")
        try:
            info = await stack.start()
            follower = Follower(info["kafka"])
            await follower.start()
            rss = RssPeaks(stack)
            rss.start()
            flow = follower.flow
            parts = stack_parts(stack)
            phases: dict[str, tuple[float, float]] = {}
            costs: dict[str, PhaseCost] = {}
            try:
                console.print("warm-up: 5 s")
                await surge(home, "warmup", LOW_RATE, 5)
                await drained(flow, 30)
                quiet_since = time.monotonic()
                console.print(f"idle: {IDLE_S:g} s with no orders")
                before = parts.read()
                await asyncio.sleep(IDLE_S)
                after = parts.read()
                idle = by_stage(cpu.core_percent(after.minus(before), after.at - before.at))
                await asyncio.sleep(max(QUIET_S - (time.monotonic() - quiet_since), 0))
                console.print(f"one order after {QUIET_S:g} s quiet")
                quiet = await surge(home, "quiet", 1, 1)
                await drained(flow, 30)
                phases["quiet"] = (quiet.start, quiet.end)

                async def loaded(name: str, rate: float, seconds: float, drain_s: float) -> Load:
                    before = parts.read()
                    sent_before = flow.total("sent")
                    done = await surge(home, name, rate, seconds)
                    phases[name] = (done.start, done.end)
                    waited = await drained(flow, drain_s)
                    phases[f"{name} drain"] = (done.end, done.end + waited)
                    used = by_stage(parts.read().minus(before))
                    used["load"] = done.cpu_s
                    costs[name] = PhaseCost(used, flow.total("sent") - sent_before)
                    return done

                console.print(f"steady: {LOW_RATE:g} orders/s for {LOW_SECONDS:g} s")
                acked_low = (await loaded("steady", LOW_RATE, LOW_SECONDS, 60)).acknowledged
                console.print(f"surge: {RATE:g} orders/s for {SECONDS:g} s")
                profilers = await _start_profiles(stack, stamp)
                acked_high = (await loaded("surge", RATE, SECONDS, DRAIN_S)).acknowledged
                drain_s = phases["surge drain"][1] - phases["surge drain"][0]
                undelivered = flow.total("received") - flow.total("sent")
                phases["drain"] = phases.pop("surge drain")
                phases.pop("steady drain")
                profiles = await _finish_profiles(profilers, console)
            finally:
                await rss.stop()
                await follower.stop()
            called = await hops.provider_called(info["database"])
            console.print("bare 3-hop relay …")
            relay_parts = cpu.Parts(
                lambda: {"broker": (stack.all_processes()["broker"].pid, False)},
                {"relay (this process)": cpu.own_cpu_seconds},
            )
            before = relay_parts.read()
            relay_low = await relay.measure(info["kafka"], LOW_RATE, min(LOW_SECONDS, 20))
            relay_cost = cpu.per_order_ms(relay_parts.read().minus(before), len(relay_low))
            relay_high = await relay.measure(info["kafka"], RATE, min(SECONDS, 10))
            console.print("bare SKIP LOCKED …")
            bare = await bare_skip_locked(info["database"])
            died = [n for n, p in stack.processes.items() if not p.running()]
        finally:
            await asyncio.to_thread(stack.stop)

    steady = phase_latencies(flow, *phases["steady"])
    high = phase_latencies(flow, *phases["surge"])
    s_start, s_end = phases["surge"]
    surge_codes_per_s = sum(
        lat.codes for lat in flow.latencies if s_start <= lat.seen_at < s_end
    ) / max(s_end - s_start, 1e-9)
    offered = flow.total("received", s_start, s_end) / max(s_end - s_start, 1e-9)
    sent_per_s = flow.total("sent", s_start, s_end) / max(s_end - s_start, 1e-9)
    relay_p50 = percentile(relay_low, 0.5)
    steady_p50 = percentile(steady, 0.5)

    result.add(f"steady {LOW_RATE:g}/s: paid→sent p50", steady_p50, "ms", "<= 50")
    result.add(f"steady {LOW_RATE:g}/s: paid→sent p99", percentile(steady, 0.99), "ms", "<= 150")
    result.add(
        f"surge {RATE:g}/s: orders received",
        offered,
        "orders/s",
        f">= {RATE * 0.98:g}",
        "accepted by the gateway while the load ran",
    )
    result.add(f"surge {RATE:g}/s: messages sent", sent_per_s, "msgs/s", f">= {RATE * 0.98:g}")
    result.add(f"surge {RATE:g}/s: paid→sent p50", percentile(high, 0.5), "ms")
    result.add(f"surge {RATE:g}/s: paid→sent p99", percentile(high, 0.99), "ms", "<= 1000")
    result.add(
        f"surge {RATE:g}/s: backlog growth, 2nd half",
        backlog_growth(flow, s_start, s_end),
        "orders/s",
        f"<= {RATE * 0.02:g}",
        "received − sent; 0 = keeping up",
    )
    result.add(
        "surge: left undelivered after drain",
        undelivered,
        "orders",
        "<= 0",
        f"after waiting {drain_s:.0f} s",
    )
    result.add(
        f"bare 3-hop relay at {LOW_RATE:g}/s: p50",
        relay_p50,
        "ms",
        note=f"p99 {percentile(relay_low, 0.99):.1f} ms",
    )
    result.add(
        f"bare 3-hop relay at {RATE:g}/s: p50",
        percentile(relay_high, 0.5),
        "ms",
        note=f"p99 {percentile(relay_high, 0.99):.1f} ms, {len(relay_high)} msgs",
    )
    result.add(
        "pipeline p50 / relay p50", steady_p50 / relay_p50, "ratio", "<= 3", f"at {LOW_RATE:g}/s"
    )
    steady_p99 = percentile(steady, 0.99)
    first = phase_latencies(flow, *phases["quiet"])
    result.add(
        f"first order after {QUIET_S:g} s quiet: paid→sent",
        max(first, default=float("nan")),
        "ms",
        f"<= {steady_p99:.0f}",
        "target: the steady p99 of this run",
    )
    for phase in ("steady", "surge"):
        for hop, (p50, p99, n) in hops.summary(
            hops.per_hop(flow.moments, called, *phases[phase])
        ).items():
            result.add(f"{phase} hop p50: {hop}", p50, "ms", note=f"p99 {p99:.1f} ms, n={n}")
    if not called:
        result.add(
            "provider called", float("nan"), "", note="the notifier's journal was not readable"
        )
    for phase, rate in (("steady", LOW_RATE), ("surge", RATE)):
        cost = costs[phase]
        for part, ms in cost.per_order_ms().items():
            target = f"<= {CPU_TARGETS[part]:g}" if phase == "surge" and part in CPU_TARGETS else ""
            result.add(
                f"{phase} {rate:g}/s CPU/order: {part}", ms, "ms", target, f"{cost.delivered} sent"
            )
    for part, share in sorted(idle.items()):
        result.add(f"idle CPU: {part}", share, "% core", note=f"over {IDLE_S:g} s, no orders")
    result.add(
        "idle CPU: system total",
        sum(idle.get(n, 0.0) for n in SYSTEM),
        "% core",
        "<= 3",
        "services, PostgreSQL, broker",
    )
    for part, ms in relay_cost.items():
        result.add(
            f"bare relay at {LOW_RATE:g}/s CPU/message: {part}",
            ms,
            "ms",
            note=f"{len(relay_low)} msgs, 3 hops",
        )
    result.add("bare SKIP LOCKED claim", bare, "codes/s", note="same database, 500 per tx")
    result.add(
        "pipeline codes / bare claims",
        100 * surge_codes_per_s / bare,
        "%",
        ">= 25",
        f"{surge_codes_per_s:,.0f} codes/s sent during the surge",
    )
    for name, mib in sorted(rss.peak_mib.items()):
        service = name in ("ingest", "allocator", "notifier", "restocker")
        note = "" if service else "reference"
        if name == "postgres":
            note = "postmaster + backends; shared buffers counted in each"
        result.add(f"peak RSS: {name}", mib, "MiB", "<= 150" if service else "", note)
    for stage, count in REPLICAS.items():
        result.add(f"processes: {stage}", count, "", note="one consumer group")
    if died:
        result.add("services that died", len(died), "", "<= 0", ", ".join(died))

    plot = RESULTS / f"pipeline-{stamp}.png"
    draw(flow, phases, plot)
    console.print(f"plot: {plot}")
    result.details.update(
        plot=str(plot),
        acknowledged={"steady": acked_low, "surge": acked_high},
        cpu_seconds={phase: cost.used for phase, cost in costs.items()},
        delivered={phase: cost.delivered for phase, cost in costs.items()},
        idle_core_percent=idle,
        phases={k: [v[0] - flow.started, v[1] - flow.started] for k, v in phases.items()},
        per_second={k: dict(sorted(v.items())) for k, v in flow.per_second.items()},
        profiles=profiles,
        settings=dict(
            rate=RATE,
            seconds=SECONDS,
            low_rate=LOW_RATE,
            low_seconds=LOW_SECONDS,
            replicas=REPLICAS,
            idle_s=IDLE_S,
            quiet_s=QUIET_S,
        ),
    )
    return result


async def _start_profiles(stack: Stack, stamp: str) -> dict[str, tuple[Path, object]]:
    started: dict[str, tuple[Path, object]] = {}
    for name in PROFILE:
        pid = stack.processes[name].pid
        out = RESULTS / f"profile-{stamp}-{name}.txt"
        if pid is not None:
            process = await profiling.record(pid, PROFILE_S, out)
            if process is not None:
                started[name] = (out, process)
    return started


async def _finish_profiles(
    started: dict[str, tuple[Path, object]], console: Console
) -> dict[str, list[tuple[str, float]]]:
    found = {}
    for name, (out, process) in started.items():
        assert isinstance(process, asyncio.subprocess.Process)
        _, err = await process.communicate()
        if not out.exists():
            console.print(f"py-spy on {name} failed: {err.decode(errors='replace')[-300:]}")
            continue
        found[name] = profiling.summary(out)
        console.print(f"[bold]{name}[/bold]: where the time goes ({out})")
        (_, samples), *frames = found[name]
        busy = samples / (PROFILE_RATE * PROFILE_S)  # py-spy leaves out time spent idle
        console.print(f"  busy {busy:.0%} of one core; share of its busy samples:")
        for frame, share in frames:
            console.print(f"  {share:6.1%}  {frame}")
    return found
