import io
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from services.allocator import importing
from services.allocator.importing import BadRule, Problem, StockLine, UnreadableFile


@dataclass
class Parsed:
    lines: list[StockLine] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def parse(text: str, fmt: importing.Format = "auto", pattern: str | None = None) -> Parsed:
    """The stream `importing.read` yields, split into codes and problems."""
    parsed = Parsed()
    for item in importing.read(io.BytesIO(text.encode()), fmt, pattern):
        (parsed.problems if isinstance(item, Problem) else parsed.lines).append(item)
    return parsed


def test_one_code_per_line_reports_empty_lines_by_number():
    parsed = parse("A-1\n\n  A-2  \nA-3\n\n\n")
    assert [(item.line, item.code) for item in parsed.lines] == [(1, "A-1"), (3, "A-2"), (4, "A-3")]
    assert [(p.line, p.reason) for p in parsed.problems] == [(2, "empty line")]


def test_csv_with_columns():
    text = (
        "code,expires_at,cost,batch\n"
        "C-1,2027-01-31,9.50,may-lot\n"
        "C-2,,,\n"
        "C-3,not a date,1,\n"
        ",2027-01-01,,\n"
    )
    parsed = parse(text)
    first, second = parsed.lines
    assert first.code == "C-1" and first.cost == Decimal("9.50") and first.batch == "may-lot"
    assert first.expires_at == datetime(2027, 2, 1, tzinfo=UTC)  # valid through the 31st
    assert second.expires_at is None and second.cost is None
    assert [(p.line, p.reason.split(";")[0]) for p in parsed.problems] == [
        (4, "expires is not a date"),  # not shaped like a date: not quoted (it may be a code)
        (5, "empty code"),
    ]


def test_a_bad_field_is_named_with_the_form_expected():
    parsed = parse(
        "code,expires_at,cost\n"
        "D-1,31/12/2026,\n"
        "D-2,2026-02-30,\n"
        "D-3,1999-06-30,\n"
        'D-4,,"12,5"\n'
        "D-5,,-1\n"
        "D-6,SECRET-CODE-42,\n"  # a column shifted by a stray comma: never quoted back
    )
    reasons = {p.line: p.reason for p in parsed.problems}
    assert reasons[2] == (
        'expires "31/12/2026" is not a date; use ISO 8601, e.g. 2026-12-31 or '
        "2026-12-31T23:59:00+03:00"
    )
    assert reasons[3].startswith('expires "2026-02-30" is not a date; use ISO 8601')
    assert reasons[4] == 'expires "1999-06-30" is out of range: years 2000 to 9998'
    assert reasons[5] == (
        'cost "12,5" is not a number; use a decimal from 0 to 9999999999.99, e.g. 12.50'
    )
    assert reasons[6].startswith('cost "-1" is out of range; use a decimal from 0')
    assert reasons[7].startswith("expires is not a date;") and "SECRET" not in str(reasons)


def test_json_lists_of_codes_or_objects():
    parsed = parse(
        '{"codes": ["J-1", {"code": "J-2", "expires_at": "2027-05-01T10:00:00+03:00"}, 7]}'
    )
    assert [item.code for item in parsed.lines] == ["J-1", "J-2"]
    assert parsed.lines[1].expires_at == datetime(2027, 5, 1, 7, tzinfo=UTC)
    assert [(p.line, p.reason) for p in parsed.problems] == [
        (3, "item is neither a code nor an object")
    ]


def test_the_sku_format_rule_is_enforced_without_revealing_codes():
    parsed = parse("PSN-1234-ABCD\nnot-a-psn-code\n", pattern=r"PSN-\d{4}-[A-Z]{4}")
    assert [item.code for item in parsed.lines] == ["PSN-1234-ABCD"]
    (problem,) = parsed.problems
    assert problem.line == 2 and "not-a-psn" not in problem.reason


@pytest.mark.parametrize(
    ("text", "fmt"), [("[1, 2", "json"), ('"just a string"', "json"), ("a,b\n1,2\n", "csv")]
)
def test_unreadable_files_are_refused_whole(text, fmt):
    with pytest.raises(UnreadableFile):
        parse(text, fmt)


def test_a_line_longer_than_any_stock_line_is_skipped_unread_and_reported():
    text = "A-1\n" + "x" * (importing.MAX_LINE * 3) + "\nA-2\n"
    for fmt, first in (("lines", 1), ("csv", 2)):
        body = text if fmt == "lines" else "code\n" + text
        parsed = parse(body, fmt)
        assert [i.code for i in parsed.lines] == ["A-1", "A-2"]
        assert [(p.line, p.reason) for p in parsed.problems] == [(first + 1, "line too long")]


def test_control_characters_and_impossible_costs_are_problems_not_crashes():
    text = "code,cost,batch\nA\x00B,,\nC-1,1e999999,\nC-2,-1,\nC-3,,lot\u202e\nC-4,2.5,\n"
    parsed = parse(text)
    assert [i.code for i in parsed.lines] == ["C-4"]
    assert [p.line for p in parsed.problems] == [2, 3, 4, 5]


def test_format_rules_run_in_linear_time():
    # (a|a)* backtracks exponentially in Python's re: 4.5 s of a frozen allocator once
    started = time.perf_counter()
    parsed = parse("a" * 200 + "b\n" + "aaaa\n", pattern="(a|a)*")
    assert time.perf_counter() - started < 0.5
    assert [i.code for i in parsed.lines] == ["aaaa"]
    with pytest.raises(BadRule):
        importing.compile_rule("(a)\\1")  # a backreference: RE2 has none, by design
    with pytest.raises(BadRule):
        importing.compile_rule("a" * (importing.MAX_PATTERN + 1))


def test_a_json_error_never_quotes_the_file():
    with pytest.raises(UnreadableFile) as caught:
        parse('["SECRET-CODE-1", SECRET-CODE-2]', "json")
    assert "SECRET" not in str(caught.value)
