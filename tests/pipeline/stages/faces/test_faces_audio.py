"""The faces stage decodes a video's audio once for all its tracks (pipeline.stages.faces.stage
FacesStage._audio): every span is read_audio's samples, and clicks placed at known times land
at their sample indices."""

from __future__ import annotations

import numpy as np

from pipeline import media
from pipeline.stages.contract import StageContext
from pipeline.stages.faces.stage import FacesConfig, FacesStage

RATE = 16000


def _video_with_clicks(path: str, clicks_s: list[float], seconds: float = 6.0) -> None:
    frames = np.zeros((int(seconds * 25), 64, 64, 3), np.uint8)
    audio = np.zeros(int(seconds * RATE), np.float32)
    for t in clicks_s:
        audio[int(t * RATE): int(t * RATE) + 16] = 0.9
    media.write_video(path, frames, 25, audio, RATE)


def test_spans_match_read_audio_and_the_file_is_decoded_once(tmp_path, monkeypatch):
    path = str(tmp_path / "clicks.mp4")
    clicks = [1.0, 3.5, 5.0]
    _video_with_clicks(path, clicks)
    stage = FacesStage(FacesConfig(), StageContext(str(tmp_path), str(tmp_path / "_s")))
    calls = []
    decode = media.decode_audio
    monkeypatch.setattr(media, "decode_audio", lambda *a, **k: calls.append(a) or decode(*a, **k))
    spans = [(0.5, 2.0), (3.0, 4.0), (4.2, 5.6), (5.5, 7.0)]  # the last runs past the end
    for start, end in spans:
        got = stage._audio(path, start, end)
        want = media.read_audio(path, RATE, start, end)
        assert got.dtype == np.float32 and np.array_equal(got, want)
        assert len(got) == int(round(end * RATE)) - int(round(start * RATE))
    assert len(calls) == 1 + len(spans)  # one for the stage, one per read_audio call
    for (start, end), click in zip(spans[:3], clicks):
        got = stage._audio(path, start, end)
        assert abs(np.argmax(np.abs(got)) / RATE + start - click) < 0.005
    assert len(calls) == 1 + len(spans)  # the stage did not decode again


def test_a_video_without_audio_gives_no_samples(tmp_path):
    path = str(tmp_path / "silent.mp4")
    media.write_video(path, np.zeros((25, 64, 64, 3), np.uint8), 25)
    stage = FacesStage(FacesConfig(), StageContext(str(tmp_path), str(tmp_path / "_s")))
    assert len(stage._audio(path, 0.0, 1.0)) == 0
    assert len(media.read_audio(path, RATE, 0.0, 1.0)) == 0
