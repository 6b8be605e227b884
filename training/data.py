"""The training dataset over a catalog selection: windows of face-crop frames with their conditions.

    index = catalog.training_index(root, thresholds)
    data = WindowDataset(root, index, DataConfig(size=64, frames=4), split="train")
    loader = data.loader(epoch=0, batch_size=8, rank=0, world_size=1, num_workers=2)
    for batch in loader: ...          # dict of tensors, keys and shapes in `collate`

A sample is a window of F frames of a track's 25 fps face-crop clip, the M motion frames before
it and a reference frame of the same track at least `reference_margin_frames` away, with the
audio-feature rows (+-audio_context), the expression condition (DataConfig.expression_mode:
the track's clip-level vector, or each frame's expression and jaw pose), emotion
probabilities, the face-locator mask (the union of the window's face boxes), the valid and
mouth masks and head speed of each window frame. Windows are drawn by (seed, epoch); every rank
gets the same number of batches (training.batching).

The dataset holds one small `Track` per usable track (its files, length and where its frame
rows lie in the frames table): nothing per frame. A sample's per-frame values are read when the
sample is (training.frame_table: the row group(s) holding the track's rows, mapped from the
machine's frame cache once read from Parquet), and only the frames it needs are decoded (decord random access) from the one clip it reads
(docs/training-data.md).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

import cv2
import decord
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

import catalog
from catalog.schema import EMOTION_CLASSES_FER, EXPRESSION_DIMS
from pipeline.models.expression import DEFAULT_EXPRESSION_BACKEND
from training import windows as geo
from training.batching import (  # noqa: F401 - loader_throughput re-exported
    WindowBatches,
    draw_windows,
    loader_throughput,
    windows_per_track,
)
from training.frame_table import FrameReader, TrackRows, scan_frame_rows

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "all")
EXPRESSION_MODES = ("clip", "frame")  # DataConfig.expression_mode
DECODE_CHUNK = 256  # frames decoded at a time when a clip is decoded whole (decoded cache)
TRACK_COLUMNS = ["track_id", "video_id", "person_id", "crop_path", "crop_size", "frame_count",
                 "audio_features_path", "emotion_backend", "emotion_label"]


class EmptyDatasetError(ValueError):
    """No track of the selection is usable for the train (or all) split; the message counts
    why. An empty val split is allowed (a one-person catalog has none) and has no windows."""


class CropSizeError(ValueError):
    """The catalog's face crops are smaller than the model's image size (they would be
    upsampled); the message gives both sizes and the two ways out."""


class ExpressionDimError(ValueError):
    """The selected tracks' expression vectors have another length than the model's expression
    condition (a catalog curated with another expression backend); training would silently
    go without the condition, so it is refused with the lengths and the setting to change."""


class MediaReadError(RuntimeError):
    """A track's clip or audio features cannot be read as the catalog describes them; the
    message names the file."""


@dataclass(frozen=True)
class DataConfig:
    """What a training sample holds. Sizes in pixels, lengths in 25 fps frames."""

    size: int = 64  # crop side after resizing (S); the catalog's crop_size must be >= size
    frames: int = 4  # window frames (F)
    motion_frames: int = 2  # frames right before the window (M, may be 0)
    reference_margin_frames: int = 25  # least distance of the reference from motion + window
    audio_context: int = 2  # audio rows on each side of a frame: A = 2 * audio_context + 1
    audio_dim: int = 512  # audio-feature width (Whisper base encoder: 512)
    # expression vector length (the default backend's; 3dmm 10, deca 50, blendshapes 45)
    expression_dim: int = EXPRESSION_DIMS[DEFAULT_EXPRESSION_BACKEND]
    # "clip": every frame of a window carries its track's mean expression relative to the
    # person's neutral and no jaw pose (EMOdiffhead's conditioning: emotion and intensity, not
    # the mouth's motion, which the model must take from the audio); "frame": each frame's own
    # expression and jaw pose (drives the face from a video, frame by frame: the mouth can
    # follow the expression instead of the audio)
    expression_mode: str = "clip"
    emotion_classes: tuple[str, ...] = EMOTION_CLASSES_FER  # order of emotion_probs and labels
    windows_per_second: float = 1.0  # windows per track and epoch, per second of track
    seed: int = 0  # window draws: (seed, epoch)
    val_fraction: float = 0.1  # persons held out for validation
    split_seed: int = 0  # which persons are held out (catalog.person_split)
    # Accepted for existing specs and ignored: a track's clip and features are opened when a
    # window of it is read (never all at start-up); a file that fails then is logged by name.
    check_media: bool = True
    max_open_readers: int = 16  # decord readers kept open per worker
    # Decoded crops (at `size`) kept in memory per data process when all of the split's frames
    # fit in this many MiB: each clip is then decoded whole once, at its first window, instead
    # of seeking per window (decord's random access costs 26-35 ms a window on 2 cores: an
    # eighth to a sixth of a tiny-model step; docs/training-data.md). 1024 MiB holds about an
    # hour of video at 64 px, a minute at 512 px; 0: decode every window from its clip.
    decoded_cache_mib: int = 1024

    def __post_init__(self) -> None:
        object.__setattr__(self, "emotion_classes", tuple(self.emotion_classes))  # TOML lists
        checks = {"size": self.size >= 8, "frames": self.frames >= 1,
                  "motion_frames": self.motion_frames >= 0,
                  "reference_margin_frames": self.reference_margin_frames >= 0,
                  "audio_context": self.audio_context >= 0, "audio_dim": self.audio_dim >= 1,
                  "expression_dim": self.expression_dim >= 1,
                  "expression_mode": self.expression_mode in EXPRESSION_MODES,
                  "emotion_classes": len(self.emotion_classes) >= 1,
                  "windows_per_second": self.windows_per_second > 0,
                  "val_fraction": 0.0 <= self.val_fraction <= 1.0,
                  "max_open_readers": self.max_open_readers >= 1,
                  "decoded_cache_mib": self.decoded_cache_mib >= 0}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            listing = ", ".join(f"{b}={getattr(self, b)!r}" for b in bad)
            raise ValueError(f"DataConfig: invalid {listing}")

    @classmethod
    def from_dict(cls, values: dict) -> DataConfig:
        """A DataConfig from plain data (a TOML section); unknown keys are an error."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown data config keys {unknown}; valid: {names}")
        values = dict(values)
        if "emotion_classes" in values:
            values["emotion_classes"] = tuple(values["emotion_classes"])
        return cls(**values)


