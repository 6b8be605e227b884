"""validate, describe and stats: what a user runs to trust and understand a catalog."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from catalog import fs, layout, schema
from catalog.commits import read_commits
from catalog.manifest import read_manifest
from catalog.migrate import check_readable
from catalog.read import read_table

STATUSES = {"ok", "skipped", "failed"}


def validate(root: str | Path | fs.Root) -> list[str]:
    """Every problem found (empty list = valid): manifest, commits and their files, declared
    types, unique keys, foreign keys, status values, listed media present."""
    root = fs.resolve(root)
    problems: list[str] = []
    try:
        manifest = read_manifest(root)
        check_readable(manifest["schema_version"])
    except Exception as exc:  # noqa: BLE001 - reported as a problem, not raised
        return [str(exc)]
    commits = read_commits(root)
    listed = {layout.commit_file(c.shard, c.seq) for c in commits.values()}
    if set(manifest.get("commits", [])) != listed:
        problems.append("manifest commit list differs from _commits/ (a run did not finish)")
    present = set()
    for top in (*schema.TABLES, layout.MEDIA):  # one listing per folder, not a request per file
        present.update(root.list_files(top))
    for record in commits.values():
        for name, rels in record.files.items():
            for rel in rels:
                if rel not in present:
                    problems.append(f"{rel}: listed by commit of shard {record.shard} but missing")
                    continue
                declared = schema.table_schema(name)
                for field in root.parquet_schema(rel):
                    if field.name not in declared.names:
                        problems.append(f"{rel}: undeclared column {field.name}")
                    elif field.type != declared.field(field.name).type:
                        problems.append(
                            f"{rel}: {field.name} is {field.type}, declared "
                            f"{declared.field(field.name).type}"
                        )
        for rel in record.media:
            if rel not in present:
                problems.append(f"{rel}: media listed by shard {record.shard} but missing")
    if problems:  # row checks need every listed file
        return problems
    keys: dict[str, set] = {}
    for table in schema.TABLES:
        names = list(schema.KEYS[table])
        parent = schema.PARENT[table]
        status_cols = [f.name for f in schema.table_schema(table) if f.name.endswith("_status")]
        cols = names + ([parent[1]] if parent and parent[1] not in names else []) + status_cols
        data = read_table(root, table, columns=cols)
        if data.num_rows == 0:
            continue
        key_rows = list(zip(*(data[n].to_pylist() for n in names)))
        if len(set(key_rows)) != len(key_rows):
            problems.append(f"{table}: duplicate keys {names}")
        if any(None in k for k in key_rows):
            problems.append(f"{table}: null key")
        keys[table] = {k[0] for k in key_rows} if len(names) == 1 else set()
        if parent is not None and parent[0] in keys:
            orphans = set(data[parent[1]].to_pylist()) - keys[parent[0]]
            if orphans:
                problems.append(f"{table}: {len(orphans)} rows whose {parent[1]} is not in {parent[0]}")
        for name in status_cols:
            values = set(data[name].drop_null().to_pylist())
            if values - STATUSES:
                problems.append(f"{table}.{name}: unknown statuses {sorted(values - STATUSES)}")
    return problems


def describe(root: str | Path | fs.Root) -> dict:
    """Tables with row counts and their columns (type, stage, unit, doc), plus the manifest head."""
    root = fs.resolve(root)
    manifest = read_manifest(root)
    rows = manifest.get("rows", {})
    tables = {}
    for table in schema.TABLES:
        columns = []
        for field in schema.table_schema(table):
            meta = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
            columns.append({
                "name": field.name,
                "type": str(field.type),
                "stage": schema.stage_of_column(table, field.name),
                "unit": meta.get("unit"),
                "doc": meta.get("doc"),
            })
        tables[table] = {"rows": rows.get(table, 0), "columns": columns}
    return {
        "catalog": root.uri,
        "version": manifest["version"],
        "schema_version": manifest["schema_version"],
        "stages": {k: {"fingerprint": v.get("fingerprint")} for k, v in manifest["stages"].items()},
        "licenses": manifest.get("licenses"),
        "tables": tables,
    }


def stats(root: str | Path | fs.Root) -> dict:
    """Counts by status per stage, hours of video and clips, and errors by reason."""
    root = fs.resolve(root)
    out: dict = {"counts": read_manifest(root).get("counts", {})}
    videos = read_table(root, "videos", columns=["duration_s", "ingest_status", "ingest_error"])
    clips = read_table(root, "clips", columns=["duration_s"])
    out["video_hours"] = _hours(videos["duration_s"])
    out["clip_hours"] = _hours(clips["duration_s"])
    errors: dict[str, dict[str, int]] = {}
    for table in schema.TABLES:
        names = [f.name for f in schema.table_schema(table) if f.name.endswith("_error")]
        if not names:
            continue
        data = read_table(root, table, columns=names)
        for name in names:
            for item in pc.value_counts(data[name].drop_null()).to_pylist():
                reason = str(item["values"])[:120]
                errors.setdefault(f"{table}.{name}", {})[reason] = int(item["counts"])
    out["errors"] = errors
    return out


def _hours(column: pa.ChunkedArray) -> float:
    total = pc.sum(column.drop_null()).as_py() if len(column) else 0.0
    return round((total or 0.0) / 3600.0, 4)
