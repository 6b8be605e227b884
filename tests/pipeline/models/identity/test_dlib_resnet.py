"""dlib's face descriptor ResNet rebuilt from its weight file (on onnxruntime and on torch) against
dlib itself, on real photos."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from jobs.media.sources import MediaSourceError, media_file
from pipeline.models.registry import MissingWeightsError, resolve

dlib = pytest.importorskip("dlib")
cv2 = pytest.importorskip("cv2")

from pipeline.models.identity.dlib_resnet import (
    ENGINES,
    embed_chips,
    load_dlib_resnet,
    parse_dlib_resnet,
    parse_dlib_resnet_bytes,
)
from pipeline.models.identity.dlib import IDENTITY_SPEC, LANDMARKS68_SPEC

IMAGES = ("single_face.jpg", "multi_face.jpg", "happy.jpg", "anger.jpg")
THRESHOLD = 0.6  # dlib's same-person euclidean threshold


def _paths():
    try:
        return resolve(IDENTITY_SPEC), resolve(LANDMARKS68_SPEC)
    except MissingWeightsError as exc:
        pytest.skip(f"dlib weights unavailable: {exc}")


def _rgb(name: str, scale: float = 1.0) -> np.ndarray:
    try:
        path = media_file(name)
    except MediaSourceError as exc:
        pytest.skip(f"real media unavailable: {exc}")
    img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    if scale != 1.0:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img)


class Dlib:
    """dlib's HOG detector, 68-point landmarks and face_recognition_model_v1."""

    def __init__(self):
        weights, landmarks = _paths()
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(landmarks))
        self.recognizer = dlib.face_recognition_model_v1(str(weights))

    def chips(self, img: np.ndarray) -> tuple[list[np.ndarray], list[tuple[float, float]]]:
        """Aligned 150x150 chips of every detected face (left to right) and their box centres."""
        dets = sorted(self.detector(img, 1), key=lambda d: d.left())
        chips = [dlib.get_face_chip(img, self.predictor(img, d), size=150, padding=0.25)
                 for d in dets]
        centres = [((d.left() + d.right()) / 2, (d.top() + d.bottom()) / 2) for d in dets]
        return chips, centres

    def descriptor(self, chip: np.ndarray) -> np.ndarray:
        return np.asarray(self.recognizer.compute_face_descriptor(chip), np.float32)


@pytest.fixture(scope="module")
def ref():
    return Dlib()


@pytest.fixture(scope="module", params=ENGINES)
def model(request):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ~15 ms a chip; more threads only contend on a busy machine
    try:
        yield load_dlib_resnet(_paths()[0], engine=request.param, threads=1)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def faces(ref):
    """{image name: (chips uint8[N,150,150,3], box centres, dlib's descriptors float32[N,128])}"""
    out = {}
    for name in IMAGES:
        chips, centres = ref.chips(_rgb(name))
        assert chips, f"no face detected in {name}"
        out[name] = (np.stack(chips), centres, np.stack([ref.descriptor(c) for c in chips]))
    return out


def _distances(d: np.ndarray) -> dict[tuple[int, int], float]:
    return {(i, j): float(np.linalg.norm(d[i] - d[j]))
            for i, j in itertools.combinations(range(len(d)), 2)}


def test_descriptors_match_dlib(model, faces):
    chips = np.concatenate([c for c, _, _ in faces.values()])
    expected = np.concatenate([d for _, _, d in faces.values()])
    assert len(chips) == 7  # 1 + 4 + 1 + 1 faces
    got = embed_chips(model, chips)
    assert got.dtype == np.float32 and got.shape == (7, 128)
    # Measured 4e-7 (float32 rounding; the descriptors have norms of about 1.4).
    assert np.abs(got - expected).max() < 1e-4
    # One chip at a time gives the same thing as the batch.
    single = np.concatenate([embed_chips(model, c) for c in chips])
    np.testing.assert_allclose(single, got, atol=1e-5)