class Window(NamedTuple):
    """One sample: a track (index into WindowDataset.tracks), the first window frame and the
    reference frame, on the track's 25 fps grid."""

    track: int
    start: int
    reference: int


@dataclass(frozen=True, slots=True)
class Track:
    """A usable track: its files, size, the selection's labels and where its frame rows lie.
    No per-frame values (those are read with a window: WindowDataset.frame_arrays)."""

    track_id: str
    person_id: str | None
    crop_path: str  # the clip's location (a local path, or an s3:// URI)
    features_path: str | None  # the audio features' location; None: null audio condition
    length: int  # usable frames: the frames table's (last frame + 1)
    crop_size: int
    width: int  # source video size (px)
    height: int
    emotion: int  # index in DataConfig.emotion_classes, -1 unknown
    intensity: float
    crop_rel: str  # catalog-relative paths (catalog.media_file)
    features_rel: str | None
    emotion_backend: str | None  # class order of the track's emotion_probs
    rows: TrackRows  # where its rows lie in the frames table
    # the track's mean expression relative to its person's neutral (catalog.select's
    # expression_relative); None without one
    expression: tuple[float, ...] | None = None


def local_media(root: str, relpath: str) -> str | None:
    """A local path of a catalog media file: the file itself in a local catalog, a cached copy
    of an object store's (catalog.media_file); None when the store has no such object."""
    try:
        return str(catalog.media_file(root, relpath))
    except FileNotFoundError:
        return None


