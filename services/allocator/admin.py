"""The allocator's admin API: stock levels, imports, moves between accounts, sku format rules,
an order's codes (masked), and the vault's rekey.

Every route names the merchant account it acts for (`?account=`): imports go into that
account's stock, and reads show only that account's stock and orders. Bad input of any kind
is answered with a JSON 4xx naming what is wrong, never a 5xx.
"""

from __future__ import annotations

import json
import tempfile
from typing import IO, cast

import asyncpg
from aiohttp import web
from aiohttp.typedefs import Handler

from services.allocator import handlers, importing, rekey, stock, vault
from services.allocator.levels import LevelReporter
from services.allocator.outbox import Relay
from shared.codecrypt import CodeCipher
from shared.events import Stock

POOL = web.AppKey("allocator_pool", asyncpg.Pool)
CIPHER = web.AppKey("allocator_cipher", CodeCipher)
RELAY = web.AppKey("allocator_relay", Relay)
LEVELS = web.AppKey("allocator_levels", LevelReporter)
MAX_IMPORT = web.AppKey("allocator_max_import_bytes", int)

MAX_SKU = 128  # as OrderLine allows
MAX_ACCOUNT = 128
MAX_ORDER_KEY = 512
MAX_EXPIRING_DAYS = 3650
MAX_RULE_BODY = 16 * 1024
MAX_REKEY_BATCH = 10_000
SPOOL_BYTES = 1024 * 1024  # an import's body is kept in memory up to this, then on disk
CHUNK = 64 * 1024


class BadInput(Exception):
    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.response = error(status, code, detail)


def error(status: int, code: str, detail: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status)


def text(value: str | None, what: str, max_length: int) -> str:
    """A name from the path or query: present, not too long, no control characters (which
    PostgreSQL refuses in text, NUL first of all)."""
    if not value:
        raise BadInput(400, "bad_request", f"{what} is required")
    if len(value) > max_length:
        raise BadInput(400, "bad_request", f"{what} is at most {max_length} characters")
    if importing.CONTROL.search(value):
        raise BadInput(400, "bad_request", f"{what} has control characters")
    return value


def stock_of(request: web.Request) -> Stock:
    return Stock(account_of(request), text(request.match_info["sku"], "sku", MAX_SKU))


def account_of(request: web.Request) -> str:
    account = text(request.query.get("account"), "the account query parameter", MAX_ACCOUNT)
    if account.startswith(":"):
        # ':legacy' and the like belong to no store: reached as a move's `from` only
        raise BadInput(400, "bad_request", "accounts starting with ':' are not a store's")
    return account


