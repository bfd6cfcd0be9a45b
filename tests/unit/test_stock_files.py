from datetime import UTC, datetime
from decimal import Decimal

import pytest

from services.allocator.importing import UnreadableFile, parse


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
    assert [(p.line, p.reason.split(":")[0]) for p in parsed.problems] == [
        (4, "bad expiry or cost"),
        (5, "empty code"),
    ]


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
