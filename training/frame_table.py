"""Per-frame arrays of selected tracks from the catalog's frames table (read once, densified).

Rows are keyed by (track_id, frame) on each track's 25 fps grid; list columns become float32
matrices with NaN where a value is null, and emotion probabilities are reordered from each
track's backend classes (catalog.schema.EMOTION_CLASSES) to the training's class order.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import catalog
from catalog.schema import EMOTION_CLASSES
from training import windows as geo

log = logging.getLogger(__name__)

FRAME_COLUMNS = ["track_id", "frame", "box", "crop_affine", "yaw", "pitch", "roll", "expression",
                 "jaw_pose", "emotion_probs", "landmarks"]


def read_frame_arrays(root: str, backends: dict[str, str | None], expression_dim: int,
                      emotion_classes: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
    """track_id -> dense per-frame arrays on the track's 25 fps grid, for the tracks in
    `backends` (track_id -> emotion backend): box f32[T,4] and crop_affine f32[T,6] (source px
    -> crop px), expression f32[T,expression_dim], jaw_pose f32[T,3], emotion_probs
    f32[T,K] in `emotion_classes` order, head_speed f32[T] (deg/s), mouth_box f32[T,4] (crop px,
    windows.mouth_boxes of the landmarks), frame_present bool[T].
    NaN where a value is missing (or an expression of another length)."""
    ids = list(backends)
    if not ids:
        return {}
    table = catalog.read_table(root, "frames", columns=FRAME_COLUMNS,
                               filters=pc.field("track_id").isin(pa.array(ids, pa.string())))
    table = table.sort_by([("track_id", "ascending"), ("frame", "ascending")])
    tid = np.asarray(table["track_id"].to_pylist(), dtype=object)
    frame = table["frame"].to_numpy(zero_copy_only=False).astype(np.int64)
    columns = {
        "box": _matrix(table["box"], 4), "crop_affine": _matrix(table["crop_affine"], 6),
        "expression": _matrix(table["expression"], expression_dim),
        "jaw_pose": _matrix(table["jaw_pose"], 3),
        "emotion_probs": _emotions(table["emotion_probs"], [backends.get(t) for t in tid],
                                   emotion_classes),
        "pose": np.stack([_vector(table[c]) for c in ("yaw", "pitch", "roll")], 1),
        "mouth_box": geo.mouth_boxes(_matrix(table["landmarks"], 2 * 68)),
    }
    out: dict[str, dict[str, np.ndarray]] = {}
    if not len(tid):
        return out
    starts = np.flatnonzero(np.r_[True, tid[1:] != tid[:-1]])
    ends = np.r_[starts[1:], len(tid)]
    for a, b in zip(starts, ends):
        idx = frame[a:b]
        n = int(idx.max()) + 1
        track = {"frame_present": np.zeros(n, bool)}
        track["frame_present"][idx] = True
        for name, values in columns.items():
            dense = np.full((n,) + values.shape[1:], np.nan, np.float32)
            dense[idx] = values[a:b]
            track[name] = dense
        pose = track.pop("pose")
        track["head_speed"] = geo.head_speed(pose[:, 0], pose[:, 1], pose[:, 2])
        out[str(tid[a])] = track
    return out


def _vector(column: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(column.to_numpy(zero_copy_only=False), np.float64).astype(np.float32)


def _matrix(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    """float32[N, dim] of a list column; NaN rows where the value is null or of another length."""
    array = column.combine_chunks()
    out = np.full((len(array), dim), np.nan, np.float32)
    if isinstance(array.type, pa.FixedSizeListType):
        array = array.cast(pa.list_(array.type.value_type))
    lengths = pc.fill_null(pc.list_value_length(array), -1).to_numpy()
    good = np.flatnonzero(lengths == dim)
    if len(good):
        values = pc.list_flatten(array.take(pa.array(good))).to_numpy(zero_copy_only=False)
        out[good] = np.asarray(values, np.float32).reshape(len(good), dim)
    return out


def _emotions(column: pa.ChunkedArray, backends: list[str | None],
              classes: tuple[str, ...]) -> np.ndarray:
    """float32[N, K] emotion probabilities reordered from each row's backend classes to
    `classes` (0 for a class the backend lacks; NaN rows where unknown)."""
    out = np.full((len(column), len(classes)), np.nan, np.float32)
    backends_arr = np.asarray(backends, dtype=object)
    for backend in {b for b in backends if b is not None}:
        names = EMOTION_CLASSES.get(backend)
        if names is None:
            log.warning("data: unknown emotion backend %r; its probabilities are left out", backend)
            continue
        rows = np.flatnonzero(backends_arr == backend)
        values = _matrix(column.take(pa.array(rows)), len(names))
        mapped = np.zeros((len(rows), len(classes)), np.float32)
        for k, name in enumerate(classes):
            if name in names:
                mapped[:, k] = values[:, names.index(name)]
        mapped[~np.all(np.isfinite(values), axis=1)] = np.nan
        out[rows] = mapped
    return out
