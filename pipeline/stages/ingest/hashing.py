"""Content hashes of input files (video_id), streamed, cached by (uri, size, mtime).

The cache is `<catalog>/_cache/content_hashes.parquet`, so re-runs over terabytes re-read only
files that changed (inputs and catalog may be local or on an object store, catalog/fs.py). An unreadable file gets no content hash and its error.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow as pa

from catalog import fs, fs_inputs

CACHE_FILE = "_cache/content_hashes.parquet"
CACHE_SCHEMA = pa.schema([
    ("uri", pa.string()), ("size_bytes", pa.int64()), ("mtime_ns", pa.int64()),
    ("content_sha256", pa.string()),
])
CHUNK = 4 << 20


def hash_file(uri: str) -> dict:
    """{uri, size_bytes, mtime_ns, content_sha256, hash_error} for one file (a local path or an
    s3:// URI), streaming its bytes."""
    row = {"uri": uri, "size_bytes": None, "mtime_ns": None, "content_sha256": None, "hash_error": None}
    if fs.is_store_uri(uri):
        return _hash_object(row)
    try:
        st = os.stat(uri)
        row["size_bytes"], row["mtime_ns"] = st.st_size, st.st_mtime_ns
        if not os.path.isfile(uri):
            raise IsADirectoryError(f"{uri} is not a regular file")
        h = hashlib.sha256()
        with open(uri, "rb") as f:
            while block := f.read(CHUNK):
                h.update(block)
        row["content_sha256"] = h.hexdigest()
    except OSError as exc:
        if os.path.islink(uri) and not os.path.exists(uri):
            row["hash_error"] = f"dangling symbolic link: {uri} -> {os.readlink(uri)}"
        else:
            row["hash_error"] = f"cannot read {uri}: {exc.strerror or exc}"
    return row


def _hash_object(row: dict) -> dict:
    """hash_file for an object-store URI. A missing object is the row's error; a store that
    stays unreachable or refuses access raises (the job stops, it is not the file's fault)."""
    uri = row["uri"]
    key = fs_inputs.stat_input(uri)
    if key is None:
        row["hash_error"] = f"cannot read {uri}: no such object"
        return row
    row["size_bytes"], row["mtime_ns"] = key
    h = hashlib.sha256()
    with fs_inputs.open_input(uri) as f:
        while block := f.read(CHUNK):
            h.update(block)
    row["content_sha256"] = h.hexdigest()
    return row


def stat_key(uri: str) -> tuple[int, int] | None:
    """(size, mtime_ns) of a local file or an object, None when unreadable."""
    if fs.is_store_uri(uri):
        return fs_inputs.stat_input(uri)
    try:
        st = os.stat(uri)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def load_cache(root: str | Path | fs.Root) -> dict[str, tuple[int, int, str]]:
    root = fs.resolve(root)
    try:
        table = root.read_parquet(CACHE_FILE)
    except FileNotFoundError:
        return {}
    return {
        r["uri"]: (r["size_bytes"], r["mtime_ns"], r["content_sha256"]) for r in table.to_pylist()
    }


def save_cache(root: str | Path | fs.Root, rows: list[dict]) -> None:
    root = fs.resolve(root)
    cache = load_cache(root)
    for r in rows:
        if r.get("content_sha256"):
            cache[r["uri"]] = (r["size_bytes"], r["mtime_ns"], r["content_sha256"])
    table = pa.Table.from_pylist(
        [{"uri": u, "size_bytes": s, "mtime_ns": m, "content_sha256": h} for u, (s, m, h) in sorted(cache.items())],
        schema=CACHE_SCHEMA,
    )
    root.write_parquet(CACHE_FILE, table)


def assign_ids(rows: list[dict], committed: dict[str, str], num_shards: int) -> list[dict]:
    """Give each hashed input its video_id, shard and duplicate_of.

    The first file with given content (already committed, else the smallest uri) keeps
    video_id = content hash; the others are duplicates with video_id = hash(content, uri).
    Unreadable files get video_id = hash of their uri. committed: content_sha256 -> uri."""
    canonical: dict[str, str] = dict(committed)
    for row in sorted(rows, key=lambda r: r["uri"]):
        digest = row.get("content_sha256")
        if digest and row.get("size_bytes"):
            canonical.setdefault(digest, row["uri"])
    out = []
    for row in rows:
        digest = row.get("content_sha256")
        row = dict(row)
        if digest and row.get("size_bytes") and canonical[digest] == row["uri"]:
            row["video_id"], row["duplicate_of"] = digest[:32], None
        elif digest and row.get("size_bytes"):
            row["video_id"] = _short(f"{digest}:{row['uri']}")
            row["duplicate_of"] = digest[:32]
        else:
            row["video_id"] = _short(f"{digest or 'unreadable'}:{row['uri']}")
            row["duplicate_of"] = None
        row["shard"] = shard_of(row["video_id"], num_shards)
        out.append(row)
    return out


def shard_of(video_id: str, num_shards: int) -> int:
    return int(hashlib.sha256(video_id.encode()).hexdigest()[:8], 16) % num_shards


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]