class WindowDataset(torch.utils.data.Dataset):
    """Map-style dataset indexed by Window (see `loader`/`batches` for the order)."""

    def __init__(self, root: str | Path, selection: pa.Table, config: DataConfig | None = None,
                 split: str = "train", frame_cache: str | Path | None = None) -> None:
        """`frame_cache`: the folder of compacted frames-table row groups shared by the
        processes of a machine (default frame_table.default_cache_dir(): $EMOFORGE_CACHE/frames)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        root = str(root)
        self.root = root if "://" in root else str(Path(root).resolve())
        self.split = split
        self.config = config or DataConfig()
        self.excluded: dict[str, int] = {}  # reason -> tracks left out when built
        self.decode_failures: dict[str, int] = {}  # track_id -> failed reads (this process)
        self.tracks: list[Track] = []
        self._readers: OrderedDict = OrderedDict()
        self._reader_pid = os.getpid()
        self._frames = FrameReader(self.root, self.config.expression_dim,
                                   self.config.emotion_classes, cache_dir=frame_cache)
        self._build(selection)
        # track index -> uint8[N, S, S, 3], every frame of its clip; None: decode per window
        self._decoded: dict[int, np.ndarray] | None = {} if self.decoded_fits() else None
        self._per_window: set[int] = set()  # tracks whose whole clip failed to decode
        if self._decoded is not None:
            log.info("data: %s split: each clip decoded whole once and kept (within "
                     "decoded_cache_mib=%d)", split, self.config.decoded_cache_mib)

    def decoded_fits(self) -> bool:
        """Whether every frame of this split, decoded at the model's size, fits in
        DataConfig.decoded_cache_mib (then each clip is decoded whole, once per process)."""
        size = self.config.size
        need = sum(t.length for t in self.tracks) * size * size * 3
        return 0 < need <= self.config.decoded_cache_mib * 2**20

    # ---------------------------------------------------------------- building
    def _exclude(self, track_id: str, reason: str) -> None:
        log.warning("data: track %s left out: %s", track_id, reason)
        self.excluded[reason] = self.excluded.get(reason, 0) + 1

    def _build(self, selection: pa.Table) -> None:
        """The index: catalog tables read for the selected tracks only, frame rows located
        (frame_table.scan_frame_rows); no media file is opened."""
        cfg = self.config
        if "track_id" not in selection.column_names:
            raise ValueError("the selection needs a track_id column (catalog.training_index)")
        if "keep" in selection.column_names:
            selection = selection.filter(pc.fill_null(selection["keep"], False))
        ids = [t for t in selection["track_id"].to_pylist() if t is not None]
        intensity = dict(zip(ids, selection["intensity"].to_pylist())) if (
            "intensity" in selection.column_names) else {}
        relative = dict(zip(ids, selection["expression_relative"].to_pylist())) if (
            "expression_relative" in selection.column_names) else {}
        tracks = catalog.read_table(self.root, "tracks", columns=TRACK_COLUMNS,
                                    filters=pc.field("track_id").isin(_strings(ids)))
        found = set(tracks["track_id"].to_pylist())
        for tid in ids:
            if tid not in found:
                self._exclude(tid, "not in the catalog's tracks")
        tracks = self._split(tracks)
        self._check_crop_size(tracks)
        videos = catalog.read_table(self.root, "videos", columns=["video_id", "width", "height"],
                                    filters=pc.field("video_id").isin(
                                        _strings(list(set(tracks["video_id"].to_pylist())))))
        sizes = {v["video_id"]: (v["width"], v["height"]) for v in videos.to_pylist()}
        rows = sorted(tracks.to_pylist(), key=lambda r: r["track_id"])
        located = scan_frame_rows(self.root, [r["track_id"] for r in rows])
        store = catalog.fs.resolve(self.root)
        need = geo.min_track_frames(cfg.frames, cfg.motion_frames, cfg.reference_margin_frames)
        frames = 0
        other_lengths: dict[int, int] = {}  # expression vector length -> tracks
        for row in rows:
            tid = row["track_id"]
            where = located.get(tid)
            width, height = sizes.get(row["video_id"], (None, None))
            if where is None:
                reason = "no frames rows"
            elif not row["crop_path"]:
                reason = "no face-crop clip"
            elif not (width and height):
                reason = "source video size unknown"
            elif where.frames < need:
                reason = f"too short for a window (< {need} frames)"
            elif not where.complete:
                reason = "missing crop geometry (crop_affine)"
            else:
                reason = None
            if reason is not None:
                self._exclude(tid, reason)
                continue
            value = intensity.get(tid)
            label = row["emotion_label"]
            vector = relative.get(tid)
            if vector is not None and len(vector) != cfg.expression_dim:
                other_lengths[len(vector)] = other_lengths.get(len(vector), 0) + 1
            usable = vector is not None and all(np.isfinite(vector))  # other lengths: raised below
            feats = row["audio_features_path"] or None
            self.tracks.append(Track(
                track_id=tid, person_id=row["person_id"], crop_path=store.uri_of(row["crop_path"]),
                features_path=store.uri_of(feats) if feats else None, length=where.frames,
                crop_size=int(row["crop_size"] or 0), width=int(width), height=int(height),
                emotion=cfg.emotion_classes.index(label) if label in cfg.emotion_classes else -1,
                intensity=1.0 if value is None or not np.isfinite(value) else float(value),
                crop_rel=row["crop_path"], features_rel=feats,
                emotion_backend=row["emotion_backend"], rows=where,
                expression=tuple(float(v) for v in vector) if usable else None))
            frames += where.frames
        if other_lengths:
            found = ", ".join(f"{n} tracks of {d} values" for d, n in sorted(other_lengths.items()))
            lengths = ", ".join(f"{name} {d}" for name, d in EXPRESSION_DIMS.items())
            raise ExpressionDimError(
                f"{self.root}: the selected tracks' expression vectors ({found}) do not match "
                f"the model's expression_dim {cfg.expression_dim}: set [model] expression_dim to "
                f"the catalog's ({lengths}), or select one backend's tracks with [select] "
                f"expression_backend")
        if not self.tracks and self.split != "val":
            counts = ", ".join(f"{n} {r}" for r, n in sorted(self.excluded.items())) or "none"
            raise EmptyDatasetError(
                f"no usable track for split {self.split!r} of {len(ids)} selected in "
                f"{self.root} (left out: {counts})")
        log.info("data: %s split: %d tracks, %d frames; left out %s", self.split,
                 len(self.tracks), frames, self.excluded or "none")

    def _split(self, tracks: pa.Table) -> pa.Table:
        if self.split == "all":
            return tracks
        train, val = catalog.person_split(tracks.select(["track_id", "person_id"]),
                                          self.config.val_fraction, self.config.split_seed)
        keep = train if self.split == "train" else val
        return tracks.filter(pc.field("track_id").isin(_strings(keep)))

    def _check_crop_size(self, tracks: pa.Table) -> None:
        """CropSizeError when any track's face crops are smaller than the model's image size
        (they would be upsampled)."""
        sizes = np.asarray(pc.fill_null(tracks["crop_size"], 0).to_numpy(zero_copy_only=False))
        small = (sizes > 0) & (sizes < self.config.size)
        if small.any():
            crop = int(sizes[small].min())
            raise CropSizeError(
                f"{self.root}: {int(small.sum())} of {len(sizes)} selected tracks have "
                f"{crop} px face crops, smaller than the model's {self.config.size} px image "
                f"size (they would be upsampled): curate the catalog with a crop size of at "
                f"least {self.config.size} px (faces stage crop_size), or train a model with "
                f"image_size <= {crop}")

    # ---------------------------------------------------------------- windows and batches
    def windows(self, epoch: int) -> np.ndarray:
        """int64[N, 3] (track, start, reference) of an epoch, in its shuffled order."""
        cfg = self.config
        return draw_windows([t.length for t in self.tracks], cfg.frames, cfg.motion_frames,
                            cfg.reference_margin_frames, cfg.windows_per_second, cfg.seed, epoch)

    def num_windows(self) -> int:
        """Windows per epoch (the same every epoch: it depends on track lengths only)."""
        cfg = self.config
        return sum(windows_per_track(t.length, cfg.windows_per_second) for t in self.tracks)

    def num_batches(self, batch_size: int, world_size: int = 1) -> int:
        """Batches per rank per epoch (the last incomplete global batch is dropped)."""
        return self.num_windows() // (batch_size * world_size)

    def batches(self, epoch: int, batch_size: int, rank: int = 0, world_size: int = 1,
                start_batch: int = 0) -> WindowBatches:
        """This rank's batches of an epoch (a batch sampler of Window lists), from start_batch."""
        return WindowBatches(self.windows(epoch), batch_size, rank, world_size, start_batch,
                             wrap=Window)

    def loader(self, epoch: int, batch_size: int, rank: int = 0, world_size: int = 1,
               start_batch: int = 0, num_workers: int = 0) -> torch.utils.data.DataLoader:
        """A DataLoader over `batches(...)` that yields `collate`d batches."""
        return torch.utils.data.DataLoader(
            self, batch_sampler=self.batches(epoch, batch_size, rank, world_size, start_batch),
            collate_fn=collate, num_workers=num_workers,
            # spawned workers: a forked child of a process that has decoded (FFmpeg's and
            # decord's threads hold locks) can hang in its first decode
            multiprocessing_context="spawn" if num_workers > 0 else None,
            persistent_workers=num_workers > 0)

    # ---------------------------------------------------------------- samples
    def __len__(self) -> int:
        return len(self.tracks)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_readers"] = OrderedDict()  # decord readers are per process, opened lazily
        if state["_decoded"] is not None:  # so is the decoded cache, filled as windows are read
            state["_decoded"] = {}
        return state

    def _local(self, rel: str) -> str:
        """A local path of a catalog media file (downloaded once from an object store);
        MediaReadError naming it when it does not exist."""
        path = local_media(self.root, rel)
        if path is None or not os.path.isfile(path):
            raise MediaReadError(f"{catalog.fs.resolve(self.root).uri_of(rel)}: no such file")
        return path

    def _reader(self, rel: str):
        if self._reader_pid != os.getpid():  # a forked process: never share the parent's readers
            self._readers, self._reader_pid = OrderedDict(), os.getpid()
        reader = self._readers.pop(rel, None)
        if reader is None:
            path = self._local(rel)
            try:
                reader = decord.VideoReader(path, num_threads=1)
            except Exception as exc:  # noqa: BLE001 - decord raises its own and RuntimeErrors
                raise MediaReadError(f"{path}: face-crop clip unreadable ({type(exc).__name__}: "
                                     f"{exc})") from exc
        self._readers[rel] = reader
        while len(self._readers) > self.config.max_open_readers:
            self._readers.popitem(last=False)
        return reader

    def decode(self, track: int, indices: np.ndarray) -> np.ndarray:
        """uint8[N, S, S, 3] RGB frames `indices` of a track's crop clip, resized to size
        (from the decoded cache when the split fits it: `decoded_fits`). MediaReadError naming
        the clip when it is missing, unreadable or too short."""
        indices = np.asarray(indices, np.int64)
        frames = self._whole_clip(track)
        if frames is None:
            unique, inverse = np.unique(indices, return_inverse=True)
            return self._decode_frames(track, unique)[inverse.reshape(-1)]
        if len(indices) and indices.max() >= len(frames):
            raise self._too_short(track, len(frames), int(indices.max()))
        return frames[indices]

    def _whole_clip(self, track: int) -> np.ndarray | None:
        """Every frame of a track's clip from the decoded cache, decoded at the first ask; None
        when the split does not fit the cache or the clip failed to decode whole (a damaged
        stretch: its windows are then decoded one by one, so those outside it still read)."""
        if self._decoded is None or track in self._per_window:
            return None
        if track not in self._decoded:
            self._reader(self.tracks[track].crop_rel)  # a missing or unreadable clip raises here
            try:
                self._decoded[track] = self._decode_frames(track, None)
            except MediaReadError as exc:
                log.warning("data: %s; decoding this clip's windows one by one", exc)
                self._per_window.add(track)
                return None
        return self._decoded[track]

    def _decode_frames(self, track: int, unique: np.ndarray | None) -> np.ndarray:
        """uint8[N, S, S, 3]: the sorted, distinct frames `unique` of a track's clip (None:
        every frame, decoded in order a chunk at a time), resized to size."""
        t = self.tracks[track]
        reader = self._reader(t.crop_rel)
        if unique is None:
            chunks = [np.arange(s, min(s + DECODE_CHUNK, len(reader)), dtype=np.int64)
                      for s in range(0, len(reader), DECODE_CHUNK)]
        elif len(unique) and unique[-1] >= len(reader):
            raise self._too_short(track, len(reader), int(unique[-1]))
        else:
            chunks = [unique]
        size, out = self.config.size, []
        for chunk in chunks:
            try:
                raw = reader.get_batch(chunk.tolist()).asnumpy()
            except Exception as exc:  # noqa: BLE001 - decord raises its own and RuntimeErrors
                raise MediaReadError(f"{t.crop_path}: decoding frames failed "
                                     f"({type(exc).__name__}: {exc})") from exc
            if raw.shape[1:3] != (size, size):
                mode = cv2.INTER_AREA if raw.shape[1] > size else cv2.INTER_LINEAR
                raw = np.stack([cv2.resize(f, (size, size), interpolation=mode) for f in raw])
            out.append(raw)
        return np.concatenate(out) if out else np.zeros((0, size, size, 3), np.uint8)

    def _too_short(self, track: int, frames: int, asked: int) -> MediaReadError:
        t = self.tracks[track]
        return MediaReadError(f"{t.crop_path}: the face-crop clip has {frames} frames, the "
                              f"catalog's frames table {t.length}; frame {asked} was asked for")

    def features(self, track: int) -> np.ndarray | None:
        """float16[T, audio_dim] audio features of a track (memory-mapped; T >= its length),
        None when it has none. MediaReadError naming the file when it is missing, unreadable
        or of another shape."""
        t = self.tracks[track]
        if t.features_rel is None:
            return None
        path = self._local(t.features_rel)
        try:
            table = np.load(path, mmap_mode="r")
        except Exception as exc:  # noqa: BLE001 - np.load raises several types
            raise MediaReadError(f"{path}: audio features unreadable ({type(exc).__name__}: "
                                 f"{exc})") from exc
        if table.ndim != 2 or table.shape[1] != self.config.audio_dim or len(table) < t.length:
            raise MediaReadError(f"{path}: audio features of shape {tuple(table.shape)}, "
                                 f"expected [>= {t.length}, {self.config.audio_dim}]")
        return table[: t.length]

    def frame_arrays(self, track: int) -> dict[str, np.ndarray]:
        """A track's dense per-frame arrays (frame_table.FrameReader.track_arrays), read from
        the frames table now (cached per process); shared with the cache: read only."""
        t = self.tracks[track]
        return self._frames.track_arrays(t.track_id, t.rows, t.emotion_backend)

    def __getitem__(self, window: Window | tuple[int, int, int]) -> dict[str, np.ndarray]:
        """One sample as numpy arrays (collate's keys, without the batch axis). A track whose
        clip or features fail to read now (missing, damaged) is logged with the file's name
        and the sample is taken from the next track instead (its first window), so training
        goes on; when no track reads, MediaReadError."""
        track_index, start, reference = (int(v) for v in window)
        cfg = self.config
        for _ in range(len(self.tracks)):
            window_idx = np.arange(start, start + cfg.frames)
            motion_idx = np.arange(start - cfg.motion_frames, start)
            try:
                pixels = self.decode(track_index,
                                     np.concatenate([motion_idx, window_idx, [reference]]))
                features = self.features(track_index)
                break
            except MediaReadError as exc:
                log.error("data: %s; using the next track's window", exc)
                tid = self.tracks[track_index].track_id
                self.decode_failures[tid] = self.decode_failures.get(tid, 0) + 1
                track_index = (track_index + 1) % len(self.tracks)
                length = self.tracks[track_index].length
                start = int(geo.valid_starts(length, cfg.frames, cfg.motion_frames,
                                             cfg.reference_margin_frames)[0])
                reference = geo.draw_reference(np.random.default_rng(start), length, start,
                                               cfg.frames, cfg.motion_frames,
                                               cfg.reference_margin_frames)
        else:
            raise MediaReadError(f"no track of {self.root} reads any more; last tried "
                                 f"{self.tracks[track_index].crop_path}")
        t = self.tracks[track_index]
        pixels = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32)
        pixels *= 1 / 127.5
        pixels -= 1.0
        m = cfg.motion_frames
        rows = window_idx
        arrays = self.frame_arrays(track_index)
        if cfg.expression_mode == "clip":
            expression_valid = t.expression is not None
            expression = np.broadcast_to(np.asarray(t.expression if expression_valid else
                                                    np.zeros(cfg.expression_dim), np.float32),
                                         (cfg.frames, cfg.expression_dim))
            jaw_pose = np.zeros((cfg.frames, 3), np.float32)
        else:
            expression = arrays["expression"][rows]
            expression_valid = bool(np.all(np.isfinite(expression)))
            jaw_pose = np.nan_to_num(arrays["jaw_pose"][rows])
        crop_size = t.crop_size or pixels.shape[-1]
        valid = np.stack([geo.valid_mask(arrays["crop_affine"][r], t.width, t.height, crop_size,
                                         cfg.size) for r in rows])
        locator = geo.locator_mask(arrays["crop_affine"][rows], arrays["box"][rows], crop_size,
                                   cfg.size)
        face = np.broadcast_to(locator, (cfg.frames, cfg.size, cfg.size))
        mouth = np.stack([geo.mouth_mask(arrays["mouth_box"][r], crop_size, cfg.size) for r in rows])
        reference_mouth = geo.mouth_mask(arrays["mouth_box"][reference], crop_size, cfg.size)
        audio_dim, a = cfg.audio_dim, 2 * cfg.audio_context + 1
        if features is not None:
            audio = geo.audio_rows(features, window_idx, cfg.audio_context)
        else:
            audio = np.zeros((cfg.frames, a, audio_dim), np.float32)
        return {
            "frames": pixels[m: m + cfg.frames], "motion": pixels[:m], "reference": pixels[-1],
            "audio": audio, "audio_valid": features is not None,
            "expression": expression if expression_valid else np.zeros_like(expression),
            "jaw_pose": jaw_pose,
            "expression_valid": expression_valid,
            "emotion_probs": np.nan_to_num(arrays["emotion_probs"][rows]),
            "emotion": t.emotion, "intensity": t.intensity,
            "face_mask": face[:, None], "valid_mask": valid[:, None], "mouth_mask": mouth[:, None],
            "reference_mouth": reference_mouth[None], "head_speed": arrays["head_speed"][rows],
            "track_index": track_index, "start": start,
        }

    def frame_values(self, track: int, name: str) -> np.ndarray:
        """A track's per-frame array `name` (box, crop_affine, expression, jaw_pose,
        emotion_probs, head_speed, mouth_box, frame_present) over its usable frames."""
        return self.frame_arrays(track)[name][: self.tracks[track].length]


