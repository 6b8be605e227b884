"""One storage layer for catalogs and inputs: local paths and `s3://` URIs through `pyarrow.fs`.

    root = fs.resolve("s3://bucket/corpus")      # or a local path; idempotent
    root.read_json("_manifest.json"); root.write_parquet("tracks/shard-00001-0000.parquet", t)

Object stores: endpoint, region and credentials come from the usual AWS variables
(`AWS_ENDPOINT_URL` or `AWS_ENDPOINT_URL_S3`, `AWS_REGION` or `AWS_DEFAULT_REGION`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), which a job spec's
`[storage]` section may set (`configure`). Every call on a store is retried with exponential
back-off while the store is unreachable (timeouts, refused connections, 5xx, throttling) for up to
`EMOFORGE_S3_RETRY_SECONDS` (default 120 s), then raises StoreUnavailableError; refused
credentials and missing buckets are not retried (StoreAccessError, a configuration error).
Local writes are atomic (temp file + rename); a store's PUT is atomic by itself.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

log = logging.getLogger(__name__)
T = TypeVar("T")
STORE_SCHEMES = ("s3",)
TRANSIENT_MARKERS = (
    "NETWORK_CONNECTION", "curlCode", "Couldn't connect", "Connection refused", "timed out",
    "Timeout", "TIMEOUT", "SLOW_DOWN", "SERVICE_UNAVAILABLE", "INTERNAL_FAILURE",
    "HTTP response code: 5", "Connection reset", "Empty reply", "Recv failure", "Send failure",
    "Failure when receiving", "THROTTLING", "Unable to connect",
)
ACCESS_MARKERS = (
    "ACCESS_DENIED", "AccessDenied", "INVALID_ACCESS_KEY", "InvalidAccessKeyId",
    "SIGNATURE_DOES_NOT_MATCH", "SignatureDoesNotMatch", "NO_SUCH_BUCKET", "NoSuchBucket",
    "HTTP response code: 403", "INVALID_CLIENT_TOKEN", "EXPIRED_TOKEN",
)


class RootError(ValueError):
    """A catalog or input root that cannot be used as given (a configuration error, exit 2)."""


class UnsupportedRootError(RootError):
    """A URI scheme this code cannot read or write (e.g. gs://)."""


class StoreAccessError(RootError):
    """The object store refused the credentials, or the bucket does not exist."""


class StoreUnavailableError(RuntimeError):
    """The object store stayed unreachable through every retry (a runtime failure, exit 1)."""


@dataclass(frozen=True)
class StoreSettings:
    """How to reach an S3-compatible store; None fields fall back to the AWS SDK's defaults.
    Seconds for every duration."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    retry_seconds: float = 120.0  # give up after the store has been unreachable this long
    connect_timeout: float = 5.0
    request_timeout: float = 30.0

    @classmethod
    def from_env(cls) -> StoreSettings:
        env = os.environ
        return cls(
            endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
            access_key=env.get("AWS_ACCESS_KEY_ID"),
            secret_key=env.get("AWS_SECRET_ACCESS_KEY"),
            session_token=env.get("AWS_SESSION_TOKEN"),
            retry_seconds=float(env.get("EMOFORGE_S3_RETRY_SECONDS", 120.0)),
            connect_timeout=float(env.get("EMOFORGE_S3_CONNECT_TIMEOUT", 5.0)),
            request_timeout=float(env.get("EMOFORGE_S3_REQUEST_TIMEOUT", 30.0)),
        )


STORAGE_KEYS = {"endpoint_url": "AWS_ENDPOINT_URL", "region": "AWS_REGION",
                "access_key": "AWS_ACCESS_KEY_ID", "secret_key": "AWS_SECRET_ACCESS_KEY",
                "session_token": "AWS_SESSION_TOKEN", "retry_seconds": "EMOFORGE_S3_RETRY_SECONDS",
                "connect_timeout": "EMOFORGE_S3_CONNECT_TIMEOUT",
                "request_timeout": "EMOFORGE_S3_REQUEST_TIMEOUT"}


def configure(storage: dict) -> None:
    """Apply a job spec's `[storage]` table: its values become this process's AWS variables, so
    Ray workers started afterwards (which inherit the environment) reach the same store."""
    unknown = set(storage) - set(STORAGE_KEYS)
    if unknown:
        raise RootError(f"[storage]: unknown keys {sorted(unknown)}; valid: {sorted(STORAGE_KEYS)}")
    for key, value in storage.items():
        if value is not None:
            os.environ[STORAGE_KEYS[key]] = str(value)
    _store.cache_clear()


def worker_options() -> dict:
    """Ray remote options that give workers this process's store settings (its AWS_* and
    EMOFORGE_S3_* variables, e.g. from `[storage]`), whatever environment Ray was started with.
    Empty when none is set, so local runs start no extra runtime environment."""
    env = {k: v for k, v in os.environ.items()
           if k in STORAGE_KEYS.values() or k in ("AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION")}
    return {"runtime_env": {"env_vars": env}} if env else {}


def is_store_uri(uri: str | os.PathLike) -> bool:
    text = str(uri)
    return "://" in text and not text.startswith("file://")


def split_uri(uri: str) -> tuple[str, str]:
    """("s3", "bucket/key...") of an object-store URI; UnsupportedRootError for other schemes."""
    scheme, _, rest = str(uri).partition("://")
    if scheme not in STORE_SCHEMES:
        raise UnsupportedRootError(
            f"{uri}: {scheme}:// is not supported; use a local or mounted path or s3://BUCKET/PREFIX"
        )
    rest = rest.strip("/")
    if not rest:
        raise RootError(f"{uri}: no bucket named")
    return scheme, rest


@functools.lru_cache(maxsize=8)
def _store(settings: StoreSettings) -> pafs.FileSystem:
    kwargs: dict = {"connect_timeout": settings.connect_timeout,
                    "request_timeout": settings.request_timeout,
                    # our own loop retries for longer, with back-off and a clear final error
                    "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=1)}
    if settings.endpoint_url:
        scheme, _, host = settings.endpoint_url.partition("://")
        kwargs["endpoint_override"] = host if host else settings.endpoint_url
        kwargs["scheme"] = scheme if host else "https"
    if settings.region:
        kwargs["region"] = settings.region
    if settings.access_key and settings.secret_key:
        kwargs.update(access_key=settings.access_key, secret_key=settings.secret_key,
                      session_token=settings.session_token)
    return pafs.S3FileSystem(**kwargs)


def store_filesystem() -> pafs.FileSystem:
    """The S3 filesystem for the current settings (environment)."""
    return _store(StoreSettings.from_env())


def is_transient(exc: BaseException) -> bool:
    text = str(exc)
    if any(m in text for m in ACCESS_MARKERS):
        return False
    return isinstance(exc, OSError) and any(m in text for m in TRANSIENT_MARKERS)


_FAILURES = [0]  # StoreUnavailableErrors raised in this process


def store_failures() -> int:
    """How many store operations of this process gave up (StoreUnavailableError). A caller whose
    work swallows exceptions per row (stages record them as failed rows) compares the count
    before and after, so an outage stops the job instead of becoming a row's failure."""
    return _FAILURES[0]