@web.middleware
async def bad_input(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadInput as exc:
        return exc.response


async def stock_levels(request: web.Request) -> web.Response:
    account = account_of(request)
    try:
        days = int(request.query.get("expiring_days", "7")[:12])
    except ValueError:
        days = -1
    if not 0 <= days <= MAX_EXPIRING_DAYS:
        return error(400, "bad_query", f"expiring_days is a whole number, 0 to {MAX_EXPIRING_DAYS}")
    sku = request.match_info.get("sku")
    if sku is not None:
        sku = text(sku, "sku", MAX_SKU)
    async with request.app[POOL].acquire() as conn:
        rows = await stock.stock_report(conn, account, days, sku)
    if sku and not rows:
        return error(404, "unknown_sku", "no codes or orders for this sku in this account")
    return web.json_response(
        {"account": account, "skus": stock.as_dicts(rows), "expiring_days": days}
    )


async def import_stock(request: web.Request) -> web.Response:
    target = stock_of(request)
    query = request.query
    fmt = query.get("format", "auto")
    if fmt not in importing.FORMATS:
        return error(400, "bad_query", "format must be auto, lines, csv or json")
    try:
        expires = importing.expiry(query.get("expires"), "expires")
        cost = importing.cost_of(query.get("cost"), "cost")
    except importing.BadValue as exc:
        return error(400, "bad_query", str(exc))
    batch = query.get("batch", "")
    if batch:
        batch = text(batch, "batch", 200)
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as body:
        await _spool(request, body)
        pool, relay = request.app[POOL], request.app[RELAY]
        async with pool.acquire() as conn:
            try:
                async with conn.transaction():
                    pattern = await vault.code_pattern(conn, target)
                    items = importing.read(body, cast(importing.Format, fmt), pattern)
                    report = await vault.import_stock(
                        conn,
                        request.app[CIPHER],
                        target,
                        items,
                        source="admin-import",
                        expires_at=expires,
                        cost=cost,
                        batch=batch,
                    )
                    applied = await handlers.distribute(conn, [target])
            except importing.UnreadableFile as exc:
                return error(422, "unreadable_file", str(exc))
            except importing.BadRule as exc:
                return error(422, "bad_rule", f"the sku's stored format rule: {exc}")
            except asyncpg.DataError as exc:  # a value the checks above let through
                return error(422, "bad_file", type(exc).__name__)
    await relay.publish(applied.rows)  # backorders filled by this stock go out now
    request.app[LEVELS].record(applied.touched, applied.sold)
    return web.json_response({"account": target.account, "sku": target.sku, **report.as_dict()})


async def _spool(request: web.Request, body: IO[bytes]) -> None:
    """The request body into `body`, chunk by chunk: never whole in memory, and refused
    once over the limit rather than read to its end."""
    limit, size = request.app[MAX_IMPORT], 0
    async for chunk in request.content.iter_chunked(CHUNK):
        size += len(chunk)
        if size > limit:
            raise BadInput(413, "too_large", f"a stock file is at most {limit} bytes")
        body.write(chunk)
    body.seek(0)


async def set_rule(request: web.Request) -> web.Response:
    target = stock_of(request)
    raw = await request.content.read(MAX_RULE_BODY + 1)
    if len(raw) > MAX_RULE_BODY:
        return error(413, "too_large", f"a rule is at most {MAX_RULE_BODY} bytes")
    try:
        body = json.loads(raw)
        pattern = body["code_pattern"]
        if not isinstance(pattern, str):
            raise TypeError("code_pattern is not a string")
        importing.compile_rule(pattern)
    except importing.BadRule as exc:
        return error(422, "bad_rule", str(exc))
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        return error(422, "bad_rule", f"expected {{'code_pattern': <regex>}}: {type(exc).__name__}")
    async with request.app[POOL].acquire() as conn:
        await vault.set_code_pattern(conn, target, pattern)
    return web.json_response(
        {"account": target.account, "sku": target.sku, "code_pattern": pattern}
    )


async def order(request: web.Request) -> web.Response:
    account = account_of(request)
    key = text(request.match_info["key"], "order key", MAX_ORDER_KEY)
    async with request.app[POOL].acquire() as conn:
        found = await stock.order_allocation(conn, request.app[CIPHER], account, key)
    if found is None:
        return error(404, "unknown_order", "no such order key in this account")
    return web.json_response(found, dumps=_dumps)


async def move_stock(request: web.Request) -> web.Response:
    """`POST /admin/stock/{sku}/move?account=<to>&from=<holder>`: the holder's available codes
    of the sku go to `account` (by default from ':legacy', where codes from before accounts
    wait for their owner); backorders of `account` are filled from them at once."""
    target = stock_of(request)
    source = Stock(
        text(request.query.get("from", vault.LEGACY_ACCOUNT), "from", MAX_ACCOUNT), target.sku
    )
    if source == target:
        return error(400, "bad_query", "from and account are the same account")
    pool, relay = request.app[POOL], request.app[RELAY]
    async with pool.acquire() as conn, conn.transaction():
        moved = await vault.move_stock(conn, source, target.account)
        applied = await handlers.distribute(conn, [source, target])
    await relay.publish(applied.rows)
    request.app[LEVELS].record(applied.touched, applied.sold)
    return web.json_response(
        {"sku": target.sku, "from": source.account, "to": target.account, "moved": moved}
    )


async def rekey_vault(request: web.Request) -> web.Response:
    """`POST /admin/vault/rekey?batch=1000`: re-seal every code under the allocator's active
    key (the first of its TASLEEM_VAULT_KEYS), a batch per transaction; the report is counts
    and code ids, never a code. Safe to stop and call again."""
    try:
        batch = int(request.query.get("batch", "1000")[:12])
    except ValueError:
        batch = 0
    if not 1 <= batch <= MAX_REKEY_BATCH:
        return error(400, "bad_query", f"batch is a whole number, 1 to {MAX_REKEY_BATCH}")
    async with request.app[POOL].acquire() as conn:
        # the level events it writes for stock it touched go out with the outbox sweeper
        report = await rekey.rekey(conn, request.app[CIPHER], batch)
    return web.json_response(report.as_dict())


def _dumps(value: object) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/admin/stock", stock_levels),
        web.get("/admin/stock/{sku}", stock_levels),
        web.post("/admin/stock/{sku}/import", import_stock),
        web.put("/admin/skus/{sku}/rule", set_rule),
        web.post("/admin/stock/{sku}/move", move_stock),
        web.get("/admin/orders/{key}", order),
        web.post("/admin/vault/rekey", rekey_vault),
    ]
