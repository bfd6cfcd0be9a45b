"""Run-time faults per party: latency, full outage, random errors, supplier charge-then-timeout."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deploy.sandbox.http import json_error, read_json

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FaultState(BaseModel):
    down: bool = False
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    latency_ms: int = Field(default=0, ge=0, le=600_000)
    charge_then_timeout: bool = False
    # supplier-only: refuse orders as a real supplier would, or hold them pending
    out_of_stock: bool = False
    insufficient_balance: bool = False
    rate_limited: bool = False
    pending: bool = False
    # message providers: accept the send, then report it failed in the delivery receipt
    fail_after_accept: bool = False


class FaultUpdate(BaseModel):
    """A partial change: fields left out (or null) keep their value."""

    model_config = ConfigDict(extra="forbid")

    down: bool | None = None
    error_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    latency_ms: int | None = Field(default=None, ge=0, le=600_000)
    charge_then_timeout: bool | None = None
    out_of_stock: bool | None = None
    insufficient_balance: bool | None = None
    rate_limited: bool | None = None
    pending: bool | None = None
    fail_after_accept: bool | None = None


SUPPLIER_ONLY = (
    "charge_then_timeout",
    "out_of_stock",
    "insufficient_balance",
    "rate_limited",
    "pending",
)


@dataclass(frozen=True)
class Party:
    name: str
    routes: web.RouteTableDef
    # the party's own "unavailable" reply; the flag says whether it stands for a random error
    unavailable: Callable[[bool], web.Response]
    supplier: bool = False


class Faults:
    def __init__(self, parties: Iterable[Party], seed: int | None) -> None:
        self.parties = {party.name: party for party in parties}
        self.state = {name: FaultState() for name in self.parties}
        self.rng = random.Random(seed)
        self._party_of: dict[object, str] = {
            route.handler: party.name
            for party in self.parties.values()
            for route in party.routes
            if isinstance(route, web.RouteDef)
        }

    def update(self, name: str, change: FaultUpdate) -> FaultState:
        party = self.parties[name]
        for name_ in SUPPLIER_ONLY:
            if getattr(change, name_) is not None and not party.supplier:
                raise ValueError(f"{name_} applies to suppliers only")
        if change.fail_after_accept is not None and party.supplier:
            raise ValueError("fail_after_accept applies to message providers only")
        state = self.state[name].model_copy(update=change.model_dump(exclude_none=True))
        self.state[name] = state
        return state

    def party_of(self, handler: object) -> str | None:
        return self._party_of.get(handler)

    def describe(self, name: str) -> dict[str, object]:
        """A party's faults as JSON; supplier-only switches are shown for suppliers only."""
        shown = self.state[name].model_dump()
        if not self.parties[name].supplier:
            for field in SUPPLIER_ONLY[1:]:  # charge_then_timeout was always listed: kept
                shown.pop(field)
        return shown


FAULTS = web.AppKey("faults", Faults)


@web.middleware
async def inject_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    faults = request.app[FAULTS]
    name = faults.party_of(request.match_info.handler)
    if name is None:
        return await handler(request)
    state = faults.state[name]
    if state.latency_ms:
        # the party has the whole request before it takes its time to answer: a caller that
        # gives up (or dies) meanwhile does not undo it, as with a real provider
        with contextlib.suppress(ConnectionError, web.HTTPException):
            await request.read()
        await asyncio.sleep(state.latency_ms / 1000)
    if state.down:
        return faults.parties[name].unavailable(False)
    if state.error_rate and faults.rng.random() < state.error_rate:
        return faults.parties[name].unavailable(True)
    return await handler(request)


routes = web.RouteTableDef()


@routes.get("/faults")
async def list_faults(request: web.Request) -> web.Response:
    faults = request.app[FAULTS]
    return web.json_response({name: faults.describe(name) for name in faults.state})


@routes.put("/faults/{party}")
async def set_faults(request: web.Request) -> web.Response:
    faults = request.app[FAULTS]
    name = request.match_info["party"]
    if name not in faults.parties:
        return json_error(404, f"unknown party {name!r}; known: {sorted(faults.parties)}")
    try:
        change = FaultUpdate.model_validate(await read_json(request))
        state = faults.update(name, change)
    except (ValidationError, ValueError) as exc:
        return json_error(400, str(exc))
    logger.info("faults for %s: %s", name, state.model_dump())
    return web.json_response({name: faults.describe(name)})
