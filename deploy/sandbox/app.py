"""The sandbox application: every outside party behind one aiohttp server."""

from __future__ import annotations

import logging

from aiohttp import web

from deploy.sandbox import (
    bamboo,
    email,
    faults,
    inbox,
    like4card,
    receipts,
    sms,
    stores,
    supplier,
    whatsapp,
)
from deploy.sandbox.config import CONFIG, SandboxConfig
from deploy.sandbox.http import json_errors

logger = logging.getLogger(__name__)

PARTIES = (
    faults.Party(whatsapp.PARTY, whatsapp.routes, whatsapp.unavailable),
    faults.Party(sms.UNIFONIC, sms.unifonic_routes, sms.unifonic_unavailable),
    faults.Party(sms.TWILIO, sms.twilio_routes, sms.twilio_unavailable),
    faults.Party(email.PARTY, email.routes, email.unavailable),
    faults.Party(supplier.PARTY, supplier.routes, supplier.unavailable, supplier=True),
    faults.Party(bamboo.PARTY, bamboo.routes, bamboo.unavailable, supplier=True),
    faults.Party(like4card.PARTY, like4card.routes, like4card.unavailable, supplier=True),
)

health_routes = web.RouteTableDef()


@health_routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def init_app(config: SandboxConfig) -> web.Application:
    app = web.Application(middlewares=[json_errors, faults.inject_faults])
    app[CONFIG] = config
    app[faults.FAULTS] = faults.Faults(PARTIES, config.seed)
    for name, change in config.faults.items():
        if name not in app[faults.FAULTS].parties:
            raise ValueError(f"faults configured for unknown party {name!r}")
        app[faults.FAULTS].update(name, change)
    app[inbox.INBOX] = inbox.Inbox()
    app[stores.STOREFRONT] = stores.Storefront()
    app[whatsapp.WHATSAPP] = whatsapp.WhatsAppState(config.whatsapp.not_on_whatsapp)
    app[sms.SMS] = sms.SmsState()
    app[supplier.SUPPLIER] = supplier.Supplier(config.suppliers.reloadly)
    app[bamboo.BAMBOO] = bamboo.Bamboo(config.suppliers.bamboo)
    app[like4card.LIKE4CARD] = like4card.Like4Card(config.suppliers.like4card)
    app.cleanup_ctx.append(stores.gateway_client)
    app[receipts.RECEIPTS] = receipts.Receipts()
    app[receipts.SUBSCRIPTIONS] = receipts.Subscriptions()
    app.cleanup_ctx.append(receipts.receipts_client)

    for party in PARTIES:
        app.add_routes(party.routes)
    for routes in (
        health_routes,
        faults.routes,
        inbox.routes,
        receipts.routes,
        stores.routes,
        supplier.control_routes,
        bamboo.control_routes,
        like4card.control_routes,
    ):
        app.add_routes(routes)
    logger.info(
        "sandbox for %d stores, parties %s, gateway %s",
        len(config.stores),
        ", ".join(party.name for party in PARTIES),
        config.gateway,
    )
    return app
