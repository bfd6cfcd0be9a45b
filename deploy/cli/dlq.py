"""`tasleem dlq`: the dead letters — what a consumer could not parse or handle — to list, read
and, once the cause is fixed, replay to the topic they came from.

A dead letter keeps the original key and value; the consumer loop adds headers `dlq-reason`,
`dlq-source` (`topic/partition/offset`) and `dlq-service`. Payloads are shown with codes masked
(`code.allocated` and `codes.purchased` carry sealed codes: never shown, not even sealed) and
the buyer's phone and address shortened. A replay produces the original key and value back to
the source topic (the consumers are idempotent by event id, so a replay of something that did
go through changes nothing) and records itself as a marker in the dead-letter topic — header
`dlq-replay-of`, who and when — so every operator sees what was replayed.

The cluster: TASLEEM_KAFKA_* (bootstrap, TLS, SASL), else the embedded stack's broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from aiokafka import TopicPartition
from rich.console import Console
from rich.table import Table

from deploy.embedded import local
from shared import kafka_clients
from shared.settings import KafkaSettings
from shared.topology import PIPELINE, dead_letter_topics

app = typer.Typer(no_args_is_help=True, help=__doc__)
console = Console()

MASK = "•••"
# keys whose values are codes or credentials, wherever they appear in a payload
SECRET_KEYS = frozenset({"sealed", "code", "codes_plain", "serial", "pin", "secret", "password"})
REPLAY_OF = "dlq-replay-of"
READ_TIMEOUT_S = 30.0
HOME = Annotated[Path, typer.Option(help="The embedded stack's home.")]


@dataclass
class DeadLetter:
    topic: str  # the `.dlq` topic
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    replays: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"

    @property
    def source_topic(self) -> str:
        return self.topic.removesuffix(".dlq")

    @property
    def when(self) -> str:
        return datetime.fromtimestamp(self.timestamp_ms / 1000, UTC).isoformat(timespec="seconds")

    def described(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "time": self.when,
            "source": self.headers.get("dlq-source", ""),
            "service": self.headers.get("dlq-service", ""),
            "reason": self.headers.get("dlq-reason", ""),
            "key": self.key.decode(errors="replace") if self.key is not None else None,
            "payload": masked_payload(self.value),
            "replays": self.replays,
        }


def masked_payload(value: bytes | None) -> Any:
    """The payload as JSON with codes masked; what is not JSON is described, not shown."""
    if value is None:
        return None
    try:
        data = json.loads(value)
    except (ValueError, RecursionError):
        return f"<{len(value)} bytes, not JSON>"
    return mask(data)


def mask(value: Any, key: str = "") -> Any:
    if key in SECRET_KEYS:
        return MASK
    if isinstance(value, dict):
        return {k: mask(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v, key) for v in value]
    if isinstance(value, str) and key == "phone":
        return value[:4] + MASK + value[-2:] if len(value) > 6 else MASK
    if isinstance(value, str) and key == "email":
        name, _, domain = value.partition("@")
        return f"{name[:1]}{MASK}@{domain}"
    return value


def summary(letter: DeadLetter) -> str:
    """One line about the payload: the order or sku it is about, what it carries."""
    payload = masked_payload(letter.value)
    if not isinstance(payload, dict):
        return str(payload)
    about = payload.get("order_key") or payload.get("sku") or payload.get("store_id") or "?"
    parts = [str(about)]
    if isinstance(payload.get("lines"), list):
        parts.append(f"{len(payload['lines'])} lines")
    if isinstance(payload.get("codes"), list):
        parts.append(f"{len(payload['codes'])} codes (masked)")
    return ", ".join(parts)


def _headers(record: Any) -> dict[str, str]:
    return {k: (v or b"").decode(errors="replace") for k, v in (record.headers or ())}


async def read_dead_letters(settings: KafkaSettings, topics: list[str]) -> list[DeadLetter]:
    """Every record of the dead-letter topics, oldest first, with replay markers attached to
    the dead letters they replayed (and not listed themselves)."""
    consumer = kafka_clients.reader(settings)
    await consumer.start()
    try:
        known = await consumer.topics()
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            if topic in known
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[Any] = []
        deadline = asyncio.get_running_loop().time() + READ_TIMEOUT_S
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("the dead-letter topics could not be read to their end")
            batch = await consumer.getmany(timeout_ms=500)
            for tp_records in batch.values():
                records.extend(tp_records)
    finally:
        await consumer.stop()
    letters: dict[str, DeadLetter] = {}
    markers: list[tuple[str, dict[str, Any]]] = []
    for r in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        headers = _headers(r)
        if REPLAY_OF in headers:
            with contextlib.suppress(ValueError):
                markers.append((headers[REPLAY_OF], json.loads(r.value or b"{}")))
            continue
        letter = DeadLetter(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value, headers)
        letters[letter.id] = letter
    for replayed, marker in markers:
        if replayed in letters:
            letters[replayed].replays.append(marker)
    return list(letters.values())


async def replay(settings: KafkaSettings, letters: list[DeadLetter], by: str) -> list[str]:
    """Produce each dead letter's original key and value back to its source topic, then a
    marker saying so into its dead-letter topic; returns the ids replayed."""
    producer = kafka_clients.producer(settings)
    await producer.start()
    done = []
    try:
        for letter in letters:
            # the original headers (trace context, schema version), not the dead-letter ones
            headers = [
                (k, v.encode()) for k, v in letter.headers.items() if not k.startswith("dlq-")
            ]
            headers.append(("dlq-replayed-from", letter.id.encode()))
            await producer.send_and_wait(
                letter.source_topic, letter.value, key=letter.key, headers=headers
            )
            marker = {
                "replayed": letter.id,
                "to": letter.source_topic,
                "by": by,
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            await producer.send_and_wait(
                letter.topic,
                json.dumps(marker).encode(),
                key=letter.key,
                headers=[(REPLAY_OF, letter.id.encode())],
            )
            done.append(letter.id)
    finally:
        await producer.stop()
    return done


def dead_letter_topic_names(topic: str | None) -> list[str]:
    names = [t.name for t in dead_letter_topics()]
    if topic is None:
        return names
    wanted = topic if topic.endswith(".dlq") else f"{topic}.dlq"
    if wanted not in names:
        raise typer.BadParameter(f"no dead-letter topic {wanted}; one of {', '.join(names)}")
    return [wanted]


def _settings(home: Path) -> KafkaSettings:
    try:
        return local.kafka_settings(home)
    except local.NoStack as exc:
        console.print(f"[red]{exc}[/red] (or set TASLEEM_KAFKA_BOOTSTRAP)")
        raise typer.Exit(2) from None


def _load(home: Path, topic: str | None) -> tuple[KafkaSettings, list[DeadLetter]]:
    settings = _settings(home)
    return settings, asyncio.run(read_dead_letters(settings, dead_letter_topic_names(topic)))


@app.command("list")
def list_(
    topic: Annotated[str | None, typer.Option(help="One source topic, e.g. order.paid.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    home: HOME = Path(".tasleem"),
) -> None:
    """Every dead letter: id, time, service, reason, what it is about, and if it was replayed."""
    _, letters = _load(home, topic)
    if as_json:
        for letter in letters:
            typer.echo(json.dumps(letter.described(), ensure_ascii=False))
        return
    table = Table("id", "time", "service", "reason", "about", "replayed")
    for letter in letters:
        d = letter.described()
        replayed = ", ".join(f"{m.get('at', '')} by {m.get('by', '?')}" for m in letter.replays)
        table.add_row(
            d["id"], d["time"], d["service"], d["reason"][:80], summary(letter), replayed or "-"
        )
    console.print(table)
    console.print(f"{len(letters)} dead letters")


@app.command()
def show(
    letter_id: Annotated[str, typer.Argument(help="topic:partition:offset, as `list` shows it")],
    home: HOME = Path(".tasleem"),
) -> None:
    """One dead letter in full: headers, reason, the payload with codes masked, its replays."""
    _, letters = _load(home, letter_id.split(":", 1)[0])
    found = next((letter for letter in letters if letter.id == letter_id), None)
    if found is None:
        console.print(f"[red]no dead letter {letter_id}[/red]")
        raise typer.Exit(1)
    console.print_json(data={**found.described(), "headers": found.headers})


@app.command("replay")
def replay_command(
    letter_ids: Annotated[
        list[str] | None, typer.Argument(help="topic:partition:offset, as `list` shows it")
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Every dead letter not yet replayed.")
    ] = False,
    topic: Annotated[str | None, typer.Option(help="With --all: one source topic only.")] = None,
    again: Annotated[bool, typer.Option(help="Replay even what was replayed before.")] = False,
    by: Annotated[str | None, typer.Option(help="Who replays (default: your user name).")] = None,
    home: HOME = Path(".tasleem"),
) -> None:
    """Send dead letters back to their source topic once the cause is fixed."""
    if bool(letter_ids) == all_:
        console.print("[red]name dead letters by id, or give --all[/red]")
        raise typer.Exit(2)
    scope = topic if all_ else None
    if letter_ids and len({i.split(":", 1)[0] for i in letter_ids}) == 1:
        scope = letter_ids[0].split(":", 1)[0]
    settings, letters = _load(home, scope)
    sources = {t.name for t in PIPELINE}
    if all_:
        chosen = [letter for letter in letters if again or not letter.replays]
    else:
        by_id = {letter.id: letter for letter in letters}
        missing = [i for i in letter_ids or [] if i not in by_id]
        if missing:
            console.print(f"[red]no dead letter {', '.join(missing)}[/red]")
            raise typer.Exit(1)
        chosen = [by_id[i] for i in letter_ids or [] if again or not by_id[i].replays]
    for letter in chosen:
        if letter.source_topic not in sources:
            console.print(f"[red]{letter.id}: {letter.source_topic} is not a pipeline topic[/red]")
            raise typer.Exit(1)
    done = asyncio.run(replay(settings, chosen, by or getpass.getuser()))
    for letter_id in done:
        console.print(f"replayed {letter_id}")
    skipped = (len(letter_ids or []) if not all_ else 0) - len(done)
    if skipped > 0:
        console.print(f"{skipped} already replayed (--again to replay them once more)")
    console.print(f"{len(done)} replayed")
