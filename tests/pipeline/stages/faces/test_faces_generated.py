"""Faces stage on generated clips with real face photos at known places (spans, boxes, A/V sync)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from faces_support import background, face_patch, paste, run_faces, write_clip

from pipeline import media
from pipeline.models.geometry import iou
from pipeline.persons.cluster import THRESHOLDS

W, H, P = 320, 240, 120


def _ok_tracks(result):
    assert result["tracks"] is not None, result["faces_error"]
    return [t for t in result["tracks"] if t["faces_status"] == "ok"]


def _box_iou_per_frame(track, gt_by_frame):
    ious = []
    for fr in track["frames"]:
        src = round(fr["pts_s"] * 25)
        if src in gt_by_frame:
            ious.append(iou(np.array(fr["box"]), gt_by_frame[src]))
    return np.array(ious)


def test_face_enters_moves_blurs_and_leaves(tmp_path):
    import cv2

    patch, pbox = face_patch("single_face.jpg", P)
    frames, gt = [], {}
    for i in range(60):
        f = background(W, H)
        if 10 <= i < 45:
            x, y = 20 + 4 * (i - 10), 50 + int(10 * np.sin(i / 5))
            img = patch if not (25 <= i < 30) else cv2.GaussianBlur(patch, (0, 0), 1.5)
            paste(f, img, x, y)
            gt[i] = pbox + [x, y, x, y]
        frames.append(f)
    uri = write_clip(tmp_path / "enter_leave.mp4", frames)
    result = run_faces(uri, tmp_path)
    tracks = _ok_tracks(result)
    assert len(tracks) == 1, [(t["start_frame"], t["end_frame"], t["faces_error"]) for t in result["tracks"]]
    t = tracks[0]
    assert abs(t["start_frame"] - 10) <= 2 and abs(t["end_frame"] - 45) <= 2, (t["start_frame"], t["end_frame"])
    ious = _box_iou_per_frame(t, gt)
    assert len(ious) >= 30 and np.mean(ious >= 0.7) >= 0.95, ious.round(2)


def test_two_faces_and_a_cut(tmp_path):
    a, abox = face_patch("single_face.jpg", P)
    b, bbox = face_patch("astronaut", P)
    frames, gt_a, gt_b, gt_c = [], {}, {}, {}
    for i in range(60):  # 30 frames after the cut: longer than min_track_frames (25)
        f = background(W, H, seed=1 if i < 30 else 2)
        if i < 30:  # two faces side by side, drifting
            paste(f, a, 10 + i, 60)
            paste(f, b, 180 - i, 70)
            gt_a[i], gt_b[i] = abox + [10 + i, 60] * 2, bbox + [180 - i, 70] * 2
        else:  # cut at frame 30: one face (the first person) elsewhere
            paste(f, a, 100, 100 - (i - 30))
            gt_c[i] = abox + [100, 100 - (i - 30)] * 2
        frames.append(f)
    uri = write_clip(tmp_path / "two_cut.mp4", frames)
    result = run_faces(uri, tmp_path)
    tracks = _ok_tracks(result)
    assert result["faces_max_simultaneous"] == 2
    spans = [(t["start_frame"], t["end_frame"]) for t in tracks]
    assert len(tracks) == 3, spans
    left, right, after = tracks  # ordered by first frame, then box x
    assert left["track_index"] == 0 and right["track_index"] == 1
    assert left["frames"][0]["box"][0] < right["frames"][0]["box"][0]
    for t, gt, (s, e) in ((left, gt_a, (0, 30)), (right, gt_b, (0, 30)), (after, gt_c, (30, 60))):
        assert abs(t["start_frame"] - s) <= 2 and abs(t["end_frame"] - e) <= 2, spans
        ious = _box_iou_per_frame(t, gt)
        assert np.mean(ious >= 0.7) >= 0.95, ious.round(2)
    assert left["faces_in_frame_max"] == 2 and after["faces_in_frame_max"] == 1
    # identity: the same person before and after the cut is closer than the other person
    emb = {k: np.array(t["identity_embedding"]) for k, t in zip("lra", tracks)}
    assert np.linalg.norm(emb["l"] - emb["a"]) < THRESHOLDS["dlib"] < np.linalg.norm(emb["l"] - emb["r"])


@pytest.mark.parametrize("fps", [Fraction(30000, 1001), Fraction(24000, 1001)])
def test_crop_is_25fps_and_audio_stays_aligned(tmp_path, fps):
    """A white flash frame with a click at its pts: in the crop, the click lands on the flash."""
    patch, _ = face_patch("single_face.jpg", P)
    n, flash = int(2.0 * fps), int(1.1 * fps)
    frames = []
    for i in range(n):
        f = background(W, H)
        paste(f, patch, 100, 60)
        if i == flash:
            f[:, :] = np.clip(f.astype(int) + 120, 0, 255).astype(np.uint8)
        frames.append(f)
    audio = np.zeros(int(n / fps * 16000) + 1600, np.float32)
    t_click = float(flash / fps)
    c = int(t_click * 16000)
    audio[c:c + 160] = 0.9 * np.sin(np.arange(160) * 2 * np.pi * 2000 / 16000)
    uri = write_clip(tmp_path / f"sync_{float(fps):.2f}.mp4", frames, fps, audio)
    result = run_faces(uri, tmp_path)
    (t,) = _ok_tracks(result)
    crop = str(tmp_path / "_staging/run/shard-00000" / t["crop_path"])
    crop_frames = [f for f in media.iter_frames(crop)]
    assert len(crop_frames) == t["frame_count"] == len(t["frames"])
    assert abs(np.diff([f.pts_s for f in crop_frames]).mean() - 0.04) < 1e-3
    brightness = np.array([f.image.mean() for f in crop_frames])
    flash_k = int(np.argmax(brightness))
    crop_audio = media.read_audio(crop, 16000)
    click_s = float(np.argmax(np.abs(crop_audio))) / 16000
    assert abs(click_s - flash_k / 25) <= 0.04 + 1e-3, (click_s, flash_k / 25)
    assert abs(t["frames"][flash_k]["pts_s"] - t_click) < 0.5 / float(fps) + 1e-6
