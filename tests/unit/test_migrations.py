from pathlib import Path

import pytest

from services.allocator.main import SQL as ALLOCATOR_SQL
from services.ingest.main import SQL as INGEST_SQL
from services.notifier.main import SQL as NOTIFIER_SQL
from shared.db import migration_files


def test_service_migrations_are_numbered():
    for folder in (ALLOCATOR_SQL, INGEST_SQL, NOTIFIER_SQL):
        numbers = [n for n, _ in migration_files(folder)]
        assert numbers == list(range(1, len(numbers) + 1))


def test_misnamed_or_duplicate_migrations_are_refused(tmp_path: Path):
    (tmp_path / "001_a.sql").write_text("")
    (tmp_path / "two.sql").write_text("")
    with pytest.raises(ValueError, match="NNN_name"):
        migration_files(tmp_path)
    (tmp_path / "two.sql").unlink()
    (tmp_path / "001_b.sql").write_text("")
    with pytest.raises(ValueError, match="duplicate"):
        migration_files(tmp_path)
