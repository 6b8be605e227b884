"""Bundled default faces backend: MediaPipe BlazeFace (full range) + the 468-point face mesh (+iris).

The tflite files ship in `mediapipe==0.10.21` and run with the LiteRT interpreter
(`ai_edge_litert`), which gives the tracker direct control of the region of interest:
detect every few frames, follow the face with the mesh model in between (as MediaPipe's own
graph does), re-detect when the mesh's face-presence score drops.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from pipeline.models.faces.types import Detection, Landmarks
from pipeline.models.geometry import (
    MESH_TO_68,
    apply_affine,
    invert_affine,
    iou_matrix,
    square_affine,
)
from pipeline.models.registry import ModelSpec, register, resolve

log = logging.getLogger(__name__)

SOURCE = "PyPI package mediapipe==0.10.21 (install with --no-deps)"
DETECTION_SPEC = register(ModelSpec(
    task="face_detection", backend="mediapipe", kind="bundled", package="mediapipe",
    files=("modules/face_detection/face_detection_full_range_sparse.tflite",),
    license="Apache-2.0", source=SOURCE, version="0.10.21",
    description="BlazeFace full range (192x192, faces up to about 5 m)",
))
LANDMARK_SPEC = register(ModelSpec(
    task="face_landmarks", backend="mediapipe", kind="bundled", package="mediapipe",
    files=("modules/face_landmark/face_landmark.tflite", "modules/iris_landmark/iris_landmark.tflite"),
    license="Apache-2.0", source=SOURCE, version="0.10.21",
    description="MediaPipe face mesh (468 points) + iris (5 points per eye) = 478 points",
))

DET_SIZE = 192  # full-range BlazeFace input
MESH_SIZE = 192
IRIS_SIZE = 64
ROI_SCALE = 1.5  # MediaPipe enlarges the face rectangle by 1.5 for the mesh model
EYE_CORNERS = ((33, 133, False), (362, 263, True))  # (outer, inner, flip) image-left eye first


class _Tflite:
    """A LiteRT interpreter with its tensor indices looked up once; call with one unbatched
    input, get the unbatched outputs in the model's order."""

    def __init__(self, path, threads: int):
        from ai_edge_litert.interpreter import Interpreter  # heavy: loaded on use

        self.interp = Interpreter(model_path=str(path), num_threads=threads)
        self.interp.allocate_tensors()
        self.input = self.interp.get_input_details()[0]["index"]
        self.outputs = [(o["index"], int(np.prod(o["shape"]))) for o in self.interp.get_output_details()]

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        self.input_view()[...] = x
        return self.run()

    def input_view(self) -> np.ndarray:
        """The unbatched input tensor, to fill in place before `run` (LiteRT refuses to invoke
        while such a view is alive: use it within one statement)."""
        return self.interp.tensor(self.input)()[0]

    def run(self) -> list[np.ndarray]:
        self.interp.invoke()
        return [self.interp.get_tensor(i)[0] for i, _ in self.outputs]

    def output_position(self, size: int) -> int:
        """Position of the output with `size` values (outputs are told apart by size)."""
        return next(k for k, (_, n) in enumerate(self.outputs) if n == size)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(x, np.float64), -80, 80)))


def _sigmoid_scalar(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-min(max(x, -80.0), 80.0)))


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, kps: np.ndarray, iou_thr: float = 0.3):
    """BlazeFace's blending suppression: overlapping candidates are averaged, weighted by score.
    boxes float[N,4], scores float[N], kps float[N,K,2] -> list of (box, score, kps)."""
    order = np.argsort(-scores)
    boxes, scores, kps = boxes[order], scores[order], kps[order]
    remaining = np.ones(len(boxes), bool)
    out = []
    overlaps = iou_matrix(boxes, boxes)
    for i in range(len(boxes)):
        if not remaining[i]:
            continue
        group = remaining & (overlaps[i] > iou_thr)
        w = scores[group][:, None]
        out.append(((boxes[group] * w).sum(0) / w.sum(), float(scores[i]),
                    (kps[group] * w[:, :, None]).sum(0) / w.sum()))
        remaining &= ~group
    return out


