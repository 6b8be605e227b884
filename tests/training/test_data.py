"""The training dataset: windows, batches per rank, decoding, masks and alignment against ground
truth from generated media (tests without `curated_catalog` need neither Ray nor a catalog)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow.compute as pc
import pytest
import torch

import catalog
from training import windows as geo
from training.batching import WindowBatches, draw_windows, loader_throughput
from training.data import (
    CropSizeError,
    DataConfig,
    EmptyDatasetError,
    Window,
    WindowDataset,
    collate,
)

CFG = DataConfig(size=64, frames=4, motion_frames=2, reference_margin_frames=25)
PER_WINDOW = dataclasses.replace(CFG, decoded_cache_mib=0)  # every window decoded from its clip


# ------------------------------------------------------------------ config, windows, batches
def test_config_from_dict_rejects_unknown_keys():
    cfg = DataConfig.from_dict({"size": 32, "emotion_classes": ["happy", "sad"]})
    assert cfg.size == 32 and cfg.emotion_classes == ("happy", "sad")
    with pytest.raises(ValueError, match=r"unknown data config keys \['frame'\].*valid: .*frames"):
        DataConfig.from_dict({"frame": 4})
    with pytest.raises(ValueError, match="frames=0"):
        DataConfig(frames=0)


def test_windows_are_valid_and_follow_the_seed():
    lengths = [32, 90, 250, 40]
    f, m, margin = 4, 2, 25
    a = draw_windows(lengths, f, m, margin, 1.0, seed=3, epoch=0)
    assert np.array_equal(a, draw_windows(lengths, f, m, margin, 1.0, seed=3, epoch=0))
    assert not np.array_equal(a, draw_windows(lengths, f, m, margin, 1.0, seed=4, epoch=0))
    assert not np.array_equal(a, draw_windows(lengths, f, m, margin, 1.0, seed=3, epoch=1))
    # windows per track: proportional to length, at least one
    counts = np.bincount(a[:, 0], minlength=len(lengths))
    assert counts.tolist() == [1, 4, 10, 2]
    many = draw_windows(lengths, f, m, margin, 20.0, seed=0, epoch=0)
    for track, start, ref in many:
        length = lengths[track]
        assert start - m >= 0 and start + f <= length and 0 <= ref < length
        assert ref <= start - m - margin or ref >= start + f - 1 + margin
    # on the shortest track both ends get used (reference after, or before, the window)
    short = many[many[:, 0] == 0]
    assert set(short[:, 2] > short[:, 1]) == {True, False}
    assert geo.min_track_frames(f, m, margin) == 31
    assert len(geo.valid_starts(31, f, m, margin)) == 2
    assert len(geo.valid_starts(30, f, m, margin)) == 0


def test_rank_slices_concatenate_to_the_single_worker_batch():
    windows = draw_windows([90, 130, 60, 200], 4, 2, 25, 3.0, seed=0, epoch=5)
    assert len(windows) == 58
    single = list(WindowBatches(windows, 6, rank=0, world_size=1))
    ranks = [list(WindowBatches(windows, 3, rank=r, world_size=2)) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 58 // 6
    for i, batch in enumerate(single):
        assert batch == ranks[0][i] + ranks[1][i]
    # equal batch counts per rank, the incomplete global batch dropped
    three = [WindowBatches(windows, 4, rank=r, world_size=3) for r in range(3)]
    assert [len(b) for b in three] == [58 // 12] * 3
    seen = [w for b in three for batch in b for w in batch]
    assert len(seen) == len(set(seen)) == 58 // 12 * 12
    # resuming at batch k gives the tail of the epoch
    full = list(WindowBatches(windows, 3, rank=1, world_size=2))
    assert list(WindowBatches(windows, 3, rank=1, world_size=2, start_batch=4)) == full[4:]
    assert list(WindowBatches(windows, 3, rank=1, world_size=2)[4:]) == full[4:]
    with pytest.raises(ValueError, match="rank"):
        WindowBatches(windows, 3, rank=2, world_size=2)


def test_audio_rows_are_clamped_at_the_track_ends():
    feats = np.arange(10, dtype=np.float16)[:, None] * np.ones((1, 3), np.float16)
    rows = geo.audio_rows(feats, np.array([0, 1, 9]), context=2)
    assert rows.shape == (3, 5, 3) and rows.dtype == np.float32
    assert rows[:, :, 0].tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [7, 8, 9, 9, 9]]


def test_head_speed_of_known_rotations():
    t = np.arange(100)
    yaw = 2.0 * t  # 2 deg per frame = 50 deg/s
    speed = geo.head_speed(yaw, np.zeros(100), np.zeros(100))
    assert np.allclose(speed[3:-3], 50.0, atol=1e-4)
    # pitch and roll at 1 deg per frame each: sqrt(2) x 25 deg/s; NaN gaps are interpolated
    pitch, roll = t * 1.0, -t * 1.0
    pitch[40:45] = np.nan
    speed = geo.head_speed(np.zeros(100), pitch, roll)
    assert np.allclose(speed[3:-3], 25 * np.sqrt(2), atol=1e-3)
    still = geo.head_speed(np.full(10, 5.0), np.full(10, np.nan), np.zeros(10))
    assert np.all(still == 0)


def test_mouth_box_and_mask_of_known_lips():
    points = np.zeros((68, 2), np.float32)
    points[48:60] = [[110, 160], [150, 160], [130, 150], [130, 180]] * 3  # outer lips: 40 x 30
    boxes = geo.mouth_boxes(np.stack([points.ravel(), np.full(136, np.nan)]))
    assert boxes[0].tolist() == [90, 140, 170, 200]  # grown by 0.5, 0.25, 0.5 of the width (40)
    assert np.isnan(boxes[1]).all()
    # pixel centres of a 256 px crop resized to 64: 4i + 1.5 crop px
    mask = geo.mouth_mask(boxes[0], 256, 64)
    cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
    assert (cols[0], cols[-1], rows[0], rows[-1]) == (23, 42, 35, 49)
    assert mask.sum() == len(cols) * len(rows)
    assert not geo.mouth_mask(boxes[1], 256, 64).any()


def _rotated_affine(center, side, angle, out):
    c, s, k = np.cos(-angle), np.sin(-angle), out / side
    a = np.array([[c, -s], [s, c]]) * k
    return np.hstack([a, (np.array([out / 2, out / 2]) - a @ np.asarray(center))[:, None]])


def test_masks_against_warped_source_images():
    """face_mask and valid_mask against cv2.warpAffine of source-sized images (the box filled,
    the frame filled) into the crop, area-resized: agreement everywhere but a one-pixel rim."""
    width, height, crop, size = 320, 240, 256, 64
    box = np.array([10.0, 60.0, 90.0, 150.0])
    affine = _rotated_affine((40.0, 100.0), 180.0, np.deg2rad(12), crop)  # past the left edge
    gt_face = np.zeros((height, width), np.float32)
    gt_face[int(box[1]):int(box[3]) + 1, int(box[0]):int(box[2]) + 1] = 1
    ones = np.ones((height, width), np.float32)
    gt = [cv2.resize(cv2.warpAffine(img, affine, (crop, crop), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0),
                     (size, size), interpolation=cv2.INTER_AREA) for img in (gt_face, ones)]
    face = geo.face_mask(affine, box, crop, size)
    valid = geo.valid_mask(affine, width, height, crop, size)
    for mask, truth in ((face, gt[0]), (valid, gt[1])):
        clear = (truth > 0.999) | (truth < 0.001)
        rim = cv2.dilate((~clear).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert np.array_equal(mask[~rim], np.round(truth[~rim]))
        assert 0.1 < mask.mean() < 0.9
    # the valid mask is conservative: no pixel partly outside the frame counts as valid
    assert np.all(valid[gt[1] < 0.999] == 0)
    assert np.all(geo.face_mask(affine, np.full(4, np.nan), crop, size) == 0)


def test_decord_frame_indices_match_pyav(tmp_path):
    """decord's random access returns the frame PyAV (pipeline.media) decodes at that index, on
    an H.264 clip with B-frames whose frames each carry their index as a bar position."""
    from pipeline.media import iter_frames, write_video

    n, size = 60, 64
    frames = np.full((n, size, size, 3), 40, np.uint8)
    for t in range(n):
        frames[t, :, t % size] = 230
        frames[t, t // size * 8: t // size * 8 + 8, :] = 140
    path = tmp_path / "indexed.mp4"
    write_video(str(path), frames, 25)
    pyav = np.stack([f.image for f in iter_frames(str(path))])
    import decord

    reader = decord.VideoReader(str(path), num_threads=1)
    assert len(reader) == len(pyav) == n
    order = [37, 3, 59, 0, 22, 22, 41]
    got = reader.get_batch(order).asnumpy()
    for k, t in enumerate(order):
        errors = np.abs(pyav.astype(np.int16) - got[k].astype(np.int16)).mean(axis=(1, 2, 3))
        assert int(np.argmin(errors)) == t and errors[t] < 2.0


# ------------------------------------------------------------------ on the curated catalog


@pytest.fixture(scope="module")
def dataset_all(curated_catalog, curated_index):
    return WindowDataset(curated_catalog, curated_index, CFG, split="all")


@pytest.fixture(scope="module")
def dataset_frames(curated_catalog, curated_index):
    """Per-frame expression and jaw pose (expression_mode "frame")."""
    config = DataConfig(**{**CFG.__dict__, "expression_mode": "frame"})
    return WindowDataset(curated_catalog, curated_index, config, split="all")


def relative_expressions(tracks) -> dict[str, np.ndarray]:
    """track_id -> its mean expression minus its person's neutral, from the tracks table (a
    pandas frame indexed by track_id): the neutral is the mean of the person's tracks labelled
    neutral, else the person's track of least expression_magnitude, among the tracks mostly
    within the head-pose limit; blendshape scores count only their rise, clipped to [0, 1]."""
    out = {}
    for _, group in tracks[tracks["expression_status"] == "ok"].groupby("person_id"):
        pose_ok = group["expression_pose_ok_fraction"]
        candidates = group[pose_ok.isna() | (pose_ok >= 0.5)]
        candidates = candidates if len(candidates) else group
        labelled = candidates[candidates["emotion_label"] == "neutral"]
        neutral_rows = labelled if len(labelled) else candidates.loc[
            [candidates["expression_magnitude"].idxmin()]]
        neutral = np.mean(np.stack(neutral_rows["expression_mean"]), axis=0)
        for tid, row in group.iterrows():
            rise = np.asarray(row["expression_mean"], np.float64) - neutral
            out[tid] = np.clip(rise, 0, 1) if row["expression_backend"] == "blendshapes" else rise
    return out


def _track_index(dataset, track_id):
    return [t.track_id for t in dataset.tracks].index(track_id)


@pytest.mark.ray
def test_alignment_of_flash_frame_and_click_row(dataset_all, curated_tracks):
    """The flash (found in the decoded crop pixels) and the click (the audio-feature row that
    differs most from the silence rows) fall on the same frame, and a window over it carries
    that row at the flash frame's centre position."""
    row = curated_tracks["flash_click"]
    ti = _track_index(dataset_all, row["track_id"])
    track = dataset_all.tracks[ti]
    pixels = dataset_all.decode(ti, np.arange(track.length)).astype(np.float32)
    brightness = pixels.mean(axis=(1, 2, 3))
    local = np.array([brightness[t] - np.median(brightness[max(0, t - 3): t + 4])
                      for t in range(track.length)])
    flash = int(np.argmax(local))
    assert local[flash] > 3 * np.sort(local)[-2]  # one clear flash frame
    features = np.load(track.features_path).astype(np.float32)
    speech_end = max(s["end_s"] for s in row["speech_segments"])
    # rows of the silent stretch after the speech, without the clip's last rows (its end shows)
    silence = np.arange(int((speech_end + 0.3) * 25), track.length - 5)
    assert flash in silence and len(silence) > 15
    baseline = np.median(features[silence], axis=0)
    distance = np.linalg.norm(features[silence] - baseline, axis=1)
    order = np.argsort(distance)[::-1]
    click = int(silence[order[0]])
    assert click == flash, (click, flash)
    assert distance[order[0]] > 1.2 * distance[order[1]]
    cfg = dataset_all.config
    start = flash - 1
    ref = geo.draw_reference(np.random.default_rng(0), track.length, start, cfg.frames,
                             cfg.motion_frames, cfg.reference_margin_frames)
    sample = dataset_all[Window(ti, start, ref)]
    assert sample["audio_valid"]
    assert np.array_equal(sample["audio"][1, cfg.audio_context], features[flash])
    assert np.array_equal(sample["audio"][1, 0], features[flash - 2])
    window_brightness = sample["frames"].mean(axis=(1, 2, 3))
    assert int(np.argmax(window_brightness)) == 1


