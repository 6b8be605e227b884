"""The commit protocol: a shard's staged files become visible only through its commit record.

A shard's outputs (Parquet per table, media files) are written under `_staging/`, moved to final
deterministic names, then recorded in `_commits/shard-SSSSS-NNNN.json`. The record is the atomic
step: a crash after the moves and before the record leaves files no commit lists, and the next
run deletes them (`clean_orphans`) and redoes the shard. The latest record per shard wins.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from catalog import layout, schema

log = logging.getLogger(__name__)
ROW_GROUP_ROWS = 64 * 1024


@dataclass
class ShardCommit:
    """One committed version of a shard: its files per table, media, stage fingerprints."""

    shard: int
    seq: int
    files: dict[str, list[str]]
    media: list[str] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    committed_at: float = 0.0

    def to_json(self) -> dict:
        return self.__dict__.copy()


def read_commits(root: Path) -> dict[int, ShardCommit]:
    """The latest commit record per shard."""
    latest: dict[int, ShardCommit] = {}
    folder = root / layout.COMMITS
    if not folder.is_dir():
        return latest
    for path in sorted(folder.glob("shard-*.json")):
        record = ShardCommit(**layout.read_json(path))
        if record.shard not in latest or record.seq > latest[record.shard].seq:
            latest[record.shard] = record
    return latest


def listed_files(commits: dict[int, ShardCommit]) -> set[str]:
    out: set[str] = set()
    for record in commits.values():
        for files in record.files.values():
            out.update(files)
        out.update(record.media)
    return out


def clean_orphans(root: Path) -> list[str]:
    """Delete final files (table Parquet, media) that no latest commit lists, and `_staging/`."""
    keep = listed_files(read_commits(root))
    removed: list[str] = []
    for top in (*schema.TABLES, layout.MEDIA):
        folder = root / top
        if not folder.is_dir():
            continue
        for path in folder.rglob("*"):
            if path.is_file():
                rel = path.relative_to(root).as_posix()
                if rel not in keep:
                    path.unlink()
                    removed.append(rel)
    shutil.rmtree(root / layout.STAGING, ignore_errors=True)
    if removed:
        log.info("removed %d uncommitted files left by an earlier run", len(removed))
    return removed


def write_table(path: Path, table: pa.Table) -> None:
    """Write one Parquet file sorted by the table's key (row groups of about 64k rows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp-" + path.name)
    pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS, compression="zstd")
    os.replace(tmp, path)


def commit_shard(
    root: Path,
    shard: int,
    tables: dict[str, pa.Table],
    staged_media: dict[str, Path],
    fingerprints: dict[str, str],
    keep_media: list[str] | None = None,
    before_record: Callable[[], None] | None = None,
) -> ShardCommit:
    """Write a shard's tables and move its media to final names, then write the commit record.

    tables: full-schema tables per table name (already sorted by key); staged_media: final
    relpath -> staged local file; keep_media: media of the previous commit still referenced.
    `before_record` runs between the moves and the record (tests inject a crash there)."""
    previous = read_commits(root).get(shard)
    seq = 0 if previous is None else previous.seq + 1
    files: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for name, table in tables.items():
        rel = layout.shard_file(name, shard, seq)
        write_table(root / rel, table)
        files[name] = [rel]
        counts[name] = table.num_rows
    for rel, src in sorted(staged_media.items()):
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    if before_record is not None:
        before_record()
    record = ShardCommit(
        shard=shard,
        seq=seq,
        files=files,
        media=sorted(set(staged_media) | set(keep_media or [])),
        fingerprints=dict(fingerprints),
        counts=counts,
        committed_at=time.time(),
    )
    layout.write_json_atomic(root / layout.commit_file(shard, seq), record.to_json())
    if previous is not None:  # the previous version's Parquet files are now unlisted
        for rels in previous.files.values():
            for rel in rels:
                (root / rel).unlink(missing_ok=True)
    return record


class LeaseError(RuntimeError):
    """Another writer holds the catalog."""


class Lease:
    """Single writer per catalog: `_lease` holds host and pid; a dead holder's lease is taken over."""

    def __init__(self, root: Path):
        self.path = root / layout.LEASE
        self.held = False

    def __enter__(self) -> Lease:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder()
                if holder and self._alive(holder):
                    raise LeaseError(
                        f"catalog is being written by pid {holder['pid']} on {holder['host']} "
                        f"(lease {self.path}); one writer per catalog"
                    ) from None
                log.warning("taking over a stale lease from %s", holder)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f'{{"host": "{me["host"]}", "pid": {me["pid"]}, "since": {me["since"]}}}')
            self.held = True
            return self
        raise LeaseError(f"could not take the lease {self.path}")

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _holder(self) -> dict | None:
        try:
            return layout.read_json(self.path)
        except (OSError, ValueError):
            return None

    @staticmethod
    def _alive(holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            return True  # cannot check another host: assume alive
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
