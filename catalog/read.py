"""Reading committed tables with the full declared schema (older files read with new columns null).

Every reader goes through `readable_root`: a root this code cannot read (an object store) and a
catalog whose schema version needs `emoforge catalog migrate` (or a newer emoforge) are refused
with an error that says so, never read as empty or half-null tables.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from catalog import layout, schema
from catalog.commits import read_commits
from catalog.migrate import check_readable


def readable_root(root: str | os.PathLike) -> Path:
    """The local folder of a catalog this code can read. Raises layout.UnsupportedRootError for
    roots it cannot read and migrate.SchemaVersionError when the manifest's schema version needs
    a migration (or a newer emoforge). A folder without a manifest has no committed rows."""
    path = layout.local_root(root)
    manifest = path / layout.MANIFEST
    try:
        stat = manifest.stat()
    except FileNotFoundError:
        return path
    _check_version(str(manifest), stat.st_mtime_ns, stat.st_size)
    return path


@functools.lru_cache(maxsize=64)
def _check_version(manifest: str, mtime_ns: int, size: int) -> None:
    """Checked once per manifest version (its path, mtime and size)."""
    version = layout.read_json(Path(manifest)).get("schema_version")
    if version is None:
        raise ValueError(f"{manifest}: no schema_version (not an emoforge catalog manifest)")
    try:
        check_readable(version)
    except Exception as exc:
        raise type(exc)(f"{Path(manifest).parent}: {exc}") from None


def committed_files(root: str | os.PathLike, table: str, shards: set[int] | None = None) -> list[Path]:
    """The committed Parquet files of `table` (optionally only `shards`), in shard order."""
    root = readable_root(root)
    commits = read_commits(root)
    return [
        root / rel
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
    for path in committed_files(root, table, shards):
        present = set(pq.read_schema(path).names)
        cols = [c for c in target.names if c in present]
        parts.append(conform(pq.read_table(path, columns=cols, filters=filters), target))
    if not parts:
        return target.empty_table()
    return pa.concat_tables(parts)
