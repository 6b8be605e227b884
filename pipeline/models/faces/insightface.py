"""Reference faces backend: insightface buffalo_l (SCRFD, 68 and 106 landmarks) on onnxruntime.

The user places buffalo_l's files under the model root (no package ships them; non-commercial
research license): `<root>/face_detection/insightface/det_10g.onnx` and
`<root>/face_landmarks/insightface/{1k3d68,2d106det}.onnx` (ArcFace, w600k_r50.onnx, is the
identity backend in identity_arcface.py). The graphs run directly on onnxruntime (CPU, or CUDA
with onnxruntime-gpu); pre- and post-processing follow insightface's conventions: RGB input,
SCRFD letterboxed into 640x640 with (x - 127.5) / 128, anchors at the top-left corners of each
stride's cells (2 per cell), distances in stride units; landmark nets on a 192 px square 1.5x the
face box, outputs in [-1, 1] of the crop.
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline.models.faces.types import Detection, Landmarks
from pipeline.models.geometry import (
    apply_affine,
    face_box_from_68,
    invert_affine,
    iou_matrix,
    nms,
    square_affine,
)
from pipeline.models.onnx_session import graph_normalizes_input, ort_session
from pipeline.models.registry import ModelSpec, register, resolve

log = logging.getLogger(__name__)

LICENSE = "non-commercial research (insightface model zoo)"
SOURCE = ("insightface model zoo, buffalo_l.zip (github.com/deepinsight/insightface, "
          "python-package model zoo); unzip and place the named files")
DETECTION_SPEC = register(ModelSpec(
    task="face_detection", backend="insightface", kind="reference", files=("det_10g.onnx",),
    license=LICENSE, source=SOURCE, version="buffalo_l",
    description="SCRFD-10GF face detector with 5 keypoints (insightface buffalo_l)",
))
LANDMARK_SPEC = register(ModelSpec(
    task="face_landmarks", backend="insightface", kind="reference",
    files=("1k3d68.onnx", "2d106det.onnx"), license=LICENSE, source=SOURCE, version="buffalo_l",
    description="68-point 3D landmarks (1k3d68) and 106-point 2D landmarks (2d106det)",
))

DET_SIZE = 640  # SCRFD input side (px)
LOCAL_SIZE = 160  # SCRFD input side when re-scoring a followed face (px, a multiple of 32)
LOCAL_CONTEXT = 2.0  # the re-scored region's side over the face box side
LANDMARK_SIZE = 192
LANDMARK_CONTEXT = 1.5  # landmark crop side over the face box side (insightface's choice)


def to_blob(image: np.ndarray, mean: float, std: float) -> np.ndarray:
    """uint8[H,W,3] RGB -> float32[1,3,H,W] (x - mean) / std."""
    return ((image.astype(np.float32) - mean) / std).transpose(2, 0, 1)[None].copy()


class Scrfd:
    """SCRFD decoding on onnxruntime. Accepts the 6/9-output (strides 8, 16, 32; 2 anchors per
    cell) and 10/15-output (strides 8..128; 1 anchor) exports; 9 and 15 carry 5 keypoints."""

    def __init__(self, path, threads: int = 1, providers=None, score_threshold: float = 0.5,
                 nms_threshold: float = 0.4):
        self.session = ort_session(path, threads, providers)
        self.input_name = self.session.get_inputs()[0].name
        n = len(self.session.get_outputs())
        layouts = {6: (3, 2, False), 9: (3, 2, True), 10: (5, 1, False), 15: (5, 1, True)}
        if n not in layouts:
            raise ValueError(f"{path}: expected an SCRFD export with 6, 9, 10 or 15 outputs "
                             f"(scores, boxes[, keypoints] per stride), got {n}")
        levels, self.anchors, self.has_kps = layouts[n]
        self.strides = (8, 16, 32, 64, 128)[:levels]
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold

    def raw(self, blob: np.ndarray, threshold: float):
        """Decode one NCHW input -> (boxes float[N,4], scores float[N], keypoints float[N,5,2] or
        None) in input pixels, above `threshold`, before NMS."""
        h, w = blob.shape[2:]
        outs = self.session.run(None, {self.input_name: blob})
        levels = len(self.strides)
        boxes, scores, kps = [], [], []
        for i, s in enumerate(self.strides):
            score = outs[i].reshape(-1)
            dist = outs[i + levels].reshape(-1, 4) * s
            gy, gx = np.mgrid[0:h // s, 0:w // s]
            centers = np.repeat(np.stack([gx.ravel(), gy.ravel()], 1) * s, self.anchors, axis=0)
            if len(centers) != len(score):
                raise ValueError(f"SCRFD stride {s}: {len(score)} scores for {len(centers)} "
                                 f"anchors of a {w}x{h} input")
            keep = np.nonzero(score >= threshold)[0]
            c = centers[keep].astype(np.float64)
            boxes.append(np.hstack([c - dist[keep, :2], c + dist[keep, 2:]]))
            scores.append(score[keep].astype(np.float64))
            if self.has_kps:
                k = outs[i + 2 * levels].reshape(-1, 5, 2)[keep] * s
                kps.append(c[:, None, :] + k)
        return (np.concatenate(boxes), np.concatenate(scores),
                np.concatenate(kps) if self.has_kps else None)

    def detect(self, image: np.ndarray, size: int = DET_SIZE,
               threshold: float | None = None) -> list[Detection]:
        """image: uint8[H,W,3] RGB, letterboxed (top-left) into size x size -> faces after NMS,
        best first, in image pixels."""
        import cv2  # heavy: loaded on use

        h, w = image.shape[:2]
        scale = min(size / h, size / w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = np.zeros((size, size, 3), np.uint8)
        canvas[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        boxes, scores, kps = self.raw(to_blob(canvas, 127.5, 128.0),
                                      self.score_threshold if threshold is None else threshold)
        keep = nms(boxes, scores, self.nms_threshold)
        return [Detection((boxes[i] / scale).astype(np.float32), float(scores[i]),
                          None if kps is None else (kps[i] / scale).astype(np.float32))
                for i in keep]


class LandmarkNet:
    """insightface's landmark regressors (2d106det: float[212]; 1k3d68: float[3309], the last
    68 x 3 values are the iBUG 68 points) on a 192 px crop 1.5x the face box."""

    def __init__(self, path, threads: int = 1, providers=None):
        self.session = ort_session(path, threads, providers)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.size = inp.shape[2] if isinstance(inp.shape[2], int) else LANDMARK_SIZE
        width = self.session.get_outputs()[0].shape[-1]
        self.dim = 3 if isinstance(width, int) and width >= 3000 else 2
        own = graph_normalizes_input(path)
        self.mean, self.std = (0.0, 1.0) if own else (127.5, 128.0)

    def points(self, image: np.ndarray, box: np.ndarray, count: int | None = None) -> np.ndarray:
        """image: uint8[H,W,3] RGB, box float[4] source px -> float32[K,dim] source px (z, when
        present, in source px scale); count: keep the last `count` points (68 for 1k3d68)."""
        import cv2  # heavy: loaded on use

        x0, y0, x1, y1 = (float(v) for v in box)
        side = max(x1 - x0, y1 - y0) * LANDMARK_CONTEXT
        m = square_affine(((x0 + x1) / 2, (y0 + y1) / 2), side, 0.0, self.size)
        crop = cv2.warpAffine(image, m, (self.size, self.size), flags=cv2.INTER_LINEAR,
                              borderValue=0)
        pred = self.session.run(None, {self.input_name: to_blob(crop, self.mean, self.std)})[0]
        pred = pred.reshape(-1, self.dim).astype(np.float64)
        if count is not None:
            pred = pred[-count:]
        crop_px = (pred + [1.0, 1.0, 0.0][:self.dim]) * (self.size // 2)
        out = np.empty_like(crop_px)
        out[:, :2] = apply_affine(invert_affine(m), crop_px[:, :2])
        if self.dim == 3:
            out[:, 2] = crop_px[:, 2] * side / self.size
        return out.astype(np.float32)


class InsightfaceFaces:
    """buffalo_l detector + landmarker (FaceDetector and FaceLandmarker). Presence while following:
    SCRFD re-scores a 2x region around the previous landmarks at 160 px."""

    def __init__(self, threads: int = 1, providers="auto"):
        det, lmk68, lmk106 = (resolve(DETECTION_SPEC), resolve(LANDMARK_SPEC, "1k3d68.onnx"),
                              resolve(LANDMARK_SPEC, "2d106det.onnx"))  # all present, or say which
        self.scrfd = Scrfd(det, threads, providers)
        self.lmk68 = LandmarkNet(lmk68, threads, providers)
        self.lmk106 = LandmarkNet(lmk106, threads, providers)

    def detect(self, image: np.ndarray) -> list[Detection]:
        """image: uint8[H,W,3] RGB -> faces (SCRFD score >= 0.5), best first."""
        return self.scrfd.detect(np.ascontiguousarray(image))

    def rescore(self, image: np.ndarray, box: np.ndarray) -> tuple[float, np.ndarray]:
        """SCRFD on the region LOCAL_CONTEXT x the box -> (best score of a face centred inside
        `box`, 0 if none; that face's box when it overlaps `box` by IoU >= 0.5, else `box`)."""
        import cv2  # heavy: loaded on use

        x0, y0, x1, y1 = (float(v) for v in box)
        side = max(x1 - x0, y1 - y0) * LOCAL_CONTEXT
        m = square_affine(((x0 + x1) / 2, (y0 + y1) / 2), side, 0.0, LOCAL_SIZE)
        crop = cv2.warpAffine(image, m, (LOCAL_SIZE, LOCAL_SIZE), flags=cv2.INTER_LINEAR)
        boxes, scores, _ = self.scrfd.raw(to_blob(crop, 127.5, 128.0), 0.05)
        if len(scores) == 0:
            return 0.0, np.asarray(box, np.float64)
        inv = invert_affine(m)
        src = np.hstack([apply_affine(inv, boxes[:, :2]), apply_affine(inv, boxes[:, 2:])])
        centers = (src[:, :2] + src[:, 2:]) / 2
        inside = ((centers[:, 0] >= x0) & (centers[:, 0] <= x1) & (centers[:, 1] >= y0)
                  & (centers[:, 1] <= y1))
        if not inside.any():
            return 0.0, np.asarray(box, np.float64)
        best = int(np.argmax(np.where(inside, scores, -1.0)))
        refined = src[best] if iou_matrix(src[best], np.asarray(box))[0, 0] >= 0.5 else box
        return float(scores[best]), np.asarray(refined, np.float64)

    def landmarks(self, image: np.ndarray, box: np.ndarray, keypoints: np.ndarray | None = None,
                  prev: Landmarks | None = None, mesh: bool = False) -> Landmarks:
        """68 points (1k3d68, source px) of the face in `box` (an SCRFD box) or, when following,
        around `prev`'s points; presence from SCRFD on the region. No mesh from this backend."""
        image = np.ascontiguousarray(image)
        region = face_box_from_68(prev.points68) if prev is not None else np.asarray(box)
        presence, refined = self.rescore(image, region)
        points = self.lmk68.points(image, refined, count=68)
        return Landmarks(points68=points[:, :2].copy(), presence=presence, mesh=None)

    def points106(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """2d106det landmarks float32[106,2] source px of the face in `box` (float[4] source px)."""
        return self.lmk106.points(np.ascontiguousarray(image), box)
