"""The allocator's admin API: stock levels, imports, sku format rules, an order's codes (masked)."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal, InvalidOperation

import asyncpg
from aiohttp import web

from services.allocator import handlers, importing, stock, vault
from services.allocator.levels import LevelReporter
from services.allocator.outbox import Relay
from shared.codecrypt import CodeCipher

POOL = web.AppKey("allocator_pool", asyncpg.Pool)
CIPHER = web.AppKey("allocator_cipher", CodeCipher)
RELAY = web.AppKey("allocator_relay", Relay)
LEVELS = web.AppKey("allocator_levels", LevelReporter)


def error(status: int, code: str, detail: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status)


async def stock_levels(request: web.Request) -> web.Response:
    try:
        days = int(request.query.get("expiring_days", "7"))
    except ValueError:
        return error(400, "bad_query", "expiring_days must be a whole number")
    sku = request.match_info.get("sku")
    async with request.app[POOL].acquire() as conn:
        rows = await stock.stock_report(conn, days, sku)
    if sku and not rows:
        return error(404, "unknown_sku", "no codes or orders for this sku")
    return web.json_response({"skus": stock.as_dicts(rows), "expiring_days": days})


async def import_stock(request: web.Request) -> web.Response:
    sku = request.match_info["sku"]
    query = request.query
    fmt = query.get("format", "auto")
    if fmt not in ("auto", "lines", "csv", "json"):
        return error(400, "bad_query", "format must be auto, lines, csv or json")
    try:
        expires = datetime.fromisoformat(query["expires"]) if "expires" in query else None
        cost = Decimal(query["cost"]) if "cost" in query else None
    except (ValueError, InvalidOperation):
        return error(400, "bad_query", "expires must be ISO 8601 and cost a decimal")
    try:
        text = await request.text()
    except UnicodeDecodeError:
        return error(400, "bad_body", "the file must be UTF-8 text")
    pool, relay = request.app[POOL], request.app[RELAY]
    async with pool.acquire() as conn:
        pattern = await vault.code_pattern(conn, sku)
        try:
            parsed = importing.parse(text, fmt, pattern)  # type: ignore[arg-type]
        except importing.UnreadableFile as exc:
            return error(422, "unreadable_file", str(exc))
        async with conn.transaction():
            report = await vault.import_stock(
                conn,
                request.app[CIPHER],
                sku,
                parsed,
                source="admin-import",
                expires_at=expires,
                cost=cost,
                batch=query.get("batch", ""),
            )
            applied = await handlers.distribute(conn, [sku])
    await relay.publish(applied.rows)  # backorders filled by this stock go out now
    request.app[LEVELS].record(applied.touched, applied.sold)
    return web.json_response({"sku": sku, **report.as_dict()})


async def set_rule(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        pattern = str(body["code_pattern"])
        re.compile(pattern)
    except (ValueError, KeyError, TypeError, re.error) as exc:
        return error(422, "bad_rule", f"expected {{'code_pattern': <regex>}}: {type(exc).__name__}")
    await request.app[POOL].execute(
        "INSERT INTO sku_rules (sku, code_pattern) VALUES ($1, $2) "
        "ON CONFLICT (sku) DO UPDATE SET code_pattern = excluded.code_pattern",
        request.match_info["sku"],
        pattern,
    )
    return web.json_response({"sku": request.match_info["sku"], "code_pattern": pattern})


async def order(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        found = await stock.order_allocation(conn, request.app[CIPHER], request.match_info["key"])
    if found is None:
        return error(404, "unknown_order", "no such order key")
    return web.json_response(found, dumps=_dumps)


def _dumps(value: object) -> str:
    import json

    return json.dumps(value, default=str, ensure_ascii=False)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/admin/stock", stock_levels),
        web.get("/admin/stock/{sku}", stock_levels),
        web.post("/admin/stock/{sku}/import", import_stock),
        web.put("/admin/skus/{sku}/rule", set_rule),
        web.get("/admin/orders/{key}", order),
    ]
