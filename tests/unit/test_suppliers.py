"""Each supplier adapter against its sandbox counterpart, over real HTTP."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from deploy.sandbox.app import init_app
from deploy.sandbox.config import SandboxConfig
from deploy.sandbox.like4card import decrypt_serial as sandbox_decrypt
from deploy.sandbox.like4card import encrypt_serial
from services.restocker.suppliers import (
    PENDING,
    Delivery,
    Reason,
    Supplier,
    SupplierError,
    SupplierSettings,
    build,
)
from services.restocker.suppliers.like4card import decrypt_serial

SECRET = "whsec_" + base64.b64encode(b"sandbox-test-secret-0123456789ab").decode()


def sandbox_config(**suppliers: Any) -> SandboxConfig:
    return SandboxConfig.model_validate(
        {
            "gateway": "http://127.0.0.1:9",
            "stores": [{"id": "s", "name": "S", "secret": SECRET}],
            "suppliers": suppliers,
            "seed": 1,
        }
    )


def supplier_settings(base: str) -> list[SupplierSettings]:
    """The adapters' view of the sandbox's default accounts (see deploy/sandbox/config.py)."""
    return [
        SupplierSettings(
            name="reloadly",
            kind="reloadly",
            base_url=f"{base}/reloadly",
            products={"SKU-A": "101", "SKU-B": "102"},
            credentials={
                "client_id": "sandbox-reloadly-client",
                "client_secret": "sandbox-reloadly-secret",
            },
        ),
        SupplierSettings(
            name="bamboo",
            kind="bamboo",
            base_url=f"{base}/bamboo/api/integration",
            priority=2,
            products={"SKU-A": "201", "SKU-B": "202"},
            credentials={
                "client_id": "sandbox-bamboo-client",
                "client_secret": "sandbox-bamboo-secret",
                "account_id": "4242",
            },
        ),
        SupplierSettings(
            name="like4card",
            kind="like4card",
            base_url=f"{base}/like4card/online",
            priority=3,
            products={"SKU-A": "301", "SKU-B": "302"},
            credentials={
                "email": "sandbox@like4card.test",
                "password": "sandbox-like4card-password",
                "phone": "966500000001",
                "device_id": "sandbox-device",
                "security_code": "sandbox-security-code",
                "hash_key": "sandbox-hash-key",
                "secret_key": "sandbox-secret-key",
                "secret_iv": "sandbox-secret-iv",
            },
        ),
    ]


class World:
    def __init__(self, server: TestServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session
        self.base = str(server.make_url("")).rstrip("/")
        self.suppliers = {s.name: build(s, session) for s in supplier_settings(self.base)}

    def __getitem__(self, name: str) -> Supplier:
        return self.suppliers[name]

    async def fault(self, party: str, **switches: Any) -> None:
        async with self.session.put(f"{self.base}/faults/{party}", json=switches) as resp:
            assert resp.status == 200, await resp.text()

    async def purchases(self, party: str) -> dict[str, Any]:
        async with self.session.get(f"{self.base}/{party}/_purchases") as resp:
            return await resp.json()


@pytest.fixture
async def world() -> AsyncIterator[World]:
    config = sandbox_config(
        reloadly={"charge_timeout_s": 2.0},
        bamboo={"processing_s": 0.3, "charge_timeout_s": 2.0},
        like4card={"charge_timeout_s": 2.0},
    )
    server = TestServer(init_app(config))
    await server.start_server()
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5))
    try:
        yield World(server, session)
    finally:
        await session.close()
        await server.close()


@pytest.mark.parametrize("name", ["reloadly", "like4card"])
async def test_synchronous_suppliers_deliver_distinct_codes_once_per_reference(world, name):
    supplier = world[name]
    assert await supplier.find("SKU-A", "ref-1") is None
    first = await supplier.place("SKU-A", 3, "ref-1")
    assert isinstance(first, Delivery) and len(first.codes) == 3
    assert len(set(first.codes)) == 3
    assert first.unit_cost is not None and first.unit_cost > 0
    # the same reference again: the supplier refuses a duplicate and the adapter finds the order
    again = await supplier.place("SKU-A", 3, "ref-1")
    assert isinstance(again, Delivery) and sorted(again.codes) == sorted(first.codes)
    assert await supplier.find("SKU-A", "ref-1") == again
    assert len((await world.purchases(name))["orders"]) == 1


async def test_like4card_serials_arrive_encrypted_and_are_decrypted(world):
    supplier = world["like4card"]
    delivery = await supplier.place("SKU-B", 2, "ref-enc")
    assert isinstance(delivery, Delivery)
    assert all(code.startswith("L4C-") for code in delivery.codes)
    # on the wire the serials are not the codes
    form = {
        "deviceId": "sandbox-device",
        "email": "sandbox@like4card.test",
        "password": "sandbox-like4card-password",
        "securityCode": "sandbox-security-code",
        "referenceId": "ref-enc",
    }
    async with world.session.post(f"{world.base}/like4card/online/order/details", data=form) as r:
        wire = await r.text()
    assert not any(code in wire for code in delivery.codes)
    sealed = encrypt_serial("ABC-123", "k", "iv")
    assert decrypt_serial(sealed, "k", "iv") == sandbox_decrypt(sealed, "k", "iv") == "ABC-123"
    with pytest.raises(ValueError):
        decrypt_serial(sealed, "other-key", "iv")


async def test_bamboo_answers_pending_then_completes(world):
    bamboo = world["bamboo"]
    await world.fault("bamboo", pending=True)
    assert await bamboo.place("SKU-A", 4, "ref-async") is PENDING
    await asyncio.sleep(0.4)
    assert await bamboo.find("SKU-A", "ref-async") is PENDING  # held by the fault
    # placing again under the same reference does not order twice
    assert await bamboo.place("SKU-A", 4, "ref-async") is PENDING
    await world.fault("bamboo", pending=False)
    done = await bamboo.find("SKU-A", "ref-async")
    assert isinstance(done, Delivery) and len(done.codes) == 4
    assert done.unit_cost == Decimal("9.4")
    assert len((await world.purchases("bamboo"))["orders"]) == 1


@pytest.mark.parametrize("name", ["reloadly", "bamboo", "like4card"])
@pytest.mark.parametrize(
    ("switch", "reason"),
    [
        ("out_of_stock", Reason.OUT_OF_STOCK),
        ("insufficient_balance", Reason.INSUFFICIENT_BALANCE),
        ("rate_limited", Reason.RATE_LIMITED),
        ("down", Reason.UNAVAILABLE),
    ],
)
async def test_refusals_are_classified_and_settled(world, name, switch, reason):
    await world.fault(name, **{switch: True})
    with pytest.raises(SupplierError) as caught:
        await world[name].place("SKU-A", 2, f"ref-{switch}")
    assert caught.value.reason == reason
    assert caught.value.settled, "a clear refusal means nothing was charged"
    assert (await world.purchases(name))["orders"] == []


@pytest.mark.parametrize("name", ["reloadly", "bamboo", "like4card"])
async def test_a_timeout_after_charging_is_unknown_then_found_by_reference(world, name):
    supplier = world[name]
    await supplier.unit_price("SKU-A")  # sign in and read prices before the slow call
    await world.fault(name, charge_then_timeout=True)
    with pytest.raises(SupplierError) as caught:
        await supplier.place("SKU-A", 2, "ref-slow")
    assert caught.value.reason == Reason.UNKNOWN_OUTCOME and not caught.value.settled
    await world.fault(name, charge_then_timeout=False)
    found = await supplier.find("SKU-A", "ref-slow")
    if found is PENDING:  # bamboo completes a moment later
        await asyncio.sleep(0.4)
        found = await supplier.find("SKU-A", "ref-slow")
    assert isinstance(found, Delivery) and len(found.codes) == 2
    assert len((await world.purchases(name))["orders"]) == 1


async def test_unit_prices_come_from_each_catalogue(world):
    prices = {name: await world[name].unit_price("SKU-A") for name in world.suppliers}
    assert prices == {
        "reloadly": Decimal("9.5"),
        "bamboo": Decimal("9.4"),
        "like4card": Decimal("9.6"),
    }
    with pytest.raises(SupplierError) as caught:
        await world["bamboo"].unit_price("NOT-SOLD")
    assert caught.value.reason == Reason.REFUSED