@pytest.mark.ray
def test_per_frame_values_equal_the_catalog_rows(dataset_frames, curated_catalog):
    frames = catalog.read_table(curated_catalog, "frames").to_pylist()
    rows = {(r["track_id"], r["frame"]): r for r in frames}
    tracks = {r["track_id"]: r for r in catalog.read_table(curated_catalog, "tracks").to_pylist()}
    windows = dataset_frames.windows(0)
    assert len(windows) >= 8
    for track, start, ref in windows[:6]:
        sample = dataset_frames[Window(track, start, ref)]
        tid = dataset_frames.tracks[track].track_id
        classes = catalog.schema.EMOTION_CLASSES[tracks[tid]["emotion_backend"]]
        for j in range(CFG.frames):
            r = rows[(tid, int(start) + j)]
            assert np.allclose(sample["expression"][j], r["expression"], atol=1e-6)
            assert np.allclose(sample["jaw_pose"][j], r["jaw_pose"], atol=1e-6)
            probs = [r["emotion_probs"][classes.index(c)] for c in CFG.emotion_classes]
            assert np.allclose(sample["emotion_probs"][j], probs, atol=1e-6)
        assert sample["expression_valid"]
        label = tracks[tid]["emotion_label"]
        assert sample["emotion"] == CFG.emotion_classes.index(label)


