"""Where things live in a catalog folder, and the few file operations the contract needs.

    videos/ clips/ tracks/ frames/ persons/   Parquet, files named <table>/shard-SSSSS-NNNN.parquet
    media/SSSSS/<track_id>/...                face-crop clips and sidecars, listed in commits
    _commits/shard-SSSSS-NNNN.json            one record per committed shard version
    _manifest.json, _manifests/               the current version, and every earlier one
    _staging/<run id>/                        uncommitted work; never read by readers
    _cache/                                   derived lookups (content-hash cache)
    _lease                                    the single writer's lease

A catalog root is a local folder (or a mounted file system shared by a cluster's nodes) or an
object-store prefix (`s3://bucket/prefix`); catalog/fs.py resolves either to a pyarrow filesystem
and does every read and write. The commit protocol never relies on renames.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from catalog.fs import UnsupportedRootError, is_store_uri, split_uri  # noqa: F401 - re-exported

COMMITS = "_commits"
MANIFEST = "_manifest.json"
MANIFESTS = "_manifests"
STAGING = "_staging"
LEASE = "_lease"
MEDIA = "media"


def shard_file(table: str, shard: int, seq: int) -> str:
    """Catalog-relative name of a shard's committed Parquet file for one commit sequence."""
    return f"{table}/shard-{shard:05d}-{seq:04d}.parquet"


def commit_file(shard: int, seq: int) -> str:
    return f"{COMMITS}/shard-{shard:05d}-{seq:04d}.json"


def media_relpath(shard: int, track_id: str, name: str) -> str:
    """The catalog-relative path of a per-track media file: media/SSSSS/<track_id>/<name>."""
    return f"{MEDIA}/{shard:05d}/{track_id}/{name}"


def media_shard(relpath: str) -> int:
    """The shard of a catalog-relative media path (media/SSSSS/...)."""
    return int(relpath.split("/")[1])


def staging_shard(shard: int) -> str:
    """A shard's folder inside a run's staging area (its tables and media/ under it)."""
    return f"shard-{shard:05d}"


def local_root(root: str | os.PathLike) -> Path:
    """The local folder of `root` (a path or a file:// URI), for operations that need one.
    Raises UnsupportedRootError for object-store roots and other URI schemes."""
    text = str(root)
    if is_store_uri(text):
        split_uri(text)  # unknown schemes: UnsupportedRootError naming the scheme
        raise UnsupportedRootError(f"catalog {text}: this operation needs a local or mounted path")
    return Path(text.removeprefix("file://")).resolve()


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to a temp file in the same folder and rename it into place (atomic locally)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)