FLOAT_KEYS = ("frames", "motion", "reference", "audio", "expression", "jaw_pose", "emotion_probs",
              "intensity", "face_mask", "valid_mask", "mouth_mask", "reference_mouth", "head_speed")
BOOL_KEYS = ("audio_valid", "expression_valid")
LONG_KEYS = ("emotion", "track_index", "start")


def _strings(values: list[str]) -> pa.Array:
    """A string array for `isin` filters (an empty Python list would be typed null)."""
    return pa.array(values, pa.string())


def collate(samples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack samples into the batch the models and trainer read (shapes with B samples):
    frames f32[B,F,3,S,S] in [-1,1]; motion f32[B,M,3,S,S]; reference f32[B,3,S,S];
    audio f32[B,F,A,Da]; audio_valid bool[B]; expression f32[B,F,De]; jaw_pose f32[B,F,3];
    expression_valid bool[B]; emotion_probs f32[B,F,K]; emotion i64[B] (-1 unknown);
    intensity f32[B]; face_mask, valid_mask, mouth_mask f32[B,F,1,S,S]; reference_mouth
    f32[B,1,S,S] (the reference frame's mouth mask); head_speed f32[B,F] (deg/s);
    track_index i64[B]; start i64[B]."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    out: dict[str, torch.Tensor] = {}
    for key in FLOAT_KEYS:
        out[key] = torch.from_numpy(np.stack([np.asarray(s[key], np.float32) for s in samples]))
    for key in BOOL_KEYS:
        out[key] = torch.tensor([bool(s[key]) for s in samples], dtype=torch.bool)
    for key in LONG_KEYS:
        out[key] = torch.tensor([int(s[key]) for s in samples], dtype=torch.int64)
    return out
