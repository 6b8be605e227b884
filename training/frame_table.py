"""Per-frame values of one track, read from the catalog's frames table when a window needs them.

`scan_frame_rows` (once per dataset, streaming one row group at a time) finds where each selected
track's rows lie: the frames/ Parquet file and the row span in it, the frame count and whether
every frame has crop geometry. `FrameReader` (one per process) reads a track's rows back from
the row group(s) holding them, with small LRU caches of row groups and of tracks, and densifies
them. A row group is decoded from Parquet once per machine: it is then kept compacted (the
landmarks reduced to the mouth box a window uses) in a memory-mappable Arrow file of the frame
cache, keyed by the frames file's identity, that every later reader of any of its tracks maps.
Densifying: rows are keyed by (track_id, frame) on the track's 25 fps grid; list columns become
float32 matrices with NaN where a value is null, and emotion probabilities are reordered from the
track's backend classes (catalog.schema.EMOTION_CLASSES) to the training's class order.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.ipc  # noqa: F401 - pa.ipc
import pyarrow.parquet as pq

from catalog import fs, schema
from catalog.read import committed_rels, conform
from catalog.schema import EMOTION_CLASSES
from pipeline.models.registry import build_once, cache_root
from training import windows as geo

log = logging.getLogger(__name__)

FRAME_COLUMNS = ["track_id", "frame", "box", "crop_affine", "yaw", "pitch", "roll", "expression",
                 "jaw_pose", "emotion_probs", "landmarks"]
SCAN_COLUMNS = ["track_id", "frame", "crop_affine"]
CACHE_LAYOUT = 1  # the frame cache's file layout (compact_group, row_groups.json); part of its key


class FrameTableError(RuntimeError):
    """The frames table cannot give a track's rows (a file missing, unreadable or changed since
    the dataset was built); the message names the file."""


@dataclass(frozen=True, slots=True)
class TrackRows:
    """Where a track's frame rows lie: rows [start, stop) of the frames/ file `file`
    (catalog-relative); `frames` = last frame + 1; `complete`: every frame 0..frames-1 has a
    row with a finite crop_affine."""

    file: str
    start: int
    stop: int
    frames: int
    complete: bool


def scan_frame_rows(root: str, ids: list[str]) -> dict[str, TrackRows]:
    """track_id -> TrackRows for the tracks of `ids` that have frame rows. Reads the track_id,
    frame and crop_affine columns one row group at a time (row groups whose track_id statistics
    hold none of `ids` are skipped), so memory stays at one row group whatever the corpus."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    store = fs.resolve(root)
    target = pa.schema([schema.table_schema("frames").field(c) for c in SCAN_COLUMNS])
    value_set = pa.array(wanted, pa.string())
    found: dict[str, list] = {}  # tid -> [file, first row, last row, rows, max frame, min, bad]
    for rel in committed_rels(store, "frames"):
        parquet = _open(store, rel)
        present = [c for c in SCAN_COLUMNS if c in parquet.schema_arrow.names]
        offset = 0
        for g in range(parquet.metadata.num_row_groups):
            rows = parquet.metadata.row_group(g).num_rows
            if _may_hold(parquet.metadata.row_group(g), parquet.schema_arrow, wanted):
                table = conform(parquet.read_row_group(g, columns=present), target)
                _scan_group(rel, table, offset, value_set, found)
            offset += rows
    out = {}
    for tid, (rel, first, last, count, top, low, bad) in found.items():
        n = top + 1
        out[tid] = TrackRows(rel, first, last + 1, n, bool(count == n and low == 0 and not bad))
    return out


def _scan_group(rel: str, table: pa.Table, offset: int, value_set: pa.Array,
                found: dict[str, list]) -> None:
    mask = pc.fill_null(pc.is_in(table["track_id"], value_set=value_set), False)
    picked = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
    if not len(picked):
        return
    table = table.take(pa.array(picked))
    tids = np.asarray(table["track_id"].to_pylist(), dtype=object)
    frame = table["frame"].to_numpy(zero_copy_only=False).astype(np.int64)
    bad = ~np.all(np.isfinite(_matrix(table["crop_affine"], 6)), axis=1)
    names, inverse = np.unique(tids, return_inverse=True)
    k = len(names)
    rows = picked + offset
    first = np.full(k, np.iinfo(np.int64).max)
    last = np.full(k, -1)
    top = np.full(k, -1)
    low = np.full(k, np.iinfo(np.int64).max)
    np.minimum.at(first, inverse, rows)
    np.maximum.at(last, inverse, rows)
    np.maximum.at(top, inverse, frame)
    np.minimum.at(low, inverse, frame)
    count = np.bincount(inverse, minlength=k)
    any_bad = np.bincount(inverse, weights=bad, minlength=k) > 0
    for j, tid in enumerate(names):
        seen = found.get(tid)
        if seen is None:
            found[tid] = [rel, int(first[j]), int(last[j]), int(count[j]), int(top[j]),
                          int(low[j]), bool(any_bad[j])]
            continue
        if seen[0] != rel:
            raise FrameTableError(f"track {tid} has frame rows in two files of the frames table "
                                  f"({seen[0]} and {rel}): the catalog is inconsistent")
        seen[1:] = [min(seen[1], int(first[j])), max(seen[2], int(last[j])),
                    seen[3] + int(count[j]), max(seen[4], int(top[j])), min(seen[5], int(low[j])),
                    seen[6] or bool(any_bad[j])]


