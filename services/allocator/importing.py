"""Reading a stock file: one code per line, CSV with columns, or JSON, as a stream.

A file is read line by line (JSON item by item) and yields its codes and its problems in file
order, so an import's memory does not grow with the file: a line longer than any stock line
can be is skipped without being held, and the caller stores codes in batches.

Every problem is reported with its line (or JSON item) number and never with the code itself,
because an import report is shown, logged and mailed around.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import IO, Any, Literal

import ijson
import re2

Format = Literal["auto", "lines", "csv", "json"]
FORMATS = ("auto", "lines", "csv", "json")
MAX_CODE_LENGTH = 256
MAX_LINE = 4096  # characters: a CSV line with every column is far shorter
MAX_PATTERN = 1000
# numeric(12, 2) in the vault: what a cost can be
MAX_COST = Decimal("9999999999.99")
# C0/C1 controls, zero-width and bidi marks: never part of a code, a batch label or a sku
MIN_YEAR, MAX_YEAR = 2000, 9998  # what an expiry can be (a day is added to a date: not 9999)
# what a mistyped date or number looks like: only such a value is quoted back (see _shown)
DATE_SHAPE = re.compile(r"[0-9]{1,4}([-/.][0-9]{1,4}){1,2}([ T][0-9:.]{1,15})?(Z|[+-][0-9:]{2,5})?")
NUMBER_SHAPE = re.compile(r"[-+]?[0-9][0-9.,]{0,19}")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


@dataclass(frozen=True)
class StockLine:
    """One code from the file, with what the file says about it."""

    line: int
    code: str
    expires_at: datetime | None = None
    cost: Decimal | None = None
    batch: str = ""


@dataclass(frozen=True)
class Problem:
    line: int
    reason: str


Item = StockLine | Problem


class UnreadableFile(ValueError):
    """The file as a whole cannot be read in the format asked for."""


class BadValue(ValueError):
    """A field with a value it cannot have; the message names the field and the form."""


class BadRule(ValueError):
    """A format rule that is not a regular expression the linear-time engine accepts."""


def compile_rule(pattern: str) -> re2._Regexp:
    """A sku's format rule, compiled by RE2: matching takes time linear in the code, whatever
    the pattern (a backtracking engine froze on `(a|a)*`)."""
    if len(pattern) > MAX_PATTERN:
        raise BadRule(f"a format rule is at most {MAX_PATTERN} characters")
    if CONTROL.search(pattern):
        raise BadRule("a format rule has no control characters")
    try:
        return re2.compile(pattern, options=_QUIET)
    except re2.error as exc:
        why = exc.args[0] if exc.args else ""
        why = why.decode(errors="replace") if isinstance(why, bytes) else str(why)
        raise BadRule(f"not a regular expression RE2 accepts: {why}") from None


_QUIET = re2.Options()
_QUIET.log_errors = False  # a bad rule is answered to its author, not written to stderr


def cost_of(value: object, name: str = "cost") -> Decimal | None:
    """A unit cost as the vault stores it (numeric(12, 2)); BadValue, naming the field and the
    form expected, when it cannot be one."""
    if value in (None, ""):
        return None
    text = str(value).strip()[:64]
    expected = f"use a decimal from 0 to {MAX_COST}, e.g. 12.50"
    try:
        cost = Decimal(text)
    except InvalidOperation:
        raise BadValue(f"{name} {_shown(text, NUMBER_SHAPE)}is not a number; {expected}") from None
    if not cost.is_finite() or not Decimal(0) <= cost <= MAX_COST:
        raise BadValue(f"{name} {_shown(text, NUMBER_SHAPE)}is out of range; {expected}")
    return cost.quantize(Decimal("0.01"))


def detect(head: str) -> Format:
    """The format of a file from its first bytes."""
    stripped = head.lstrip("\ufeff \t\r\n")
    if stripped.startswith(("[", "{")):
        return "json"
    first = stripped.splitlines()[0].lower() if stripped else ""
    if "," in first and "code" in [c.strip() for c in first.split(",")]:
        return "csv"
    return "lines"


def read(source: IO[bytes], fmt: Format = "auto", pattern: str | None = None) -> Iterator[Item]:
    """Codes and problems of a stock file (a seekable binary file), in file order; `pattern`
    is the sku's format rule, if any. Raises UnreadableFile, possibly after some items."""
    if fmt == "auto":
        fmt = detect(source.read(MAX_LINE).decode("utf-8", errors="replace"))
        source.seek(0)
    rule = compile_rule(pattern) if pattern else None
    if fmt == "json":
        items = _json(source)
    else:
        text = io.TextIOWrapper(source, encoding="utf-8-sig", newline="")
        items = _csv(text) if fmt == "csv" else _lines(text)
    try:
        yield from checked(items, rule)
    except UnicodeDecodeError:
        raise UnreadableFile("the file must be UTF-8 text") from None


def from_codes(codes: Iterable[str]) -> Iterator[Item]:
    """A list of codes, one per entry, as if each were a line of a file."""
    return checked((StockLine(n, c.strip()) for n, c in enumerate(codes, start=1)), None)


