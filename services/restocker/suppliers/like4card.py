"""A Like4Card-like supplier: form POSTs with account credentials; serial codes arrive encrypted.

The serials are decrypted here, only to be sealed with our own key at once: AES-256-CBC,
key = first 32 bytes of hex SHA-256(secret_key), IV = first 16 bytes of hex SHA-256(secret_iv),
ciphertext base64-encoded twice (as Like4Card's own sample code does).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from decimal import Decimal
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from services.restocker.suppliers.base import (
    Delivery,
    Outcome,
    Reason,
    Supplier,
    SupplierError,
    http_refusal,
)

REFUSALS = {
    "out_of_stock": Reason.OUT_OF_STOCK,
    "insufficient_balance": Reason.INSUFFICIENT_BALANCE,
}


def decrypt_serial(encrypted: str, secret_key: str, secret_iv: str) -> str:
    key = hashlib.sha256(secret_key.encode()).hexdigest()[:32].encode()
    iv = hashlib.sha256(secret_iv.encode()).hexdigest()[:16].encode()
    raw = base64.b64decode(base64.b64decode(encrypted, validate=True), validate=True)
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(raw) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return (unpadder.update(padded) + unpadder.finalize()).decode()


class Like4CardLike(Supplier):
    kind = "like4card"

    def __init__(
        self,
        name: str,
        session: aiohttp.ClientSession,
        base_url: str,
        products: dict[str, str],
        priority: int,
        lead_time_s: float,
        credentials: dict[str, str],
    ) -> None:
        super().__init__(name, session, base_url, products, priority, lead_time_s)
        self.account = {
            "deviceId": credentials["device_id"],
            "email": credentials["email"],
            "password": credentials["password"],
            "securityCode": credentials["security_code"],
            "langId": "1",
        }
        self.phone = credentials["phone"]
        self.hash_key = credentials["hash_key"]
        self.secret_key = credentials["secret_key"]
        self.secret_iv = credentials["secret_iv"]

    async def _price_list(self) -> dict[str, Decimal]:
        status, body = await self._json("POST", "/products", data=self.account)
        if status != 200 or not isinstance(body, dict) or body.get("response") != 1:
            raise http_refusal(self.name, status if status != 200 else 400, "product list")
        return {
            str(p["productId"]): Decimal(str(p["productPrice"]))
            for p in body.get("data", [])
            if p.get("available", True)
        }

    async def find(self, sku: str, reference: str) -> Outcome | None:
        form = {**self.account, "referenceId": reference}
        status, body = await self._json("POST", "/order/details", data=form)
        if status == 200 and isinstance(body, dict):
            if body.get("response") == 1:
                return self._delivery(body)
            if body.get("code") == "order_not_found":
                return None
        raise SupplierError(
            f"{self.name}: order lookup failed ({status})", Reason.UNKNOWN_OUTCOME, False
        )

    async def place(self, sku: str, quantity: int, reference: str) -> Outcome:
        await self.unit_price(sku)  # refuses at once when the product is not available
        now = str(int(time.time()))
        signed = f"{now}{self.account['email'].lower()}{self.phone}{self.hash_key}"
        form = {
            **self.account,
            "productId": self.products[sku],
            "referenceId": reference,
            "quantity": str(quantity),
            "time": now,
            "hash": hashlib.sha256(signed.encode()).hexdigest(),
        }
        status, body = await self._json("POST", "/create_order", data=form)
        if status != 200 or not isinstance(body, dict):
            raise http_refusal(self.name, status, "create_order")
        if body.get("response") == 1:
            return self._delivery(body)
        code = body.get("code")
        if code == "duplicate_reference":
            found = await self.find(sku, reference)
            if found is None:
                raise SupplierError(
                    f"{self.name}: duplicate reference but no order", Reason.UNKNOWN_OUTCOME, False
                )
            return found
        if code in REFUSALS:
            raise SupplierError(f"{self.name}: {code}", REFUSALS[code], settled=True)
        raise SupplierError(f"{self.name}: create_order refused ({code})", Reason.REFUSED, True)

    def _delivery(self, order: dict[str, Any]) -> Delivery:
        serials = order.get("serials") or []
        try:
            codes = [
                decrypt_serial(s["serialCode"], self.secret_key, self.secret_iv) for s in serials
            ]
        except (KeyError, ValueError, binascii.Error):
            # the codes are paid for; keep the order and look again rather than lose it
            raise SupplierError(
                f"{self.name}: serials do not decrypt", Reason.UNKNOWN_OUTCOME, False
            ) from None
        price = Decimal(str(order["orderPrice"])) / len(serials) if serials else None
        return Delivery(codes, price)
