"""`emoforge curate` end to end on a small generated folder: every input accounted for, [select]
recorded in the manifest and used by the report, and the persons post-pass run (two faces of one
photo side by side are two persons: they share every frame)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import catalog
from catalog.select import LIP_SYNC_RULES
from jobs import cli
from jobs.media.synthetic import make_video
from jobs.media.talking_face import astronaut_face
from jobs.report import data as report_data

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def curated(tmp_path_factory, ray_local):
    folder = tmp_path_factory.mktemp("inputs")
    face = astronaut_face(224).image
    canvas = np.full((288, 576, 3), 40, np.uint8)
    canvas[32:256, 32:256] = face
    canvas[32:256, 320:544] = face  # the same photo twice: identical identity embeddings

    def frame(i: int) -> np.ndarray:
        return np.roll(canvas, int(4 * np.sin(i / 8)), axis=1)  # a gentle sway

    make_video(folder / "twins.mp4", frame, 50, size=(576, 288))
    (folder / "README.txt").write_text("not a video\n")
    (folder / "notes").write_text("no extension\n")
    spec = tmp_path_factory.mktemp("spec") / "job.toml"
    spec.write_text('[select]\nmin_face_px_median = 123\nemotions = ["happy"]\n')
    out = tmp_path_factory.mktemp("cat") / "catalog"
    code = cli.main(["curate", str(spec), "--input", str(folder), "--out", str(out),
                     "--stages", "ingest,scenes,faces",
                     "--set", "select.lip_sync_rules.av_corr.min_confidence=0.9"])
    assert code == 0
    return out, folder


def test_curate_fills_person_id_and_keeps_co_occurring_faces_apart(curated):
    curated, _ = curated
    tracks = catalog.read_table(curated, "tracks", columns=["track_id", "person_id", "faces_status",
                                                           "identity_embedding"]).to_pylist()
    ok = [t for t in tracks if t["faces_status"] == "ok"]
    assert len(ok) == 2, tracks
    emb = np.array([t["identity_embedding"] for t in ok])
    assert np.linalg.norm(emb[0] - emb[1]) < 0.2  # one identity by appearance...
    assert all(t["person_id"] for t in ok)
    assert ok[0]["person_id"] != ok[1]["person_id"]  # ...but on screen together: two persons
    assert catalog.read_table(curated, "persons").num_rows == 2
    assert catalog.validate(curated) == []


def test_select_section_reaches_the_manifest_and_the_report(curated):
    curated, _ = curated
    manifest = json.loads((curated / "_manifest.json").read_text())
    select = manifest["job_spec"]["select"]
    assert select["min_face_px_median"] == 123 and select["emotions"] == ["happy"]
    assert select["lip_sync_rules"]["av_corr"] == {"max_abs_offset_frames": 1, "min_confidence": 0.9}
    assert select["lip_sync_rules"]["syncnet"] == LIP_SYNC_RULES["syncnet"]  # untouched rule kept
    data = report_data.collect(curated)
    assert data["thresholds"]["min_face_px_median"] == 123
    assert data["thresholds"]["lip_sync_rules"]["av_corr"]["min_confidence"] == 0.9


def test_ignored_files_are_counted_in_the_summary(curated, capsys):
    # a second run over the same folder: nothing to do, and the summary still lists what it skipped
    curated, folder = curated
    assert cli.main(["curate", "--input", str(folder), "--out", str(curated),
                     "--stages", "ingest,scenes,faces", "--no-persons"]) == 0
    out = capsys.readouterr().out
    assert "ignored inputs (not video or audio): 2 files: (none) 1, .txt 1" in out
    assert "persons:" not in out  # --no-persons


def test_release_ray_stops_only_a_ray_the_call_started(curated, tmp_path, monkeypatch):
    """curate(..., release_ray=True) before training in the same process: a Ray the caller was
    connected to stays connected (here the tests' session Ray, really); one the call connected
    to itself is stopped once it is done, and without release_ray it is left running."""
    import ray

    from jobs.curate import curate
    from jobs.spec import build
    from pipeline.run import runner

    _, folder = curated
    spec = build({"job": {"inputs": [str(folder / "twins.mp4")], "out": str(tmp_path / "cat"),
                          "stages": ["ingest"]}})
    assert ray.is_initialized()
    curate(spec, release_ray=True)
    assert ray.is_initialized()  # connected before the call: kept

    stops = []
    monkeypatch.setattr(runner, "ray_connected", lambda: False)  # as if this call started Ray
    monkeypatch.setattr(runner, "stop_ray", lambda: stops.append(True))
    curate(spec, release_ray=False)
    assert stops == []
    curate(spec, release_ray=True)
    assert stops == [True]
