"""Adapters to other tools; each imports its library lazily inside the function."""

from __future__ import annotations

from pathlib import Path

from catalog.read import committed_files, read_table


def to_pandas(root: str | Path, table: str, columns: list[str] | None = None):
    """A pandas DataFrame of the committed rows (full declared schema)."""
    return read_table(root, table, columns=columns).to_pandas()


def to_duckdb(root: str | Path, connection=None):
    """A DuckDB connection with one view per table over the committed Parquet files."""
    import duckdb

    con = connection or duckdb.connect()
    for table in ("videos", "clips", "tracks", "frames", "persons"):
        files = [str(p) for p in committed_files(root, table)]
        if files:
            listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            con.execute(
                f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM read_parquet([{listing}], "
                "union_by_name = true)"
            )
    return con


def to_ray_dataset(root: str | Path, table: str, columns: list[str] | None = None):
    """A Ray Dataset over the committed files of `table`."""
    import ray.data

    files = [str(p) for p in committed_files(root, table)]
    if not files:
        raise ValueError(f"catalog {root} has no committed {table} rows")
    return ray.data.read_parquet(files, columns=columns)
