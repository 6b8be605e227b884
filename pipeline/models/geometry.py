"""Face geometry helpers: boxes, rotated square regions as affines, 68-point indices, mouth opening.

Boxes are float32[4] x0, y0, x1, y1 in pixels; affines are float32[2,3] mapping source pixels to
the pixels of a square crop (`cv2.warpAffine` convention). CropSpec is the one face-crop geometry
the faces stage, the generator and the evaluator share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# MediaPipe 468-point mesh vertex for each iBUG 68-point landmark (jaw 0-16, brows 17-26,
# nose 27-35, eyes 36-47, outer lips 48-59, inner lips 60-67), image-left first.
MESH_TO_68 = np.array([
    162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389,
    71, 63, 105, 66, 107, 336, 296, 334, 293, 301,
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,
    78, 82, 13, 312, 308, 317, 14, 87,
], dtype=np.int64)


# the face-crop geometry's defaults, and the portrait crop (head and shoulders)
CROP_SIZE = 256  # px: the crop's side
CROP_SCALE = 1.8  # the crop's side over the face box side (brows to chin)
CROP_SMOOTH_SIGMA = 2.0  # 25 fps frames: Gaussian smoothing of centre, side and roll
PORTRAIT_SIZE = 512
PORTRAIT_SCALE = 3.0


@dataclass(frozen=True)
class CropSpec:
    """The face-crop geometry: a square crop of `size` px whose side is `scale` times the face
    box side, its centre, side and roll smoothed over time by a Gaussian of `smooth_sigma`
    25 fps frames (pipeline.models.signal.gaussian_smooth with the ends held)."""

    size: int = CROP_SIZE
    scale: float = CROP_SCALE
    smooth_sigma: float = CROP_SMOOTH_SIGMA

    @classmethod
    def resolve(cls, size: int = CROP_SIZE, scale: float = CROP_SCALE,
                smooth_sigma: float = CROP_SMOOTH_SIGMA, portrait: bool = False) -> CropSpec:
        """The spec a faces config asks for: `portrait` is the wider head-and-shoulders crop
        (PORTRAIT_SIZE and PORTRAIT_SCALE, whatever `size` and `scale` say)."""
        if portrait:
            return cls(PORTRAIT_SIZE, PORTRAIT_SCALE, smooth_sigma)
        return cls(size, scale, smooth_sigma)

    @classmethod
    def from_faces_config(cls, faces: dict[str, Any]) -> CropSpec:
        """From a faces stage config as a catalog manifest records it (missing keys: defaults)."""
        return cls.resolve(int(faces.get("crop_size", CROP_SIZE)),
                           float(faces.get("crop_scale", CROP_SCALE)),
                           float(faces.get("smooth_sigma", CROP_SMOOTH_SIGMA)),
                           bool(faces.get("portrait", False)))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a: float[N,4], b: float[M,4] -> float[N,M] IoU."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def square_affine(center: tuple[float, float], side: float, angle: float, out: int) -> np.ndarray:
    """float32[2,3] mapping a square of `side` source px centred at `center`, rotated by `angle`
    radians (the face's roll; the crop comes out upright), onto an out x out crop."""
    scale = out / max(side, 1e-6)
    c, s = math.cos(-angle) * scale, math.sin(-angle) * scale
    cx, cy = center
    # crop = R(-angle) * scale * (src - center) + out/2
    return np.array(
        [[c, -s, out / 2 - (c * cx - s * cy)], [s, c, out / 2 - (s * cx + c * cy)]], np.float32
    )


def invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of a float[2,3] affine (closed form: [A^-1 | -A^-1 t])."""
    (a, b, tx), (c, d, ty) = np.asarray(m, np.float64)
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    return np.array([[ia, ib, -(ia * tx + ib * ty)], [ic, id_, -(ic * tx + id_ * ty)]], np.float32)


def apply_affine(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """points float[N,2] -> float32[N,2] through the affine m (2x3)."""
    p = np.asarray(points, np.float64).reshape(-1, 2)
    return (p @ np.asarray(m, np.float64)[:, :2].T + np.asarray(m, np.float64)[:, 2]).astype(
        np.float32
    )


def points_box(points: np.ndarray) -> np.ndarray:
    """Tight box float32[4] around float[N,2] points."""
    p = np.asarray(points)[:, :2]
    return np.array([p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()], np.float32)


def face_box_from_68(points68: np.ndarray) -> np.ndarray:
    """A detector-like face box (brows to chin, jaw width) from 68 landmarks, float32[4]."""
    x0, y0, x1, y1 = points_box(points68)
    brow_to_chin = y1 - y0
    return np.array([x0, y0 - 0.12 * brow_to_chin, x1, y1], np.float32)


def eye_angle(points68: np.ndarray) -> float:
    """Roll of the eye line in radians (image-left eye to image-right eye)."""
    left = points68[36:42].mean(0)
    right = points68[42:48].mean(0)
    return math.atan2(right[1] - left[1], right[0] - left[0])


def mouth_open(points68: np.ndarray) -> float:
    """Inner-lip gap (62 to 66) over mouth width (48 to 54); 0 closed, about 0.3-0.6 wide open."""
    gap = float(np.linalg.norm(points68[66] - points68[62]))
    width = float(np.linalg.norm(points68[54] - points68[48]))
    return gap / width if width > 1e-6 else float("nan")


def laplacian_variance(image: np.ndarray) -> float:
    """Sharpness of one RGB crop uint8[H,W,3]: variance of the Laplacian of its gray image
    (the faces stage's `sharpness` of each crop). cv2.meanStdDev accumulates in float64: 0.2 ms
    a 256 px crop where numpy's float32 .var() took 0.75 (values equal to 1e-7 relative)."""
    import cv2  # heavy: loaded on use

    laplacian = cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_32F)
    return float(cv2.meanStdDev(laplacian)[1][0, 0]) ** 2


def crop_squares(boxes: np.ndarray, points68: np.ndarray,
                 scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The face-crop square of each frame: boxes float[K,4] and points68 float[K,68,2] (source
    px) -> centres float64[K,2] (box centre), sides float64[K] (the box's longer side x `scale`,
    source px) and angles float64[K] (eye-line roll, radians, unwrapped over K). The faces stage
    smooths these over time before `square_affine`; one photo uses them as they are."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * scale
    angles = np.unwrap(np.array([eye_angle(p) for p in np.asarray(points68)], np.float64))
    return centres, sides, angles


def reduced_region(image: np.ndarray, center: tuple[float, float], side: float,
                   reduction: float) -> tuple[np.ndarray, np.ndarray]:
    """For sampling the square (`side` px around `center`) of `image` at `reduction` source px
    per output px: the part of the image around it, halved by 2x2 averaging until at most a 2x
    reduction is left, and float64[3,3] mapping its pixels to source pixels. Where no halving is
    needed, the whole image and the identity."""
    import cv2  # heavy: loaded on use

    halvings = max(0, math.floor(math.log2(max(reduction, 1.0))))
    if halvings == 0:
        return image, np.eye(3)
    step = 2 ** halvings
    h, w = image.shape[:2]
    margin = 2 * step  # bilinear taps beyond the square's edge, in source px
    x0, y0 = (max(0, math.floor(c - side / 2) - margin) for c in center)
    x1 = min(w, math.ceil(center[0] + side / 2) + margin)
    y1 = min(h, math.ceil(center[1] + side / 2) + margin)
    x1 -= (x1 - x0) % step  # whole 2x2 blocks at every level
    y1 -= (y1 - y0) % step
    if x1 <= x0 or y1 <= y0:  # the square lies outside the image: nothing to average
        return image, np.eye(3)
    region = image[y0:y1, x0:x1]
    for _ in range(halvings):
        region = cv2.resize(region, (region.shape[1] // 2, region.shape[0] // 2),
                            interpolation=cv2.INTER_AREA)
    # reduced pixel i averages source pixels step*i .. step*i + step-1: its centre is at
    # step*i + (step-1)/2, offset by the region's corner
    offset = (step - 1) / 2
    return region, np.array([[step, 0, x0 + offset], [0, step, y0 + offset], [0, 0, 1]], np.float64)


def crop_face(image: np.ndarray, points68: np.ndarray, size: int,
              scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's face crop with the faces stage's geometry (no temporal smoothing): image
    uint8[H,W,3], points68 float[68,2] source px -> (crop uint8[size,size,3], affine
    float32[2,3] source px -> crop px, face box float32[4] source px). Large faces are halved
    first (reduced_region) so the crop does not alias; borders repeat the edge pixels."""
    import cv2  # heavy: loaded on use

    box = face_box_from_68(points68)
    centres, sides, angles = crop_squares(box[None], np.asarray(points68)[None], scale)
    center, side = (float(centres[0, 0]), float(centres[0, 1])), float(sides[0])
    affine = square_affine(center, side, float(angles[0]), size)
    source, to_source = reduced_region(image, center, side, side / size)
    matrix = (np.vstack([affine.astype(np.float64), [0, 0, 1]]) @ to_source)[:2]
    crop = cv2.warpAffine(source, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    return crop, affine, box


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression. boxes float[N,4] x0,y0,x1,y1, scores float[N] ->
    int64 indices kept, best first. mode "union" (IoU) or "min" (intersection over the smaller)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        lo = np.maximum(boxes[i, :2], boxes[rest, :2])
        hi = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
        if mode == "min":
            overlap = inter / np.maximum(np.minimum(area[i], area[rest]), 1e-9)
        else:
            overlap = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[overlap <= threshold]
    return np.array(keep, np.int64)
