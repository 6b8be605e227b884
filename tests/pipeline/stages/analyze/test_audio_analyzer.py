"""Audio analyzer: Silero VAD segments, loudness, clipping, skip without speech, Whisper features
on the 25 fps grid (a float16 sidecar)."""

from __future__ import annotations

import numpy as np
import pytest
from jobs.media.talking_face import SENTENCES, speech

from pipeline.stages.analyze.audio import AudioAnalyzer, AudioConfig, clipping_ratio, loudness_dbfs
from pipeline.stages.analyze.base import DecodedTrack
from pipeline.stages.contract import OK, SKIPPED, StageContext

RATE = 16000


def track(audio: np.ndarray, track_id: str = "a0", has_audio: bool = True) -> DecodedTrack:
    t = len(audio) // 640
    audio = audio[: t * 640].astype(np.float32)
    return DecodedTrack(
        frames=np.zeros((t, 8, 8, 3), np.uint8),
        audio=audio,
        landmarks=np.full((t, 68, 2), np.nan, np.float32),
        mouth_open=np.full(t, np.nan, np.float32),
        row={"track_id": track_id, "shard": 3},
        has_audio=has_audio,
    )


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    return StageContext(catalog=str(root), staging=str(root / "_staging" / "run"))


@pytest.fixture(scope="module")
def analyzer(ctx):
    a = AudioAnalyzer(AudioConfig(features=True, transcribe=False), ctx)
    a.setup()
    return a


@pytest.fixture(scope="module")
def spoken():
    """1.0 s silence, the sentence, 1.2 s silence (speech() pads 0.3 s itself)."""
    return speech(SENTENCES[0], pad_s=(1.0, 1.2))


def test_loudness_and_clipping_known_values():
    t = np.arange(RATE) / RATE
    sine = 0.5 * np.sin(2 * np.pi * 440 * t)
    assert loudness_dbfs(sine) == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.01)  # -9.03
    assert loudness_dbfs(np.zeros(100)) == pytest.approx(-200.0)
    hot = np.clip(2.0 * np.sin(2 * np.pi * 440 * t), -1, 1)
    # |2 sin| >= 0.999 on the fraction of the period where |sin| >= 0.4995: 1 - 2 asin(.4995)/pi
    assert clipping_ratio(hot) == pytest.approx(1 - 2 * np.arcsin(0.4995) / np.pi, abs=0.01)
    assert clipping_ratio(sine) == 0.0


def test_speech_segments_and_ratio_match_the_sentence(analyzer, spoken):
    res = analyzer.analyze(track(spoken), {})
    row = res.track
    assert row["audio_status"] == OK, row
    segs = row["speech_segments"]
    assert segs, row
    voiced = np.flatnonzero(np.abs(spoken) > 0.02)
    true_start, true_end = voiced[0] / RATE, voiced[-1] / RATE
    assert segs[0]["start_s"] == pytest.approx(true_start, abs=0.15)
    assert segs[-1]["end_s"] == pytest.approx(true_end, abs=0.2)
    duration = len(spoken) // 640 * 640 / RATE
    assert row["speech_ratio"] == pytest.approx(
        sum(s["end_s"] - s["start_s"] for s in segs) / duration, rel=1e-3
    )
    assert (
        0.5 * (true_end - true_start) / duration
        < row["speech_ratio"]
        <= (true_end - true_start + 0.3) / duration
    )
    assert -40 < row["loudness_dbfs"] < -10 and row["clipping_ratio"] == 0.0


def test_no_speech_is_skipped_with_the_reason(analyzer):
    rng = np.random.default_rng(0)
    t = np.arange(3 * RATE) / RATE
    hum = 0.05 * np.sin(2 * np.pi * 100 * t) + 0.003 * rng.normal(size=len(t))
    row = analyzer.analyze(track(hum), {}).track
    assert row["audio_status"] == SKIPPED and row["audio_error"].startswith("no speech")
    assert row["speech_ratio"] == 0.0 and row["loudness_dbfs"] == pytest.approx(-29.0, abs=0.5)
    assert row.get("audio_features_path") is None
    none = analyzer.analyze(track(hum, has_audio=False), {}).track
    assert none["audio_status"] == SKIPPED and "no audio" in none["audio_error"]


