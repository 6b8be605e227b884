"""Schema versions and migrations.

Minor versions add columns: older catalogs are read as they are, new columns null.
Major versions rename or retype columns: `migrate(root)` rewrites the committed files through
each step in MIGRATIONS (and records the new version in the manifest); readers refuse a catalog
whose major version is older than the code's until it is migrated.

History:
- 0.1 -> 1.0: videos `path` renamed `uri`; videos `duration_ms` (int64 ms) became `duration_s`
  (float64 s); clips `start_ms`/`end_ms` became `start_s`/`end_s`.
- 1.0 -> 1.1: tracks `transcript_segments` (Whisper's segment times and texts) added.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from catalog import fs, layout, schema
from catalog.commits import read_commits

log = logging.getLogger(__name__)


class SchemaVersionError(RuntimeError):
    """The catalog's schema version cannot be read by this code without a migration."""


def parse(version: str) -> tuple[int, int]:
    major, minor = version.split(".")
    return int(major), int(minor)


def _ms_to_s(table: pa.Table, old: str, new: str) -> pa.Table:
    if old not in table.column_names:
        return table
    seconds = pc.divide(table[old].cast(pa.float64()), 1000.0)
    index = table.column_names.index(old)
    return table.remove_column(index).add_column(index, new, seconds)


def _rename(table: pa.Table, old: str, new: str) -> pa.Table:
    if old not in table.column_names:
        return table
    return table.rename_columns([new if n == old else n for n in table.column_names])


def _v0_to_v1(name: str, table: pa.Table) -> pa.Table:
    if name == "videos":
        table = _rename(table, "path", "uri")
        table = _ms_to_s(table, "duration_ms", "duration_s")
    if name == "clips":
        table = _ms_to_s(table, "start_ms", "start_s")
        table = _ms_to_s(table, "end_ms", "end_s")
    return table


# (from major, to major) -> per-table transform
MIGRATIONS: dict[tuple[int, int], Callable[[str, pa.Table], pa.Table]] = {(0, 1): _v0_to_v1}


def check_readable(version: str) -> None:
    have, want = parse(version)[0], parse(schema.SCHEMA_VERSION)[0]
    if have < want:
        raise SchemaVersionError(
            f"catalog schema {version} is older than {schema.SCHEMA_VERSION}: "
            "run `emoforge catalog migrate CATALOG` first"
        )
    if have > want:
        raise SchemaVersionError(
            f"catalog schema {version} is newer than this emoforge ({schema.SCHEMA_VERSION}): upgrade"
        )


def migrate(root: str | Path | fs.Root) -> list[str]:
    """Migrate a catalog in place to the current major version; returns the steps applied."""
    root = fs.resolve(root)
    manifest = root.read_json(layout.MANIFEST)
    major = parse(manifest["schema_version"])[0]
    target = parse(schema.SCHEMA_VERSION)[0]
    steps: list[str] = []
    while major < target:
        step = MIGRATIONS.get((major, major + 1))
        if step is None:
            raise SchemaVersionError(f"no migration from schema {major}.x to {major + 1}.x")
        for record in read_commits(root).values():
            for name, rels in record.files.items():
                for rel in rels:  # rewritten in place: atomic locally, one PUT on a store
                    root.write_parquet(rel, step(name, root.read_parquet(rel)))
        steps.append(f"{major}.x -> {major + 1}.x")
        major += 1
    if steps:
        manifest["schema_version"] = schema.SCHEMA_VERSION
        manifest.setdefault("migrations", []).extend(steps)
        root.write_json(layout.MANIFEST, manifest)
        log.info("migrated %s: %s", root, ", ".join(steps))
    return steps
