"""Face-crop clips: loose crops kept while tracking, then aligned, smoothed crops on the 25 fps grid.

While the clip is decoded (once), each track keeps, for the source frames nearest to its 25 fps
grid times, an axis-aligned loose crop around the face (1.5x the final crop's extent, at the final
crop's pixel scale): about 0.44 MB per grid frame at 256 px. The crop geometry (centre, side,
roll) is smoothed over time and each final crop is cut from its loose crop. The per-frame affine
(source px -> crop px) is returned so crop and source coordinates convert.

Memory stays bounded however long a track is: a CropStream renders and encodes the grid frames
that later observations can no longer change (their smoothing window lies before the track's
newest observation) every `flush_frames` grid frames, and frees their loose crops. The frames
come out the same as rendering the finished track at once (`emoforge bench memory`: the faces
stage on a 60 s 720p face clip peaks at 842 MiB, 1,343 MiB with every crop kept to the end).

Large faces are shrunk without aliasing: bilinear sampling only holds up to a 2x reduction, so
the face region is first halved by 2x2 pixel averaging until at most 2x remains (a 1080p face of
500 px: two halvings, about 0.3 ms). The loose crop needs no rotation, so where it shrinks it is
cut with cv2.resize rather than cv2.warpAffine (`loose_crop`): the faces stage on the bench's 20 s
720p talking head takes 0.88x the CPU, and the final crops stay within 0.5 dB PSNR of the warped
ones' distance to a 4x-supersampled reference (42.2 -> 41.7 dB for a 495 px face at 720p).
"""

from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass

import numpy as np

from catalog.contract import AUDIO_RATE, CROP_FPS
from pipeline.media import VideoFrame, VideoWriter
from pipeline.models.geometry import (
    CropSpec,
    apply_affine,
    crop_squares,
    invert_affine,
    laplacian_variance,
    square_affine,
)
from pipeline.models.signal import gaussian_smooth, interpolate, smoothing_radius
from pipeline.stages.faces.tracking import FaceTrack, Observation

LOOSE_MARGIN = 1.5


@dataclass
class LooseCrop:
    image: np.ndarray  # uint8[L,L,3]
    affine: np.ndarray  # float32[2,3] source px -> loose px


