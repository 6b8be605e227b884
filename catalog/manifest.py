"""`_manifest.json`: the catalog's current version (schema, commits, job spec, stages, licenses).

The version is the hash of the sorted commit list; every written manifest is also kept as
`_manifests/<version>.json` so a checkpoint that cites a version can find what it trained on.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pyarrow.compute as pc

from catalog import fs, layout, schema
from catalog.commits import read_commits
from catalog.fs import Root
from catalog.read import read_table


def catalog_version(root: str | Path | Root) -> str:
    commits = read_commits(root)
    listing = [(c.shard, c.seq, c.committed_at) for c in sorted(commits.values(), key=lambda c: c.shard)]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


def status_counts(root: str | Path | Root) -> dict[str, dict[str, dict[str, int]]]:
    """{table: {stage: {status: count}}} over committed files."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for table in schema.TABLES:
        names = [f.name for f in schema.table_schema(table) if f.name.endswith("_status")]
        if not names:
            continue
        data = read_table(root, table, columns=names)
        for name in names:
            if data.num_rows == 0:
                continue
            counts = pc.value_counts(data[name]).to_pylist()
            stage = name.removesuffix("_status")
            out.setdefault(table, {})[stage] = {
                str(c["values"]): int(c["counts"]) for c in counts if c["values"] is not None
            }
    return out


def write_manifest(
    root: str | Path | Root,
    job_spec: dict,
    stages: dict[str, dict],
    code_version: str,
    timings: dict | None = None,
) -> dict:
    """Write `_manifest.json` for the catalog's current commits.

    stages: {stage: {fingerprint, backends: [{key, version, weights, license}], config}}
    timings: {runner stage: {rows_in, ok, skipped, failed, seconds}} of the last run"""
    root = fs.resolve(root)
    commits = read_commits(root)
    licenses = sorted({m["license"] for s in stages.values() for m in s.get("models", [])})
    restricted = sorted(
        {m["key"] for s in stages.values() for m in s.get("models", []) if not m.get("commercial_ok", True)}
    )
    manifest = {
        "schema_version": schema.SCHEMA_VERSION,
        "version": catalog_version(root),
        "written_at": time.time(),
        "code_version": code_version,
        "job_spec": job_spec,
        "stages": stages,
        "licenses": {"all": licenses, "non_commercial_models": restricted},
        "commits": [layout.commit_file(c.shard, c.seq) for c in sorted(commits.values(), key=lambda c: c.shard)],
        "counts": status_counts(root),
        "rows": {t: sum(c.counts.get(t, 0) for c in commits.values()) for t in schema.TABLES},
        "timings": timings or {},
    }
    root.write_json(f"{layout.MANIFESTS}/{manifest['version']}.json", manifest)
    root.write_json(layout.MANIFEST, manifest)
    return manifest


def read_manifest(root: str | Path | Root) -> dict:
    """The catalog's current manifest (raises fs.UnsupportedRootError for roots this code
    cannot read, FileNotFoundError when `root` is not a catalog)."""
    root = fs.resolve(root)
    try:
        return root.read_json(layout.MANIFEST)
    except FileNotFoundError:
        raise FileNotFoundError(f"{root} is not an emoforge catalog (no {layout.MANIFEST})") from None
