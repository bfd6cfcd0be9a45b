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
    "403": _error("no admin token is configured: the admin API is off"),
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
                    "404": _error("no store of this platform with this id"),
                    "413": _error("body over 1 MiB"),
                    "415": _error("Content-Type is not application/json"),
                    "422": _error("valid JSON that is not an order we can deliver"),
                    "503": {
                        **_error(
                            "the broker did not acknowledge in time, or the store registry is "
                            "unreadable: retry"
                        ),
                        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                    },
                },
            }
        },
        "/admin/stores": {
            "get": {
                "summary": "Every store, secrets shown as fingerprints",
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
                    **_ADMIN_ERRORS,
                },
            },
            "put": {
                "summary": "Create a store or change the fields given",
                "security": [{"bearer": []}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": {
                    "200": {"description": "the store as saved"},
                    "400": _error("not JSON"),
                    "422": _error("not a valid store"),
                    "503": _error("saved, but store.config could not be published"),
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


async def openapi(_: web.Request) -> web.Response:
    return web.json_response(DOCUMENT)
