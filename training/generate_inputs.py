"""Generation inputs, checked before any denoising: the reference face crop (the catalog's face
backend and crop geometry), the speech audio and its features (the catalog's speech backend),
and an expression trajectory measured on a driving video (the catalog's expression backend).

What the checkpoint's catalog used is read from its config.json ("catalog" -> "stages" -> name ->
"config"): faces (backend, crop_size, crop_scale, portrait, min_face_px), audio (speech_backend,
its encoder engine, VAD settings), expression (backend and its fit settings).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from catalog.contract import AUDIO_RATE, CROP_FPS, SAMPLES_PER_FRAME
from catalog.schema import EXPRESSION_DIMS
from pipeline.models.expression import DEFAULT_EXPRESSION_BACKEND
from pipeline.models.geometry import CROP_SCALE, CROP_SIZE, CropSpec
from pipeline.models.signal import fill_gaps

log = logging.getLogger(__name__)


class GenerationInputError(ValueError):
    """A generation input that cannot be used (exit code 2): the message names the file and
    what was expected."""


@dataclass(frozen=True)
class CatalogSettings:
    """The curation settings generation must repeat (from the checkpoint's catalog stages)."""

    face_backend: str = "mediapipe"
    crop_size: int = CROP_SIZE  # face-crop side of the catalog's clips (px)
    crop_scale: float = CROP_SCALE  # crop side over the face box side
    min_face_px: int = 64  # smallest face box side the catalog kept (px)
    speech_backend: str = "whisper-base"
    speech_encoder: str = "onnxruntime"  # the engine of the audio features' Whisper encoder
    vad: tuple[float, float, float] = (0.5, 0.25, 0.1)  # threshold, min speech s, min silence s
    expression_backend: str = DEFAULT_EXPRESSION_BACKEND
    expression_options: tuple[tuple[str, object], ...] = ()

    @classmethod
    def from_checkpoint(cls, config: dict) -> CatalogSettings:
        """From a checkpoint's config.json dict; a stage the catalog did not record keeps the
        pipeline's default (logged)."""
        stages = (config.get("catalog") or {}).get("stages") or {}

        def stage(name: str) -> dict:
            if name not in stages:
                log.warning("the checkpoint's catalog records no %r stage: using the pipeline's "
                            "default settings for it", name)
            return (stages.get(name) or {}).get("config") or {}

        faces, audio, expression = stage("faces"), stage("audio"), stage("expression")
        if audio and not audio.get("features", True):
            log.warning("the checkpoint's catalog wrote no audio features (audio features = "
                        "false): its model never saw audio; generation computes them anyway")
        # the crop geometry as the manifest records it resolved, else resolved from the config
        resolved = ((stages.get("faces") or {}).get("resolved") or {}).get("crop")
        crop = CropSpec(**resolved) if resolved else CropSpec.from_faces_config(faces)
        exp_keys = ("fit_iterations", "landmark_noise", "contour_weight", "batch_size", "device",
                    "pose_limit_deg")
        return cls(
            face_backend=faces.get("backend", "mediapipe"),
            crop_size=crop.size,
            crop_scale=crop.scale,
            min_face_px=int(faces.get("min_face_px", 64)),
            speech_backend=audio.get("speech_backend", "whisper-base"),
            # catalogs whose audio config has no encoder_engine ran the encoder on torch
            speech_encoder=audio.get("encoder_engine", "torch" if audio else "onnxruntime"),
            vad=(float(audio.get("vad_threshold", 0.5)), float(audio.get("min_speech_s", 0.25)),
                 float(audio.get("min_silence_s", 0.1))),
            expression_backend=expression.get("backend") or backend_of_model(config),
            expression_options=tuple((k, expression[k]) for k in exp_keys if k in expression))


def backend_of_model(config: dict) -> str:
    """The expression backend whose vector length the checkpoint's model takes (for a
    checkpoint whose catalog recorded no expression stage); the default where none matches."""
    dim = (((config.get("spec") or {}).get("model") or {}).get("expression_dim"))
    by_length = {length: name for name, length in EXPRESSION_DIMS.items()}
    return by_length.get(dim, DEFAULT_EXPRESSION_BACKEND)


@dataclass
class ReferenceFace:
    """The reference photo's face: crop uint8[crop_size,crop_size,3], affine float32[2,3]
    (source px -> crop px), box float32[4] and points68 float32[68,2] in source px."""

    crop: np.ndarray
    affine: np.ndarray
    box: np.ndarray
    points68: np.ndarray

    @property
    def crop_points(self) -> np.ndarray:
        """float[68, 2]: the 68 landmarks in crop pixels."""
        from pipeline.models.geometry import apply_affine

        return apply_affine(self.affine, self.points68)


def reference_mouth(face: ReferenceFace, crop_size: int, size: int) -> np.ndarray:
    """float32[size, size]: the reference face's mouth mask (training.windows.mouth_mask of its
    landmarks in crop pixels), as training computes it for a catalog reference frame."""
    from training import windows as geo

    points = face.crop_points.reshape(1, -1)
    return geo.mouth_mask(geo.mouth_boxes(points)[0], crop_size, size)


@dataclass
class Speech:
    """Audio float32[N] mono at 16 kHz, frames = ceil(N / 640) (the video lasts at least as long
    as the audio, less than one frame longer), speech segments [(start_s, end_s)] from the VAD."""

    audio: np.ndarray
    frames: int
    segments: list


@dataclass
class Trajectory:
    """Per 25 fps frame of a driving video: expression float32[T,De], jaw_pose float32[T,3],
    yaw/pitch/roll float32[T] degrees; T = the video's grid frames."""

    expression: np.ndarray
    jaw_pose: np.ndarray
    yaw: np.ndarray
    pitch: np.ndarray
    roll: np.ndarray


@functools.lru_cache(maxsize=2)
def face_backend(name: str):
    """The pipeline's face backend, loaded once per process (batch requests share it)."""
    from pipeline.models.faces import load_face_backend

    return load_face_backend(name, "dlib", threads=1)


@functools.lru_cache(maxsize=2)
def speech_encoder(backend: str, engine: str, device: str):
    from pipeline.models.speech import load_encoder

    return load_encoder(backend, engine, device)


@functools.lru_cache(maxsize=2)
def vad_model(vad: tuple[float, float, float]):
    from pipeline.models.speech import load_vad

    return load_vad(*vad)


def read_image(path: str | Path) -> np.ndarray:
    """uint8[H,W,3] RGB of an image file; GenerationInputError when missing or undecodable."""
    import cv2

    if not Path(path).is_file():
        raise GenerationInputError(f"reference image {path} does not exist")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise GenerationInputError(f"reference image {path} cannot be decoded (expected a JPEG, "
                                   "PNG or another format OpenCV reads)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def detect_face(image: np.ndarray, settings: CatalogSettings, where: str):
    """(points68 float32[68,2], box float32[4]) of the largest face found in `image`, or None."""
    from pipeline.models.geometry import face_box_from_68

    backend = face_backend(settings.face_backend)
    found = backend.detector.detect(image)
    if not found:
        return None
    best = max(found, key=lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))
    marks = backend.landmarker.landmarks(image, best.box, keypoints=best.keypoints)
    points = np.asarray(marks.points68, np.float32)
    if not np.all(np.isfinite(points)):
        log.debug("%s: landmarks not found for the detected face", where)
        return None
    return points, face_box_from_68(points)


def reference_face(path: str | Path, settings: CatalogSettings) -> ReferenceFace:
    """Find and crop the reference photo's face (the largest one) as the catalog cropped its
    clips; a clear error without a face or with a face smaller than the catalog's min_face_px."""
    from pipeline.models.geometry import crop_face

    image = read_image(path)
    found = detect_face(image, settings, str(path))
    if found is None:
        raise GenerationInputError(
            f"no face found in the reference image {path} ({image.shape[1]}x{image.shape[0]} px, "
            f"{settings.face_backend} detector): use a photo with one clearly visible face")
    points, box = found
    side = float(max(box[2] - box[0], box[3] - box[1]))
    if side < settings.min_face_px:
        raise GenerationInputError(
            f"the face in {path} is {side:.0f} px, smaller than the {settings.min_face_px} px the "
            "model's training crops needed (the catalog's faces min_face_px): use a larger or "
            "closer photo")
    crop, affine, box = crop_face(image, points, settings.crop_size, settings.crop_scale)
    if side * settings.crop_scale < settings.crop_size:
        log.warning("the reference face is %.0f px: its %d px crop is upsampled %.1fx", side,
                    settings.crop_size, settings.crop_size / (side * settings.crop_scale))
    return ReferenceFace(crop, affine, box, points)


def read_speech(path: str | Path, settings: CatalogSettings) -> Speech:
    """The audio at 16 kHz mono and its speech segments; a clear error when it cannot be decoded
    or holds no sample; a warning (and generation goes on) when the VAD finds no speech."""
    from pipeline.media import MediaError, read_audio

    if not Path(path).is_file():
        raise GenerationInputError(f"audio file {path} does not exist")
    try:
        audio = read_audio(str(path), AUDIO_RATE, relative_to_video=False)
    except MediaError as exc:
        raise GenerationInputError(f"audio file {path} cannot be decoded: {exc}") from exc
    if len(audio) < SAMPLES_PER_FRAME:
        raise GenerationInputError(f"audio file {path} holds {len(audio)} samples at 16 kHz "
                                   "(no audio stream, or shorter than one 40 ms frame)")
    segments = vad_model(settings.vad).segments(audio)
    if not segments:
        log.warning("no speech found in %s (Silero VAD, threshold %.2f): generating anyway; "
                    "expect a closed or idle mouth", path, settings.vad[0])
    return Speech(audio, math.ceil(len(audio) / SAMPLES_PER_FRAME), segments)


def audio_features(speech: Speech, settings: CatalogSettings, device: str,
                   expected_dim: int) -> np.ndarray:
    """float32[frames, D]: the speech backend's encoder features on the 25 fps grid, as the
    catalog's audio stage computed them."""
    from pipeline.models.speech import encoder_features

    encoder = speech_encoder(settings.speech_backend, settings.speech_encoder, device)
    feats = encoder_features(encoder, speech.audio, speech.frames).astype(np.float32)
    if feats.shape[1] != expected_dim:
        raise GenerationInputError(
            f"speech backend {settings.speech_backend} gives {feats.shape[1]}-d features, the "
            f"checkpoint's model expects audio_dim={expected_dim}")
    return feats


def expression_trajectory(path: str | Path, settings: CatalogSettings,
                          expected_dim: int) -> Trajectory:
    """Expression, jaw pose and head angles per 25 fps frame of a driving video, measured as the
    catalog measured its tracks: the largest face per frame, the catalog's crop, then the
    catalog's expression backend on the crops and their landmarks. GenerationInputError naming
    the file when no face is found in more than half the frames. Frames without a face take
    their values from the nearest frames that have one (linear interpolation)."""
    from pipeline.media import MediaError, iter_frames
    from pipeline.models.expression import load_expression
    from pipeline.models.geometry import apply_affine, crop_face
    from pipeline.models.pose import head_pose

    if not Path(path).is_file():
        raise GenerationInputError(f"expression video {path} does not exist")
    crops, marks, angles = [], [], []
    measured: dict[int, tuple] = {}

    def measure(frame) -> tuple:
        if frame.index not in measured:
            measured.clear()  # only the current and the previous frame are ever asked for
            found = detect_face(frame.image, settings, str(path))
            if found is None:
                measured[frame.index] = (
                    np.zeros((settings.crop_size, settings.crop_size, 3), np.uint8),
                    np.full((68, 2), np.nan, np.float32), (np.nan, np.nan, np.nan))
            else:
                points, _ = found
                crop, affine, _ = crop_face(frame.image, points, settings.crop_size,
                                            settings.crop_scale)
                measured[frame.index] = (crop, apply_affine(affine, points), head_pose(
                    points, (frame.image.shape[1], frame.image.shape[0])))
        return measured[frame.index]

    def add(values: tuple) -> None:
        crops.append(values[0])
        marks.append(values[1])
        angles.append(values[2])

    prev = None
    try:
        for frame in iter_frames(str(path)):
            # each grid time takes the source frame nearest to it (a frame may serve several)
            while len(crops) / CROP_FPS <= frame.pts_s:
                t = len(crops) / CROP_FPS
                near = prev if prev is not None and t - prev.pts_s < frame.pts_s - t else frame
                add(measure(near))
            prev_pts = prev.pts_s if prev is not None else None
            prev = frame
        if prev is not None:  # the last frame lasts as long as the one before it
            end = prev.pts_s + (prev.pts_s - prev_pts if prev_pts is not None else 1 / CROP_FPS)
            while len(crops) / CROP_FPS < end - 1e-6:
                add(measure(prev))
    except MediaError as exc:
        raise GenerationInputError(f"expression video {path} cannot be decoded: {exc}") from exc
    missing = sum(bool(np.isnan(m).all()) for m in marks)
    if not crops or missing == len(marks):
        raise GenerationInputError(f"no face found in any frame of the expression video {path}")
    if missing > len(marks) / 2:
        raise GenerationInputError(
            f"no face found in {missing} of the {len(marks)} frames of the expression video "
            f"{path} (at least half must show one): use a video where the face stays in view")
    model = load_expression(settings.expression_backend, **dict(settings.expression_options))
    if model.dim != expected_dim:
        raise GenerationInputError(
            f"expression backend {settings.expression_backend} gives {model.dim}-d vectors, the "
            f"checkpoint's model expects expression_dim={expected_dim}")
    out = model(np.stack(crops), np.stack(marks).astype(np.float32))
    angles = np.asarray(angles, np.float64)
    filled = [fill_gaps(np.asarray(v, np.float64).reshape(len(v), -1)) for v in
              (out.expression, out.jaw_pose, angles[:, :1], angles[:, 1:2], angles[:, 2:])]
    log.info("expression from %s: %d frames, %d without a face", path, len(crops), missing)
    return Trajectory(*(v.astype(np.float32) for v in filled[:2]),
                      *(v[:, 0].astype(np.float32) for v in filled[2:]))


def neutral_of(expression: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """The trajectory's neutral: mean of its `fraction` least expressive frames (smallest L2
    norm; a 3DMM expression of 0 is the mean face's), float[De]. The catalog's intensity uses the
    same fallback (a person's lowest-magnitude track) when no track is labelled neutral."""
    norms = np.linalg.norm(expression, axis=1)
    count = max(1, int(round(fraction * len(expression))))
    return expression[np.argsort(norms)[:count]].mean(0)


def scale_expression(expression: np.ndarray, intensity: float,
                     bounded: bool = False) -> np.ndarray:
    """e'_t = n + intensity * (e_t - n), n = neutral_of(e): intensity scales the trajectory's
    departure from its neutral (1 leaves it as measured, 0 holds the neutral). bounded: scores
    in [0, 1] (the blendshapes backend), clipped to that range before and after scaling."""
    if bounded:
        expression = np.clip(expression, 0.0, 1.0)
    neutral = neutral_of(expression)
    scaled = neutral + intensity * (expression - neutral)
    return (np.clip(scaled, 0.0, 1.0) if bounded else scaled).astype(np.float32)
