"""Loose face crops of large faces: the same geometry as a direct warp, without aliasing."""

from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from pipeline.stages.faces.crop import CropSpec, LooseCropper
from pipeline.stages.faces.tracking import FaceTrack, Observation
from pipeline.media import VideoFrame

W, H = 1920, 1080


def _loose_crop(image: np.ndarray, box: np.ndarray):
    """The loose crop LooseCropper keeps for one frame with a face at `box`."""
    ob = Observation(0, 0.0, box.astype(np.float32), np.zeros((68, 2), np.float32), 1.0)
    track = FaceTrack(key=0, obs={0: ob})
    LooseCropper(CropSpec(), 25.0)(track, VideoFrame(0, 0.0, image), ob)
    return track.crops[0][1]


def _direct(image: np.ndarray, affine: np.ndarray, size: int) -> np.ndarray:
    return cv2.warpAffine(image, affine, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


@pytest.mark.parametrize("face_px", [170, 500, 900])
def test_large_face_keeps_the_direct_warps_geometry(face_px):
    # A smooth pattern (period 160 px, slopes up to 3 levels a px): a half-pixel error in the
    # reduced path's coordinates would move it by 2-5 levels.
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    pattern = 128 + 60 * np.sin(2 * np.pi * x / 160) + 60 * np.cos(2 * np.pi * (x + y) / 230)
    image = np.repeat(np.clip(pattern, 0, 255).astype(np.uint8)[..., None], 3, 2)
    box = np.array([900 - face_px / 2, 560 - face_px / 2, 900 + face_px / 2, 560 + face_px / 2])
    loose = _loose_crop(image, box)  # 170 px: 1.2x (no halving), 500 px: 3.5x, 900 px: 6.3x
    direct = _direct(image, loose.affine, loose.image.shape[0])
    diff = np.abs(loose.image.astype(np.float64) - direct).max(2)
    # compare where the crop shows the frame, not where both pad it (the square is 1350 and
    # 2430 px: it overhangs the frame, whose edge each pads its own way)
    size = loose.image.shape[0]
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    a = np.vstack([loose.affine, [0, 0, 1]]).astype(np.float64)
    sx, sy, _ = np.linalg.inv(a) @ np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
    inside = ((sx > 16) & (sx < W - 16) & (sy > 16) & (sy < H - 16)).reshape(size, size)
    assert inside.mean() > 0.3
    # measured 0.23 / 0.37 mean, 1 / 2 max; with the reduced pixels' centres off by half a
    # pixel (at the region's corner instead of the block's centre): 1.19 / 3.54 mean
    assert diff[inside].mean() < 0.6 and diff[inside].max() <= 3, (diff[inside].mean(),
                                                                   diff[inside].max())


def test_large_face_fine_detail_is_averaged_not_aliased():
    # One-pixel stripes under a 500 px face: reduced 3.5x they average to mid grey; sampled
    # bilinearly (what cv2.warpAffine does even with INTER_AREA) they alias into bands.
    stripes = (np.arange(W) % 2 * 255).astype(np.uint8)
    image = np.repeat(np.tile(stripes, (H, 1))[..., None], 3, 2)
    box = np.array([650.0, 310.0, 1150.0, 810.0])
    loose = _loose_crop(image, box)
    aliased = _direct(image, loose.affine, loose.image.shape[0])
    assert aliased.std() > 40  # the failure this guards against, measured 74
    assert loose.image.std() < 12 and abs(loose.image.mean() - 127.5) < 4, (  # measured 0, 128
        loose.image.std(), loose.image.mean())


def test_small_face_is_sampled_directly():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    box = np.array([900.0, 500.0, 1000.0, 600.0])  # 100 px face: the loose crop enlarges it
    loose = _loose_crop(image, box)
    np.testing.assert_array_equal(loose.image, _direct(image, loose.affine, loose.image.shape[0]))


def test_streamed_crops_equal_the_whole_track_at_once(tmp_path):
    """A 29.97 fps clip with a face that moves, is hidden for 6 frames and returns: flushing
    every 10 grid frames (loose crops freed as it goes) writes the same crop frames and geometry
    as keeping every loose crop until the end."""
    from faces_support import background, face_patch, paste

    from pipeline import media
    from pipeline.stages.faces.crop import crop_geometry
    from pipeline.models.faces import load_face_backend
    from pipeline.stages.faces.tracking import Tracker, TrackerConfig
    from pipeline.persons.cluster import THRESHOLDS

    fps = 30000 / 1001
    patch, _ = face_patch("single_face.jpg", 120)
    frames = []
    for i in range(130):
        f = background(320, 240)
        if not 60 <= i < 66:  # hidden: the track misses these frames and interpolates them
            paste(f, patch, 40 + i, 60 + int(15 * np.sin(i / 9)))
        frames.append(VideoFrame(i, i / fps, f))
    backend = load_face_backend("mediapipe")
    spec = CropSpec()
    results = {}
    for flush in (10, 10**9):
        cropper = LooseCropper(spec, fps, str(tmp_path / f"partial{flush}"), flush_frames=flush)
        tracker = Tracker(backend, TrackerConfig(identity_threshold=THRESHOLDS["dlib"]), cropper)
        kept = 0
        for frame in frames:
            tracker.step(frame)
            kept = max(kept, sum(crop is not None for t in tracker.active
                                 for _, crop in t.crops.values()))
        (track,) = tracker.finish()
        assert track.last_index - track.first_index >= 120 and 60 not in track.obs
        geometry = crop_geometry(track, spec, fps)
        path = str(tmp_path / f"crop{flush}.mp4")
        audio = np.zeros(len(geometry.pts_s) * 640, np.float32)
        sharpness = cropper.finish(track, geometry, audio, path)
        results[flush] = (geometry, sharpness, cropper, kept,
                          np.stack([f.image for f in media.iter_frames(path)]))
    (g_stream, s_stream, _, kept_stream, v_stream), (g_once, s_once, _, kept_once, v_once) = (
        results[10], results[10**9])
    assert len(v_stream) == len(v_once) == len(g_once.pts_s) == 109  # 4.34 s at 25 fps
    np.testing.assert_array_equal(v_stream, v_once)
    assert s_stream == s_once
    for name in ("pts_s", "source_index", "boxes", "affines", "landmarks"):
        np.testing.assert_array_equal(getattr(g_stream, name), getattr(g_once, name))
    # memory: loose crops held at once (at 256 px, 0.44 MB each)
    assert kept_once == 109 and kept_stream <= 10 + 2 * 7 + 3, (kept_stream, kept_once)
    assert not list((tmp_path / "partial10").iterdir())  # the finished clip moved out


def test_sharpness_is_the_variance_of_the_laplacian():
    """laplacian_variance against the definition: the 4-neighbour Laplacian of the gray image
    (OpenCV's BGR2GRAY weights on RGB input's reversed order, border reflected as OpenCV's
    default BORDER_REFLECT_101), its population variance, in float64."""
    from pipeline.models.geometry import laplacian_variance

    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)
    p = np.pad(gray, 1, mode="reflect")  # numpy's "reflect" is OpenCV's REFLECT_101
    lap = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * gray
    assert laplacian_variance(image) == pytest.approx(lap.var(), rel=1e-9)


@pytest.mark.parametrize("center,side", [((-400.0, -300.0), 600.0), ((2400.0, 540.0), 1300.0)])
def test_square_outside_the_frame_repeats_the_nearest_edge(center, side):
    """A loose square that misses the frame shows what a replicate-border warp shows: the
    nearest corner pixel (above left of the frame), the last column resampled (right of it; a
    smooth pattern down the rows, constant along them)."""
    from pipeline.stages.faces.crop import loose_crop

    rng = np.random.default_rng(2)
    if center[0] < 0:
        image = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    else:
        rows = 128 + 60 * np.sin(2 * np.pi * np.arange(H) / 160)
        image = np.repeat(np.repeat(rows[:, None, None], W, 1), 3, 2).astype(np.uint8)
    crop, affine = loose_crop(image, center, side, 384)
    assert crop.shape == (384, 384, 3)
    expected = _direct(image, affine, 384)
    if center[0] < 0:
        assert (crop == image[0, 0]).all() and (expected == image[0, 0]).all()
    else:
        assert np.abs(crop.astype(int) - expected).mean() < 1
        assert crop.std() > 20  # the pattern is there, not one repeated pixel