@pytest.mark.ray
def test_valid_mask_marks_the_padding_of_a_face_at_the_frame_edge(dataset_all, curated_tracks,
                                                                  curated_catalog):
    """The man's face is cut by the frame's left edge: the mask is 0 exactly where the crop maps
    outside the frame (a warped all-ones frame, apart from a one-pixel rim), and those pixels
    are the repeated edge column (no horizontal change); faces inside the frame are all valid."""
    edge = _track_index(dataset_all, curated_tracks["man_at_edge"]["track_id"])
    t = dataset_all.tracks[edge]
    affines = dataset_all.frame_values(edge, "crop_affine")
    sample = dataset_all[Window(edge, 10, 60)]
    ones = np.ones((t.height, t.width), np.float32)
    for j in range(CFG.frames):
        truth = cv2.resize(cv2.warpAffine(ones, affines[10 + j].reshape(2, 3),
                                          (t.crop_size, t.crop_size), flags=cv2.INTER_LINEAR,
                                          borderMode=cv2.BORDER_CONSTANT, borderValue=0),
                           (CFG.size, CFG.size), interpolation=cv2.INTER_AREA)
        mask = sample["valid_mask"][j, 0]
        clear = (truth > 0.999) | (truth < 0.001)
        rim = cv2.dilate((~clear).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert np.array_equal(mask[~rim], np.round(truth[~rim]))
        assert 0.05 < 1 - mask.mean() < 0.5
    pixels = dataset_all.decode(edge, np.arange(10, 10 + CFG.frames))
    invalid = sample["valid_mask"][:, 0] == 0
    step = np.abs(np.diff(pixels.astype(np.float32).mean(-1), axis=2))  # horizontal change
    inner = cv2.erode(invalid.astype(np.uint8).transpose(1, 2, 0), np.ones((3, 3), np.uint8))
    inner = inner.reshape(invalid.shape[1], invalid.shape[2], -1).transpose(2, 0, 1)[:, :, 1:] > 0
    valid = ~invalid[:, :, 1:]
    assert step[inner].mean() < 0.25 * step[valid].mean()
    for name in ("astronaut_talks", "happy_talks"):
        inside = _track_index(dataset_all, curated_tracks[name]["track_id"])
        assert dataset_all[Window(inside, 10, 60)]["valid_mask"].mean() > 0.99


@pytest.mark.ray
def test_face_mask_is_the_box_in_crop_pixels(dataset_all):
    """The mask against the box's corners mapped through crop_affine and filled (cv2)."""
    scale = CFG.size / dataset_all.tracks[0].crop_size
    for track, start, ref in dataset_all.windows(0)[:4]:
        sample = dataset_all[Window(track, start, ref)]
        boxes = dataset_all.frame_values(track, "box")[start: start + CFG.frames]
        affines = dataset_all.frame_values(track, "crop_affine")[start: start + CFG.frames]
        for j in range(CFG.frames):
            x0, y0, x1, y1 = boxes[j]
            corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
            m = affines[j].reshape(2, 3)
            crop_pts = corners @ m[:, :2].T + m[:, 2]
            truth = np.zeros((CFG.size, CFG.size), np.uint8)
            cv2.fillPoly(truth, [np.round(((crop_pts + 0.5) * scale - 0.5) * 16).astype(np.int32)],
                         1, shift=4)
            mask = sample["face_mask"][j, 0]
            iou = (mask * truth).sum() / np.maximum(mask, truth).sum()
            assert iou > 0.9 and 0.1 < mask.mean() < 0.8


@pytest.mark.ray
def test_mouth_mask_covers_where_the_talking_face_changes(dataset_all, curated_tracks):
    """The synthetic talking face moves only its lips and jaw with the speech (plus a little
    head motion): the pixels that change most from frame to frame lie in the mouth mask."""
    ti = _track_index(dataset_all, curated_tracks["astronaut_talks"]["track_id"])
    length = dataset_all.tracks[ti].length
    changes, masks = [], []
    for start in range(2, length - CFG.frames, CFG.frames):
        sample = dataset_all[Window(ti, start, 0 if start > 30 else length - 1)]
        frames = sample["frames"].mean(1)  # [F,S,S] gray
        changes.append(np.abs(np.diff(frames, axis=0)).mean(0))
        masks.append(sample["mouth_mask"][:-1, 0].max(0))
    assert 0.05 < np.mean(masks) < 0.2  # the lower face: a small part of the crop
    change, mask = np.mean(changes, 0), np.max(masks, 0) > 0  # where it lies in any frame
    top = change >= np.quantile(change, 0.99)  # the 41 pixels that change most
    assert mask[top].mean() > 0.9
    assert change[mask].mean() > 3 * change[~mask].mean()


@pytest.mark.ray
def test_paired_windows_for_the_audio_response(dataset_all):
    """bench denoise's audio response compares partner windows: the same track and reference,
    windows that do not overlap, the real frames of those times."""
    from jobs.bench.denoise import paired_windows

    batch = paired_windows(dataset_all, 3)
    assert len(batch["frames"]) == 6
    for k in range(0, 6, 2):
        assert batch["track_index"][k] == batch["track_index"][k + 1]
        assert abs(int(batch["start"][k + 1]) - int(batch["start"][k])) >= CFG.frames
        torch.testing.assert_close(batch["reference"][k], batch["reference"][k + 1])
        track, start = int(batch["track_index"][k]), int(batch["start"][k])
        pixels = dataset_all.decode(track, np.arange(start, start + CFG.frames))
        frames = (batch["frames"][k].permute(0, 2, 3, 1).numpy() + 1) * 127.5
        assert np.abs(frames - pixels).max() < 0.01
    assert len({int(t) for t in batch["track_index"]}) == 3


@pytest.mark.ray
def test_person_disjoint_split(curated_catalog, curated_index):
    train = WindowDataset(curated_catalog, curated_index, CFG, split="train")
    val = WindowDataset(curated_catalog, curated_index, CFG, split="val")
    persons = {split: {t.person_id for t in ds.tracks} for split, ds in
               (("train", train), ("val", val))}
    assert persons["train"] and persons["val"] and not persons["train"] & persons["val"]
    ids = {t.track_id for ds in (train, val) for t in ds.tracks}
    everything = WindowDataset(curated_catalog, curated_index, CFG, split="all")
    assert ids == {t.track_id for t in everything.tracks}
    assert len(everything.tracks) >= 4


@pytest.mark.ray
def test_the_same_seed_gives_the_same_samples(curated_catalog, curated_index, dataset_all):
    again = WindowDataset(curated_catalog, curated_index, CFG, split="all")
    assert np.array_equal(again.windows(2), dataset_all.windows(2))
    other = WindowDataset(curated_catalog, curated_index, DataConfig(**{**CFG.__dict__, "seed": 1}),
                          split="all")
    assert not np.array_equal(other.windows(2), dataset_all.windows(2))
    w = Window(*(int(v) for v in dataset_all.windows(2)[0]))
    a, b = dataset_all[w], again[w]
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.ray
def test_loader_batches_follow_the_contract(dataset_all):
    """Keys, dtypes and shapes of a collated batch; workers give the same batches as the main
    process; 2 ranks of batch 2 concatenate to 1 rank of batch 4."""
    b, s, f, m = 4, CFG.size, CFG.frames, CFG.motion_frames
    batch = next(iter(dataset_all.loader(0, b)))
    shapes = {"frames": (b, f, 3, s, s), "motion": (b, m, 3, s, s), "reference": (b, 3, s, s),
              "audio": (b, f, 5, 512), "audio_valid": (b,), "expression": (b, f, CFG.expression_dim),
              "jaw_pose": (b, f, 3), "expression_valid": (b,), "emotion_probs": (b, f, 7),
              "emotion": (b,), "intensity": (b,), "face_mask": (b, f, 1, s, s),
              "valid_mask": (b, f, 1, s, s), "mouth_mask": (b, f, 1, s, s),
              "reference_mouth": (b, 1, s, s), "head_speed": (b, f), "track_index": (b,),
              "start": (b,)}
    assert {k: tuple(v.shape) for k, v in batch.items()} == shapes
    for key in ("audio_valid", "expression_valid"):
        assert batch[key].dtype == torch.bool
    for key in ("emotion", "track_index", "start"):
        assert batch[key].dtype == torch.int64
    assert batch["frames"].dtype == torch.float32
    assert batch["frames"].min() >= -1 and batch["frames"].max() <= 1
    assert batch["frames"].std() > 0.1 and torch.all(batch["head_speed"] >= 0)
    workers = list(dataset_all.loader(0, b, num_workers=2))
    local = list(dataset_all.loader(0, b, num_workers=0))
    assert len(workers) == len(local) == dataset_all.num_batches(b)
    for x, y in zip(workers, local):
        assert all(torch.equal(x[k], y[k]) for k in x)
    halves = [next(iter(dataset_all.loader(0, 2, rank=r, world_size=2))) for r in range(2)]
    assert all(torch.equal(torch.cat([halves[0][k], halves[1][k]]), local[0][k]) for k in batch)
    stats = loader_throughput(dataset_all, batch_size=2, batches=3)
    assert stats["samples"] == 6 and stats["samples_per_s"] > 0


@pytest.mark.ray
def test_missing_or_broken_files_are_named_when_read(curated_catalog, curated_index, tmp_path,
                                                     caplog):
    """The dataset opens no clip when built; a window of a track whose clip is missing, or
    whose features are not a numpy file, logs the file's name and comes from the next track,
    and so does a clip damaged later."""
    root = tmp_path / "cat"
    shutil.copytree(curated_catalog, root)
    kept = sorted(curated_index["track_id"].to_pylist())
    tracks = {r["track_id"]: r for r in catalog.read_table(root, "tracks").to_pylist()}
    assert all(tracks[t]["audio_features_path"] for t in kept[:2])
    missing = root / tracks[kept[0]]["crop_path"]
    missing.unlink()
    broken = root / tracks[kept[1]]["audio_features_path"]
    broken.write_bytes(b"not a numpy file")
    ds = WindowDataset(root, curated_index, CFG, split="all")
    assert ds.excluded == {} and [t.track_id for t in ds.tracks] == kept
    with caplog.at_level("ERROR", logger="training.data"):
        sample = ds[Window(0, 10, 60)]
    assert sample["track_index"] == 2
    assert f"{missing}: no such file" in caplog.text
    assert f"{broken}: audio features unreadable" in caplog.text
    assert ds.decode_failures == {kept[0]: 1, kept[1]: 1}
    assert len(next(iter(ds.loader(0, 1)))["frames"]) == 1
    # damaged after the dataset was built, before any of its windows was read (a clip already
    # decoded into the decoded cache would be served from memory)
    later = WindowDataset(root, curated_index, CFG, split="all")
    Path(later.tracks[2].crop_path).write_bytes(b"\0" * 100)
    assert later[Window(2, 10, 60)]["track_index"] == 3


@pytest.mark.ray
def test_the_decoded_cache_holds_the_frames_each_window_decodes(curated_catalog, curated_index):
    """With the split within decoded_cache_mib, each clip is decoded whole once and windows are
    cut from memory: the same pixels as decoding each window's frames from its clip, and as
    PyAV's decode of the clip resized the same way. Below the split's size, nothing is kept."""
    from pipeline.media import iter_frames

    cached = WindowDataset(curated_catalog, curated_index, CFG, split="all")
    per_window = WindowDataset(curated_catalog, curated_index, PER_WINDOW, split="all")
    split_bytes = sum(t.length for t in cached.tracks) * CFG.size * CFG.size * 3
    assert cached.decoded_fits() and not per_window.decoded_fits()
    assert split_bytes > 2**20
    tight = dataclasses.replace(CFG, decoded_cache_mib=1)
    assert not WindowDataset(curated_catalog, curated_index, tight, split="all").decoded_fits()
    for track in range(len(cached.tracks)):
        indices = np.array([30, 12, 13, 14, 15, 12, cached.tracks[track].length - 1])
        got = cached.decode(track, indices)
        assert np.array_equal(got, per_window.decode(track, indices))
        crop = cached.tracks[track].crop_path
        pyav = np.stack([cv2.resize(f.image, (CFG.size, CFG.size), interpolation=cv2.INTER_AREA)
                         for f in iter_frames(crop)])
        errors = np.abs(pyav[indices].astype(np.int16) - got.astype(np.int16)).mean()
        assert errors < 2.0
    assert sorted(cached._decoded) == list(range(len(cached.tracks)))
    assert per_window._decoded is None


@pytest.mark.ray
def test_a_clip_that_fails_part_way_still_gives_its_other_windows(curated_catalog,
                                                                  curated_index, caplog):
    """When a clip cannot be decoded whole (its frames from 40 on fail), the decoded cache
    falls back to that clip's windows one by one: windows before the damage read, a window
    over it raises MediaReadError naming the clip."""
    from training.data import MediaReadError

    ds = WindowDataset(curated_catalog, curated_index, CFG, split="all")
    reference = WindowDataset(curated_catalog, curated_index, PER_WINDOW, split="all")

    class FailsFrom40:
        def __init__(self, reader):
            self.reader = reader

        def __len__(self):
            return len(self.reader)

        def get_batch(self, indices):
            if max(indices) >= 40:
                raise RuntimeError("corrupt slice")
            return self.reader.get_batch(indices)

    open_reader = ds._reader
    ds._reader = lambda rel: FailsFrom40(open_reader(rel))
    with caplog.at_level("WARNING", logger="training.data"):
        early = ds.decode(0, np.arange(10, 17))
    assert np.array_equal(early, reference.decode(0, np.arange(10, 17)))
    assert "decoding this clip's windows one by one" in caplog.text
    assert 0 not in ds._decoded
    with pytest.raises(MediaReadError, match=Path(ds.tracks[0].crop_path).name):
        ds.decode(0, np.arange(38, 45))


@pytest.mark.ray
def test_every_window_carries_the_catalog_rows_read_with_pandas(dataset_all, curated_catalog):
    """Window draws (from the frames table's track lengths) and every sample's per-frame values
    of two epochs against the frames table, tracks and features read here with pandas/numpy:
    equal bit for bit (the same float32 values, the same geometry)."""
    import pandas as pd

    files = catalog.read.committed_files(curated_catalog, "frames")
    frames = pd.concat([pd.read_parquet(f) for f in files]).set_index(["track_id", "frame"])
    tracks = pd.concat([pd.read_parquet(f) for f in catalog.read.committed_files(
        curated_catalog, "tracks")]).set_index("track_id")
    videos = pd.concat([pd.read_parquet(f) for f in catalog.read.committed_files(
        curated_catalog, "videos")]).set_index("video_id")
    ids = [t.track_id for t in dataset_all.tracks]
    assert ids == sorted(ids)
    lengths = [int(frames.loc[t].index.max()) + 1 for t in ids]
    assert lengths == [dataset_all.tracks[i].length for i in range(len(ids))]
    relative = relative_expressions(tracks)
    for epoch in (0, 1):
        windows = dataset_all.windows(epoch)
        assert np.array_equal(windows, draw_windows(lengths, CFG.frames, CFG.motion_frames,
                                                    CFG.reference_margin_frames,
                                                    CFG.windows_per_second, CFG.seed, epoch))
        for track, start, ref in windows:
            sample = dataset_all[Window(int(track), int(start), int(ref))]
            tid = ids[track]
            row, rows = tracks.loc[tid], frames.loc[tid].sort_index()
            video = videos.loc[row["video_id"]]
            window = rows.iloc[start: start + CFG.frames]
            classes = catalog.schema.EMOTION_CLASSES[row["emotion_backend"]]
            order = [classes.index(c) for c in CFG.emotion_classes]
            # clip-level expression: the same neutral-relative vector on every frame, no jaw
            assert np.allclose(sample["expression"], np.tile(relative[tid], (CFG.frames, 1)),
                               atol=1e-6)
            assert not sample["jaw_pose"].any()
            assert np.array_equal(sample["emotion_probs"],
                                  np.stack(window["emotion_probs"])[:, order])
            speed = geo.head_speed(*(rows[c].to_numpy(np.float32) for c in ("yaw", "pitch",
                                                                               "roll")))
            assert np.array_equal(sample["head_speed"], speed[start: start + CFG.frames])
            crop = int(row["crop_size"])
            faces = []
            for j, (_, r) in enumerate(window.iterrows()):
                affine = np.asarray(r["crop_affine"], np.float32)
                face = geo.face_mask(affine, np.asarray(r["box"], np.float32), crop, CFG.size)
                valid = geo.valid_mask(affine, int(video["width"]), int(video["height"]), crop,
                                       CFG.size)
                faces.append(face)
                assert np.array_equal(sample["valid_mask"][j, 0], valid)
            # the face locator: one mask for the window, the union of its frames' face boxes
            assert np.array_equal(sample["face_mask"][:, 0],
                                  np.broadcast_to(np.max(faces, axis=0), (CFG.frames, CFG.size,
                                                                          CFG.size)))
            boxes = geo.mouth_boxes(np.stack(rows["landmarks"]).astype(np.float32))
            mouth = [geo.mouth_mask(boxes[k], crop, CFG.size) for k in range(start, start + 4)]
            assert np.array_equal(sample["mouth_mask"][:, 0], np.stack(mouth))
            assert np.array_equal(sample["reference_mouth"][0],
                                  geo.mouth_mask(boxes[ref], crop, CFG.size))
            features = np.load(Path(curated_catalog) / row["audio_features_path"])
            idx = np.clip(np.arange(start, start + CFG.frames)[:, None] + np.arange(-2, 3), 0,
                          len(rows) - 1)
            assert np.array_equal(sample["audio"], features[idx].astype(np.float32))
            assert sample["emotion"] == CFG.emotion_classes.index(row["emotion_label"])


@pytest.mark.ray
def test_crops_smaller_than_the_model_image_are_refused(curated_catalog, curated_index):
    """The fixture's 256 px crops for a 512 px model (the base config's size)."""
    base_size = DataConfig(**{**CFG.__dict__, "size": 512})
    with pytest.raises(CropSizeError, match=r"have 256 px face crops, smaller than the model's "
                                            r"512 px image size"):
        WindowDataset(curated_catalog, curated_index, base_size, split="all")


@pytest.mark.ray
def test_empty_results_raise_with_the_reasons(curated_catalog, curated_index):
    long_margin = DataConfig(**{**CFG.__dict__, "reference_margin_frames": 500})
    with pytest.raises(EmptyDatasetError, match=r"too short for a window \(< 506 frames\)"):
        WindowDataset(curated_catalog, curated_index, long_margin, split="train")
    none = curated_index.filter(pc.equal(curated_index["track_id"], "no such track"))
    with pytest.raises(EmptyDatasetError, match="no usable track"):
        WindowDataset(curated_catalog, none, CFG, split="all")


def test_collate_needs_samples():
    with pytest.raises(ValueError, match="at least one sample"):
        collate([])
