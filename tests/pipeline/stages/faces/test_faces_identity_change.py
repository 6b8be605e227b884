"""A face replaced by another person at the same place, without a cut, ends its track there."""

from __future__ import annotations

import numpy as np
import pytest
from faces_support import background, face_patch, paste, run_faces, write_clip

from pipeline.stages.faces.stage import FacesConfig

W, H, P = 320, 240, 120
CHANGE = 30  # first crossfade frame; frame CHANGE + FADE shows person B alone
FADE = 2


def _identity_swap_clip(tmp_path, a_name: str, b_name: str) -> str:
    """Person A at a fixed place (with a slow drift) for 30 frames, a 2-frame crossfade to person
    B in the same place, B for 28 more frames; the background never changes (no cut)."""
    a, _ = face_patch(a_name, P)
    b, _ = face_patch(b_name, P)
    frames = []
    for i in range(60):
        w = float(np.clip((i - CHANGE + 1) / (FADE + 1), 0.0, 1.0))  # 0 ... 1/3, 2/3 ... 1
        face = (a.astype(np.float32) * (1 - w) + b.astype(np.float32) * w).astype(np.uint8)
        f = background(W, H, seed=3)
        paste(f, face, 100 + i // 10, 60)
        frames.append(f)
    return write_clip(tmp_path / f"swap_{a_name}_{b_name}.mp4".replace(".jpg", ""), frames)


@pytest.mark.parametrize("backend", ["mediapipe", "mtcnn"])
def test_identity_change_without_a_cut_splits_the_track(tmp_path, backend):
    uri = _identity_swap_clip(tmp_path, "single_face.jpg", "astronaut")
    result = run_faces(uri, tmp_path, FacesConfig(backend=backend, min_track_frames=5))
    tracks = [t for t in result["tracks"] if t["faces_status"] == "ok"]
    spans = [(t["start_frame"], t["end_frame"]) for t in result["tracks"]]
    assert len(tracks) == 2, spans
    first, second = tracks
    # A's track ends within 2 frames of the change; B's track starts there and runs to the end
    assert abs(first["end_frame"] - CHANGE) <= 2, spans
    assert abs(second["start_frame"] - CHANGE) <= 2 and second["end_frame"] == 60, spans
    assert first["start_frame"] == 0
    emb = np.array([t["identity_embedding"] for t in tracks])
    from pipeline.persons.cluster import THRESHOLDS

    assert np.linalg.norm(emb[0] - emb[1]) > THRESHOLDS["dlib"]  # two people, not one


def test_same_face_through_a_crossfade_of_itself_is_one_track(tmp_path):
    """Control: the same crossfade with A on both sides must not split the track."""
    uri = _identity_swap_clip(tmp_path, "single_face.jpg", "single_face.jpg")
    result = run_faces(uri, tmp_path, FacesConfig(min_track_frames=5))
    tracks = [t for t in result["tracks"] if t["faces_status"] == "ok"]
    assert [(t["start_frame"], t["end_frame"]) for t in tracks] == [(0, 60)]
