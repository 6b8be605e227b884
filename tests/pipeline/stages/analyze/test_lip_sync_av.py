"""Bundled lip sync (mouth opening vs speech envelope) on generated talking faces.

The mouth follows tanh of a smoothed, 20 ms delayed RMS (not the band envelope the method uses),
with head motion, blur, noise and H.264; the mouth is measured back from pixels with dlib.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from jobs.media.talking_face import SENTENCES, decode_and_measure, make_clip
from talking_face import face, track_of

from catalog.select import LIP_SYNC_RULES, lip_sync_verdict
from pipeline.stages.analyze.lip_sync import LipSyncAnalyzer, LipSyncConfig
from pipeline.media import read_audio
from pipeline.stages.contract import OK, SKIPPED, StageContext

SHIFTS = [-10, -5, -2, 0, 3, 8]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("lipsync")


@pytest.fixture(scope="module")
def analyzer(workdir):
    ctx = StageContext(
        catalog=str(workdir / "cat"), staging=str(workdir / "cat" / "_staging" / "r")
    )
    a = LipSyncAnalyzer(LipSyncConfig(backend="av_corr"), ctx)
    a.setup()
    return a


@pytest.fixture(scope="module")
def results(workdir, analyzer):
    out = {}
    for i, shift in enumerate(SHIFTS):
        clip = make_clip(workdir / f"shift{shift}.mp4", face(), SENTENCES[i], shift, seed=i)
        out[shift] = (clip, analyzer.analyze(track_of(clip, f"t{i}"), {}))
    return out


@pytest.mark.parametrize("shift", SHIFTS)
def test_injected_audio_shift_recovered_within_one_frame(results, shift):
    clip, res = results[shift]
    row = res.track
    assert row["lip_sync_status"] == OK, row
    assert abs(row["lip_sync_offset_frames"] - shift) <= 1, (
        f"audio moved {shift} frames earlier, measured offset {row['lip_sync_offset_frames']}"
    )
    assert row["lip_sync_offset_s"] == pytest.approx(row["lip_sync_offset_frames"] / 25)
    assert row["lip_sync_confidence"] >= LIP_SYNC_RULES["av_corr"]["min_confidence"]
    assert row["lip_sync_min_dist"] is None
    frame_conf = res.frames["lip_sync_frame_confidence"]
    assert len(frame_conf) == len(clip.frames)
    verdict = lip_sync_verdict("av_corr", row["lip_sync_offset_frames"], row["lip_sync_confidence"])
    kept = verdict is None
    if shift == 0:
        assert kept
    if abs(shift) >= 3:
        assert not kept


def test_offset_from_container_audio_start_time(workdir, analyzer):
    """The audio stream starts 6 frames late in the container (samples unshifted): audio lags."""
    clip = make_clip(workdir / "late.mp4", face(), SENTENCES[6], 0, seed=11, audio_start_frames=6)
    row = analyzer.analyze(track_of(clip, "late"), {}).track
    assert abs(row["lip_sync_offset_frames"] - (-6)) <= 1, row


def test_resynced_crop_is_a_new_file_and_in_sync(workdir, analyzer, results):
    clip, res = results[8]
    src_hash = hashlib.sha256(clip.path.read_bytes()).hexdigest()
    rel = res.track["lip_sync_shifted_path"]
    assert rel and rel.startswith("media/00000/t5/")
    staged = analyzer.context.staging_media(0, rel)
    assert hashlib.sha256(clip.path.read_bytes()).hexdigest() == src_hash  # source untouched
    again = decode_and_measure(staged)
    assert np.array_equal(again.frames, clip.frames)  # video packets copied, not re-encoded
    row = analyzer.analyze(track_of(again, "t5b"), {}).track
    assert abs(row["lip_sync_offset_frames"]) <= 1, row
    # the audio moved by the measured offset: the new audio is the old one delayed
    old = read_audio(str(clip.path), 16000)
    new = read_audio(staged, 16000)
    k = res.track["lip_sync_offset_frames"] * 640
    seg = slice(20000, 40000)
    assert np.corrcoef(old[seg], new[seg.start + k : seg.stop + k])[0, 1] > 0.9


def test_unrelated_speech_scores_below_in_sync(workdir, analyzer, results):
    in_sync = [results[s][1].track["lip_sync_confidence"] for s in SHIFTS]
    unrelated = []
    for i in range(2):
        clip = make_clip(
            workdir / f"unrel{i}.mp4",
            face(),
            SENTENCES[i],
            0,
            seed=20 + i,
            drive_text=SENTENCES[4 + i],
        )
        unrelated.append(analyzer.analyze(track_of(clip, f"u{i}"), {}).track["lip_sync_confidence"])
    assert max(unrelated) < min(in_sync), (unrelated, in_sync)
    assert max(unrelated) < LIP_SYNC_RULES["av_corr"]["min_confidence"]


def test_skips_without_audio_or_speech(results, analyzer):
    clip, _ = results[0]
    no_audio = analyzer.analyze(track_of(clip, has_audio=False), {})
    assert no_audio.track["lip_sync_status"] == SKIPPED
    assert "no audio" in no_audio.track["lip_sync_error"]
    from pipeline.stages.analyze.base import AnalyzerResult

    silent = AnalyzerResult({"audio_status": SKIPPED, "audio_error": "no speech: ..."})
    res = analyzer.analyze(track_of(clip), {"audio": silent})
    assert res.track["lip_sync_status"] == SKIPPED and "no speech" in res.track["lip_sync_error"]


def test_static_mouth_is_skipped_not_scored(results, analyzer):
    clip, _ = results[0]
    track = track_of(clip)
    track.mouth_open = np.full(track.num_frames, 0.2, np.float32)
    row = analyzer.analyze(track, {}).track
    assert row["lip_sync_status"] == SKIPPED and "does not vary" in row["lip_sync_error"]
