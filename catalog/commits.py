"""The commit protocol: a shard's staged files become visible only through its commit record.

A shard's outputs (Parquet per table, media files) are staged (under `_staging/` for a local
catalog, in a local folder for an object store), written to final deterministic names (moved
locally, uploaded to a store: no rename needed), then recorded in `_commits/shard-SSSSS-NNNN.json`.
The record, one atomic write, is the commit: a crash after the files and before the record leaves
files no commit lists; readers never trust them, and the next run deletes them (`clean_orphans`)
and redoes the shard. The latest record per shard wins.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from catalog import fs, layout, schema
from catalog.fs import Root

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


def read_commits(root: str | Path | Root, shard: int | None = None) -> dict[int, ShardCommit]:
    """The latest commit record per shard (of `shard` only, when given: only its records are
    read)."""
    root = fs.resolve(root)
    latest: dict[int, ShardCommit] = {}
    prefix = "shard-" if shard is None else f"shard-{shard:05d}-"
    for rel in root.list_files(layout.COMMITS, recursive=False):
        name = rel.rsplit("/", 1)[-1]
        if not (name.startswith(prefix) and name.endswith(".json")):
            continue
        record = ShardCommit(**root.read_json(rel))
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


def clean_orphans(root: str | Path | Root) -> list[str]:
    """Delete final files (table Parquet, media) that no latest commit lists, and `_staging/`.
    Only the lease holder may call it: an unlisted file is a crashed run's, never a live one's."""
    root = fs.resolve(root)
    keep = listed_files(read_commits(root))
    removed: list[str] = []
    for top in (*schema.TABLES, layout.MEDIA):
        for rel in root.list_files(top):
            if rel not in keep:
                root.delete(rel)
                removed.append(rel)
    root.delete_dir(layout.STAGING)
    if removed:
        log.info("removed %d uncommitted files left by an earlier run", len(removed))
    return removed


def write_table(root: str | Path | Root, rel: str, table: pa.Table) -> None:
    """Write one Parquet file (sorted by key by the caller; row groups of about 64k rows)."""
    fs.resolve(root).write_parquet(rel, table, row_group_size=ROW_GROUP_ROWS, compression="zstd")


def commit_shard(
    root: str | Path | Root,
    shard: int,
    tables: dict[str, pa.Table],
    staged_media: dict[str, Path],
    fingerprints: dict[str, str],
    keep_media: list[str] | None = None,
    before_record: Callable[[], None] | None = None,
    keep_tables: tuple[str, ...] = (),
) -> ShardCommit:
    """Write a shard's tables and put its media at their final names, then write the record.

    tables: full-schema tables per table name (already sorted by key); staged_media: final
    relpath -> staged local file (moved on a local catalog, uploaded to a store); keep_media:
    media of the previous commit still referenced; keep_tables: tables of the previous commit
    carried over as they are (their files listed again, not rewritten: a pass that changes one
    table writes only that one). Final names are deterministic (shard and sequence), so a
    retried commit overwrites its own partial files; the record, one atomic write, is what makes
    them visible. `before_record` runs between the files and the record (tests inject a crash
    there)."""
    root = fs.resolve(root)
    previous = read_commits(root, shard).get(shard)
    seq = 0 if previous is None else previous.seq + 1
    kept = [name for name in keep_tables if name not in tables]
    if kept and previous is None:
        raise ValueError(f"shard {shard} has no commit to keep tables {kept} from")
    files = {name: list(previous.files[name]) for name in kept if name in previous.files}
    counts = {name: previous.counts.get(name, 0) for name in files}
    for name, table in tables.items():
        rel = layout.shard_file(name, shard, seq)
        write_table(root, rel, table)
        files[name] = [rel]
        counts[name] = table.num_rows
    for rel, src in sorted(staged_media.items()):
        root.put_file(src, rel, move=True)
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
    root.write_json(layout.commit_file(shard, seq), record.to_json())
    if previous is not None:  # the previous version's Parquet files no longer listed
        listed = {rel for rels in files.values() for rel in rels}
        for rels in previous.files.values():
            for rel in rels:
                if rel not in listed:
                    root.delete(rel)
    return record


class LeaseError(RuntimeError):
    """Another writer holds the catalog."""


_LIVE_TOKENS: set[str] = set()  # leases held by Lease objects of this process


class Lease:
    """Single writer per catalog: `_lease` holds host, pid, a token and an expiry time.

    Local catalogs: created with O_EXCL; a holder whose process is gone (same host) is taken
    over. Object stores have no exclusive create that pyarrow can ask for (S3's conditional
    `If-None-Match` PUT is not exposed), so the lease is written, then read back after
    `EMOFORGE_LEASE_SETTLE_SECONDS` (1 s): of two writers that raced, the later write wins and
    the other sees a foreign token and stops. This is safe as long as no writer stalls for longer
    than the settle time between its check and its write. A store lease expires
    `EMOFORGE_LEASE_SECONDS` (600 s) after its last renewal (every third of that, by a thread);
    an expired lease, or one of a dead process on this host, is taken over."""

    def __init__(self, root: str | Path | Root):
        self.root = fs.resolve(root)
        self.path = self.root.uri_of(layout.LEASE)
        self.held = False
        self.token = uuid.uuid4().hex
        self.ttl = float(os.environ.get("EMOFORGE_LEASE_SECONDS", 600))
        self.settle = float(os.environ.get("EMOFORGE_LEASE_SETTLE_SECONDS", 1.0))
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _record(self) -> dict:
        now = time.time()
        return {"host": socket.gethostname(), "pid": os.getpid(), "since": now,
                "token": self.token, "expires_at": now + self.ttl}

    def __enter__(self) -> Lease:
        if self.root.local:
            self._take_local()
        else:
            self._take_store()
        self.held = True
        _LIVE_TOKENS.add(self.token)
        return self

    def _refuse(self, holder: dict) -> LeaseError:
        until = holder.get("expires_at")
        when = f" until {time.strftime('%H:%M:%S', time.localtime(until))} unless renewed" if until else ""
        return LeaseError(f"catalog is being written by pid {holder.get('pid')} on "
                          f"{holder.get('host')} (lease {self.path}{when}); one writer per catalog")

    def _take_local(self) -> None:
        path = Path(self.root.path(layout.LEASE))
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder()
                if holder and self._alive(holder):
                    raise self._refuse(holder) from None
                log.warning("taking over a stale lease from %s", holder)
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self._record()))
            return
        raise LeaseError(f"could not take the lease {self.path}")

    def _take_store(self) -> None:
        holder = self._holder()
        if holder and self._alive(holder) and holder.get("expires_at", 0) > time.time():
            raise self._refuse(holder)
        if holder:
            log.warning("taking over a stale lease from %s", holder)
        self.root.write_json(layout.LEASE, self._record())
        time.sleep(self.settle)
        holder = self._holder()
        if not holder or holder.get("token") != self.token:
            raise self._refuse(holder or {})
        self._renewer = threading.Thread(target=self._renew, name="emoforge-lease", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.root.write_json(layout.LEASE, self._record())
            except Exception as exc:  # noqa: BLE001 - a missed renewal is retried next period
                log.warning("could not renew the lease %s: %s", self.path, exc)

    def __exit__(self, *exc) -> None:
        if not self.held:
            return
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        _LIVE_TOKENS.discard(self.token)
        self.held = False
        try:
            holder = self._holder()
            if holder is None or holder.get("token") == self.token:
                self.root.delete(layout.LEASE)
        except Exception as error:  # noqa: BLE001 - the job's own error matters more
            log.warning("could not release the lease %s (%s); the next run on this host takes it "
                        "over", self.path, error)

    def _holder(self) -> dict | None:
        try:
            return self.root.read_json(layout.LEASE)
        except (FileNotFoundError, ValueError):
            return None
        except OSError:
            if self.root.local:
                return None
            raise

    @staticmethod
    def _alive(holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            return True  # cannot check another host: assume alive (a store lease also expires)
        pid = int(holder.get("pid", -1))
        if pid == os.getpid():
            return holder.get("token") in _LIVE_TOKENS  # a lease this process left behind
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
