"""`tasleem up`: the whole system on one machine, as supervised processes.

Embedded PostgreSQL and broker (or the servers named by TASLEEM_DATABASE_URL /
TASLEEM_KAFKA_BOOTSTRAP), the sandbox, and the four services. Writes `stack.json` once every
part answers `/readyz`, restarts a service that dies, and stops everything on `stop()`.

The stack provisions what an operator's platform would (the database, a role per service, the
topics) and passes each service its configuration; each service migrates its own schema when it
starts, as in Kubernetes. The demo stores and stock go in through the admin APIs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from deploy.embedded import local
from deploy.embedded.broker import EMBEDDED_ENV, EmbeddedBroker, client_settings
from deploy.embedded.postgres import (
    DATABASE_SERVICES,
    EmbeddedPostgres,
    ServiceRole,
    create_service_roles,
    hand_schemas_to_their_roles,
)
from deploy.embedded.processes import ManagedProcess, free_port
from deploy.sandbox.platforms import salla_merchant_id
from services.ingest.stores import Store
from shared import admin_auth
from shared.codecrypt import generate_key_settings
from shared.kafka import ensure_topics, topic_specs

log = logging.getLogger(__name__)

SERVICES = ("ingest", "allocator", "notifier", "restocker")
REPLICABLE = ("allocator", "notifier")  # stages that consume in a group (StackOptions.replicas)


def parse_replicas(text: str) -> dict[str, int]:
    """`notifier=2,allocator=2` -> {"notifier": 2, "allocator": 2}, or ValueError naming what
    is wrong (`tasleem up --replicas`, `TASLEEM_BENCH_REPLICAS`)."""
    wanted: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, count = part.partition("=")
        if name not in REPLICABLE:
            raise ValueError(f"{name!r} cannot have replicas; only {' and '.join(REPLICABLE)}")
        if not count.isdigit() or not 1 <= int(count) <= 12:
            raise ValueError(f"{name}={count!r}: the count is a whole number from 1 to 12")
        wanted[name] = int(count)
    return wanted


DATABASE = "tasleem"
SES_CONFIGURATION_SET = "tasleem-receipts"
SES_TOPIC_ARN = "arn:aws:sns:me-south-1:000000000000:tasleem-ses-events"
ADMIN_ROLES: tuple[admin_auth.Role, ...] = ("read", "operate")
# who the audit names for a local token (a resend says which caller asked for it)
LOCAL_CALLERS: dict[admin_auth.Role, str] = {"read": "local-reader", "operate": "local-operator"}


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
    # processes per consumer stage, in one consumer group: {"notifier": 2} adds "notifier-2"
    replicas: dict[str, int] = field(default_factory=dict)
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
        # each service's DSN, as its own role (the embedded database only)
        self.database_urls: dict[str, str] = {}
        self._supervising = True

    # ---- start -------------------------------------------------------------------------------
    async def start(self) -> dict[str, Any]:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "stack.json").unlink(missing_ok=True)
        database_url = await self._start_database()
        kafka = await self._start_broker()
        keys = self._keys()
        stores = self._stores()
        if self.postgres is not None:
            # a home an older `tasleem up` prepared as superuser: its tables go to their roles
            await hand_schemas_to_their_roles(database_url, self._database_roles())
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
            self._start_service(name, name, common, env[name])
        replicas = self._start_replicas(common, env)
        await self._wait_ready(["sandbox", *SERVICES, *replicas])
        await self._seed(stores)
        self.info = {
            "ingest": f"http://127.0.0.1:{self.ports['ingest']}",
            "sandbox": sandbox_url,
            "allocator": f"http://127.0.0.1:{self.ports['allocator']}",
            "notifier": f"http://127.0.0.1:{self.ports['notifier']}",
            "restocker": f"http://127.0.0.1:{self.ports['restocker']}",
            "kafka": kafka,
            "database": database_url,
            "databases": self.database_urls,
            "stores": [{"id": s.store_id, "platform": s.platform} for s in stores],
            "skus": [s.sku for s in DEMO_SKUS],
            "pids": {n: p.pid for n, p in self.all_processes().items()},
            "logs": str(self.logs),
        }
        (self.home / "stack.json").write_text(json.dumps(self.info, indent=2))
        return self.info

    def _start_replicas(self, common: dict[str, str], env: dict[str, dict[str, str]]) -> list[str]:
        """More members of a stage's consumer group (each with its own admin port); partitions
        bound how many can work, so at most `partitions` per stage."""
        started = []
        for name, count in self.options.replicas.items():
            if name not in REPLICABLE:
                raise StackError(
                    f"{name} is not a consumer stage: replicas of {sorted(REPLICABLE)}"
                )
            for n in range(2, min(count, self.options.partitions) + 1):
                replica = f"{name}-{n}"
                self.ports[replica] = free_port()
                self._start_service(replica, name, common, env[name])
                started.append(replica)
        return started

    def _start_service(
        self, process: str, service: str, common: dict[str, str], own: dict[str, str]
    ) -> None:
        """One process of `service` (a replica has its own name, log and admin port)."""
        self.processes[process] = ManagedProcess(
            process,
            [sys.executable, "-m", f"services.{service}.main"],
            log_path=self.logs / f"{process}.log",
            env={
                **common,
                **self._database_env(service),
                **own,
                "TASLEEM_ADMIN_PORT": str(self.ports[process]),
            },
        )
        self.processes[process].start()

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
            self.home / "pg",
            self.ports["postgres"],
            self.logs / "postgres.log",
            password=self._secret("database:postgres"),
        )
        self.postgres.start()
        await _until(lambda: _pg_ready(self.postgres.dsn), 60, "PostgreSQL", self.postgres.process)
        conn = await asyncpg.connect(self.postgres.dsn)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
                await conn.execute(f"CREATE DATABASE {DATABASE}")
        finally:
            await conn.close()
        roles = self._database_roles()
        await create_service_roles(self.postgres.dsn_for(DATABASE), DATABASE, roles)
        passfile = self._pgpass(
            {"postgres": self.postgres.password, **{r.name: r.password for r in roles}}
        )
        self.database_urls = {r.service: self._dsn(r.name, passfile) for r in roles}
        return self._dsn("postgres", passfile)

    def _database_roles(self) -> list[ServiceRole]:
        return [ServiceRole(s, self._secret(f"database:{s}")) for s in DATABASE_SERVICES]

    def _pgpass(self, passwords: dict[str, str]) -> Path:
        """The roles' passwords in a libpq password file (0600), so no DSN the stack hands out
        (env, `stack.json`, logs) carries one."""
        path = self.home / "pgpass"
        lines = "".join(f"127.0.0.1:*:*:{user}:{pw}\n" for user, pw in passwords.items())
        local.replace_private(path, lines)
        return path

    def _dsn(self, user: str, passfile: Path) -> str:
        assert self.postgres is not None
        return f"postgresql://{user}@127.0.0.1:{self.postgres.port}/{DATABASE}?passfile={passfile}"

    def _database_env(self, service: str) -> dict[str, str]:
        """A service's own DSN: its role owns its schema and can read no other (the restocker,
        with no schema, gets none rather than the superuser's)."""
        if not self.database_urls:
            return {}  # a database of the developer's: its DSN, as given, for every service
        return {"TASLEEM_DATABASE_URL": self.database_urls.get(service, "")}

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
        """A secret of the stack by name: made at random the first time it is asked for, on its
        own (none is derived from another, so holding one tells nothing of the rest)."""
        stored = self._persisted_secrets()
        if name not in stored:
            stored[name] = secrets.token_urlsafe(32)
            local.replace_private(self.home / "secrets.json", json.dumps(stored))
        return stored[name]

    def _persisted_secrets(self) -> dict[str, str]:
        """Secrets made once per stack home and kept, so a restarted stack reads its vault;
        `secrets.json` is created 0600 (never readable by others, not even for a moment)."""
        path = self.home / "secrets.json"
        if path.exists():
            stored: dict[str, str] = json.loads(path.read_text())
            return stored
        values = {
            **generate_key_settings(),
            "whatsapp_token": secrets.token_urlsafe(24),
            "supplier_secret": secrets.token_urlsafe(24),
            "store_secret": "whsec_" + base64.b64encode(os.urandom(24)).decode(),
        }
        local.write_private(path, json.dumps(values))
        return values

    def _keys(self) -> dict[str, str]:
        stored = self._persisted_secrets()
        return {k: v for k, v in stored.items() if k.startswith("TASLEEM_")}

    def _stores(self) -> list[Store]:
        """The demo stores, each with its own random webhook secret (its account: its id)."""
        secret = self._store_secret
        return [
            Store(
                store_id="demo-store",
                platform="standard",
                name="متجر تسليم التجريبي",
                secrets=(secret("demo-store", "standard"),),
                locale="ar",
            ),
            Store(
                store_id="gulf-games",
                platform="standard",
                name="Gulf Games",
                secrets=(secret("gulf-games", "standard"),),
                locale="en",
            ),
            # one store per other platform, so a demo surge arrives in every wire format
            Store(
                "salla-souq",
                "salla",
                "سوق سلة",
                (secret("salla-souq", "salla"),),
                platform_store_id=str(salla_merchant_id("salla-souq")),
            ),
            Store(
                "zid-cards",
                "zid",
                "بطاقات زد",
                (secret("zid-cards", "zid"),),
                api_credential=self._zid_api_credential("zid-cards"),
            ),
            Store(
                "shopify-keys",
                "shopify",
                "Shopify Keys",
                (secret("shopify-keys", "shopify"),),
                locale="en",
            ),
            Store(
                "woo-codes",
                "woocommerce",
                "Woo Codes",
                (secret("woo-codes", "woocommerce"),),
                locale="en",
            ),
        ]

    def _zid_api_credential(self, store_id: str) -> str:
        """A Zid store's orders API credential (`<Authorization>:<X-Manager-Token>`), which the
        sandbox's Zid API accepts for that store only."""
        authorization = self._secret(f"zid-api-authorization:{store_id}")
        return f"{authorization}:{self._secret(f'zid-api-manager-token:{store_id}')}"

    def _store_secret(self, store_id: str, platform: str) -> str:
        """A demo store's webhook secret: random, made once per stack home, one per store, in
        `store_secrets.json` (created 0600: never readable by others, not even briefly)."""
        path = self.home / "store_secrets.json"
        stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        if store_id not in stored:
            random_part = secrets.token_urlsafe(24)
            stored[store_id] = {
                "standard": "whsec_" + base64.b64encode(os.urandom(24)).decode(),
                "zid": "tasleem:" + random_part,
            }.get(platform, random_part)
            fresh = path.with_suffix(".tmp")
            fresh.unlink(missing_ok=True)
            with os.fdopen(os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                json.dump(stored, f)
            fresh.replace(path)
        return stored[store_id]

    def _notifier_channels(self, sandbox_url: str) -> dict[str, str]:
        """The notifier's SMS and email providers, all played by the sandbox; their receipts go
        to the gateway."""
        return {
            "TASLEEM_GATEWAY_PUBLIC_URL": self._gateway_url(),
            "TASLEEM_RECEIPT_WAIT_S": "15",
            # the demo surge runs at a high-tier number's throughput (the default is 80/s)
            "TASLEEM_WHATSAPP_RATE_PER_S": "1000",
            "TASLEEM_UNIFONIC_BASE_URL": sandbox_url,
            "TASLEEM_UNIFONIC_APP_SID": self._platform_secret("unifonic"),
            "TASLEEM_TWILIO_BASE_URL": sandbox_url,
            "TASLEEM_TWILIO_ACCOUNT_SID": "AC" + self._platform_secret("twilio-sid")[:32],
            "TASLEEM_TWILIO_AUTH_TOKEN": self._platform_secret("twilio"),
            "TASLEEM_TWILIO_FROM": "+15005550006",
            "TASLEEM_SES_BASE_URL": sandbox_url,
            "TASLEEM_SES_ACCESS_KEY": "AKIDTASLEEMSANDBOX",
            "TASLEEM_SES_SECRET_KEY": self._platform_secret("ses"),
            "TASLEEM_SES_CONFIGURATION_SET": SES_CONFIGURATION_SET,
        }

    def _gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['ingest']}"

    def _receipt_secrets(self, sandbox_url: str) -> dict[str, str]:
        """What the gateway verifies each provider's receipts with; the sandbox's SNS signs
        with a certificate it serves itself, so that is where certificates may come from."""
        return {
            "TASLEEM_GATEWAY_PUBLIC_URL": self._gateway_url(),
            "TASLEEM_WHATSAPP_APP_SECRET": self._platform_secret("whatsapp-app"),
            # Meta's subscription check needs one: without it no status webhook is ever sent
            "TASLEEM_WHATSAPP_VERIFY_TOKEN": self._platform_secret("whatsapp-verify"),
            "TASLEEM_TWILIO_AUTH_TOKEN": self._platform_secret("twilio"),
            "TASLEEM_UNIFONIC_RECEIPT_TOKEN": self._platform_secret("unifonic-dlr"),
            "TASLEEM_SES_TOPIC_ARNS": json.dumps([SES_TOPIC_ARN]),
            "TASLEEM_SNS_ORIGIN_PATTERN": re.escape(sandbox_url),
        }

    def service_env(self, sandbox_url: str) -> dict[str, dict[str, str]]:
        """Each service's own TASLEEM_* settings (the common ones come on top)."""
        return {
            # TASLEEM_VAULT_KEYS (store secrets are sealed with them) comes with the common env
            "ingest": {
                **self._admin_tokens("ingest"),
                **self._receipt_secrets(sandbox_url),
                "TASLEEM_ZID_API_BASE_URL": f"{sandbox_url}/zid/v1",
            },
            "allocator": self._admin_tokens("allocator"),
            "notifier": {
                **self._admin_tokens("notifier"),
                "TASLEEM_WHATSAPP_BASE_URL": sandbox_url,
                "TASLEEM_WHATSAPP_TOKEN": self._secret("whatsapp_token"),
                "TASLEEM_WHATSAPP_PHONE_NUMBER_ID": "100200300",
                **self._notifier_channels(sandbox_url),
            },
            "restocker": {
                **self._admin_tokens("restocker"),
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

    def _admin_tokens(self, service: str) -> dict[str, str]:
        """`service`'s admin tokens: the local operator gets one per role, each in its own file
        `admin/<service>-<role>.token` (0600) for curl and the `tasleem` tools; the service is
        given only their digests."""
        # the one token an older stack gave every admin API: no service accepts it any more
        (self.home / "admin_token").unlink(missing_ok=True)
        entries = []
        for role in ADMIN_ROLES:
            path = local.admin_token_path(self.home, service, role)
            if not path.exists():
                local.write_private(path, admin_auth.new_token() + "\n")
            token = path.read_text().strip()
            entries.append(admin_auth.entry(LOCAL_CALLERS[role], role, token))
        return {f"TASLEEM_{service.upper()}_ADMIN_TOKENS": ",".join(entries)}

    def _platform_secret(self, platform: str) -> str:
        """A provider or platform credential of the local stack: random, one of its own."""
        return self._secret(f"platform:{platform}")

    async def _seed(self, stores: list[Store]) -> None:
        """Register the demo stores and, once per stack home, their demo stock, as an operator
        would: through the ingest and allocator admin APIs (each service owns its tables)."""
        headers = {
            service: {"Authorization": f"Bearer {local.admin_token(self.home, service)}"}
            for service in ("ingest", "allocator")
        }
        ingest = f"http://127.0.0.1:{self.ports['ingest']}"
        allocator = f"http://127.0.0.1:{self.ports['allocator']}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            for store in stores:
                await _admin_call(
                    session,
                    "PUT",
                    f"{ingest}/admin/stores/{store.store_id}",
                    headers["ingest"],
                    json=_store_change(store),
                )
            if self.options.demo_stock_per_sku <= 0:
                return
            # every store is its own merchant account: each gets its own demo stock, and
            # no store's orders can take another's codes
            for store in stores:
                for sku in DEMO_SKUS:
                    url = f"{allocator}/admin/stock/{sku.sku}"
                    account = {"account": store.store_id}
                    if await _has_codes(session, url, headers["allocator"], account):
                        continue
                    codes = [_demo_code(sku.sku) for _ in range(self.options.demo_stock_per_sku)]
                    await _admin_call(
                        session,
                        "POST",
                        f"{url}/import",
                        headers["allocator"],
                        params={**account, "format": "lines"},
                        data="\n".join(codes).encode(),
                    )

    def _start_sandbox(self, stores: list[Store]) -> None:
        gateway = self._gateway_url()
        config = {
            "gateway": gateway,
            "url": f"http://127.0.0.1:{self.ports['sandbox']}",
            "stores": [
                {
                    "id": s.store_id,
                    "platform": s.platform,
                    "name": s.name,
                    "secret": s.secrets[0],
                    **({"api_credential": s.api_credential} if s.api_credential else {}),
                }
                for s in stores
            ],
            "whatsapp": {
                "token": self._secret("whatsapp_token"),
                "phone_number_id": "100200300",
                "app_secret": self._platform_secret("whatsapp-app"),
                "status_webhook_url": f"{gateway}/webhooks/whatsapp",
                "verify_token": self._platform_secret("whatsapp-verify"),
            },
            "unifonic": {
                "app_sid": self._platform_secret("unifonic"),
                "dlr_url": f"{gateway}/webhooks/unifonic?token="
                + self._platform_secret("unifonic-dlr"),
            },
            "ses": {
                "access_key": "AKIDTASLEEMSANDBOX",
                "secret_key": self._platform_secret("ses"),
                "configuration_set": SES_CONFIGURATION_SET,
                "sns_endpoint": f"{gateway}/webhooks/ses",
                "sns_topic_arn": SES_TOPIC_ARN,
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
        """A supplier credential: random, one of its own (Like4Card's key and IV are 32 long)."""
        return self._secret(f"supplier:{role}")[:32]

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
        services = [n for n in reversed(self.processes) if n != "sandbox"]  # replicas too
        for name in services:
            self.processes[name].signal(15)
        for name in services:
            self.processes[name].stop()
        if "sandbox" in self.processes:
            self.processes["sandbox"].stop()
        if self.broker:
            self.broker.stop()
        if self.postgres:
            self.postgres.stop()
        (self.home / "stack.json").unlink(missing_ok=True)


def _store_change(store: Store) -> dict[str, Any]:
    """A demo store as the ingest admin API's `PUT /admin/stores/{id}` body."""
    body: dict[str, Any] = {
        "platform": store.platform,
        "name": store.name,
        "secrets": list(store.secrets),
        "locale": store.locale,
    }
    if store.platform_store_id:
        body["platform_store_id"] = store.platform_store_id
    if store.api_credential:
        body["api_credential"] = store.api_credential
    return body


async def _admin_call(
    session: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str], **request: Any
) -> None:
    """One admin API call, repeated while the service answers 503 (its broker not ready)."""
    for _ in range(30):
        async with session.request(method, url, headers=headers, **request) as resp:
            if resp.status == 503:
                await asyncio.sleep(1)
                continue
            if resp.status >= 300:
                raise StackError(f"{method} {url.split('?')[0]}: {resp.status} {await resp.text()}")
            return
    raise StackError(f"{method} {url}: still unavailable")


async def _has_codes(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], params: dict[str, str]
) -> bool:
    """Whether the account holds any code of this sku (in stock, reserved, sold or not)."""
    async with session.get(url, headers=headers, params=params) as resp:
        if resp.status == 404:
            return False
        if resp.status != 200:
            raise StackError(f"GET {url}: {resp.status} {await resp.text()}")
        rows = (await resp.json())["skus"]
    held = ("available", "reserved", "sold", "expired", "quarantined")
    return any(row[count] for row in rows for count in held)


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