def loose_crop(image: np.ndarray, center: tuple[float, float], side: float,
               size: int) -> tuple[np.ndarray, np.ndarray]:
    """The axis-aligned square of `side` source px around `center`, as uint8[size,size,3], and
    float32[2,3] source px -> its px. Where it enlarges (side < size): a bilinear warp. Where it
    shrinks: the in-frame part of the square, halved by 2x2 averaging until at most 2x is left,
    resized bilinearly (cv2.resize: about a third of the cost of the same warp) and padded to
    the square by repeating its edge pixels (as a warp's BORDER_REPLICATE does); the affine
    gives the exact position and scale of what was resized (the square's edges are placed to
    within half a px)."""
    import cv2  # heavy: loaded on use

    h, w = image.shape[:2]
    reduction = side / size
    step = 2 ** max(0, math.floor(math.log2(max(reduction, 1.0))))
    if reduction < 1 or w < step or h < step:
        m = square_affine(center, side, 0.0, size)
        return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE), m
    scale = size / side  # crop px per source px
    spans = []
    for c, extent in ((center[0], w), (center[1], h)):
        lo = c - side / 2
        a = min(max(math.floor(lo), 0), extent - step)
        b = max(min(math.ceil(lo + side), extent), a + step)
        b -= (b - a) % step  # whole 2x2 blocks at every halving
        out = min(size, max(1, round((b - a) * scale)))
        pad = min(max(round((a - lo) * scale), 0), size - out)
        spans.append((a, b, out, pad))
    (xa, xb, ow, pad_x), (ya, yb, oh, pad_y) = spans
    region = image[ya:yb, xa:xb]
    while region.shape[1] >= 2 * ow and region.shape[0] >= 2 * oh and step > 1:
        region = cv2.resize(region, (region.shape[1] // 2, region.shape[0] // 2),
                            interpolation=cv2.INTER_AREA)
        step //= 2
    if region.shape[:2] != (oh, ow):
        region = cv2.resize(region, (ow, oh), interpolation=cv2.INTER_LINEAR)
    if (ow, oh) != (size, size):
        region = cv2.copyMakeBorder(region, pad_y, size - oh - pad_y, pad_x, size - ow - pad_x,
                                    cv2.BORDER_REPLICATE)
    # cv2.resize keeps pixel centres aligned: region px u samples source (u + 0.5) / a - 0.5
    ax, ay = ow / (xb - xa), oh / (yb - ya)
    m = np.array([[ax, 0, ax * (0.5 - xa) - 0.5 + pad_x], [0, ay, ay * (0.5 - ya) - 0.5 + pad_y]],
                 np.float32)
    return np.ascontiguousarray(region), m


class LooseCropper:
    """Tracker callback: keeps a loose crop for each source frame nearest to a grid time. With a
    `partial_dir`, each track's crops stream into a CropStream there (one file per track,
    flushed every `flush_frames` grid frames); `finish` completes a track's clip."""

    def __init__(self, spec: CropSpec, source_fps: float, partial_dir: str | None = None,
                 audio_rate: int = AUDIO_RATE, flush_frames: int = 250):
        self.spec, self.source_fps = spec, source_fps
        self.half_frame = 0.5 / max(source_fps, 1e-3) + 1e-6
        self.loose_px = round(spec.size * LOOSE_MARGIN)
        self.partial_dir, self.audio_rate, self.flush_frames = partial_dir, audio_rate, flush_frames
        self.streams: dict[int, CropStream] = {}  # by track key

    def needed(self, start_s: float, pts_s: float) -> bool:
        k = round((pts_s - start_s) * CROP_FPS)
        return any(abs(start_s + j / CROP_FPS - pts_s) <= self.half_frame
                   for j in (k - 1, k, k + 1) if j >= 0)

    def __call__(self, track: FaceTrack, frame: VideoFrame, ob: Observation | None) -> None:
        start = track.obs[track.first_index].pts_s
        if frame.index in track.crops or not self.needed(start, frame.pts_s):
            return
        box = (ob or track.last).box
        side = float(max(box[2] - box[0], box[3] - box[1])) * self.spec.scale * LOOSE_MARGIN
        center = (float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2)
        image, m = loose_crop(frame.image, center, side, self.loose_px)
        track.crops[frame.index] = (frame.pts_s, LooseCrop(image, m))
        if self.partial_dir is not None:
            stream = self.stream(track)
            stream.crops_seen += 1
            if stream.crops_seen % self.flush_frames == 0:
                stream.flush(track)

    def stream(self, track: FaceTrack) -> CropStream:
        if self.partial_dir is None:
            raise ValueError("LooseCropper without a partial_dir writes no clips")
        if track.key not in self.streams:
            os.makedirs(self.partial_dir, exist_ok=True)
            path = os.path.join(self.partial_dir, f"{uuid.uuid4().hex}.mp4")
            self.streams[track.key] = CropStream(self.spec, self.source_fps, path, self.audio_rate)
        return self.streams[track.key]

    def finish(self, track: FaceTrack, geometry: CropGeometry, audio: np.ndarray, path: str) -> float:
        """Complete the track's clip (see CropStream.finish), move it to `path` and return its
        sharpness."""
        stream = self.stream(track)
        sharpness = stream.finish(track, geometry, audio)
        os.replace(stream.path, path)
        del self.streams[track.key]
        return sharpness

    def discard_all(self) -> None:
        """Delete the clips of tracks that were not finished (skipped, failed, or a clip that
        failed midway)."""
        for stream in self.streams.values():
            stream.discard()
        self.streams.clear()


@dataclass
class CropGeometry:
    """A track on the 25 fps grid (K frames), without the pixels.

    pts_s: float64[K] source pts used per grid frame; source_index: int64[K]; boxes: float32[K,4]
    source px; points68: float32[K,68,2] source px; landmarks: float32[K,68,2] crop px;
    affines: float32[K,2,3] source -> crop; det_score: float32[K] (NaN between detections);
    mesh: float16[K,478,3] crop px or None; start_s / end_s: source pts span; start_frame /
    end_frame: source frames [start, end)."""

    pts_s: np.ndarray
    source_index: np.ndarray
    boxes: np.ndarray
    points68: np.ndarray
    landmarks: np.ndarray
    affines: np.ndarray
    det_score: np.ndarray
    mesh: np.ndarray | None
    start_s: float
    end_s: float
    start_frame: int
    end_frame: int


def crop_geometry(track: FaceTrack, spec: CropSpec, source_fps: float) -> CropGeometry:
    """Aligned, smoothed per-grid-frame geometry of a track, as observed so far."""
    known = np.array(sorted(track.obs), np.int64)
    obs = [track.obs[i] for i in known]
    pts_known = np.array([o.pts_s for o in obs], np.float64)
    start_s = float(pts_known[0])
    end_s = float(pts_known[-1] + 1.0 / source_fps)
    count = max(1, math.ceil((end_s - start_s) * CROP_FPS - 1e-6))
    grid_t = start_s + np.arange(count) / CROP_FPS
    # source frames of the span (missed ones interpolated), and the nearest one per grid time
    span = np.arange(known[0], known[-1] + 1)
    span_pts = np.interp(span, known, pts_known)
    for idx, (pts, _) in track.crops.items():
        if known[0] <= idx <= known[-1]:
            span_pts[idx - known[0]] = pts
    pick = np.abs(span_pts[None, :] - grid_t[:, None]).argmin(1)
    source_index = span[pick]
    boxes = interpolate(source_index, known, np.array([o.box for o in obs])).astype(np.float32)
    points68 = interpolate(source_index, known, np.array([o.points68 for o in obs])).astype(np.float32)
    det = {o.index: o.det_score for o in obs}
    det_score = np.array([det.get(int(i), np.nan) for i in source_index], np.float32)
    # crop geometry, smoothed over the grid
    centers, sides, angles = crop_squares(boxes, points68, spec.scale)
    centers = gaussian_smooth(centers, spec.smooth_sigma, ends="hold")
    sides = gaussian_smooth(sides.astype(np.float64), spec.smooth_sigma, ends="hold")
    angles = gaussian_smooth(angles, spec.smooth_sigma, ends="hold")
    affines = np.stack([square_affine(tuple(c), float(s), float(a), spec.size)
                        for c, s, a in zip(centers, sides, angles)])
    landmarks = np.stack([apply_affine(affines[k], points68[k]) for k in range(count)])
    mesh = None
    if obs[0].mesh is not None:
        mesh_src = interpolate(source_index, known, np.array([o.mesh for o in obs], np.float32))
        mesh = np.empty_like(mesh_src, dtype=np.float16)
        for k in range(count):
            scale = math.hypot(affines[k, 0, 0], affines[k, 1, 0])
            mesh[k, :, :2] = apply_affine(affines[k], mesh_src[k, :, :2])
            mesh[k, :, 2] = mesh_src[k, :, 2] * scale
    return CropGeometry(span_pts[pick], source_index, boxes, points68,
                        landmarks.astype(np.float32), affines.astype(np.float32), det_score, mesh,
                        start_s, end_s, int(known[0]), int(known[-1]) + 1)


def cut_crop(loose: LooseCrop, affine: np.ndarray, size: int) -> np.ndarray:
    """uint8[size,size,3]: the crop with `affine` (source px -> crop px) cut from a loose crop."""
    import cv2  # heavy: loaded on use

    full = np.vstack([affine.astype(np.float64), [0, 0, 1]])
    inv_loose = np.vstack([invert_affine(loose.affine).astype(np.float64), [0, 0, 1]])
    return cv2.warpAffine(loose.image, (full @ inv_loose)[:2], (size, size),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class CropStream:
    """One track's face-crop clip, written while the track is followed (see the module
    docstring): `flush` writes the grid frames that can no longer change and frees their loose
    crops; `finish` writes the rest and closes the file with its audio."""

    def __init__(self, spec: CropSpec, source_fps: float, path: str, audio_rate: int):
        self.spec, self.source_fps, self.path, self.audio_rate = spec, source_fps, path, audio_rate
        self.writer = None
        self.crops_seen = 0  # loose crops the track has kept (flush every flush_frames of them)
        self.written = 0
        self.sharpness: list[float] = []  # laplacian_variance per written grid frame

    def flush(self, track: FaceTrack) -> None:
        geometry = crop_geometry(track, self.spec, self.source_fps)
        # grid frame k is final once its smoothing window ends before the newest observation's
        # grid frame (count - 1), so no later interpolation or edge padding reaches it
        self._write(track, geometry, len(geometry.pts_s) - 1 - smoothing_radius(self.spec.smooth_sigma) - 1)

    def finish(self, track: FaceTrack, geometry: CropGeometry, audio: np.ndarray) -> float:
        """Write the remaining frames of the finished track's `geometry`, close the clip with
        `audio` (mono float32 at audio_rate) and return the track's sharpness (the median
        laplacian_variance of its crops)."""
        self._write(track, geometry, len(geometry.pts_s))
        self.writer.close(audio)
        return float(np.median(self.sharpness))

    def discard(self) -> None:
        """Close and delete a clip that will not be kept."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if os.path.exists(self.path):
            os.remove(self.path)

    def _write(self, track: FaceTrack, geometry: CropGeometry, stop: int) -> None:
        if stop <= self.written:
            return
        if self.writer is None:
            # one encoder thread: the faces worker holds one core (about 0.7x the CPU of
            # libx264's own thread count, the same file size and quality)
            self.writer = VideoWriter(self.path, self.spec.size, self.spec.size, CROP_FPS,
                                      self.audio_rate, threads=1)
        keys = np.array([key for key, (_, crop) in track.crops.items() if crop is not None],
                        np.int64)
        for k in range(self.written, stop):
            if len(keys):  # the loose crop nearest to the grid frame's source frame
                loose = track.crops[int(keys[np.abs(keys - geometry.source_index[k]).argmin()])][1]
                image = cut_crop(loose, geometry.affines[k], self.spec.size)
            else:
                image = np.zeros((self.spec.size, self.spec.size, 3), np.uint8)
            self.writer.write(image)
            self.sharpness.append(laplacian_variance(image))
        self.written = stop
        if stop < len(geometry.source_index):  # later frames use loose crops from here on
            first_needed = int(geometry.source_index[stop]) - 1
            for key, (pts, crop) in list(track.crops.items()):
                if key < first_needed and crop is not None:
                    track.crops[key] = (pts, None)  # the pts still place the grid exactly
