"""The dataset's index on synthetic training catalogs (jobs.media.synthetic_catalog): one small
entry per track and nothing per frame, what a loader worker receives, the crop-size refusal and
errors that name the file, and the frame cache shared by a machine's readers (no Ray, no curated
catalog)."""

from __future__ import annotations

import dataclasses
import os
import pickle

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import catalog
from jobs.media.synthetic_catalog import write_training_catalog
from training import windows as geo
from training.batching import draw_windows
from training.data import (CropSizeError, DataConfig, ExpressionDimError, MediaReadError, Window,
                           WindowDataset)
from training import frame_table
from training.frame_table import (
    FRAME_COLUMNS,
    FrameReader,
    FrameTableError,
    dense_arrays,
    scan_frame_rows,
)

CFG = DataConfig(size=64, frames=4, motion_frames=2, reference_margin_frames=25,
                 expression_dim=10)  # the synthetic catalog holds 3dmm vectors


def _catalog(tmp_path_factory, name: str, tracks: int, seconds: float, **options):
    root = tmp_path_factory.mktemp(name) / "catalog"
    ids = write_training_catalog(root, tracks, seconds=seconds, tracks_per_shard=7, **options)
    return str(root), pa.table({"track_id": ids})


@pytest.fixture(scope="module")
def short_catalog(tmp_path_factory):
    return _catalog(tmp_path_factory, "short", 12, 4.0)


@pytest.fixture(scope="module")
def long_catalog(tmp_path_factory):
    return _catalog(tmp_path_factory, "long", 12, 16.0)


def _arrays(value, path="dataset", seen=None):
    """(path, array) of every numpy array reachable from `value` (attributes, slots, dicts,
    lists, tuples)."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return []
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        return [(path, value)]
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    elif dataclasses.is_dataclass(value):
        items = ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value))
    elif hasattr(value, "__dict__") and type(value).__module__.startswith("training"):
        items = vars(value).items()
    else:
        return []
    return [a for k, v in items for a in _arrays(v, f"{path}.{k}", seen)]


def test_the_index_holds_nothing_per_frame(short_catalog, long_catalog):
    """The same tracks four times as long: the same index size (a frame count is a number in
    it, not an axis), and no array anywhere in what a loader worker unpickles, even after
    windows were read (the per-process caches stay behind)."""
    sizes = {}
    for name, (root, ids) in (("short", short_catalog), ("long", long_catalog)):
        ds = WindowDataset(root, ids, CFG, split="all")
        assert len(ds.tracks) == 12 and ds.excluded == {}
        for row in ds.windows(0)[:6]:
            ds[Window(*(int(v) for v in row))]
        sent = pickle.dumps(ds)
        worker = pickle.loads(sent)
        assert _arrays(worker) == []
        assert all(isinstance(getattr(t, f.name), (str, int, float, tuple, type(None),
                                                    type(t.rows)))
                   for t in worker.tracks for f in dataclasses.fields(t))
        sizes[name] = len(sent)
    assert {t.length for t in WindowDataset(*long_catalog, CFG, split="all").tracks} == {400}
    assert abs(sizes["long"] - sizes["short"]) < 0.02 * sizes["short"]
    assert sizes["short"] < 12 * 1024  # under 1 KB a track


def test_synthetic_windows_carry_the_catalog_rows(short_catalog):
    """Each window's per-frame values against the frames table read with pandas (per-frame
    expression mode: each frame's own expression and jaw pose)."""
    root, ids = short_catalog
    ds = WindowDataset(root, ids, dataclasses.replace(CFG, expression_mode="frame"), split="all")
    files = catalog.read.committed_files(root, "frames")
    rows = pd.concat([pd.read_parquet(f) for f in files]).set_index(["track_id", "frame"])
    lengths = [int(rows.loc[t.track_id].index.max()) + 1 for t in ds.tracks]
    assert np.array_equal(ds.windows(1), draw_windows(lengths, CFG.frames, CFG.motion_frames,
                                                      CFG.reference_margin_frames,
                                                      CFG.windows_per_second, CFG.seed, 1))
    for track, start, ref in ds.windows(1):
        sample = ds[Window(int(track), int(start), int(ref))]
        frame = rows.loc[ds.tracks[track].track_id].sort_index()
        window = frame.iloc[start: start + CFG.frames]
        assert np.array_equal(sample["expression"], np.stack(window["expression"]))
        assert np.array_equal(sample["jaw_pose"], np.stack(window["jaw_pose"]))
        assert np.array_equal(sample["emotion_probs"], np.stack(window["emotion_probs"]))
        speed = geo.head_speed(*(frame[c].to_numpy(np.float32) for c in ("yaw", "pitch", "roll")))
        assert np.array_equal(sample["head_speed"], speed[start: start + CFG.frames])


