"""The root ``schema.sql`` and ``schema.sqlite.sql`` are what ``kmsg-webhook schema`` prints.

They are generated from the numbered migrations (the one schema source) and committed so a
reader or a DDL tool finds the whole schema at the top of the repository.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.cli import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("dialect", "file"), [("postgresql", "schema.sql"), ("sqlite", "schema.sqlite.sql")]
)
def test_committed_schema_file_is_the_command_output(
    capsys: pytest.CaptureFixture[str], dialect: str, file: str
) -> None:
    run = cli(capsys, "schema", "--dialect", dialect)
    assert run.code == 0
    committed = (ROOT / file).read_text(encoding="utf-8")
    assert committed == run.out, (
        f"{file} differs from the migrations; regenerate it with "
        f"`kmsg-webhook schema --dialect {dialect} > {file}`"
    )
