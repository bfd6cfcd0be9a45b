"""What every customer received, on any channel, exactly as they would read it."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from deploy.sandbox.http import now_iso

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    channel: str
    provider: str
    to: str
    text: str
    at: str
    id: str

    def to_json(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "provider": self.provider,
            "to": self.to,
            "text": self.text,
            "at": self.at,
            "id": self.id,
        }


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._by_recipient: defaultdict[str, list[Message]] = defaultdict(list)

    def deliver(self, channel: str, provider: str, to: str, text: str, message_id: str) -> Message:
        message = Message(channel, provider, to, text, now_iso(), message_id)
        self.messages.append(message)
        self._by_recipient[to].append(message)
        return message

    def for_recipient(self, to: str) -> list[Message]:
        return self._by_recipient.get(to, [])

    def clear(self) -> None:
        self.messages.clear()
        self._by_recipient.clear()


INBOX = web.AppKey("inbox", Inbox)

routes = web.RouteTableDef()


def _recipient(raw: str) -> str:
    # "?to=+9665..." arrives as " 9665..." when the caller did not escape the plus
    to = raw.strip()
    return "+" + to if to.isdigit() else to


@routes.get("/inbox")
async def list_inbox(request: web.Request) -> web.Response:
    inbox = request.app[INBOX]
    to = request.query.get("to")
    messages = inbox.messages if to is None else inbox.for_recipient(_recipient(to))
    return web.json_response({"messages": [message.to_json() for message in messages]})


@routes.delete("/inbox")
async def clear_inbox(request: web.Request) -> web.Response:
    inbox = request.app[INBOX]
    count = len(inbox.messages)
    inbox.clear()
    logger.info("inbox cleared (%d messages)", count)
    return web.json_response({"cleared": count})