def test_whisper_features_sidecar_on_the_25fps_grid(analyzer, ctx, spoken):
    row = analyzer.analyze(track(spoken, "feat"), {}).track
    rel = row["audio_features_path"]
    assert rel == "media/00003/feat/audio_features.npy"
    assert row["audio_features_backend"] == "whisper-base"
    feats = np.load(ctx.staging_media(3, rel))
    t = len(spoken) // 640
    assert feats.shape == (t, 512) and feats.dtype == np.float16
    # the grid is aligned: the same speech 10 frames later gives features 10 frames later
    late = np.concatenate([np.zeros(10 * 640, np.float32), spoken])[: len(spoken)]
    row2 = analyzer.analyze(track(late, "late"), {}).track
    feats2 = np.load(ctx.staging_media(3, row2["audio_features_path"])).astype(np.float32)
    a = feats.astype(np.float32)
    a, b = a - a.mean(0), feats2 - feats2.mean(0)
    lags = range(-15, 16)
    sims = [
        np.mean(np.sum(a[max(0, -k) : t - max(0, k)] * b[max(0, k) : t - max(0, -k)], 1))
        for k in lags
    ]
    assert list(lags)[int(np.argmax(sims))] == 10


def test_vad_sequence_model_equals_the_torchscript_one():
    """The sequence ONNX model (every 32 ms window in one call) gives the TorchScript model's
    window-by-window probabilities and segments: two sentences with a pause, noise around,
    a length that is not a whole number of windows."""
    from pipeline.models.speech.vad_silero import SileroVad

    rng = np.random.default_rng(0)
    audio = np.concatenate([speech(SENTENCES[0], pad_s=(0.7, 0.6)), speech(SENTENCES[1])])
    audio = (audio + 0.003 * rng.standard_normal(len(audio)))[: len(audio) - 123]
    onnx, torch_model = SileroVad(), SileroVad(engine="torch")
    p_onnx, p_torch = onnx.probabilities(audio), torch_model.probabilities(audio)
    assert p_onnx.shape == p_torch.shape == (-(-len(audio) // 512),)
    assert p_torch.max() > 0.9 and p_torch.min() < 0.1  # speech and silence both present
    np.testing.assert_allclose(p_onnx, p_torch, rtol=0, atol=1e-4)
    segments = onnx.segments(audio)
    assert segments == torch_model.segments(audio) and len(segments) >= 2
    with pytest.raises(ValueError, match="engine"):
        SileroVad(engine="jit")


def test_speech_spans_equal_silero_vads_own_rule_on_random_sequences():
    """`speech_stamps` (ours, so that the audio stage needs no torch) against silero-vad's
    get_speech_timestamps_from_probs: runs of speech-like, silence-like and in-between
    probabilities with noise, several thresholds and durations, audio lengths that are not
    whole windows."""
    from silero_vad.utils_vad import get_speech_timestamps_from_probs

    from pipeline.models.speech.vad_silero import speech_stamps

    rng = np.random.default_rng(1)
    spans_seen = 0
    for _ in range(600):
        n = int(rng.integers(1, 300))
        probs: list[float] = []
        while len(probs) < n:
            level = rng.choice([0.05, 0.3, 0.4, 0.45, 0.6, 0.9, rng.random()])
            run = int(rng.integers(1, 40))
            probs += np.clip(level + rng.normal(0, 0.1, run), 0, 1).tolist()
        probs = probs[:n]
        threshold = float(rng.choice([0.5, 0.3, 0.7]))
        speech_ms, silence_ms = int(rng.choice([250, 100, 500])), int(rng.choice([100, 50, 300]))
        length = n * 512 - int(rng.integers(0, 512))
        reference = get_speech_timestamps_from_probs(
            probs, RATE, threshold, speech_ms, min_silence_duration_ms=silence_ms,
            speech_pad_ms=30, audio_length_samples=length)
        ours = speech_stamps(probs, 512, threshold, RATE * speech_ms / 1000,
                             RATE * silence_ms / 1000, 0.03 * RATE, length)
        assert ours == [(d["start"], d["end"]) for d in reference], (probs, threshold)
        spans_seen += len(ours)
    assert spans_seen > 300  # the sequences do hold speech
