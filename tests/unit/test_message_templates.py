"""What the buyer reads: a template is filled once (a title that looks like a placeholder stays
text, so a code never lands in a subject line), and titles and store names lose their bidi
and control characters before they are rendered."""

from __future__ import annotations

from datetime import UTC, datetime

from services.notifier import messages
from shared.codecrypt import CodeCipher
from shared.events import AllocatedCode, CodeAllocated, Customer, OrderLine, StoreConfig

CODE = "PSN-ABC123-DEF456"


def allocated(cipher: CodeCipher, title: str, store_name: str, locale: str = "en") -> CodeAllocated:
    now = datetime.now(UTC)
    return CodeAllocated(
        event_id="e1",
        order_key="standard:s1:1",
        part=1,
        store_id="s1",
        store_name=store_name,
        order_id="1",
        customer=Customer(email="b@example.com", locale=locale),  # type: ignore[arg-type]
        lines=[OrderLine(sku="PSN", quantity=1, title=title)],
        codes=[AllocatedCode(code_id=1, sku="PSN", sealed=cipher.seal(CODE, "PSN").to_text())],
        paid_at=now,
        allocated_at=now,
    )


def test_a_title_that_looks_like_a_placeholder_is_never_expanded(cipher):
    event = allocated(cipher, "Gift {codes} {store} {instructions}", "Shop {codes}")
    content = messages.content(event, cipher, None)
    subject = messages.subject(content)
    assert CODE not in subject
    assert subject == "Shop {codes}: your Gift {codes} {store} {instructions} code"
    body = messages.text(content, "email")
    assert body.count(CODE) == 1  # the body's one placeholder, not the title's
    # a store's own subject template that asks for the codes still gets none
    store = StoreConfig(
        event_id="c1",
        store_id="s1",
        platform="standard",
        name="Shop",
        templates={"subject.en": "{codes} for {product}"},
    )
    assert CODE not in messages.subject(content, store)
    # a store template's other braces, `$`, and format syntax are text
    store = StoreConfig(
        event_id="c2",
        platform="standard",
        name="Shop",
        store_id="s1",
        templates={"email.en": "{codes} {0} {store.__class__} ${store} {codes!r}"},
    )
    assert messages.text(content, "email", store) == (
        f"{CODE} {{0}} {{store.__class__}} $Shop {{codes}} {{codes!r}}"
    )


def test_bidi_and_control_characters_are_removed_from_titles_and_store_names(cipher):
    title = "Gift\u202e 05 DRAC\u202c\x00\x1b[31m\u2028card\u2066x\u2069"
    event = allocated(cipher, title, "\u200fمتجر\u061c\r\n\u202dX", locale="ar")
    content = messages.content(event, cipher, None)
    assert content.product == "Gift 05 DRAC[31mcardx"
    assert content.store == "متجرX"
    for rendered in (messages.text(content, "sms"), messages.subject(content)):
        body = rendered.removeprefix(messages.RLM)  # our own mark, first, on purpose
        hostile = {"\u202e", "\u202c", "\u202d", "\u2028", "\x00", "\x1b", "\r", "\u061c"}
        assert not hostile & set(body)
        # the only isolates left are ours, one pair around each code
        assert body.count(messages.LRI) == body.count(messages.PDI) == body.count(CODE)


def test_a_title_of_only_controls_falls_back_to_the_sku(cipher):
    content = messages.content(allocated(cipher, "\u202e\u202c\x00", ""), cipher, None)
    assert content.product == "PSN" and content.store == "s1"