def _may_hold(group: pq.RowGroupMetaData, arrow_schema: pa.Schema, wanted: list[str]) -> bool:
    """False when the row group's track_id min/max statistics show it holds none of `wanted`
    (sorted); True when it may (or has no statistics)."""
    try:
        column = group.column(arrow_schema.get_field_index("track_id"))
        stats = column.statistics
        if stats is None or not stats.has_min_max:
            return True
        lo, hi = stats.min, stats.max
    except (KeyError, IndexError, ValueError):
        return True
    if isinstance(lo, bytes):
        lo, hi = lo.decode(), hi.decode()
    i = bisect.bisect_left(wanted, lo)
    return i < len(wanted) and wanted[i] <= hi


def _open(store: fs.Root, rel: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(store.path(rel), filesystem=store.fs)
    except (OSError, pa.ArrowException) as exc:
        raise FrameTableError(f"{store.uri_of(rel)}: cannot open the frames table file "
                              f"({type(exc).__name__}: {exc})") from exc


class FrameReader:
    """A track's dense per-frame arrays (`track_arrays`), read from the frames table's row
    group(s) that hold its rows. Per process (never pickled with its caches): keeps the last
    `row_groups` row groups and `tracks` tracks read. A row group read from Parquet is written
    once, compacted (`compact_group`), into the machine's frame cache `cache_dir` (default
    `default_cache_dir()`), where every process reading the same frames file maps it instead of
    decoding the Parquet row group again."""

    def __init__(self, root: str, expression_dim: int, emotion_classes: tuple[str, ...],
                 row_groups: int = 2, tracks: int = 64,
                 cache_dir: str | os.PathLike | None = None) -> None:
        self.root, self.expression_dim = root, expression_dim
        self.emotion_classes = tuple(emotion_classes)
        self.max_groups, self.max_tracks = row_groups, tracks
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._files: OrderedDict[str, _CachedFile] = OrderedDict()
        self._groups: OrderedDict[tuple[str, int], pa.Table] = OrderedDict()
        self._tracks: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self._warned = False

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_files"], state["_groups"], state["_tracks"] = (OrderedDict(), OrderedDict(),
                                                               OrderedDict())
        return state

    def track_arrays(self, track_id: str, rows: TrackRows,
                     backend: str | None) -> dict[str, np.ndarray]:
        """Dense per-frame arrays of a track over its `rows.frames` frames: box f32[T,4] and
        crop_affine f32[T,6] (source px -> crop px), expression f32[T,expression_dim],
        jaw_pose f32[T,3], emotion_probs f32[T,K] in `emotion_classes` order, head_speed f32[T]
        (deg/s), mouth_box f32[T,4] (crop px, windows.mouth_boxes of the landmarks),
        frame_present bool[T]. NaN where a value is missing (or an expression of another
        length). The arrays are shared with the cache: read them, never write."""
        cached = self._tracks.pop(track_id, None)
        if cached is None:
            table = self._rows(rows)
            table = table.filter(pc.equal(table["track_id"], track_id))
            if table.num_rows == 0 or _last_frame(table) + 1 != rows.frames:
                raise FrameTableError(
                    f"{fs.resolve(self.root).uri_of(rows.file)}: rows {rows.start}..{rows.stop} "
                    f"no longer hold track {track_id}'s {rows.frames} frames (the frames table "
                    "changed since the dataset was built: build it again)")
            cached = dense_arrays(table, backend, self.expression_dim, self.emotion_classes)
        self._tracks[track_id] = cached
        while len(self._tracks) > self.max_tracks:
            self._tracks.popitem(last=False)
        return cached

    def _rows(self, rows: TrackRows) -> pa.Table:
        """Rows [start, stop) of a frames file as `compact_group` columns."""
        entry = self._file(rows.file)
        offsets = entry.offsets
        first = int(np.searchsorted(offsets, rows.start, side="right")) - 1
        last = int(np.searchsorted(offsets, rows.stop - 1, side="right")) - 1
        parts = [self._group(rows.file, entry, g) for g in range(first, last + 1)]
        table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        return table.slice(rows.start - int(offsets[first]), rows.stop - rows.start)

    def _file(self, rel: str) -> _CachedFile:
        """The frames file's cache folder (named by its identity) and row-group offsets: from
        the cache when there, else from the file's footer (then written to the cache)."""
        entry = self._files.pop(rel, None)
        if entry is None:
            store = fs.resolve(self.root)
            folder = self.cache_dir / _identity(store, rel)
            listing = folder / "row_groups.json"
            sizes = None
            if listing.is_file():
                try:
                    sizes = json.loads(listing.read_text())["rows"]
                except (OSError, ValueError, KeyError) as exc:
                    log.warning("data: frame cache %s unreadable (%s); reading the footer",
                                listing, exc)
            if sizes is None:
                metadata = _open(store, rel).metadata
                sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
                text = json.dumps({"file": store.uri_of(rel), "rows": sizes})
                self._store(listing, lambda tmp: Path(tmp).write_text(text))
            entry = _CachedFile(folder, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
        self._files[rel] = entry
        while len(self._files) > 256:
            self._files.popitem(last=False)
        return entry

    def _group(self, rel: str, entry: _CachedFile, g: int) -> pa.Table:
        key = (rel, g)
        table = self._groups.pop(key, None)
        if table is None:
            table = self._cached_group(rel, entry, g)
        self._groups[key] = table
        while len(self._groups) > self.max_groups:
            self._groups.popitem(last=False)
        return table

    def _cached_group(self, rel: str, entry: _CachedFile, g: int) -> pa.Table:
        """Row group g of a frames file, compacted: mapped from the frame cache, or read from
        Parquet, compacted and written there first (once per machine: build_once's lock)."""
        path = entry.folder / f"group-{g:06d}.arrow"
        if path.is_file():
            try:
                return _map(path)
            except (OSError, pa.ArrowException) as exc:
                log.warning("data: frame cache %s unreadable (%s); reading the frames table "
                            "again", path, exc)
                with contextlib.suppress(OSError):
                    path.unlink()
        made: dict[str, pa.Table] = {}

        def build(tmp: Path) -> None:
            made["table"] = compact_group(self._read_group(rel, g))
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(
                    sink, made["table"].schema) as writer:
                writer.write_table(made["table"])

        if self._store(path, build):
            return _map(path)
        return made["table"] if "table" in made else compact_group(self._read_group(rel, g))

    def _store(self, target: Path, build: Callable[[Path], None]) -> bool:
        """build_once(target, build); False (warned once per process) when the frame cache
        cannot be written (the values are then used from memory)."""
        try:
            build_once(target, build)
            return True
        except OSError as exc:
            if not self._warned:
                log.warning("data: frame cache %s not writable (%s); reading the frames table "
                            "without it", self.cache_dir, exc)
                self._warned = True
            return False

    def _read_group(self, rel: str, g: int) -> pa.Table:
        """Row group g of a frames file, FRAME_COLUMNS conformed to the catalog schema."""
        store = fs.resolve(self.root)
        parquet = _open(store, rel)
        full = schema.table_schema("frames")
        target = pa.schema([full.field(c) for c in FRAME_COLUMNS])
        present = [c for c in FRAME_COLUMNS if c in parquet.schema_arrow.names]
        try:
            return conform(parquet.read_row_group(g, columns=present), target)
        except (OSError, pa.ArrowException) as exc:
            raise FrameTableError(f"{store.uri_of(rel)}: cannot read row group {g} "
                                  f"({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True, slots=True)
class _CachedFile:
    """A frames file as FrameReader knows it: its folder in the frame cache and the first row
    of each row group (int64[G+1], the last = the file's rows)."""

    folder: Path
    offsets: np.ndarray


def default_cache_dir() -> Path:
    """The frame cache of this machine: $EMOFORGE_CACHE/frames (default
    ~/.cache/emoforge/frames)."""
    return cache_root() / "frames"


def _identity(store: fs.Root, rel: str) -> str:
    """The frame-cache folder name of a frames file: a hash of the cache layout, its location,
    size and modification time (and inode, local files), so a replaced file is never served
    from the cache. FrameTableError naming the file when it is gone."""
    uri = store.uri_of(rel)
    try:
        if store.local:
            st = os.stat(store.path(rel))
            stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        else:
            info = store.info(rel)
            if info.type != pafs.FileType.File:
                raise FileNotFoundError(f"no such object {uri}")
            stamp = [info.size, info.mtime_ns]
    except (OSError, pa.ArrowException) as exc:
        raise FrameTableError(f"{uri}: cannot open the frames table file "
                              f"({type(exc).__name__}: {exc})") from exc
    text = json.dumps([CACHE_LAYOUT, uri, *stamp])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _map(path: Path) -> pa.Table:
    """A cached row group, memory-mapped (zero copy: only the rows read are paged in)."""
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def compact_group(table: pa.Table) -> pa.Table:
    """A row group's FRAME_COLUMNS with the landmarks (136 floats, 80% of the bytes) replaced
    by what a window uses of them: mouth_box fixed_size_list<float32, 4> (windows.mouth_boxes,
    row by row, so a track's values are those of its own rows)."""
    boxes = geo.mouth_boxes(_matrix(table["landmarks"], 2 * 68))
    mouth = pa.FixedSizeListArray.from_arrays(pa.array(boxes.reshape(-1), pa.float32()), 4)
    return table.drop_columns(["landmarks"]).append_column("mouth_box", mouth)


def _last_frame(table: pa.Table) -> int:
    return int(pc.max(table["frame"]).as_py())


def dense_arrays(table: pa.Table, backend: str | None, expression_dim: int,
                 emotion_classes: tuple[str, ...]) -> dict[str, np.ndarray]:
    """One track's rows (FRAME_COLUMNS, or compact_group's columns, any order) as the dense
    arrays of
    FrameReader.track_arrays, on the grid 0..last frame."""
    table = table.sort_by([("frame", "ascending")])
    idx = table["frame"].to_numpy(zero_copy_only=False).astype(np.int64)
    columns = {
        "box": _matrix(table["box"], 4), "crop_affine": _matrix(table["crop_affine"], 6),
        "expression": _matrix(table["expression"], expression_dim),
        "jaw_pose": _matrix(table["jaw_pose"], 3),
        "emotion_probs": _emotions(table["emotion_probs"], backend, emotion_classes),
        "pose": np.stack([_vector(table[c]) for c in ("yaw", "pitch", "roll")], 1),
        "mouth_box": (_matrix(table["mouth_box"], 4) if "mouth_box" in table.column_names
                      else geo.mouth_boxes(_matrix(table["landmarks"], 2 * 68))),
    }
    n = int(idx.max()) + 1
    track = {"frame_present": np.zeros(n, bool)}
    track["frame_present"][idx] = True
    for name, values in columns.items():
        dense = np.full((n,) + values.shape[1:], np.nan, np.float32)
        dense[idx] = values
        track[name] = dense
    pose = track.pop("pose")
    track["head_speed"] = geo.head_speed(pose[:, 0], pose[:, 1], pose[:, 2])
    return track


def _vector(column: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(column.to_numpy(zero_copy_only=False), np.float64).astype(np.float32)


def _matrix(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    """float32[N, dim] of a list column; NaN rows where the value is null or of another length."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    out = np.full((len(array), dim), np.nan, np.float32)
    if isinstance(array.type, pa.FixedSizeListType):
        array = array.cast(pa.list_(array.type.value_type))
    lengths = pc.fill_null(pc.list_value_length(array), -1).to_numpy()
    good = np.flatnonzero(lengths == dim)
    if len(good):
        values = pc.list_flatten(array.take(pa.array(good))).to_numpy(zero_copy_only=False)
        out[good] = np.asarray(values, np.float32).reshape(len(good), dim)
    return out


def _emotions(column: pa.ChunkedArray, backend: str | None,
              classes: tuple[str, ...]) -> np.ndarray:
    """float32[N, K] emotion probabilities reordered from the backend's classes to `classes`
    (0 for a class the backend lacks; NaN rows where unknown)."""
    out = np.full((len(column), len(classes)), np.nan, np.float32)
    if backend is None:
        return out
    names = EMOTION_CLASSES.get(backend)
    if names is None:
        log.warning("data: unknown emotion backend %r; its probabilities are left out", backend)
        return out
    values = _matrix(column, len(names))
    mapped = np.zeros((len(column), len(classes)), np.float32)
    for k, name in enumerate(classes):
        if name in names:
            mapped[:, k] = values[:, names.index(name)]
    mapped[~np.all(np.isfinite(values), axis=1)] = np.nan
    return mapped