def with_retries(what: str, call: Callable[[], T], settings: StoreSettings | None = None) -> T:
    """Run one store operation, retrying transient failures with exponential back-off (0.5 s
    doubling to 8 s) until `settings.retry_seconds` have passed; access failures raise
    StoreAccessError at once."""
    settings = settings or StoreSettings.from_env()
    started = time.monotonic()
    delay, attempt = 0.5, 0
    while True:
        attempt += 1
        try:
            return call()
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            if any(m in str(exc) for m in ACCESS_MARKERS):
                raise StoreAccessError(f"{what}: the store refused access: {exc} (check "
                                       "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, the bucket "
                                       "name and AWS_ENDPOINT_URL)") from None
            if not is_transient(exc):
                raise
            waited = time.monotonic() - started
            if waited + delay > settings.retry_seconds:
                _FAILURES[0] += 1
                raise StoreUnavailableError(
                    f"{what}: object store unreachable for {waited:.0f} s ({attempt} attempts; "
                    f"EMOFORGE_S3_RETRY_SECONDS={settings.retry_seconds:g}): {exc}. Committed "
                    "shards are kept: run the same command again to finish"
                ) from None
            log.warning("%s: store unreachable (attempt %d), retrying in %.1f s: %s",
                        what, attempt, delay, str(exc).splitlines()[0][:200])
            time.sleep(delay)
            delay = min(delay * 2, 8.0)


