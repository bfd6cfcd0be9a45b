"""The gateway's OpenAPI document, served at `/openapi.json`."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.ingest.platforms import PLATFORMS

_ERROR = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_ACCEPTED = {
    "type": "object",
    "required": ["status", "event_id", "order_key"],
    "properties": {
        "status": {"type": "string", "enum": ["accepted"]},
        "event_id": {"type": "string"},
        "order_key": {"type": "string", "description": "{platform}:{store_id}:{order_id}"},
    },
}
_ACKNOWLEDGED = {
    "type": "object",
    "required": ["status"],
    "properties": {"status": {"type": "string"}},
}
_ADMIN_ERRORS = {
    "401": _error("missing or wrong bearer token"),
    "403": _error("the token's role does not allow this, or no admin token is configured"),
    "429": _error("too many bad credentials from this address: wait Retry-After seconds"),
}
_STORE_ID = {"name": "store_id", "in": "path", "required": True, "schema": {"type": "string"}}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Tasleem ingest gateway", "version": "1"},
    "paths": {
        "/webhooks/{platform}/{store_id}": {
            "post": {
                "summary": "A store platform's order webhook, in that platform's own format",
                "parameters": [
                    {
                        "name": "platform",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": list(PLATFORMS)},
                    },
                    _STORE_ID,
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {}},
                        "application/x-www-form-urlencoded": {
                            "schema": {
                                "type": "object",
                                "properties": {"webhook_id": {"type": "string"}},
                            }
                        },
                    },
                },
                "responses": {
                    "200": {
                        "description": "acknowledged: accepted (Salla), not an order event, or a "
                        "WooCommerce set-up ping",
                        "content": {
                            "application/json": {"schema": {"oneOf": [_ACCEPTED, _ACKNOWLEDGED]}}
                        },
                    },
                    "202": {
                        "description": "the event is on Kafka (acks=all)",
                        "content": {"application/json": {"schema": _ACCEPTED}},
                    },
                    "400": _error("the body is not valid JSON"),
                    "401": _error("missing or wrong signature or credentials"),
                    "403": _error("the signed body names another merchant than the store's"),
                    "404": _error("no store of this platform with this id"),
                    "408": _error("the body did not arrive in time"),
                    "413": _error("body over 1 MiB"),
                    "415": _error("Content-Type is not application/json"),
                    "422": _error(
                        "valid JSON that is not an order we can deliver: invalid_order, "
                        "order_too_large (over the store's lines or units per order), "
                        "unknown_sku (not in the store's catalogue), unconfirmed_order (Zid's "
                        "orders API does not know the order for this store)"
                    ),
                    "503": {
                        **_error(
                            "the broker did not acknowledge in time, the store registry is "
                            "unreadable, Zid's orders API did not answer (platform_unavailable), "
                            "or the store must be fixed by an operator (store_misconfigured: no "
                            "or a refused Zid API credential, secrets that do not open): retry"
                        ),
                        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                    },
                },
            }
        },
        "/admin/stores": {
            "get": {
                "summary": "Every store, secrets and API credential shown as fingerprints",
                "security": [{"bearer": []}],
                "responses": {"200": {"description": "the stores"}, **_ADMIN_ERRORS},
            }
        },
        "/admin/stores/{store_id}": {
            "parameters": [_STORE_ID],
            "get": {
                "security": [{"bearer": []}],
                "responses": {
                    "200": {"description": "the store"},
                    "404": _error("no such store"),
                    "503": _error("the store's secrets do not open with the vault keys"),
                    **_ADMIN_ERRORS,
                },
            },
            "put": {
                "summary": "Create a store or change the fields given (a Zid store needs "
                "`api_credential`, `<Authorization token>:<X-Manager-Token>`; secrets are sealed "
                "before they are stored)",
                "security": [{"bearer": []}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": {
                    "200": {"description": "the store as saved"},
                    "400": _error("not JSON"),
                    "422": _error("not a valid store"),
                    "503": _error(
                        "saved, but store.config could not be published; or the stored "
                        "store's secrets do not open with the vault keys"
                    ),
                    **_ADMIN_ERRORS,
                },
            },
            "delete": {
                "security": [{"bearer": []}],
                "responses": {
                    "200": {"description": "removed"},
                    "404": _error("no such store"),
                    **_ADMIN_ERRORS,
                },
            },
        },
        "/admin/stores/{store_id}/rotate-secret": {
            "parameters": [_STORE_ID],
            "post": {
                "security": [{"bearer": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["secret"],
                                "properties": {"secret": {"type": "string"}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": {"description": "the store, new secret first"},
                    "400": _error("not JSON"),
                    "404": _error("no such store"),
                    "422": _error("not a valid secret"),
                    "503": _error("saved, but store.config could not be published"),
                    **_ADMIN_ERRORS,
                },
            },
        },
    },
    "components": {
        "schemas": {"Error": _ERROR},
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
}

_RECEIVED = {
    "description": "verified, and on Kafka (`delivery.receipt`, acks=all) when it said anything",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["status"],
                "properties": {
                    "status": {"type": "string", "enum": ["accepted", "confirmed"]},
                    "receipts": {"type": "integer"},
                },
            }
        }
    },
}
_RECEIPT_ERRORS = {
    "400": _error("the body is not valid JSON"),
    "401": _error("missing or wrong signature or token"),
    "403": _error("receipts of this provider are not configured"),
    "413": _error("body over 1 MiB"),
    "415": _error("not the provider's content type"),
    "422": _error("verified, but not a receipt in the provider's format"),
    "503": {
        **_error("the broker did not acknowledge in time (or SNS could not be reached): retry"),
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
}


def _receipt(summary: str, media: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {media: {"schema": {}}}},
            "responses": {"200": _RECEIVED, **_RECEIPT_ERRORS},
        }
    }


_FORM = "application/x-www-form-urlencoded"
DOCUMENT["paths"].update(
    {
        "/webhooks/whatsapp": {
            "get": {
                "summary": "Meta's webhook subscription check: the challenge back",
                "parameters": [
                    {"name": n, "in": "query", "required": True, "schema": {"type": "string"}}
                    for n in ("hub.mode", "hub.verify_token", "hub.challenge")
                ],
                "responses": {
                    "200": {
                        "description": "hub.challenge",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _error("hub.verify_token does not match"),
                    "403": _error("no verify token is configured"),
                    "422": _error("hub.challenge missing or too long"),
                },
            },
            **_receipt("WhatsApp status webhooks (X-Hub-Signature-256)", "application/json"),
        },
        "/webhooks/twilio": _receipt("Twilio status callbacks (X-Twilio-Signature)", _FORM),
        "/webhooks/unifonic": _receipt("Unifonic DLRs (the token in the URL's query)", _FORM),
        "/webhooks/ses": _receipt("SES events by SNS (signed by SNS)", "text/plain"),
    }
)


async def openapi(_: web.Request) -> web.Response:
    return web.json_response(DOCUMENT)
