"""Every stage on a real face with speech under ray.init(num_cpus=2): the catalog is complete
and valid, a re-run is a no-op, and recomputing one analyzer reuses the committed faces."""

from __future__ import annotations

import pytest
from media import real_media

import catalog
from jobs.media.demo_corpus import mux_speech
from jobs.media.sources import speak
from jobs.spec import build
from pipeline.run import runner
from pipeline.run.plan import FingerprintError

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def talking_head(tmp_path_factory):
    folder = tmp_path_factory.mktemp("in")
    wav = speak("Hello there, how are you today? I am fine, thank you.", folder / "s.wav")
    path = folder / "talking.mp4"
    mux_speech(real_media("single_face.mp4"), wav, path)
    return str(path)


def test_all_stages_on_two_cpus(talking_head, tmp_path, ray_local):
    assert ray_local.cluster_resources()["CPU"] == 2
    out = tmp_path / "cat"
    spec = build({"job": {"inputs": [talking_head], "out": str(out)}})
    result = runner.run_stages([talking_head], str(out), list(spec.stages), spec.configs, spec.runner,
                        job_spec=spec.resolved())
    assert catalog.validate(out) == []
    videos = catalog.read_table(out, "videos").to_pylist()
    clips = catalog.read_table(out, "clips").to_pylist()
    tracks = catalog.read_table(out, "tracks").to_pylist()
    frames = catalog.read_table(out, "frames")
    assert [v["scenes_status"] for v in videos] == ["ok"]
    assert len(clips) == 1 and clips[0]["faces_status"] == "ok"
    assert len(tracks) == 1
    track = tracks[0]
    assert track["faces_status"] == "ok" and track["frame_count"] >= 55
    assert frames.num_rows == track["frame_count"]
    for stage in ("audio", "lip_sync", "expression", "emotion"):
        assert track[f"{stage}_status"] in ("ok", "skipped"), (stage, track[f"{stage}_error"])
    assert track["audio_status"] == "ok" and track["speech_ratio"] > 0.3
    assert track["expression_status"] == "ok" and track["emotion_label"]
    assert (out / track["crop_path"]).is_file()
    assert frames.filter(frames["expression"].is_valid()).num_rows > 0.8 * frames.num_rows
    manifest = catalog.read_manifest(out)
    assert set(manifest["stages"]) >= {"ingest", "scenes", "faces", "audio", "lip_sync", "expression", "emotion"}
    assert manifest["timings"]["analyze"]["rows_in"] == 1
    assert result.shards_committed == 1

    again = runner.run_stages([talking_head], str(out), list(spec.stages), spec.configs, spec.runner)
    assert again.shards_committed == 0

    changed = build({"job": {"inputs": [talking_head], "out": str(out)}},
                    ["analyze.emotion={backend = \"facex\"}"])
    with pytest.raises(FingerprintError, match="emotion"):
        runner.run_stages([talking_head], str(out), list(changed.stages), changed.configs, changed.runner)
    runner.run_stages([talking_head], str(out), list(changed.stages), changed.configs, changed.runner,
               recompute={"emotion"})
    after = catalog.read_table(out, "tracks").to_pylist()[0]
    assert after["emotion_backend"] == "facex"
    assert after["track_id"] == track["track_id"] and after["crop_path"] == track["crop_path"]
    assert after["face_px_median"] == track["face_px_median"]
    assert catalog.validate(out) == []