def test_crops_smaller_than_the_image_size_are_refused(short_catalog):
    root, ids = short_catalog
    with pytest.raises(CropSizeError, match=r"12 of 12 selected tracks have 64 px face crops, "
                                            r"smaller than the model's 128 px image size.*"
                                            r"crop size of at least 128 px.*image_size <= 64"):
        WindowDataset(root, ids, DataConfig(**{**CFG.__dict__, "size": 128}), split="all")


def test_expression_vectors_of_another_length_than_the_model_are_refused(short_catalog):
    """A 3dmm catalog (10 values) under a model that takes blendshapes' 45 would otherwise train
    without its expression condition."""
    root, ids = short_catalog
    # a selection as catalog.training_index writes it: each track's neutral-relative mean
    ids = ids.append_column("expression_relative",
                            pa.array([[0.1] * 10] * len(ids), pa.list_(pa.float32())))
    WindowDataset(root, ids, CFG, split="all")  # the catalog's own length trains
    with pytest.raises(ExpressionDimError, match=r"12 tracks of 10 values.*expression_dim 45"):
        WindowDataset(root, ids, DataConfig(**{**CFG.__dict__, "expression_dim": 45}), split="all")


def test_missing_files_are_named_when_read(tmp_path_factory):
    """No file is opened at build; a missing clip or frames file read later is named."""
    root, ids = _catalog(tmp_path_factory, "missing", 3, 4.0)
    local = catalog.fs.resolve(root).local_path()
    tracks = catalog.read_table(root, "tracks", columns=["track_id", "crop_path"]).to_pylist()
    clip = local / next(t["crop_path"] for t in tracks if t["track_id"] == min(ids.column(0)
                                                                            .to_pylist()))
    clip.unlink()
    ds = WindowDataset(root, ids, CFG, split="all")  # builds: it opens no clip
    assert len(ds.tracks) == 3 and ds.tracks[0].crop_path == str(clip)
    with pytest.raises(MediaReadError, match=f"{clip}: no such file"):
        ds.decode(0, np.arange(3))
    for parquet in (local / "frames").glob("*.parquet"):
        parquet.unlink()
    with pytest.raises(FrameTableError, match=r"frames/shard-00000-0000\.parquet"):
        ds.frame_arrays(0)


def test_tracks_with_a_frame_without_geometry_are_left_out(tmp_path_factory):
    """A track missing one frame row and a track with a null crop affine are left out with the
    reason; the others keep their full length."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    root, ids = _catalog(tmp_path_factory, "gaps", 5, 4.0, media=False)
    names = sorted(ids.column(0).to_pylist())
    path = catalog.fs.resolve(root).local_path() / catalog.read.committed_rels(root, "frames")[0]
    table = pq.read_table(path)
    gap = pc.and_(pc.equal(table["track_id"], names[0]), pc.equal(table["frame"], 40))
    table = table.filter(pc.invert(gap))
    hole = pc.and_(pc.equal(table["track_id"], names[1]), pc.equal(table["frame"], 7))
    affine = pc.if_else(hole, pa.nulls(len(table), table["crop_affine"].type),
                        table["crop_affine"])
    table = table.set_column(table.schema.get_field_index("crop_affine"),
                             table.schema.field("crop_affine"), affine)
    pq.write_table(table, path)
    tracks = catalog.fs.resolve(root).local_path() / catalog.read.committed_rels(root, "tracks")[0]
    rows = pq.read_table(tracks)  # give every track a clip path (none is opened)
    rows = rows.set_column(rows.schema.get_field_index("crop_path"),
                           rows.schema.field("crop_path"), pa.array(["media/x.mp4"] * len(rows)))
    pq.write_table(rows, tracks)
    ds = WindowDataset(root, ids, CFG, split="all")
    assert ds.excluded == {"missing crop geometry (crop_affine)": 2}
    assert [t.track_id for t in ds.tracks] == names[2:5] and {t.length for t in ds.tracks} == {100}


def _reference_arrays(root: str, rows, track_id: str) -> dict[str, np.ndarray]:
    """A track's dense arrays from its rows read straight from the Parquet file (no cache)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = catalog.fs.resolve(root).local_path() / rows.file
    table = pq.read_table(path, columns=FRAME_COLUMNS)
    return dense_arrays(table.filter(pc.equal(table["track_id"], track_id)), "fer",
                        CFG.expression_dim, CFG.emotion_classes)


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k], equal_nan=True) for k in a)