class MediapipeFaces:
    """BlazeFace detector + mesh landmarker (implements FaceDetector and FaceLandmarker)."""

    def __init__(self, threads: int = 1, min_score: float = 0.5):
        self.det = _Tflite(resolve(DETECTION_SPEC), threads)
        self.mesh_model = _Tflite(resolve(LANDMARK_SPEC, LANDMARK_SPEC.files[0]), threads)
        self.iris_model = _Tflite(resolve(LANDMARK_SPEC, LANDMARK_SPEC.files[1]), threads)
        self.mesh_points = self.mesh_model.output_position(468 * 3)
        self.mesh_presence = self.mesh_model.output_position(1)
        self.iris_points = self.iris_model.output_position(5 * 3)
        self.min_score = min_score
        g = (np.arange(DET_SIZE // 4) + 0.5) / (DET_SIZE // 4)
        ax, ay = np.meshgrid(g, g)
        self.anchors = np.stack([ax.ravel(), ay.ravel()], 1).astype(np.float32)  # [2304,2]

    def detect(self, image: np.ndarray) -> list[Detection]:
        """image: uint8[H,W,3] RGB -> faces (score >= min_score), best first."""
        import cv2  # heavy: loaded on use

        h, w = image.shape[:2]
        scale = DET_SIZE / max(h, w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
        pad_x, pad_y = (DET_SIZE - nw) // 2, (DET_SIZE - nh) // 2
        canvas = np.zeros((DET_SIZE, DET_SIZE, 3), np.float32) - 1.0
        canvas[pad_y:pad_y + nh, pad_x:pad_x + nw] = small.astype(np.float32) / 127.5 - 1.0
        reg, cls = self.det(canvas)
        scores = _sigmoid(cls[:, 0])
        keep = np.nonzero(scores >= self.min_score)[0]
        if len(keep) == 0:
            return []
        reg = reg[keep] / DET_SIZE
        anchors = self.anchors[keep]
        centers = reg[:, 0:2] + anchors
        half = reg[:, 2:4] / 2
        boxes = np.concatenate([centers - half, centers + half], 1)
        kps = reg[:, 4:16].reshape(-1, 6, 2) + anchors[:, None, :]
        faces = []
        for box, score, kp in weighted_nms(boxes, scores[keep], kps):
            # canvas (0..1) -> source pixels
            b = (box.reshape(2, 2) * DET_SIZE - [pad_x, pad_y]) / scale
            k = (kp * DET_SIZE - [pad_x, pad_y]) / scale
            # BlazeFace keypoints: right eye, left eye, nose, mouth, right ear, left ear
            faces.append(Detection(b.ravel().astype(np.float32), score, k[:4].astype(np.float32)))
        return faces

    def landmarks(self, image: np.ndarray, box: np.ndarray, keypoints: np.ndarray | None = None,
                  prev: Landmarks | None = None, mesh: bool = False) -> Landmarks:
        """Mesh on the rotated square around the face (from the previous mesh when following, from
        the detection otherwise). Returns 68 points, presence and the mesh in source pixels."""
        import cv2  # heavy: loaded on use

        if prev is not None and prev.mesh is not None:
            # the previous mesh's bounding box in the face's upright frame (along and across
            # the eye line), then enlarged like MediaPipe does
            (x33, y33), (x263, y263) = prev.mesh[33, :2].tolist(), prev.mesh[263, :2].tolist()
            angle = math.atan2(y263 - y33, x263 - x33)
            c, s = math.cos(angle), math.sin(angle)
            local = np.array([[c, s], [-s, c]], np.float32) @ prev.mesh[:468, :2].T  # [2,468]
            (u0, v0), (u1, v1) = local.min(1).tolist(), local.max(1).tolist()
            u, v = (u0 + u1) / 2, (v0 + v1) / 2
            center = (c * u - s * v, s * u + c * v)
            side = max(u1 - u0, v1 - v0) * ROI_SCALE
        else:
            x0, y0, x1, y1 = [float(v) for v in box]
            center = ((x0 + x1) / 2, (y0 + y1) / 2)
            side = max(x1 - x0, y1 - y0) * ROI_SCALE
            angle = 0.0
            if keypoints is not None:
                eye_r, eye_l = keypoints[0], keypoints[1]
                angle = math.atan2(eye_l[1] - eye_r[1], eye_l[0] - eye_r[0])
        m = square_affine(center, side, angle, MESH_SIZE)
        crop = cv2.warpAffine(image, m, (MESH_SIZE, MESH_SIZE), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT)
        np.multiply(crop, np.float32(1 / 255.0), out=self.mesh_model.input_view())
        out = self.mesh_model.run()
        flag = _sigmoid_scalar(float(out[self.mesh_presence].reshape(())))
        # crop pixels (and depth in crop units) -> source pixels, in one product
        (a, b, tx), (c, d, ty) = invert_affine(m).tolist()
        to_source = np.array([[a, c, 0], [b, d, 0], [0, 0, side / MESH_SIZE]], np.float32)
        pts3 = out[self.mesh_points].reshape(468, 3) @ to_source
        pts3 += np.array([tx, ty, 0], np.float32)
        if mesh:
            pts3 = np.concatenate([pts3, self._irises(image, pts3)], 0)
        return Landmarks(points68=pts3[MESH_TO_68, :2], presence=flag, mesh=pts3)

    def _irises(self, image: np.ndarray, pts: np.ndarray) -> np.ndarray:
        """float32[10,3]: 5 iris points (centre first) per eye, image-left eye first."""
        import cv2  # heavy: loaded on use

        out = []
        for outer, inner, flip in EYE_CORNERS:
            a, b = pts[outer, :2], pts[inner, :2]
            angle = math.atan2(b[1] - a[1], b[0] - a[0])
            side = float(np.linalg.norm(b - a)) * 2.3
            m = square_affine(tuple((a + b) / 2), side, angle, IRIS_SIZE)
            crop = cv2.warpAffine(image, m, (IRIS_SIZE, IRIS_SIZE), flags=cv2.INTER_LINEAR)
            if flip:
                crop = crop[:, ::-1]
            res = self.iris_model(np.multiply(crop, 1 / 255.0, dtype=np.float32))
            iris = res[self.iris_points].reshape(5, 3).copy()
            if flip:
                iris[:, 0] = IRIS_SIZE - iris[:, 0]
            xy = apply_affine(invert_affine(m), iris[:, :2])
            out.append(np.hstack([xy, iris[:, 2:] * side / IRIS_SIZE]))
        return np.concatenate(out, 0).astype(np.float32)
