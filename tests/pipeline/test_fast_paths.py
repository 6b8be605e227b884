"""Fast paths compute what the reference computations do: the numpy median filter is scipy's
medfilt, the cached ONNX export of dlib's network gives the descriptors of a fresh
export, the emotion strides classify the frames they say (each member on its own frames)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.stages.analyze.emotion import EmotionAnalyzer, EmotionConfig, sampled_frames
from pipeline.models.lip_sync.av_sync import median_filter


def test_median_filter_is_scipys_medfilt():
    from scipy.signal import medfilt

    rng = np.random.default_rng(0)
    for n in (9, 10, 57, 501):
        x = rng.normal(size=n)
        x[:: max(3, n // 7)] = 5.0  # outliers
        assert np.array_equal(median_filter(x, 9), medfilt(x, 9)), n


def test_cached_dlib_export_matches_a_fresh_one(tmp_path, monkeypatch):
    from pipeline.models.identity.dlib_resnet import (
        DescriptorNet,
        build_dlib_resnet,
        cached_onnx,
        export_onnx,
        parse_dlib_resnet,
    )
    from pipeline.models.identity.dlib import IDENTITY_SPEC
    from pipeline.models.registry import resolve

    monkeypatch.setenv("EMOFORGE_CACHE", str(tmp_path))
    path = resolve(IDENTITY_SPEC)
    first = cached_onnx(path)
    files = list((tmp_path / "dlib").glob("*.onnx"))
    assert len(files) == 1 and files[0].read_bytes() == first
    assert cached_onnx(path) == first  # read back, not exported again
    fresh = export_onnx(build_dlib_resnet(parse_dlib_resnet(path)))
    chips = np.random.default_rng(1).uniform(0, 255, (3, 3, 150, 150)).astype(np.float32)
    a = DescriptorNet.from_onnx(first)(chips)
    b = DescriptorNet.from_onnx(fresh)(chips)
    assert a.shape == (3, 128) and np.allclose(a, b, atol=1e-6)


def test_sampled_frames_include_the_last():
    assert sampled_frames(1, 8).tolist() == [0]
    assert sampled_frames(10, 2).tolist() == [0, 2, 4, 6, 8, 9]
    assert sampled_frames(17, 8).tolist() == [0, 8, 16]


class _Recorder:
    """A member that records which faces it saw (by their first pixel) and returns a one-hot."""

    def __init__(self, k: int):
        self.k, self.seen, self.classes = k, [], ("a", "b")

    def predict(self, faces):
        self.seen.append(faces[:, 0, 0, 0].tolist())
        p = np.zeros((len(faces), 2), np.float32)
        p[:, self.k] = 1
        return p, None


def test_each_ensemble_member_classifies_its_own_frames(monkeypatch):
    from pipeline.stages.analyze.base import DecodedTrack

    T = 20
    frames = np.zeros((T, 16, 16, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(T)[:, None, None]  # the pixel value is the frame number
    analyzer = EmotionAnalyzer(EmotionConfig(backend="fer+facex", smoothing_sigma_frames=0,
                                             frame_stride=2, slow_frame_stride=8), None)
    fer, facex = _Recorder(0), _Recorder(1)
    analyzer.model = type("Ens", (), {"models": [fer, facex], "classes": ("a", "b")})()
    monkeypatch.setattr("pipeline.stages.analyze.emotion.crop_faces",
                        lambda f, lm, margin: np.asarray(f))
    track = DecodedTrack(frames=frames, audio=np.zeros(T * 640, np.float32),
                         landmarks=None, mouth_open=np.zeros(T, np.float32),
                         row={"track_id": "t", "shard": 0})
    result = analyzer.analyze(track, {})
    assert fer.seen == [list(range(0, 20, 2)) + [19]]
    assert facex.seen == [[0, 8, 16, 19]]
    probs = np.asarray(result.frames["emotion_probs"])
    assert probs.shape == (T, 2) and np.allclose(probs, 0.5)  # the members' mean


@pytest.mark.parametrize("key", ["frame_stride", "slow_frame_stride"])
def test_emotion_strides_below_one_are_refused(key):
    with pytest.raises(ValueError, match=key):
        EmotionAnalyzer(EmotionConfig(**{key: 0}), None)