def test_a_cached_row_group_serves_its_other_tracks_without_the_parquet_file(
        short_catalog, tmp_path, monkeypatch):
    """A reader in fresh process state reading another track of a row group already read by
    another reader maps it from the frame cache: the frames file is never opened, and the
    arrays equal those densified from the Parquet rows."""
    root, ids = short_catalog
    names = sorted(ids.column(0).to_pylist())
    rows = scan_frame_rows(root, names)
    first, second = names[0], names[1]
    assert rows[first].file == rows[second].file  # one shard, one row group
    reader = FrameReader(root, CFG.expression_dim, CFG.emotion_classes, cache_dir=tmp_path)
    assert _same(reader.track_arrays(first, rows[first], "fer"),
                 _reference_arrays(root, rows[first], first))
    opened = []

    def refuse(store, rel):
        opened.append(rel)
        raise AssertionError(f"{rel} opened")

    monkeypatch.setattr(frame_table, "_open", refuse)
    fresh = pickle.loads(pickle.dumps(reader))  # what a loader worker receives: no cache in memory
    assert not fresh._groups and not fresh._tracks and not fresh._files
    arrays = fresh.track_arrays(second, rows[second], "fer")
    assert opened == []
    monkeypatch.undo()
    assert _same(arrays, _reference_arrays(root, rows[second], second))
    assert not _same(arrays, _reference_arrays(root, rows[first], first))


def test_a_replaced_frames_file_is_not_read_from_the_cache(tmp_path_factory, tmp_path):
    """After the frames file is replaced (other values, same rows), a new reader reads the new
    file, not the cached row group of the old one."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    root, ids = _catalog(tmp_path_factory, "replaced", 3, 4.0, media=False)
    names = sorted(ids.column(0).to_pylist())
    rows = scan_frame_rows(root, names)
    old = FrameReader(root, CFG.expression_dim, CFG.emotion_classes, cache_dir=tmp_path)
    before = old.track_arrays(names[0], rows[names[0]], "fer")
    path = catalog.fs.resolve(root).local_path() / rows[names[0]].file
    table = pq.read_table(path)
    box = table.schema.get_field_index("box")
    shifted = pa.FixedSizeListArray.from_arrays(
        pc.add(pc.list_flatten(table["box"].combine_chunks()), 1.0).cast(pa.float32()), 4).cast(table.schema.field(
            "box").type)
    pq.write_table(table.set_column(box, table.schema.field("box"), shifted),
                   tmp_path / "replacement.parquet")
    os.replace(tmp_path / "replacement.parquet", path)
    after = FrameReader(root, CFG.expression_dim, CFG.emotion_classes, cache_dir=tmp_path)
    arrays = after.track_arrays(names[0], rows[names[0]], "fer")
    assert _same(arrays, _reference_arrays(root, rows[names[0]], names[0]))
    assert np.array_equal(arrays["box"], before["box"] + np.float32(1.0), equal_nan=True)
    assert len(list(tmp_path.glob("*/group-*.arrow"))) == 2  # one per version of the file


def test_an_unwritable_frame_cache_still_reads_the_frames_table(short_catalog, tmp_path):
    """A frame cache that cannot be created (a file where its folder would be) is skipped: the
    values are read from the frames table as they are."""
    root, ids = short_catalog
    names = sorted(ids.column(0).to_pylist())
    rows = scan_frame_rows(root, names)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    reader = FrameReader(root, CFG.expression_dim, CFG.emotion_classes, cache_dir=blocked / "x")
    for name in names[:2]:
        assert _same(reader.track_arrays(name, rows[name], "fer"),
                     _reference_arrays(root, rows[name], name))


def test_tracks_spanning_row_groups_read_from_both_cached_groups(tmp_path_factory, tmp_path,
                                                                 monkeypatch):
    """Frames rewritten in 150-row groups (100-frame tracks: every other track spans two):
    every track read from the cache alone equals its Parquet rows densified."""
    import pyarrow.parquet as pq

    root, ids = _catalog(tmp_path_factory, "spanning", 4, 4.0, media=False)
    names = sorted(ids.column(0).to_pylist())
    path = catalog.fs.resolve(root).local_path() / catalog.read.committed_rels(root, "frames")[0]
    pq.write_table(pq.read_table(path), path, row_group_size=150)
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    rows = scan_frame_rows(root, names)
    FrameReader(root, CFG.expression_dim, CFG.emotion_classes, cache_dir=tmp_path).track_arrays(
        names[1], rows[names[1]], "fer")  # rows 100..199: groups 0 and 1
    FrameReader(root, CFG.expression_dim, CFG.emotion_classes, cache_dir=tmp_path).track_arrays(
        names[3], rows[names[3]], "fer")  # rows 300..399: group 2
    assert len(list(tmp_path.glob("*/group-*.arrow"))) == 3
    expected = {n: _reference_arrays(root, rows[n], n) for n in names}
    monkeypatch.setattr(frame_table, "_open", lambda store, rel: pytest.fail(f"{rel} opened"))
    reader = FrameReader(root, CFG.expression_dim, CFG.emotion_classes, cache_dir=tmp_path,
                         row_groups=1)
    for name in reversed(names):
        assert _same(reader.track_arrays(name, rows[name], "fer"), expected[name])
