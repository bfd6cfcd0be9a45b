import asyncpg
import pytest

from services.notifier.journal import persistently


async def test_a_record_of_what_a_provider_did_survives_a_database_restart():
    calls: list[list[str]] = []

    async def write(items: list[str]) -> list[str]:
        calls.append(items)
        if len(calls) < 3:
            raise asyncpg.exceptions.CannotConnectNowError("the database system is shutting down")
        return [item.upper() for item in items]

    assert await persistently(write)(["accepted"]) == ["ACCEPTED"]
    assert calls == [["accepted"]] * 3


async def test_a_write_that_cannot_succeed_is_not_retried_forever():
    async def broken(items: list[str]) -> list[str]:
        raise asyncpg.exceptions.UndefinedTableError("no such table")

    with pytest.raises(asyncpg.exceptions.UndefinedTableError):
        await persistently(broken)(["x"])

    async def down(items: list[str]) -> list[str]:
        raise asyncpg.exceptions.CannotConnectNowError("down")

    with pytest.raises(asyncpg.exceptions.CannotConnectNowError):
        await persistently(down, within_s=0.3)(["x"])