class Root:
    """A catalog root: a local folder or an object-store prefix, and the file operations the
    catalog needs, all by catalog-relative names ("tracks/shard-00001-0000.parquet")."""

    def __init__(self, uri: str, filesystem: pafs.FileSystem, base: str, local: bool):
        self.uri, self.fs, self.base, self.local = uri, filesystem, base, local

    def __repr__(self) -> str:
        return f"Root({self.uri!r})"

    def __str__(self) -> str:
        return self.uri

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Root) and (other.uri, other.fs) == (self.uri, self.fs)

    def __hash__(self) -> int:
        return hash(self.uri)

    def __fspath__(self) -> str:
        if not self.local:
            raise UnsupportedRootError(f"{self.uri} is not a local path")
        return self.base

    # names
    def path(self, rel: str = "") -> str:
        """The filesystem path of `rel` (for pyarrow calls with `filesystem=root.fs`)."""
        return f"{self.base}/{rel}".rstrip("/") if rel else self.base

    def uri_of(self, rel: str) -> str:
        """The user-facing location of `rel`: a local path or an s3:// URI."""
        return self.path(rel) if self.local else f"{self.uri}/{rel}"

    def local_path(self) -> Path:
        if not self.local:
            raise UnsupportedRootError(f"{self.uri}: this operation needs a local catalog")
        return Path(self.base)

    def _call(self, what: str, call: Callable[[], T]) -> T:
        return call() if self.local else with_retries(f"{what} {self.uri}", call)

    # queries
    def info(self, rel: str = "") -> pafs.FileInfo:
        return self._call(f"stat {rel}", lambda: self.fs.get_file_info(self.path(rel)))

    def is_file(self, rel: str) -> bool:
        return self.info(rel).type == pafs.FileType.File

    def is_dir(self, rel: str = "") -> bool:
        if self.local:
            return self.info(rel).type == pafs.FileType.Directory
        return self.info(rel).type != pafs.FileType.NotFound or bool(self.list_files(rel, limit=1))

    def list_files(self, rel: str, recursive: bool = True, limit: int | None = None) -> list[str]:
        """Catalog-relative names of the files under `rel` (sorted; [] when absent)."""
        selector = pafs.FileSelector(self.path(rel), recursive=recursive, allow_not_found=True)
        infos = self._call(f"list {rel}", lambda: self.fs.get_file_info(selector))
        prefix = len(self.base) + 1
        out = sorted(i.path[prefix:] for i in infos if i.type == pafs.FileType.File)
        return out[:limit] if limit else out

    # reading
    def read_bytes(self, rel: str) -> bytes:
        def read() -> bytes:
            with self.fs.open_input_stream(self.path(rel)) as f:
                return f.read()
        return self._call(f"read {rel}", read)

    def read_json(self, rel: str) -> dict:
        try:
            return json.loads(self.read_bytes(rel))
        except FileNotFoundError:
            raise
        except ValueError as exc:
            raise ValueError(f"{self.uri_of(rel)}: not valid JSON: {exc}") from None

    def read_parquet(self, rel: str, columns: list[str] | None = None, filters=None) -> pa.Table:
        return self._call(f"read {rel}", lambda: pq.read_table(
            self.path(rel), columns=columns, filters=filters, filesystem=self.fs))

    def parquet_schema(self, rel: str) -> pa.Schema:
        return self._call(f"read {rel}", lambda: pq.read_schema(self.path(rel), filesystem=self.fs))

    # writing
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a file whole: atomic (temp + rename) locally, one PUT on a store."""
        if self.local:
            path = Path(self.path(rel))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            return

        def put() -> None:
            with self.fs.open_output_stream(self.path(rel)) as f:
                f.write(data)
        self._call(f"write {rel}", put)

    def write_json(self, rel: str, data: dict) -> None:
        self.write_bytes(rel, json.dumps(data, indent=1, sort_keys=True, default=str).encode())

    def write_parquet(self, rel: str, table: pa.Table, **options) -> None:
        """Write a Parquet file whole, streamed (no copy of the file in memory): locally to a
        temp name then renamed; on a store as one upload, redone whole when retried."""
        if self.local:
            path = Path(self.path(rel))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
            pq.write_table(table, tmp, **options)
            os.replace(tmp, path)
            return
        self._call(f"write {rel}", lambda: pq.write_table(table, self.path(rel), filesystem=self.fs,
                                                          **options))

    def put_file(self, src: str | os.PathLike, rel: str, move: bool = False) -> None:
        """Copy (or move, locally a rename) a local file to `rel`; a store gets it uploaded."""
        if self.local:
            dst = Path(self.path(rel))
            dst.parent.mkdir(parents=True, exist_ok=True)
            if move:
                try:
                    os.replace(src, dst)
                    return
                except OSError:
                    pass  # another device: copy below
            tmp = dst.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{dst.name}")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
            if move:
                os.unlink(src)
            return

        def upload() -> None:
            with open(src, "rb") as f, self.fs.open_output_stream(self.path(rel)) as out:
                shutil.copyfileobj(f, out, 8 << 20)
        self._call(f"upload {rel}", upload)
        if move:
            os.unlink(src)

    def get_file(self, rel: str, dst: str | os.PathLike) -> Path:
        """Download `rel` to the local file `dst` (written under a temp name, then renamed)."""
        dst = Path(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{dst.name}")

        def download() -> None:
            with self.fs.open_input_stream(self.path(rel)) as f, open(tmp, "wb") as out:
                shutil.copyfileobj(f, out, 8 << 20)
        self._call(f"download {rel}", download)
        os.replace(tmp, dst)
        return dst

    def delete(self, rel: str) -> None:
        def remove() -> None:
            try:
                self.fs.delete_file(self.path(rel))
            except FileNotFoundError:
                pass
        self._call(f"delete {rel}", remove)

    def delete_dir(self, rel: str) -> None:
        def remove() -> None:
            try:
                self.fs.delete_dir(self.path(rel))
            except FileNotFoundError:
                pass
        self._call(f"delete {rel}/", remove)

    def check_access(self, create: bool = False) -> None:
        """Raise StoreAccessError before any work when the bucket is missing or the credentials
        are refused (a listing and, with `create`, a small write and delete)."""
        if self.local:
            if create:
                Path(self.base).mkdir(parents=True, exist_ok=True)
            return
        bucket = self.base.split("/")[0]
        info = self._call("open bucket", lambda: self.fs.get_file_info(bucket))
        if info.type == pafs.FileType.NotFound:
            raise StoreAccessError(f"{self.uri}: bucket {bucket!r} does not exist at "
                                   f"{StoreSettings.from_env().endpoint_url or 'AWS'}")
        self.list_files("", recursive=False, limit=1)
        if create:
            probe = f"_probe-{uuid.uuid4().hex[:12]}"
            self.write_bytes(probe, b"")
            self.delete(probe)


def resolve(root: str | os.PathLike | Root) -> Root:
    """The Root of a local path, a file:// URI or an s3://bucket/prefix URI (idempotent)."""
    if isinstance(root, Root):
        return root
    text = str(root)
    if is_store_uri(text):
        scheme, rest = split_uri(text)
        return Root(f"{scheme}://{rest}", store_filesystem(), rest, local=False)
    path = str(Path(text.removeprefix("file://")).resolve())
    return Root(path, pafs.LocalFileSystem(), path, local=True)



# reading inputs by URI (open_input, stat_input, list_input): catalog/fs_inputs.py
__all__ = ["Root", "RootError", "StoreAccessError", "StoreSettings", "StoreUnavailableError",
           "UnsupportedRootError", "configure", "is_store_uri", "resolve", "store_failures",
           "with_retries", "worker_options"]
