"""The notifier's decisions without the network: breaker states, routes, rendered messages."""

from __future__ import annotations

from datetime import UTC, datetime

from services.notifier import messages
from services.notifier.breaker import STATE, CircuitBreaker, State
from services.notifier.policy import routes
from services.notifier.providers import Outbound
from shared.events import CodeAllocated, Customer, OrderLine, StoreConfig


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_rests_probes_once_and_closes():
    clock = Clock()
    breaker = CircuitBreaker("wa-test", threshold=3, cooldown_s=10, clock=clock)
    for _ in range(2):
        breaker.failure()
    breaker.success()  # a success in between resets the count
    for _ in range(2):
        breaker.failure()
    assert breaker.allow() and breaker.state is State.CLOSED
    breaker.failure()
    assert breaker.state is State.OPEN and not breaker.allow()
    assert STATE.labels("wa-test")._value.get() == 2
    clock.now = 9.9
    assert not breaker.allow()
    clock.now = 10
    assert breaker.allow()  # the probe
    assert breaker.state is State.HALF_OPEN and not breaker.allow()  # only one probe
    breaker.failure()  # the probe failed: rest again
    assert breaker.state is State.OPEN and not breaker.allow()
    clock.now = 20
    assert breaker.allow()
    breaker.success()
    assert breaker.state is State.CLOSED and breaker.allow()
    assert STATE.labels("wa-test")._value.get() == 0


class FakeProvider:
    def __init__(self, channel: str, name: str):
        self.channel, self.name = channel, name
        self.sent: list[Outbound] = []

    async def send(self, message: Outbound) -> str:
        self.sent.append(message)
        return "id"


def event(phone: str | None = "+966551112222", email: str | None = "a@b.co") -> CodeAllocated:
    now = datetime.now(UTC)
    return CodeAllocated(
        event_id="e1",
        order_key="standard:s1:1",
        part=1,
        store_id="s1",
        order_id="1",
        customer=Customer(phone=phone, email=email),
        codes=[],
        lines=[OrderLine(sku="X", quantity=1)],
        paid_at=now,
        allocated_at=now,
    )


def test_routes_follow_the_store_order_and_skip_channels_without_an_address():
    providers = {
        "whatsapp": [FakeProvider("whatsapp", "whatsapp")],
        "sms": [FakeProvider("sms", "unifonic"), FakeProvider("sms", "twilio")],
        "email": [FakeProvider("email", "email")],
    }
    default = [(r.channel, r.provider.name) for r in routes(event(), None, providers)]
    assert default == [
        ("whatsapp", "whatsapp"),
        ("sms", "unifonic"),
        ("sms", "twilio"),
        ("email", "email"),
    ]
    store = StoreConfig(
        event_id="c",
        store_id="s1",
        platform="salla",
        name="S",
        channels=["sms", "email"],
        providers={"sms": ["twilio"]},
    )
    chosen = [(r.channel, r.provider.name, r.to) for r in routes(event(), store, providers)]
    assert chosen == [("sms", "twilio", "+966551112222"), ("email", "email", "a@b.co")]
    assert [r.channel for r in routes(event(phone=None), None, providers)] == ["email"]


def content(locale: str = "ar") -> messages.Content:
    return messages.Content("متجر", "بطاقة", locale, ["AB-12", "CD-34"], "تعليمات")


def test_arabic_text_is_right_to_left_with_each_code_kept_whole():
    text = messages.text(content(), "sms")
    assert text.startswith(messages.RLM)
    assert f"{messages.LRI}AB-12{messages.PDI} | {messages.LRI}CD-34{messages.PDI}" in text
    assert "تعليمات" in text
    html = messages.html_body(content())
    assert html.startswith('<div dir="rtl" lang="ar">')


def test_store_templates_are_used_but_never_lose_the_codes_or_leak_them_to_the_subject():
    store = StoreConfig(
        event_id="c",
        store_id="s1",
        platform="zid",
        name="S",
        templates={
            "sms.en": "{store}: {codes}",
            "email.en": "Thanks! {instructions}",  # forgot the codes
            "subject.en": "{store} {codes}",
        },
    )
    c = content("en")
    assert messages.text(c, "sms", store) == "متجر: AB-12 | CD-34"
    assert "AB-12" in messages.text(c, "email", store)  # fell back to the default
    assert "AB-12" not in messages.subject(c, store)
    html = messages.html_body(messages.Content("<b>", "p", "en", ["<script>"]), None)
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_outbound_repr_never_shows_the_codes():
    message = messages.outbound(content("en"), "sms", "+966551112222", "k", None, "t")
    assert "AB-12" in message.text and "AB-12" not in repr(message)
