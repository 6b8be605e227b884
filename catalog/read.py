"""Reading committed tables with the full declared schema (older files read with new columns null)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from catalog import schema
from catalog.commits import read_commits


def committed_files(root: Path, table: str, shards: set[int] | None = None) -> list[Path]:
    commits = read_commits(Path(root))
    return [
        Path(root) / rel
        for shard, record in sorted(commits.items())
        if shards is None or shard in shards
        for rel in record.files.get(table, [])
    ]


def conform(table: pa.Table, target: pa.Schema) -> pa.Table:
    """Select and cast `table` to `target`, filling absent columns with nulls."""
    arrays = []
    for field in target:
        if field.name in table.column_names:
            arrays.append(table[field.name].cast(field.type))
        else:
            arrays.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(arrays, schema=target)


def read_table(
    root: str | Path,
    table: str,
    columns: list[str] | None = None,
    shards: set[int] | None = None,
    filters=None,
) -> pa.Table:
    """All committed rows of `table` (optionally some shards, columns, pyarrow filters)."""
    full = schema.table_schema(table)
    target = full if columns is None else pa.schema([full.field(c) for c in columns])
    parts = []
    for path in committed_files(Path(root), table, shards):
        present = set(pq.read_schema(path).names)
        cols = [c for c in target.names if c in present]
        parts.append(conform(pq.read_table(path, columns=cols, filters=filters), target))
    if not parts:
        return target.empty_table()
    return pa.concat_tables(parts)
