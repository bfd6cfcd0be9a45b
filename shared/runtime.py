"""Process lifecycle shared by the services: admin server, signals, graceful stop.

A service describes itself in a `lifespan` (set-up before `yield`, tear-down after) that
registers long-running workers and readiness checks; `run_service` does the rest.
SIGTERM stops intake, waits up to `shutdown_grace_s` for in-flight work, then cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import uvloop
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from shared.http_errors import json_errors
from shared.logs import setup_logging
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[bool] | bool]
# A connection must finish its request headers within this, and an idle keep-alive connection
# is closed after it: aiohttp's keepalive timer also runs from the moment a connection opens,
# and partial header bytes do not reset it (200 slow-header connections held for 40 s before).
HEADER_TIMEOUT_S = 10.0


@dataclass
class Worker:
    """A long-running coroutine and the function that asks it to finish."""

    name: str
    run: Callable[[], Coroutine[Any, Any, None]]
    stop: Callable[[], None]


@dataclass
class Runtime:
    """What a service registers while it sets up."""

    name: str
    settings: ServiceSettings
    app: web.Application
    workers: list[Worker] = field(default_factory=list)
    checks: dict[str, ReadinessCheck] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # first, so every error of every route (and of the other middlewares) is JSON
        if json_errors not in self.app.middlewares:
            self.app.middlewares.insert(0, json_errors)

    def add_worker(
        self, name: str, run: Callable[[], Coroutine[Any, Any, None]], stop: Callable[[], None]
    ) -> None:
        self.workers.append(Worker(name, run, stop))

    def add_check(self, name: str, check: ReadinessCheck) -> None:
        self.checks[name] = check


Lifespan = Callable[[Runtime], contextlib.AbstractAsyncContextManager[None]]


def admin_routes(runtime: Runtime) -> list[web.RouteDef]:
    """`/healthz` (the process answers), `/readyz` (its dependencies answer), `/metrics`."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": runtime.name})

    async def readyz(_: web.Request) -> web.Response:
        results: dict[str, bool] = {}
        for name, check in runtime.checks.items():
            try:
                outcome = check()
                results[name] = bool(await outcome if asyncio.iscoroutine(outcome) else outcome)
            except Exception:
                results[name] = False
        ok = all(results.values())
        return web.json_response(
            {"status": "ready" if ok else "not_ready", "checks": results}, status=200 if ok else 503
        )

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    return [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics)]


def runner(app: web.Application, header_timeout_s: float = HEADER_TIMEOUT_S) -> web.AppRunner:
    """The runner every service serves its app with: no access log, the header timeout."""
    return web.AppRunner(
        app, access_log=None, handle_signals=False, keepalive_timeout=header_timeout_s
    )


async def serve(
    name: str, settings: ServiceSettings, lifespan: Lifespan, **app_options: Any
) -> int:
    """Run a service until SIGTERM/SIGINT; returns the process exit code."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    app = web.Application(**app_options)
    runtime = Runtime(name, settings, app)
    app.add_routes(admin_routes(runtime))
    exit_code = 0
    async with lifespan(runtime):
        app_runner = runner(app)
        await app_runner.setup()
        site = web.TCPSite(app_runner, settings.admin_host, settings.admin_port, backlog=1024)
        await site.start()
        log.info("%s listening on %s:%d", name, settings.admin_host, settings.admin_port)
        tasks = {asyncio.create_task(w.run(), name=w.name): w for w in runtime.workers}
        stop_wait = asyncio.create_task(stopping.wait())
        try:
            done, _ = await asyncio.wait([*tasks, stop_wait], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop_wait and task.exception() is not None:
                    log.error("worker %s crashed", task.get_name(), exc_info=task.exception())
                    exit_code = 1
            log.info("%s stopping", name)
            for worker in runtime.workers:
                worker.stop()
            pending = [t for t in tasks if not t.done()]
            if pending:
                _, late = await asyncio.wait(pending, timeout=settings.shutdown_grace_s)
                for task in late:
                    log.warning("worker %s did not stop in time: cancelling", task.get_name())
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
        finally:
            stop_wait.cancel()
            await app_runner.cleanup()
    log.info("%s stopped", name)
    return exit_code


def run(name: str, settings: ServiceSettings, lifespan: Lifespan, **app_options: Any) -> int:
    """Entry point of a service process."""
    setup_logging(name, settings.log_format, settings.log_level)
    # Everything imported so far lives as long as the process: keep the collector off it,
    # and let it run per many batches rather than many times per batch.
    gc.freeze()
    _, *older = gc.get_threshold()
    gc.set_threshold(settings.gc_threshold, *older)
    return uvloop.run(serve(name, settings, lifespan, **app_options))


@contextlib.asynccontextmanager
async def nothing(_: Runtime) -> AsyncIterator[None]:
    yield
