"""`tasleem up --replicas`: which stages can have several processes, and the refusals a
person reads when the option is wrong (the stack itself is tested in e2e/test_replicas.py)."""

import pytest
from typer.testing import CliRunner

from deploy.cli import app
from deploy.embedded.stack import parse_replicas


def test_replicas_of_the_consumer_stages_are_read():
    assert parse_replicas("notifier=2, allocator=3") == {"notifier": 2, "allocator": 3}
    assert parse_replicas("") == {}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("ingest=2", "'ingest' cannot have replicas; only allocator and notifier"),
        ("notifier=two", "notifier='two': the count is a whole number from 1 to 12"),
        ("notifier=0", "the count is a whole number from 1 to 12"),
        ("notifier", "notifier='': the count"),
    ],
)
def test_a_wrong_replicas_option_is_refused_with_the_reason(text, reason):
    with pytest.raises(ValueError, match=reason.replace("(", r"\(")):
        parse_replicas(text)
    result = CliRunner().invoke(app, ["up", "--replicas", text, "--home", "/nonexistent/x"])
    assert result.exit_code == 2  # refused before anything starts
    assert "--replicas" in result.output
