"""Adapters to other tools; each imports its library lazily inside the function."""

from __future__ import annotations

from pathlib import Path

from catalog import fs
from catalog.read import committed_rels, read_table

TABLES = ("videos", "clips", "tracks", "frames", "persons")


def to_pandas(root: str | Path | fs.Root, table: str, columns: list[str] | None = None):
    """A pandas DataFrame of the committed rows (full declared schema)."""
    return read_table(root, table, columns=columns).to_pandas()


def to_duckdb(root: str | Path | fs.Root, connection=None):
    """A DuckDB connection with one view per table over the committed Parquet files.

    Local catalogs: views over the files. Object stores: DuckDB would need its httpfs extension
    (a download at run time), so each table is read through pyarrow and registered in memory."""
    import duckdb  # heavy: loaded on use

    root = fs.resolve(root)
    con = connection or duckdb.connect()
    for table in TABLES:
        rels = committed_rels(root, table)
        if not rels:
            continue
        if not root.local:
            con.register(table, read_table(root, table))
            continue
        listing = ", ".join("'" + root.path(r).replace("'", "''") + "'" for r in rels)
        con.execute(
            f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM read_parquet([{listing}], "
            "union_by_name = true)"
        )
    return con


def to_ray_dataset(root: str | Path | fs.Root, table: str, columns: list[str] | None = None):
    """A Ray Dataset over the committed files of `table` (local or on the store)."""
    import ray.data  # heavy: loaded on use

    root = fs.resolve(root)
    files = [root.path(r) for r in committed_rels(root, table)]
    if not files:
        raise ValueError(f"catalog {root} has no committed {table} rows")
    return ray.data.read_parquet(files, columns=columns, filesystem=root.fs)
