"""Bundled expression backend `blendshapes`: FaceMesh v2 on the face-crop clip, then MediaPipe's
blendshape model (52 ARKit scores in [0, 1]) on the pose-corrected mesh.

Per frame: the 43 expression shapes (the 52 without `_neutral` and the eight `eyeLook*` gaze
shapes) plus two geometric action-unit measures the network lacks (cheek raise AU6, nose wrinkle
AU9: distances in the canonically aligned mesh, in inter-ocular units, relative to the track's
least expressive frames, scaled and clipped to [0, 1]) form the 45-d expression vector; the
gaze shapes go to a vector of their own. Head pose comes from a similarity fit of MediaPipe's
canonical face; jaw pose is the chin's rotation about the jaw joints relative to the track's
neutral frames. The mesh is rotated to face the camera before the blendshape model reads it,
which keeps pitch and yaw out of the scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.models.expression import facemesh_v2 as fm
from pipeline.models.expression.bundle import (  # noqa: F401 - the backend's names, re-exported
    AU_NAMES,
    BLENDSHAPE_NAMES,
    EXPRESSION_DIM,
    EXPRESSION_NAMES,
    GAZE_NAMES,
    LANDMARK_SUBSET,
    SHAPE_NAMES,
    SILENT_SHAPES,
    SPEC,
    TASK_FILE,
    TASK_SHA256,
)
from pipeline.models.expression.fit_3dmm import rotation_to_axis_angle
from pipeline.models.expression.types import ExpressionOutput

_SHAPE_INDEX = np.array([BLENDSHAPE_NAMES.index(n) for n in SHAPE_NAMES])
_GAZE_INDEX = np.array([BLENDSHAPE_NAMES.index(n) for n in GAZE_NAMES])

# geometric measures in the canonically aligned mesh (y up)
EYE_CORNERS = ((33, 133), (362, 263))  # right eye, left eye (subject's)
LOWER_LIDS = (145, 374)
CHEEKS = ((118, 50), (347, 280))  # malar points below each eye
NASION = 168
ALAE = (129, 358, 64, 294)  # nose wings
CHIN = 152
JAW_JOINTS = (234, 454)  # the face outline at the ears, near the jaw joints
AU_GAIN = 10.0  # proxy per inter-ocular unit of change: 0.1 IOD -> 1.0
NEUTRAL_FRACTION = 0.2  # a track's neutral: its least expressive fifth of (pose-valid) frames


class Blendshapes:
    """The blendshape model: `__call__(points)` with the 146 subset points float[146,2] (image
    px; the model is scale and translation invariant) -> float32[52] scores."""

    def __init__(self, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter  # optional runtime: import on use

        self.interp = Interpreter(model_content=fm.load_task()["face_blendshapes.tflite"],
                                  num_threads=threads)
        self.interp.allocate_tensors()
        self.input = self.interp.get_input_details()[0]["index"]
        self.output = self.interp.get_output_details()[0]["index"]

    def __call__(self, points: np.ndarray) -> np.ndarray:
        self.interp.set_tensor(self.input, np.asarray(points, np.float32).reshape(1, 146, 2))
        self.interp.invoke()
        return self.interp.get_tensor(self.output).reshape(52).astype(np.float32)

    def from_mesh(self, mesh: np.ndarray) -> np.ndarray:
        """float32[52] scores of a 478-point mesh float[478,>=2] (image px)."""
        return self(np.asarray(mesh)[list(LANDMARK_SUBSET), :2])


def inter_ocular(aligned: np.ndarray) -> float:
    """Distance between the two eyes' corner midpoints of an aligned mesh (cm)."""
    (a, b), (c, d) = EYE_CORNERS
    return float(np.linalg.norm((aligned[a] + aligned[b]) / 2 - (aligned[c] + aligned[d]) / 2))


def au_measures(aligned: np.ndarray) -> np.ndarray:
    """Raw geometric measures float64[2] of an aligned mesh float[>=468,3] (canonical axes, y
    up), in inter-ocular units: lower lid to cheek height (cheek raise lowers it) and nasion to
    nose-wing height (nose wrinkle lowers it)."""
    iod = inter_ocular(aligned)
    y = aligned[:, 1]
    cheek = np.mean([y[lid] - y[list(pts)].mean() for lid, pts in zip(LOWER_LIDS, CHEEKS)])
    nose = y[NASION] - y[list(ALAE)].mean()
    return np.array([cheek, nose]) / iod


def au_proxies(measures: np.ndarray, neutral: np.ndarray) -> np.ndarray:
    """AU6 and AU9 proxies in [0, 1]: the measures' decrease from the neutral ones, in
    inter-ocular units, times AU_GAIN, clipped. measures float[...,2], neutral float[2]."""
    return np.clip((np.asarray(neutral) - np.asarray(measures)) * AU_GAIN, 0.0, 1.0)


def jaw_angle(aligned: np.ndarray) -> float:
    """Chin angle (rad) about the jaw joints in the aligned mesh's sagittal plane (larger =
    more open)."""
    pivot = aligned[list(JAW_JOINTS)].mean(0)
    v = aligned[CHIN] - pivot
    return math.atan2(-v[2], -v[1])


