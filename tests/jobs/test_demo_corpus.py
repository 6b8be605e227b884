"""The demo corpus: real media from registry packages with espeak-ng speech muxed on."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from jobs.media.demo_corpus import SPOKEN, build_demo_inputs, mux_speech
from jobs.media.sources import MediaSourceError
from pipeline.media import iter_frames, read_audio


def test_mux_speech_keeps_video_and_aligns_speech(tmp_path):
    from jobs.media.synthetic import make_video, shots, tone

    video = make_video(tmp_path / "v.mp4", shots([20], (96, 64)), 50, size=(96, 64),
                       audio=tone(2.0))
    speech = tmp_path / "speech.wav"
    # a 0.5 s silence then a 1 s tone as the "speech": its onset must land at 0.5 s in the video
    import av

    with av.open(str(speech), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=22050)
        stream.layout = "mono"
        samples = np.concatenate([np.zeros(11025), 0.5 * np.sin(np.arange(22050) / 3)])
        frame = av.AudioFrame.from_ndarray((samples * 32767).astype(np.int16).reshape(1, -1),
                                           format="s16", layout="mono")
        frame.sample_rate = 22050
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    out = mux_speech(video, speech, tmp_path / "out.mp4")
    before = [f.image for f in iter_frames(str(video))]
    after = [f.image for f in iter_frames(str(out))]
    assert len(after) == len(before) and all(np.array_equal(a, b) for a, b in zip(before, after))
    audio = read_audio(str(out), 16000)
    assert abs(len(audio) / 16000 - 2.0) < 0.1  # padded to the video's 2 s
    envelope = np.abs(audio)
    onset = np.argmax(envelope > 0.2) / 16000
    assert abs(onset - 0.5) < 0.05, onset
    assert envelope[int(1.6 * 16000):].max() < 0.05  # silence after the 1 s of speech


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_build_demo_inputs_is_idempotent_and_spoken(tmp_path):
    try:
        paths = build_demo_inputs(tmp_path / "demo")
    except MediaSourceError as exc:  # registry unreachable: nothing to test
        pytest.skip(str(exc))
    names = {p.name for p in paths}
    assert {name for name, _, _ in SPOKEN} <= names and "face_noface.mov" in names
    mtimes = {p: p.stat().st_mtime_ns for p in paths}
    assert build_demo_inputs(tmp_path / "demo") == paths
    assert all(p.stat().st_mtime_ns == mtimes[p] for p in paths)
    for name, _, _ in SPOKEN:
        audio = read_audio(str(tmp_path / "demo" / name), 16000)
        loud = np.abs(audio) > 0.05
        assert loud.mean() > 0.1, f"{name}: expected speech, {loud.mean():.2f} of samples loud"
