"""HSEmotion reference backend on a tiny ONNX file with the real model's inputs and outputs."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from pipeline.stages.analyze.base import DecodedTrack
from pipeline.stages.analyze.emotion import EmotionAnalyzer, EmotionConfig
from pipeline.models.emotion import hsemotion as hs
from pipeline.models.registry import MissingWeightsError


def write_tiny_onnx(path, n_out: int, seed: int = 0):
    """input float[N,3,224,224] -> GlobalAveragePool -> Flatten -> Gemm -> float[N,n_out]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    W = rng.normal(size=(n_out, 3)).astype(np.float32) * 3
    b = rng.normal(size=n_out).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Gemm", ["flat", "W", "b"], ["output"], transB=1)],
        "tiny_hsemotion",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", n_out])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return W, b


def expected(faces, W, b):
    """numpy reference: resize is a no-op at 224 px; ImageNet normalization; pooled linear head."""
    x = (faces.astype(np.float32) / 255 - hs.MEAN) / hs.STD
    s = x.mean(axis=(1, 2)) @ W.T + b
    e = np.exp(s[:, :8] - s[:, :8].max(1, keepdims=True))
    return e / e.sum(1, keepdims=True), (s[:, 8:10] if s.shape[1] == 10 else None)


@pytest.mark.parametrize("n_out", [8, 10])
def test_hsemotion_onnx_outputs(tmp_path, monkeypatch, n_out):
    folder = tmp_path / "emotion" / "hsemotion"
    folder.mkdir(parents=True)
    W, b = write_tiny_onnx(folder / hs.MODEL_FILE, n_out)
    monkeypatch.setenv("EMOFORGE_MODELS", str(tmp_path))
    model = hs.HSEmotion()
    faces = np.random.default_rng(1).integers(0, 256, (5, 224, 224, 3), dtype=np.uint8)
    probs, va = model.predict(faces)
    ref_p, ref_va = expected(faces, W, b)
    np.testing.assert_allclose(probs, ref_p, atol=1e-5)
    assert probs.shape == (5, 8) and model.classes[4] == "happy"
    if n_out == 10:
        np.testing.assert_allclose(va, ref_va, atol=1e-4)
    else:
        assert va is None

    analyzer = EmotionAnalyzer(EmotionConfig(backend="hsemotion", smoothing_sigma_frames=0), None)
    analyzer.setup()
    track = DecodedTrack(frames=faces, audio=np.zeros(5 * 640, np.float32),
                         landmarks=np.full((5, 68, 2), np.nan, np.float32),
                         mouth_open=np.zeros(5, np.float32), row={"track_id": "t", "shard": 0})
    result = analyzer.analyze(track, {})
    mean = np.asarray(result.track["emotion_probs_mean"])
    assert result.track["emotion_label"] == hs.HSEMOTION_CLASSES[int(mean.argmax())]
    assert ("emotion_valence_mean" in result.track) == (n_out == 10)


def test_missing_model_names_path_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOFORGE_MODELS", str(tmp_path))
    with pytest.raises(MissingWeightsError, match="emotion/hsemotion/enet_b0_8_best_afew.onnx"):
        hs.HSEmotion()