def test_different_people_stay_apart(model, faces):
    chips, _, expected = faces["multi_face.jpg"]
    assert len(chips) == 4
    got, want = _distances(embed_chips(model, chips)), _distances(expected)
    for pair, d in got.items():
        assert abs(d - want[pair]) < 1e-4, (pair, d, want[pair])
    # Five of the six pairs of these four people are 0.75-0.92 apart. dlib itself puts the
    # woman in the centre-right and the young man behind her at 0.51 (0.49-0.52 with other
    # detector/landmark settings), so that pair only needs to stay as far apart as dlib has it.
    ordered = sorted(got.values())
    assert ordered[0] > 0.45
    assert all(d > THRESHOLD for d in ordered[1:]), got


def test_same_face_from_rescaled_image_stays_close(model, ref, faces):
    # Measured: 0.01-0.11 to the same face, 0.51-0.92 to the others.
    for name in ("single_face.jpg", "multi_face.jpg"):
        chips, centres, _ = faces[name]
        base = embed_chips(model, chips)
        for scale in (0.8, 1.25):
            scaled_chips, scaled_centres = ref.chips(_rgb(name, scale))
            # every face is found again, each matched to a different face of the original
            assert len(scaled_centres) == len(centres), (name, scale, len(scaled_centres))
            scaled = embed_chips(model, np.stack(scaled_chips))
            matched = []
            for k, (x, y) in enumerate(scaled_centres):
                # the same face: the nearest box centre in the original image
                i = int(np.argmin([np.hypot(x / scale - cx, y / scale - cy) for cx, cy in centres]))
                matched.append(i)
                d = float(np.linalg.norm(scaled[k] - base[i]))
                assert d < THRESHOLD, (name, scale, k, d)
                others = [float(np.linalg.norm(scaled[k] - base[j]))
                          for j in range(len(base)) if j != i]
                assert all(d < o for o in others), (name, scale, k, d, others)
            assert sorted(matched) == list(range(len(centres))), (name, scale, matched)


def test_parse_is_fast_and_complete():
    start = time.perf_counter()
    w = parse_dlib_resnet(_paths()[0])
    assert time.perf_counter() - start < 3.0
    assert len(w.convs) == len(w.affines) == 29
    assert w.convs[0]["weight"].shape == (32, 3, 7, 7) and w.convs[0]["padding"] == 0
    assert w.fc_weight.shape == (256, 128)
    assert w.loss_threshold == pytest.approx(0.6) and w.loss_margin == pytest.approx(0.04)
    assert all(100 < m < 130 for m in w.mean_rgb)


def test_not_this_network_raises_value_error(tmp_path):
    weights, _ = _paths()
    data = weights.read_bytes()
    cut = tmp_path / "truncated.dat"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="file ends while reading"):
        parse_dlib_resnet(cut)
    with pytest.raises(ValueError, match="unexpected bytes after the network"):
        parse_dlib_resnet_bytes(data + b"\0")
    with pytest.raises(ValueError, match="dlib_face_recognition_resnet_model_v1"):
        parse_dlib_resnet_bytes(bytes(range(256)) * 64, "garbage")
    with pytest.raises(ValueError, match="file ends"):
        parse_dlib_resnet_bytes(b"")
    # Another dlib DNN (the MMOD face detector): named by its loss layer.
    mmod = weights.parent / "mmod_human_face_detector.dat"
    if mmod.is_file():
        with pytest.raises(ValueError, match="expected .*'loss_metric_2', found 'loss_mmod_'"):
            parse_dlib_resnet(mmod)


def test_embed_rejects_wrong_chips(model):
    with pytest.raises(ValueError, match="150"):
        embed_chips(model, np.zeros((112, 112, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        embed_chips(model, np.zeros((150, 150, 3), np.float32))


def test_unknown_engine_is_named():
    from pipeline.models.identity.dlib_resnet import DescriptorNet

    with pytest.raises(ValueError, match="unknown engine 'tensorflow'.*onnxruntime"):
        DescriptorNet(None, engine="tensorflow")