@dataclass
class BlendshapeOutput(ExpressionOutput):
    """ExpressionOutput plus gaze float[T,8] (GAZE_NAMES), blendshapes float[T,52] (MediaPipe's
    own scores of the mesh as seen, BLENDSHAPE_NAMES), yaw_pitch float[T,2] (deg), pose_ok bool[T] (|yaw| and |pitch|
    within the pose limit) and presence float[T] (FaceMesh's face score)."""

    gaze: np.ndarray | None = None
    blendshapes: np.ndarray | None = None
    yaw_pitch: np.ndarray | None = None
    pose_ok: np.ndarray | None = None
    presence: np.ndarray | None = None


class BlendshapeBackend:
    """The `blendshapes` expression backend on one face-crop track."""

    name = "blendshapes"
    dim = EXPRESSION_DIM
    names = EXPRESSION_NAMES

    def __init__(self, pose_limit_deg: float = 15.0, frontalize: bool = True,
                 min_presence: float = 0.5, threads: int = 1):
        self.mesh_model = fm.FaceMeshV2(threads)
        self.shapes = Blendshapes(threads)
        self.canonical = fm.canonical_face()
        self.pose_limit_deg = pose_limit_deg
        self.frontalize = frontalize
        self.min_presence = min_presence

    def meshes(self, frames: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """FaceMesh v2 per frame, following the face as MediaPipe's video mode does: the region
        comes from the previous frame's mesh, or (first frame, after a miss) from the 68
        landmarks refined by one more pass. -> float32[T,478,3] (NaN = no face), float32[T]."""
        T = frames.shape[0]
        meshes = np.full((T, 478, 3), np.nan, np.float32)
        presence = np.zeros(T, np.float32)
        previous = None
        for k in range(T):
            if previous is None:
                if not np.isfinite(landmarks[k]).all():
                    continue
                mesh, _ = self.mesh_model(frames[k], fm.region_from_68(landmarks[k]))
                region = fm.region_from_mesh(mesh)
            else:
                region = fm.region_from_mesh(previous)
            mesh, score = self.mesh_model(frames[k], region)
            presence[k] = score
            if score >= self.min_presence:
                meshes[k] = mesh
                previous = mesh
            else:
                previous = None
        return meshes, presence

    def scores(self, mesh: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One mesh float[478,3] (image px) -> scores float32[52] of the frontalized mesh (of
        the mesh as it is without `frontalize`), MediaPipe's scores float32[52] (the mesh as
        it is), rotation float64[3,3] and the aligned mesh float64[478,3] (canonical units)."""
        R, _, _, aligned = fm.align(mesh, self.canonical)
        raw = self.shapes.from_mesh(mesh)
        posed = self.shapes.from_mesh(fm.frontalized(mesh, R)) if self.frontalize else raw
        return posed, raw, R, aligned

    def __call__(self, frames: np.ndarray, landmarks: np.ndarray) -> BlendshapeOutput:
        meshes, presence = self.meshes(frames, landmarks)
        return self.from_meshes(meshes, presence)

    def from_meshes(self, meshes: np.ndarray, presence: np.ndarray | None = None
                    ) -> BlendshapeOutput:
        """The track's output from its meshes float[T,478,3] (image px, NaN = no face)."""
        T = meshes.shape[0]
        raw = np.full((T, 52), np.nan, np.float32)
        posed = np.full((T, 52), np.nan, np.float32)
        head = np.full((T, 3), np.nan)
        yaw_pitch = np.full((T, 2), np.nan)
        measures = np.full((T, 2), np.nan)
        jaw = np.full(T, np.nan)
        for k in np.nonzero(np.isfinite(meshes).all(axis=(1, 2)))[0]:
            posed[k], raw[k], R, aligned = self.scores(meshes[k])
            head[k] = rotation_to_axis_angle(R)
            yaw_pitch[k] = fm.yaw_pitch_roll(R)[:2]
            measures[k] = au_measures(aligned)
            jaw[k] = jaw_angle(aligned)
        known = np.isfinite(posed).all(1)
        pose_ok = known & (np.abs(np.nan_to_num(yaw_pitch, nan=np.inf)) <= self.pose_limit_deg).all(1)
        shapes = np.clip(posed[:, _SHAPE_INDEX], 0.0, 1.0)
        neutral = neutral_frames(shapes, pose_ok if pose_ok.any() else known)
        expression = np.full((T, EXPRESSION_DIM), np.nan, np.float32)
        jaw_pose = np.full((T, 3), np.nan)
        if neutral.size:
            expression[:, :len(SHAPE_NAMES)] = shapes
            expression[:, len(SHAPE_NAMES):] = au_proxies(measures, measures[neutral].mean(0))
            jaw_pose[:, 0] = np.maximum(jaw - jaw[neutral].mean(), 0.0)
            jaw_pose[known, 1:] = 0.0
        expression[~known] = np.nan
        return BlendshapeOutput(
            expression=expression, jaw_pose=jaw_pose, head_pose=head, error_px=None,
            gaze=np.clip(posed[:, _GAZE_INDEX], 0.0, 1.0), blendshapes=raw, yaw_pitch=yaw_pitch,
            pose_ok=pose_ok, presence=presence if presence is not None else known.astype(float))


def neutral_frames(shapes: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Indices of the least expressive usable frames (lowest sum of shape scores; the lowest
    NEUTRAL_FRACTION, at least one). shapes float[T,S], usable bool[T]."""
    candidates = np.nonzero(usable & np.isfinite(shapes).all(1))[0]
    if candidates.size == 0:
        return candidates
    total = shapes[candidates].sum(1)
    n = max(1, int(round(NEUTRAL_FRACTION * candidates.size)))
    return candidates[np.argsort(total, kind="stable")[:n]]
