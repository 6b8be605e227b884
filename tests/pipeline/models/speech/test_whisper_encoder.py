"""The Whisper encoder without torch (pipeline/models/speech/whisper_encoder.py): numpy log-mel against
openai-whisper's, the ONNX encoder against openai-whisper's torch module, an analyze worker that
imports neither, and the build-once cache helper."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from jobs.media.talking_face import SENTENCES, speech

from pipeline.models.registry import build_once
from pipeline.models.speech.whisper_encoder import load_encoder, log_mel, pad_or_trim


@pytest.fixture(scope="module")
def spoken() -> np.ndarray:
    """Two espeak-ng sentences (about 5 s) padded to a 30 s Whisper window."""
    return pad_or_trim(np.concatenate([speech(SENTENCES[0]), speech(SENTENCES[1])]))


def test_log_mel_equals_openai_whispers(spoken):
    import whisper

    reference = whisper.log_mel_spectrogram(spoken, 80).numpy()
    ours = log_mel(spoken, 80)
    assert ours.shape == reference.shape == (80, 3000)
    assert np.abs(ours - reference).max() < 1e-4
    # the silent tail sits at the clamp (max - 8) in both
    assert np.allclose(ours[:, -100:], reference[:, -100:], atol=1e-4)


def test_onnx_encoder_states_equal_the_torch_modules(spoken):
    onnx = load_encoder("whisper-base", "onnxruntime")
    torch_ = load_encoder("whisper-base", "torch")
    mel = log_mel(spoken, onnx.n_mels)
    ours, reference = onnx(mel), torch_(mel)
    assert ours.shape == reference.shape == (1500, 512)
    assert np.abs(reference).max() > 5  # real states, not zeros
    assert np.abs(ours - reference).max() < 5e-3
    assert np.abs(ours - reference).mean() < 1e-4
    # the float16 features sidecar: nearly every value identical, the rest one step apart
    assert np.mean(ours.astype(np.float16) == reference.astype(np.float16)) > 0.95


def test_an_analyze_worker_with_the_default_audio_imports_neither_torch_nor_whisper(tmp_path):
    """Set up every analyzer, then analyze speech (VAD, features, transcript) in a fresh
    process: neither torch nor openai-whisper's package (nor numba) is imported."""
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from jobs.media.talking_face import SENTENCES, speech
        from pipeline.stages.analyze.base import DecodedTrack
        from pipeline.stages.contract import StageContext
        from pipeline.stages.analyze.stage import AnalyzeConfig, AnalyzeStage
        stage = AnalyzeStage(AnalyzeConfig(), StageContext(catalog="{tmp_path}",
                                                           staging="{tmp_path}/s"))
        stage.setup()
        audio = speech(SENTENCES[0])
        t = len(audio) // 640
        track = DecodedTrack(frames=np.zeros((t, 8, 8, 3), np.uint8), audio=audio[:t * 640],
                             landmarks=np.full((t, 68, 2), np.nan, np.float32),
                             mouth_open=np.full(t, np.nan, np.float32),
                             row={{"track_id": "a", "shard": 0}}, has_audio=True)
        row = stage.analyzers[0].analyze(track, {{}}).track
        print(row["audio_status"], row["language"], bool(row["transcript"]),
              sorted(m for m in ("torch", "whisper", "numba") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("ok en True []"), out


def test_unknown_encoder_engine_is_a_clear_error():
    from pipeline.stages.analyze.audio import AudioConfig

    with pytest.raises(ValueError, match="encoder_engine must be one of"):
        AudioConfig(encoder_engine="tensorflow")
    with pytest.raises(ValueError, match="unknown Whisper encoder engine"):
        load_encoder("whisper-base", "tensorflow")


def test_build_once_builds_once_and_leaves_nothing_when_the_build_fails(tmp_path):
    calls = []

    def build(tmp):
        calls.append(tmp)
        tmp.write_text("made")

    target = tmp_path / "cache" / "thing.bin"
    assert build_once(target, build) == target and target.read_text() == "made"
    assert build_once(target, build) == target and len(calls) == 1

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    other = tmp_path / "cache" / "other.bin"
    with pytest.raises(RuntimeError, match="disk full"):
        build_once(other, broken)
    assert not other.exists()
    assert sorted(p.name for p in other.parent.iterdir() if not p.name.endswith(".lock")) == [
        "thing.bin"]