def checked(items: Iterable[Item], rule: re2._Regexp | None) -> Iterator[Item]:
    for item in items:
        if isinstance(item, Problem):
            yield item
        elif not item.code:
            yield Problem(item.line, "empty code")
        elif len(item.code) > MAX_CODE_LENGTH:
            yield Problem(item.line, f"code longer than {MAX_CODE_LENGTH}")
        elif CONTROL.search(item.code) or CONTROL.search(item.batch):
            yield Problem(item.line, "control characters")
        elif rule is not None and not rule.fullmatch(item.code):
            yield Problem(item.line, "code does not match the sku's format")
        else:
            yield item


def _bounded_lines(text: IO[str]) -> Iterator[str | None]:
    """The file's lines, None for one longer than MAX_LINE (its rest is skipped unread)."""
    while line := text.readline(MAX_LINE):
        if line.endswith(("\n", "\r")) or len(line) < MAX_LINE:
            yield line
            continue
        while (rest := text.readline(MAX_LINE)) and not rest.endswith(("\n", "\r")):
            pass
        yield None


def _lines(text: IO[str]) -> Iterator[Item]:
    blank_from, blanks = 0, 0  # a run of blank lines: a mistake only if a code follows
    for number, raw in enumerate(_bounded_lines(text), start=1):
        if raw is not None and not raw.strip():
            blank_from, blanks = (blank_from or number), blanks + 1
            continue
        yield from (Problem(n, "empty line") for n in range(blank_from, blank_from + blanks))
        blank_from, blanks = 0, 0
        yield Problem(number, "line too long") if raw is None else StockLine(number, raw.strip())


def _csv(text: IO[str]) -> Iterator[Item]:
    too_long: list[int] = []

    def source() -> Iterator[str]:
        for number, raw in enumerate(_bounded_lines(text), start=1):
            if raw is None:
                too_long.append(number)
                yield "\n"
            else:
                yield raw

    rows = csv.reader(source())
    try:
        header = next(rows, None)
    except csv.Error:
        header = None
    fields = [f.strip().lower() for f in header or []]
    if "code" not in fields or too_long:
        raise UnreadableFile("a CSV stock file needs a header row with a 'code' column")
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error:
            yield Problem(rows.line_num, "malformed CSV")
            continue
        for number in too_long:
            yield Problem(number, "line too long")
        too_long.clear()
        if row:
            yield _item(rows.line_num, dict(zip(fields, row, strict=False)))


def _json(source: IO[bytes]) -> Iterator[Item]:
    head = source.read(MAX_LINE).lstrip(b"\xef\xbb\xbf \t\r\n")
    source.seek(0)
    parent = "codes" if head.startswith(b"{") else ""
    found = False

    def events() -> Iterator[tuple[str, str, Any]]:
        nonlocal found
        for prefix, event, value in ijson.parse(source):
            if prefix == parent and event == "start_array":
                found = True
            yield prefix, event, value

    number = 0
    try:
        for number, item in enumerate(ijson.items(events(), f"{parent}.item".lstrip(".")), 1):
            if isinstance(item, str):
                yield StockLine(number, item.strip())
            elif isinstance(item, dict):
                yield _item(number, item)
            else:
                yield Problem(number, "item is neither a code nor an object")
    except ijson.JSONError:
        # the parser's message quotes the text around the error, which may be a code
        raise UnreadableFile(f"not valid JSON after item {number}") from None
    if not found:
        raise UnreadableFile("JSON stock must be a list, or an object with a 'codes' list")


def _item(number: int, row: dict[str, Any]) -> Item:
    code = str(row.get("code") or "").strip()
    try:
        expires = expiry(row.get("expires_at") or row.get("expires"), "expires")
        cost = cost_of(row.get("cost"), "cost")
    except BadValue as exc:
        return Problem(number, str(exc))
    batch = str(row.get("batch") or row.get("supplier") or "").strip()[:200]
    return StockLine(number, code, expires, cost, batch)


def expiry(value: object, name: str = "expires") -> datetime | None:
    """An expiry: a date means "valid through that day" (UTC); a time without zone is UTC.
    BadValue names the field and the form expected."""
    if value in (None, ""):
        return None
    text = str(value).strip()[:64]
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime.combine(day, time(), UTC) + timedelta(days=1)
        else:
            moment = datetime.fromisoformat(text)
            moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise BadValue(
            f"{name} {_shown(text, DATE_SHAPE)}is not a date; use ISO 8601, e.g. 2026-12-31 "
            "or 2026-12-31T23:59:00+03:00"
        ) from None
    if not MIN_YEAR <= moment.astimezone(UTC).year <= MAX_YEAR:
        raise BadValue(
            f"{name} {_shown(text, DATE_SHAPE)}is out of range: years {MIN_YEAR} to {MAX_YEAR}"
        )
    return moment


def _shown(value: str, shape: re.Pattern[str]) -> str:
    """The value quoted for the reason, only when it has the shape of what was asked for: a
    column shifted by a stray comma can hold a code, and a report never shows one."""
    return f'"{value}" ' if shape.fullmatch(value) else ""
