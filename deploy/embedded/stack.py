"""`tasleem up`: the whole system on one machine, as supervised processes.

Embedded PostgreSQL and broker (or the servers named by TASLEEM_DATABASE_URL /
TASLEEM_KAFKA_BOOTSTRAP), the sandbox, and the four services. Writes `stack.json` once every
part answers `/readyz`, restarts a service that dies, and stops everything on `stop()`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from pydantic import SecretStr

from deploy.embedded.broker import EMBEDDED_ENV, EmbeddedBroker, client_settings
from deploy.embedded.postgres import EmbeddedPostgres
from deploy.embedded.processes import ManagedProcess, free_port
from services.allocator.main import SQL as ALLOCATOR_SQL
from services.ingest.main import SQL as INGEST_SQL
from services.ingest.stores import Store, upsert_store
from shared.codecrypt import generate_key_settings
from shared.db import migrate
from shared.kafka import ensure_topics, topic_specs

log = logging.getLogger(__name__)

SERVICES = ("ingest", "allocator", "notifier", "restocker")
DATABASE = "tasleem"


@dataclass(frozen=True)
class DemoSku:
    sku: str
    title: str
    product_id: int


DEMO_SKUS = (
    DemoSku("PSN-50-SAR", "PlayStation Store 50 SAR", 101),
    DemoSku("ITUNES-100-SAR", "iTunes 100 SAR", 102),
    DemoSku("STEAM-20-USD", "Steam Wallet 20 USD", 103),
)


@dataclass
class StackOptions:
    home: Path = Path(".tasleem")
    partitions: int = 4
    demo_stock_per_sku: int = 1000
    reorder_point: int = 200
    order_quantity: int = 500
    # extra TASLEEM_* settings for the restocker (policy, faults tests want), added last
    restocker_env: dict[str, str] = field(default_factory=dict)
    database_url: str | None = field(default_factory=lambda: os.environ.get("TASLEEM_DATABASE_URL"))
    kafka_bootstrap: str | None = field(
        default_factory=lambda: os.environ.get("TASLEEM_KAFKA_BOOTSTRAP")
    )


class StackError(RuntimeError):
    """A part of the stack did not come up."""


class Stack:
    def __init__(self, options: StackOptions):
        self.options = options
        self.home = options.home.resolve()
        self.logs = self.home / "logs"
        self.postgres: EmbeddedPostgres | None = None
        self.broker: EmbeddedBroker | None = None
        self.processes: dict[str, ManagedProcess] = {}
        self.ports: dict[str, int] = {}
        self.info: dict[str, Any] = {}
        self._supervising = True

    # ---- start -------------------------------------------------------------------------------
    async def start(self) -> dict[str, Any]:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "stack.json").unlink(missing_ok=True)
        database_url = await self._start_database()
        kafka = await self._start_broker()
        keys = self._keys()
        stores = self._stores()
        await self._prepare_database(database_url, stores)
        await ensure_topics(client_settings(kafka), topic_specs(self.options.partitions))

        for name in ("sandbox", *SERVICES):
            self.ports[name] = free_port()
        sandbox_url = f"http://127.0.0.1:{self.ports['sandbox']}"
        common = {
            "TASLEEM_KAFKA_BOOTSTRAP": kafka,
            "TASLEEM_DATABASE_URL": database_url,
            "TASLEEM_ADMIN_HOST": "127.0.0.1",
            **EMBEDDED_ENV,
            **keys,
        }
        env = self.service_env(sandbox_url)
        self._start_sandbox(stores)
        for name in SERVICES:
            self.processes[name] = ManagedProcess(
                name,
                [
                    sys.executable,
                    "-m",
                    f"services.{name}.main" if name != "restocker" else "services.restocker.app",
                ],
                log_path=self.logs / f"{name}.log",
                env={**common, **env[name], "TASLEEM_ADMIN_PORT": str(self.ports[name])},
            )
            self.processes[name].start()
        await self._wait_ready(["sandbox", *SERVICES])
        self.info = {
            "ingest": f"http://127.0.0.1:{self.ports['ingest']}",
            "sandbox": sandbox_url,
            "allocator": f"http://127.0.0.1:{self.ports['allocator']}",
            "notifier": f"http://127.0.0.1:{self.ports['notifier']}",
            "restocker": f"http://127.0.0.1:{self.ports['restocker']}",
            "kafka": kafka,
            "database": database_url,
            "stores": [{"id": s.store_id, "platform": s.platform} for s in stores],
            "skus": [s.sku for s in DEMO_SKUS],
            "pids": {n: p.pid for n, p in self.all_processes().items()},
            "logs": str(self.logs),
        }
        (self.home / "stack.json").write_text(json.dumps(self.info, indent=2))
        return self.info

    def all_processes(self) -> dict[str, ManagedProcess]:
        found = dict(self.processes)
        if self.postgres:
            found["postgres"] = self.postgres.process
        if self.broker:
            found["broker"] = self.broker.process
        return found

    async def _start_database(self) -> str:
        if self.options.database_url:
            return self.options.database_url
        self.ports["postgres"] = free_port()
        self.postgres = EmbeddedPostgres(
            self.home / "pg", self.ports["postgres"], self.logs / "postgres.log"
        )
        self.postgres.start()
        await _until(lambda: _pg_ready(self.postgres.dsn), 60, "PostgreSQL", self.postgres.process)
        conn = await asyncpg.connect(self.postgres.dsn)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
                await conn.execute(f"CREATE DATABASE {DATABASE}")
        finally:
            await conn.close()
        return self.postgres.dsn_for(DATABASE)

    async def _start_broker(self) -> str:
        if self.options.kafka_bootstrap:
            return self.options.kafka_bootstrap
        self.ports["broker"] = free_port()
        self.broker = EmbeddedBroker(self.ports["broker"], self.logs / "broker.log")
        self.broker.start()
        await _until(
            lambda: _tcp_open("127.0.0.1", self.ports["broker"]), 30, "broker", self.broker.process
        )
        return self.broker.bootstrap

    def _secret(self, name: str) -> str:
        return self._persisted_secrets()[name]

    def _persisted_secrets(self) -> dict[str, str]:
        """Secrets made once per stack home and kept, so a restarted stack reads its vault."""
        path = self.home / "secrets.json"
        if path.exists():
            return json.loads(path.read_text())
        values = {
            **generate_key_settings(),
            "whatsapp_token": secrets.token_urlsafe(24),
            "supplier_secret": secrets.token_urlsafe(24),
            "store_secret": "whsec_" + base64.b64encode(os.urandom(24)).decode(),
        }
        path.write_text(json.dumps(values))
        path.chmod(0o600)
        return values

    def _keys(self) -> dict[str, str]:
        stored = self._persisted_secrets()
        return {k: v for k, v in stored.items() if k.startswith("TASLEEM_")}

    def _stores(self) -> list[Store]:
        return [
            Store(
                store_id="demo-store",
                platform="standard",
                name="متجر تسليم التجريبي",
                secrets=(self._secret("store_secret"),),
                locale="ar",
            ),
            Store(
                store_id="gulf-games",
                platform="standard",
                name="Gulf Games",
                secrets=(self._secret("store_secret"),),
                locale="en",
            ),
            # one store per other platform, so a demo surge arrives in every wire format
            Store("salla-souq", "salla", "سوق سلة", (self._platform_secret("salla"),)),
            Store("zid-cards", "zid", "بطاقات زد", ("tasleem:" + self._platform_secret("zid"),)),
            Store(
                "shopify-keys",
                "shopify",
                "Shopify Keys",
                (self._platform_secret("shopify"),),
                locale="en",
            ),
            Store(
                "woo-codes",
                "woocommerce",
                "Woo Codes",
                (self._platform_secret("woocommerce"),),
                locale="en",
            ),
        ]

    def _notifier_channels(self, sandbox_url: str) -> dict[str, str]:
        """The notifier's SMS and email providers and receipts, all played by the sandbox."""
        return {
            "TASLEEM_NOTIFIER_PUBLIC_URL": f"http://127.0.0.1:{self.ports['notifier']}",
            "TASLEEM_WHATSAPP_APP_SECRET": self._platform_secret("whatsapp-app"),
            # the demo surge runs at a high-tier number's throughput (the default is 80/s)
            "TASLEEM_WHATSAPP_RATE_PER_S": "1000",
            "TASLEEM_UNIFONIC_BASE_URL": sandbox_url,
            "TASLEEM_UNIFONIC_APP_SID": self._platform_secret("unifonic"),
            "TASLEEM_UNIFONIC_RECEIPT_TOKEN": self._platform_secret("unifonic-dlr"),
            "TASLEEM_TWILIO_BASE_URL": sandbox_url,
            "TASLEEM_TWILIO_ACCOUNT_SID": "AC" + self._platform_secret("twilio-sid")[:32],
            "TASLEEM_TWILIO_AUTH_TOKEN": self._platform_secret("twilio"),
            "TASLEEM_TWILIO_FROM": "+15005550006",
            "TASLEEM_SES_BASE_URL": sandbox_url,
            "TASLEEM_SES_ACCESS_KEY": "AKIDTASLEEMSANDBOX",
            "TASLEEM_SES_SECRET_KEY": self._platform_secret("ses"),
        }

    def service_env(self, sandbox_url: str) -> dict[str, dict[str, str]]:
        """Each service's own TASLEEM_* settings (the common ones come on top)."""
        return {
            "ingest": {"TASLEEM_INGEST_ADMIN_TOKEN": self._admin_token()},
            "allocator": {"TASLEEM_ALLOCATOR_ADMIN_TOKEN": self._admin_token()},
            "notifier": {
                "TASLEEM_NOTIFIER_ADMIN_TOKEN": self._admin_token(),
                "TASLEEM_WHATSAPP_BASE_URL": sandbox_url,
                "TASLEEM_WHATSAPP_TOKEN": self._secret("whatsapp_token"),
                "TASLEEM_WHATSAPP_PHONE_NUMBER_ID": "100200300",
                **self._notifier_channels(sandbox_url),
            },
            "restocker": {
                "TASLEEM_SUPPLIER_BASE_URL": f"{sandbox_url}/reloadly",
                "TASLEEM_SUPPLIER_CLIENT_ID": "tasleem",
                "TASLEEM_SUPPLIER_CLIENT_SECRET": self._secret("supplier_secret"),
                "TASLEEM_SUPPLIER_PRODUCTS": json.dumps({s.sku: s.product_id for s in DEMO_SKUS}),
                "TASLEEM_TOPIC_PARTITIONS": str(self.options.partitions),
                "TASLEEM_REORDER_POINT": str(self.options.reorder_point),
                "TASLEEM_ORDER_QUANTITY": str(self.options.order_quantity),
                "TASLEEM_SUPPLIERS": json.dumps(self._restocker_suppliers(sandbox_url)),
                **self.options.restocker_env,
            },
        }

    def _admin_token(self) -> str:
        """One bearer token for the admin APIs of the local stack, kept in `admin_token`
        (readable by its owner only) so an operator can use it with curl."""
        token = self._platform_secret("admin-api")
        path = self.home / "admin_token"
        if not path.exists():
            path.write_text(token + "\n")
            path.chmod(0o600)
        return token

    def _platform_secret(self, platform: str) -> str:
        """A per-platform webhook secret derived from the stack's persisted store secret."""
        seed = self._secret("store_secret").encode()
        return hmac.new(seed, platform.encode(), hashlib.sha256).hexdigest()

    async def _prepare_database(self, dsn: str, stores: list[Store]) -> None:
        """Migrate, register the demo stores, and seed demo stock (once per stack home)."""
        from services.allocator import handlers, vault
        from shared.codecrypt import CodeCipher
        from shared.settings import VaultKeySettings

        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn, "ingest", INGEST_SQL)
            await migrate(conn, "allocator", ALLOCATOR_SQL)
            await conn.execute("SET search_path TO ingest")
            for store in stores:
                await upsert_store(conn, store)
            await conn.execute("SET search_path TO allocator")
            keys = self._keys()
            cipher = CodeCipher.from_settings(
                VaultKeySettings(
                    vault_keys=SecretStr(keys["TASLEEM_VAULT_KEYS"]),
                    vault_fingerprint_key=SecretStr(keys["TASLEEM_VAULT_FINGERPRINT_KEY"]),
                )
            )
            for sku in DEMO_SKUS:
                have = await conn.fetchval("SELECT count(*) FROM codes WHERE sku = $1", sku.sku)
                if have:
                    continue
                codes = [_demo_code(sku.sku) for _ in range(self.options.demo_stock_per_sku)]
                async with conn.transaction():
                    await vault.import_plain_codes(conn, cipher, sku.sku, codes, source="demo")
                    await handlers.distribute(conn, [sku.sku], report_levels=True)
        finally:
            await conn.close()

    def _start_sandbox(self, stores: list[Store]) -> None:
        notifier = f"http://127.0.0.1:{self.ports['notifier']}"
        config = {
            "gateway": f"http://127.0.0.1:{self.ports['ingest']}",
            "stores": [
                {"id": s.store_id, "platform": s.platform, "name": s.name, "secret": s.secrets[0]}
                for s in stores
            ],
            "whatsapp": {
                "token": self._secret("whatsapp_token"),
                "phone_number_id": "100200300",
                "app_secret": self._platform_secret("whatsapp-app"),
                "status_webhook_url": f"{notifier}/webhooks/whatsapp",
            },
            "unifonic": {
                "app_sid": self._platform_secret("unifonic"),
                "dlr_url": f"{notifier}/webhooks/unifonic?token="
                + self._platform_secret("unifonic-dlr"),
            },
            "twilio": {
                "account_sid": "AC" + self._platform_secret("twilio-sid")[:32],
                "auth_token": self._platform_secret("twilio"),
            },
            "suppliers": {
                "reloadly": {
                    "client_id": "tasleem",
                    "client_secret": self._secret("supplier_secret"),
                    "products": {s.sku: s.product_id for s in DEMO_SKUS},
                },
                "bamboo": {
                    "client_id": "tasleem",
                    "client_secret": self._supplier_secret("bamboo"),
                    "products": {s.sku: s.product_id + 100 for s in DEMO_SKUS},
                },
                "like4card": {
                    "email": "tasleem@example.com",
                    "password": self._supplier_secret("like4card"),
                    "hash_key": self._supplier_secret("like4card-hash"),
                    "secret_key": self._supplier_secret("like4card-key"),
                    "secret_iv": self._supplier_secret("like4card-iv"),
                    "products": {s.sku: s.product_id + 200 for s in DEMO_SKUS},
                },
            },
        }
        path = self.home / "sandbox.json"
        path.write_text(json.dumps(config, ensure_ascii=False))
        path.chmod(0o600)
        self.processes["sandbox"] = ManagedProcess(
            "sandbox",
            [
                sys.executable,
                "-m",
                "deploy.sandbox",
                "--config",
                str(path),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.ports["sandbox"]),
            ],
            log_path=self.logs / "sandbox.log",
        )
        self.processes["sandbox"].start()

    def _supplier_secret(self, role: str) -> str:
        """A secret per supplier credential, derived from the persisted supplier secret."""
        seed = self._secret("supplier_secret").encode()
        return hmac.new(seed, role.encode(), hashlib.sha256).hexdigest()[:32]

    def _restocker_suppliers(self, sandbox_url: str) -> list[dict[str, Any]]:
        """The restocker's suppliers, in the sandbox: Reloadly first, then Bamboo, Like4Card."""
        return [
            {
                "name": "reloadly",
                "kind": "reloadly",
                "base_url": f"{sandbox_url}/reloadly",
                "priority": 1,
                "lead_time_s": 5,
                "products": {s.sku: str(s.product_id) for s in DEMO_SKUS},
                "credentials": {
                    "client_id": "tasleem",
                    "client_secret": self._secret("supplier_secret"),
                },
            },
            {
                "name": "bamboo",
                "kind": "bamboo",
                "base_url": f"{sandbox_url}/bamboo/api/integration",
                "priority": 2,
                "lead_time_s": 30,
                "products": {s.sku: str(s.product_id + 100) for s in DEMO_SKUS},
                "credentials": {
                    "client_id": "tasleem",
                    "client_secret": self._supplier_secret("bamboo"),
                    "account_id": "4242",
                },
            },
            {
                "name": "like4card",
                "kind": "like4card",
                "base_url": f"{sandbox_url}/like4card/online",
                "priority": 3,
                "lead_time_s": 10,
                "products": {s.sku: str(s.product_id + 200) for s in DEMO_SKUS},
                "credentials": {
                    "email": "tasleem@example.com",
                    "password": self._supplier_secret("like4card"),
                    "phone": "966500000001",
                    "device_id": "sandbox-device",
                    "security_code": "sandbox-security-code",
                    "hash_key": self._supplier_secret("like4card-hash"),
                    "secret_key": self._supplier_secret("like4card-key"),
                    "secret_iv": self._supplier_secret("like4card-iv"),
                },
            },
        ]

    async def _wait_ready(self, names: list[str], limit_s: float = 120) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            for name in names:
                path = "/healthz" if name == "sandbox" else "/readyz"
                url = f"http://127.0.0.1:{self.ports[name]}{path}"
                await _until(
                    lambda u=url: _http_ok(session, u), limit_s, name, self.processes[name]
                )

    # ---- run and stop ------------------------------------------------------------------------
    async def supervise(self) -> None:
        """Restart any child that died, with a growing pause, until `stop()`."""
        while self._supervising:
            for name, process in self.all_processes().items():
                if not process.running() and self._supervising:
                    if name in ("postgres", "broker"):
                        log.error("%s exited; restarting it", name)
                    else:
                        log.error("%s exited; restarting it.\n%s", name, process.tail(10))
                    process.restarts += 1
                    await asyncio.sleep(min(0.5 * process.restarts, 5))
                    process.start()
            await asyncio.sleep(0.5)

    def stop(self) -> None:
        """Services first (they drain), then the sandbox, broker and database."""
        self._supervising = False
        for name in reversed(SERVICES):
            if name in self.processes:
                self.processes[name].signal(15)
        for name in reversed(SERVICES):
            if name in self.processes:
                self.processes[name].stop()
        if "sandbox" in self.processes:
            self.processes["sandbox"].stop()
        if self.broker:
            self.broker.stop()
        if self.postgres:
            self.postgres.stop()
        (self.home / "stack.json").unlink(missing_ok=True)


def _demo_code(sku: str) -> str:
    prefix = "".join(ch for ch in sku if ch.isalpha())[:4]
    return f"{prefix}-{secrets.token_hex(3).upper()}-{secrets.token_hex(3).upper()}"


async def _until(check, limit_s: float, what: str, process: ManagedProcess | None = None) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process is not None and process.proc is not None and not process.running():
            raise StackError(f"{what} exited while starting:\n{process.tail()}")
        try:
            if await check():
                return
        except Exception:
            pass
        await asyncio.sleep(0.2)
    tail = process.tail() if process else ""
    raise StackError(f"{what} was not ready after {limit_s:.0f}s\n{tail}")


async def _pg_ready(dsn: str) -> bool:
    conn = await asyncpg.connect(dsn, timeout=2)
    await conn.close()
    return True


async def _tcp_open(host: str, port: int) -> bool:
    _, writer = await asyncio.open_connection(host, port)
    writer.close()
    await writer.wait_closed()
    return True


async def _http_ok(session: aiohttp.ClientSession, url: str) -> bool:
    async with session.get(url) as resp:
        return resp.status == 200
