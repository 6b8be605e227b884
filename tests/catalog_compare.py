"""Compare two catalogs row by row (timing columns excepted)."""

from __future__ import annotations

import catalog
from catalog import schema


def timing_columns(table: str) -> set[str]:
    return {f.name for f in schema.table_schema(table) if (f.metadata or {}).get(b"timing") == b"true"}


def catalog_rows(root) -> dict[str, list[dict]]:
    out = {}
    for table in ("videos", "clips", "tracks", "frames"):
        data = catalog.read_table(root, table)
        drop = [c for c in timing_columns(table) if c in data.column_names]
        data = data.drop_columns(drop).sort_by([(k, "ascending") for k in schema.KEYS[table]])
        out[table] = data.to_pylist()
    return out


def assert_same_catalog(a, b) -> None:
    rows_a, rows_b = catalog_rows(a), catalog_rows(b)
    for table in rows_a:
        keys = schema.KEYS[table]
        ka = [tuple(r[k] for k in keys) for r in rows_a[table]]
        kb = [tuple(r[k] for k in keys) for r in rows_b[table]]
        assert len(ka) == len(set(ka)), f"{table}: duplicate keys"
        assert ka == kb, f"{table}: different keys"
        assert rows_a[table] == rows_b[table], f"{table}: different values"
