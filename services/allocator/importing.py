"""Reading a stock file: one code per line, CSV with columns, or JSON.

Every problem is reported with its line (or JSON item) number and never with the code itself,
because an import report is shown, logged and mailed around.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

Format = Literal["auto", "lines", "csv", "json"]
MAX_CODE_LENGTH = 256


@dataclass(frozen=True)
class StockLine:
    """One code from the file, with what the file says about it."""

    line: int
    code: str
    expires_at: datetime | None = None
    cost: Decimal | None = None
    batch: str = ""


@dataclass
class Problem:
    line: int
    reason: str


@dataclass
class ParsedFile:
    lines: list[StockLine] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


class UnreadableFile(ValueError):
    """The file as a whole cannot be read in the format asked for."""


def detect(text: str) -> Format:
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        return "json"
    first = stripped.splitlines()[0].lower() if stripped else ""
    if "," in first and "code" in [c.strip() for c in first.split(",")]:
        return "csv"
    return "lines"


def parse(text: str, fmt: Format = "auto", pattern: str | None = None) -> ParsedFile:
    """Codes and problems of a stock file; `pattern` is the sku's format rule, if any."""
    fmt = detect(text) if fmt == "auto" else fmt
    reader = {"lines": _lines, "csv": _csv, "json": _json}[fmt]
    parsed = reader(text)
    rule = re.compile(pattern) if pattern else None
    kept = []
    for item in parsed.lines:
        if not item.code:
            parsed.problems.append(Problem(item.line, "empty code"))
        elif len(item.code) > MAX_CODE_LENGTH:
            parsed.problems.append(Problem(item.line, f"code longer than {MAX_CODE_LENGTH}"))
        elif rule is not None and not rule.fullmatch(item.code):
            parsed.problems.append(Problem(item.line, "code does not match the sku's format"))
        else:
            kept.append(item)
    parsed.lines = kept
    parsed.problems.sort(key=lambda p: p.line)
    return parsed


def _lines(text: str) -> ParsedFile:
    parsed = ParsedFile()
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.strip():
            parsed.lines.append(StockLine(number, raw.strip()))
        else:
            parsed.problems.append(Problem(number, "empty line"))
    # trailing blank lines are formatting, not mistakes
    while parsed.problems and parsed.problems[-1].line > (
        parsed.lines[-1].line if parsed.lines else 0
    ):
        parsed.problems.pop()
    return parsed


def _csv(text: str) -> ParsedFile:
    parsed = ParsedFile()
    rows = csv.DictReader(io.StringIO(text))
    fields = [f.strip().lower() for f in rows.fieldnames or []]
    if "code" not in fields:
        raise UnreadableFile("a CSV stock file needs a header row with a 'code' column")
    rows.fieldnames = fields
    for row in rows:
        number = rows.line_num
        _add(parsed, number, row)
    return parsed


def _json(text: str) -> ParsedFile:
    parsed = ParsedFile()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UnreadableFile(f"not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if isinstance(data, dict):
        data = data.get("codes")
    if not isinstance(data, list):
        raise UnreadableFile("JSON stock must be a list, or an object with a 'codes' list")
    for number, item in enumerate(data, start=1):
        if isinstance(item, str):
            parsed.lines.append(StockLine(number, item.strip()))
        elif isinstance(item, dict):
            _add(parsed, number, item)
        else:
            parsed.problems.append(Problem(number, "item is neither a code nor an object"))
    return parsed


def _add(parsed: ParsedFile, number: int, row: dict[str, Any]) -> None:
    code = str(row.get("code") or "").strip()
    try:
        expires = _when(row.get("expires_at") or row.get("expires"))
        cost = Decimal(str(row["cost"])) if row.get("cost") not in (None, "") else None
    except (ValueError, InvalidOperation) as exc:
        parsed.problems.append(Problem(number, f"bad expiry or cost: {type(exc).__name__}"))
        return
    batch = str(row.get("batch") or row.get("supplier") or "").strip()
    parsed.lines.append(StockLine(number, code, expires, cost, batch))


def _when(value: object) -> datetime | None:
    """An expiry: a date means "valid through that day" (UTC); a time without zone is UTC."""
    if value in (None, ""):
        return None
    text = str(value).strip()
    if len(text) == 10:
        return datetime.combine(date.fromisoformat(text) + timedelta(days=1), time(), UTC)
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
