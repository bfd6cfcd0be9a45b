"""A notifier's delivery and admin API against the sandbox's WhatsApp and Unifonic over real
HTTP and a real database (as the notifier's own role), for the admin, resend and revocation
tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestServer

from deploy.sandbox.app import init_app
from deploy.sandbox.config import SandboxConfig, UnifonicConfig, WhatsAppConfig
from services.notifier import admin
from services.notifier.breaker import CircuitBreaker
from services.notifier.delivery import Channels, Delivery, DeliveryPolicy
from services.notifier.main import SQL
from services.notifier.providers import Provider
from services.notifier.resend import DEFAULT_LIMITS, ResendLimits
from services.notifier.settings import NotifierSettings
from services.notifier.sms import Unifonic
from services.notifier.whatsapp import WhatsAppCloud
from shared import admin_auth, runtime
from shared.admin_auth import admin_guard
from shared.codecrypt import CodeCipher
from shared.db import connect_and_migrate
from shared.events import AllocatedCode, CodeAllocated, Customer, Event, OrderLine, event_id_for

WA_TOKEN, UNIFONIC_SID = "wa-token", "unifonic-sid"
OPERATOR = admin_auth.new_token()  # caller "amal", operate
READER = admin_auth.new_token()  # caller "grafana", read
TOKENS = ",".join(
    [admin_auth.entry("amal", "operate", OPERATOR), admin_auth.entry("grafana", "read", READER)]
)


@dataclass
class Notifier:
    url: str
    sandbox: str
    pool: asyncpg.Pool
    delivery: Delivery
    session: aiohttp.ClientSession
    providers: dict[str, Provider]
    reported: list[Event]

    def use(self, *names: str) -> None:
        chosen: dict[str, list[Provider]] = {}
        for name in names:
            provider = self.providers[name]
            chosen.setdefault(provider.channel, []).append(provider)
        self.delivery.channels.providers = chosen

    async def inbox(self, to: str) -> list[dict[str, Any]]:
        async with self.session.get(f"{self.sandbox}/inbox", params={"to": to}) as resp:
            messages: list[dict[str, Any]] = (await resp.json())["messages"]
            return messages

    async def fault(self, party: str, **change: Any) -> None:
        async with self.session.put(f"{self.sandbox}/faults/{party}", json=change) as resp:
            assert resp.status == 200, await resp.text()

    async def attempts(self, event: CodeAllocated) -> list[asyncpg.Record]:
        return list(
            await self.pool.fetch(
                "SELECT provider, status, purpose FROM attempts WHERE allocation_event_id = $1"
                " ORDER BY started_at",
                event.event_id,
            )
        )


def allocation(
    cipher: CodeCipher, order: str, code: str, *, phone: str = "+966551112222", part: int = 1
) -> CodeAllocated:
    key = f"standard:s1:{order}"
    now = datetime.now(UTC)
    return CodeAllocated(
        event_id=event_id_for("code.allocated", key, part),
        order_key=key,
        part=part,
        store_id="s1",
        store_name="Gulf Games",
        order_id=order,
        customer=Customer(name="Sara", phone=phone, email="sara@example.com", locale="en"),
        lines=[OrderLine(sku="PSN", quantity=1, title="PlayStation 50")],
        codes=[AllocatedCode(code_id=part, sku="PSN", sealed=cipher.seal(code, "PSN").to_text())],
        paid_at=now,
        allocated_at=now,
    )


def new_delivery(cipher: CodeCipher, pool: asyncpg.Pool, **policy: Any) -> Delivery:
    """One notifier replica's delivery state (each replica has its own memory)."""
    return Delivery.over(
        pool,
        Channels(
            providers={},
            cipher=cipher,
            concurrency=asyncio.Semaphore(16),
            breakers={n: CircuitBreaker(n, threshold=50, cooldown_s=0.2) for n in ("whatsapp",)},
        ),
        DeliveryPolicy(**{"deadline_s": 10, "backoff_s": 0.01, **policy}),
    )


@contextlib.asynccontextmanager
async def running_notifier(
    cipher: CodeCipher, dsn: str, limits: ResendLimits = DEFAULT_LIMITS, **options: Any
) -> AsyncIterator[Notifier]:
    pool = await connect_and_migrate(dsn, "notifier", SQL)
    session = aiohttp.ClientSession()
    delivery = new_delivery(cipher, pool, **options)
    reported: list[Event] = []

    async def report(events: list[Event]) -> None:
        reported.extend(events)

    # the admin app as the notifier's lifespan builds it (runtime's JSON errors, the guard)
    rt = runtime.Runtime("notifier", NotifierSettings(), web.Application())
    rt.app.add_routes(runtime.admin_routes(rt))
    rt.app.middlewares.append(admin_guard("notifier", TOKENS))
    rt.app[admin.POOL] = pool
    rt.app[admin.DELIVERY] = delivery
    rt.app[admin.PUBLISH] = report
    rt.app[admin.LIMITS] = limits
    rt.app.add_routes(admin.ROUTES)
    notifier_server = TestServer(rt.app)
    await notifier_server.start_server()
    config = SandboxConfig(
        gateway="http://127.0.0.1:1",
        stores=[],
        whatsapp=WhatsAppConfig(token=WA_TOKEN, phone_number_id="42", app_secret="s"),
        unifonic=UnifonicConfig(app_sid=UNIFONIC_SID),
    )
    sandbox_server = TestServer(init_app(config))
    await sandbox_server.start_server()
    sandbox = str(sandbox_server.make_url("")).rstrip("/")
    providers: dict[str, Provider] = {
        "whatsapp": WhatsAppCloud(session, sandbox, "21.0", WA_TOKEN, "42"),
        "unifonic": Unifonic(session, sandbox, UNIFONIC_SID, "Tasleem"),
    }
    notifier = Notifier(
        str(notifier_server.make_url("")).rstrip("/"),
        sandbox,
        pool,
        delivery,
        session,
        providers,
        reported,
    )
    notifier.use("whatsapp", "unifonic")
    try:
        yield notifier
    finally:
        await asyncio.gather(*delivery.inflight.tasks.values(), return_exceptions=True)
        await sandbox_server.close()
        await notifier_server.close()
        await session.close()
        await pool.close()


def bearer(token: str = OPERATOR) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
