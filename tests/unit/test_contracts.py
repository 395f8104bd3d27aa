"""The row contracts: each column tuple is its DDL schema's column names, in order."""

from __future__ import annotations

import pytest

from imagetag import contracts, records
from imagetag.contracts import column_names


@pytest.mark.parametrize(
    ("columns", "schema"),
    [
        (contracts.KAFKA_COLUMNS, contracts.KAFKA_SCHEMA),
        (contracts.OUTPUT_COLUMNS, contracts.OUTPUT_SCHEMA),
        (contracts.ARCHIVE_COLUMNS, contracts.ARCHIVE_SCHEMA),
        (contracts.BACKFILL_ARCHIVE_COLUMNS, contracts.BACKFILL_ARCHIVE_SCHEMA),
        (contracts.SHARD_COLUMNS, contracts.SHARD_SCHEMA),
    ],
)
def test_columns_agree_with_their_schema(columns: tuple[str, ...], schema: str) -> None:
    assert column_names(schema) == columns


def test_records_use_the_contracts() -> None:
    assert records.ARCHIVE_COLUMNS is contracts.ARCHIVE_COLUMNS
    assert records.OUTPUT_COLUMNS is contracts.OUTPUT_COLUMNS
    assert set(contracts.KAFKA_COORDINATES) <= set(contracts.KAFKA_COLUMNS)


def test_column_names_skip_commas_inside_types() -> None:
    assert column_names("a int, m map<string,string>, s struct<x:int,y:array<int>>") == (
        "a",
        "m",
        "s",
    )
    assert column_names("") == ()


def test_the_archive_frame_has_the_archive_columns() -> None:
    import pandas as pd

    empty = records.archive_rows(pd.DataFrame(columns=list(contracts.KAFKA_COLUMNS)))
    assert tuple(empty.columns) == contracts.ARCHIVE_COLUMNS
