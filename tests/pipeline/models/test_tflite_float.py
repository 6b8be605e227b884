"""Weight-quantized tflite rewritten to float32: LiteRT's own DEQUANTIZE values, the shipped
hybrid model's predictions on labelled photos, one XNNPACK partition."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.models.emotion import facex as emotion_facex
from pipeline.models.emotion import crop_faces
from pipeline.models.registry import resolve
from pipeline.models.tflite_float import dequantized_model

PHOTOS = ("surprise.jpg", "happy.jpg", "anger.jpg", "disgust.jpg")


@pytest.fixture(scope="module")
def facex_float() -> bytes:
    return dequantized_model(resolve(emotion_facex.SPEC))


def _ops(interp) -> list[str]:
    return [o["op_name"] for o in interp._get_ops_details()]


def test_dequantized_constants_equal_litert_dequantize(facex_float):
    """The shipped model's DEQUANTIZE ops, run by LiteRT itself (reference kernels, every tensor
    kept), give the same float kernels that the rewritten model stores as constants."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    ref = Interpreter(model_path=str(resolve(emotion_facex.SPEC)),
                      experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                      experimental_preserve_all_tensors=True)
    ref.allocate_tensors()
    ref.set_tensor(ref.get_input_details()[0]["index"], np.zeros((1, 200, 200, 3), np.float32))
    ref.invoke()
    names = {d["index"]: d["name"] for d in ref.get_tensor_details()}
    ours = Interpreter(model_content=facex_float, experimental_op_resolver_type=OpResolverType.
                       BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    ours.allocate_tensors()
    by_name = {d["name"]: d for d in ours.get_tensor_details()}
    checked = 0
    for op in ref._get_ops_details():
        if op["op_name"] != "DEQUANTIZE":
            continue
        source = names[int(op["inputs"][0])]  # the float constant keeps the quantized one's name
        expected = ref.get_tensor(int(op["outputs"][0]))
        got = ours.get_tensor(by_name[source]["index"])
        assert by_name[source]["dtype"] == np.float32
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        checked += 1
    assert checked == 15  # facex: every depthwise kernel but the first two
    assert "DEQUANTIZE" not in _ops(ours)


def test_float_facex_predicts_like_the_shipped_model(facex_float):
    """The float graph runs as one XNNPACK partition and agrees with the shipped hybrid model
    (whose int8 activation rounding is the difference) on the labelled photos' faces."""
    from jobs.media.sources import MediaSourceError

    try:
        from tests.pipeline import _face_tracks
    except ImportError:
        import _face_tracks
    try:
        tracks = [_face_tracks.photo_track(name) for name in PHOTOS]
    except MediaSourceError as exc:
        pytest.skip(f"real media unavailable: {exc}")
    faces = np.concatenate([crop_faces(t.frames[:1], t.landmarks[:1], 0.1) for t in tracks])
    fast = emotion_facex.FacexEmotion()
    shipped = emotion_facex.FacexEmotion(quantized=True)
    assert _ops(fast.interp).count("DELEGATE") == 1
    assert _ops(shipped.interp).count("DELEGATE") > 1  # hybrid convs split the graph
    got, ref = fast(faces), shipped(faces)
    assert np.abs(got - ref).max() < 0.1, np.abs(got - ref).max()
    assert (got.argmax(1) == ref.argmax(1)).all()
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)


def test_a_float_model_has_nothing_to_dequantize(tmp_path, facex_float):
    path = tmp_path / "float.tflite"
    path.write_bytes(facex_float)
    with pytest.raises(ValueError, match="no quantized constant weights"):
        dequantized_model(path)
