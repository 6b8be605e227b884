"""Reading committed tables with the full declared schema (older files read with new columns null).

Every reader goes through `readable_root` (local folders and s3:// prefixes, catalog/fs.py): a
root this code cannot read (another URI scheme) and a catalog whose schema version needs `emoforge catalog migrate` (or a newer emoforge) are refused
with an error that says so, never read as empty or half-null tables.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from catalog import fs, layout, schema
from catalog.commits import read_commits
from catalog.fs import Root
from catalog.migrate import check_readable


def readable_root(root: str | os.PathLike | Root) -> Root:
    """The Root of a catalog this code can read. Raises fs.UnsupportedRootError for roots it
    cannot read and migrate.SchemaVersionError when the manifest's schema version needs a
    migration (or a newer emoforge). A folder without a manifest has no committed rows."""
    root = fs.resolve(root)
    info = root.info(layout.MANIFEST)
    if info.type == pafs.FileType.NotFound:
        return root
    _check_version(root, root.uri_of(layout.MANIFEST), info.mtime_ns, info.size)
    return root


@functools.lru_cache(maxsize=64)
def _check_version(root: Root, manifest: str, mtime_ns: int | None, size: int | None) -> None:
    """Checked once per manifest version (its location, mtime and size)."""
    version = root.read_json(layout.MANIFEST).get("schema_version")
    if version is None:
        raise ValueError(f"{manifest}: no schema_version (not an emoforge catalog manifest)")
    try:
        check_readable(version)
    except Exception as exc:
        raise type(exc)(f"{root}: {exc}") from None


def committed_rels(root: str | os.PathLike | Root, table: str,
                   shards: set[int] | None = None) -> list[str]:
    """Catalog-relative names of the committed Parquet files of `table`, in shard order."""
    commits = read_commits(readable_root(root))
    return [rel for shard, record in sorted(commits.items())
            if shards is None or shard in shards for rel in record.files.get(table, [])]


def committed_files(root: str | os.PathLike | Root, table: str,
                    shards: set[int] | None = None) -> list[str]:
    """The committed Parquet files of `table` (optionally only `shards`), in shard order, as
    local paths or s3:// URIs."""
    root = fs.resolve(root)
    return [root.uri_of(rel) for rel in committed_rels(root, table, shards)]


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
    root: str | Path | Root,
    table: str,
    columns: list[str] | None = None,
    shards: set[int] | None = None,
    filters=None,
) -> pa.Table:
    """All committed rows of `table` (optionally some shards, columns, pyarrow filters)."""
    full = schema.table_schema(table)
    target = full if columns is None else pa.schema([full.field(c) for c in columns])
    root = fs.resolve(root)
    parts = []
    for rel in committed_rels(root, table, shards):
        present = set(root.parquet_schema(rel).names)
        cols = [c for c in target.names if c in present]
        parts.append(conform(root.read_parquet(rel, columns=cols, filters=filters), target))
    if not parts:
        return target.empty_table()
    return pa.concat_tables(parts)


def media_file(root: str | os.PathLike | Root, relpath: str, cache: str | os.PathLike | None = None) -> Path:
    """A local path of a committed media file (`media/...`, e.g. a track's `crop_path`), for
    readers that need one (decord, numpy). Local catalogs: the file itself. Object stores: a
    copy downloaded once into `cache` (default `$EMOFORGE_CACHE/media`, else
    ~/.cache/emoforge/media), under the catalog's hash and `relpath`; a copy whose size differs
    from the object's is fetched again."""
    root = fs.resolve(root)
    if root.local:
        return root.local_path() / relpath
    base = Path(cache) if cache else Path(os.environ.get("EMOFORGE_CACHE")
                                          or Path.home() / ".cache" / "emoforge") / "media"
    local = base / hashlib.sha256(root.uri.encode()).hexdigest()[:16] / relpath
    info = root.info(relpath)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{root.uri_of(relpath)}: no such media file")
    if not local.is_file() or local.stat().st_size != info.size:
        root.get_file(relpath, local)
    return local

