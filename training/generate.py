"""Generation: a portrait + speech (+ emotion, or an expression video) -> a talking-face mp4.

    gen = Generator("out/train")                         # a run or checkpoint folder
    gen.generate(Request(reference="face.jpg", audio="speech.wav", out="out.mp4",
                         emotion="happy", intensity=0.7, seed=0, steps=25))

Order: check every input (checkpoint files, reference face, audio decoding; clear errors before
any work), crop the reference with the catalog's face backend and crop geometry, compute the
audio features with the catalog's speech backend, then window by window (F frames each):
motion frames = the previous window's last M generated latents (the first window: the
reference repeated), DDIM with classifier-free guidance per condition on the EMA weights,
decode, write (sampling.denoise_window: the ReferenceNet runs once per window, a step's guidance
branches as one batched call, bf16 autocast on CUDA; `fast=False` recomputes them per call,
for comparison). The video has ceil(samples / 640) frames at 25 fps (at least the audio's
duration, less than one frame more) and carries the input audio (AAC). One torch.Generator
seeded with `seed` draws every window's noise in order: the same seed gives the same video.

Expression (training.expression): a checkpoint trained with clip-level expression (its
`spec.data.expression_mode`, "clip" by default) gets one vector for the whole video: with
`emotion`, the training set's mean neutral-relative expression of that emotion scaled to
`intensity` (the catalog's intensity: 1 = a person's usual departure from neutral, 0 = neutral),
and the emotion's embedding scaled alike; with `expression_from`, that video's mean expression
relative to its own neutral, times `intensity` (the emotion left out); with neither, both left
out (their learned nulls). A checkpoint trained with per-frame expression ("frame") takes the
driving video's trajectory frame by frame (each frame moved from its neutral by `intensity`,
generate_inputs.scale_expression) with its jaw pose, and with `emotion` leaves the expression
out. Head speed: `head_speed` deg/s for every frame, else the driving video's (from its head
angles, as training computes it), else 0 (a still head).
"""

from __future__ import annotations

import logging
import math
import os
import time
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from catalog.contract import AUDIO_RATE, CROP_FPS
from catalog.select import BOUNDED_BACKENDS
from training import checkpoint as ckpt
from training import windows as geo
from training.expression import clip_vector, vector_for_emotion
from training.generate_inputs import (
    CatalogSettings,
    GenerationInputError,
    ReferenceFace,
    Speech,
    audio_features,
    expression_trajectory,
    read_speech,
    reference_face,
    reference_mouth,
    scale_expression,
)
from training.sampling import first_window_motion

MAX_INTENSITY = 3.0  # intensities above this lie far outside any person's range in training

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """One video to generate. Paths as given (a batch file's are relative to its folder)."""

    reference: str
    audio: str
    out: str
    emotion: str | None = None  # one of the checkpoint's emotion classes; None: left out
    intensity: float = 1.0
    expression_from: str | None = None  # a driving video (exclusive with emotion)
    seed: int = 0
    steps: int = 25  # DDIM steps per window
    # weight of (full - reference only): audio, expression, emotion. 5: on a tiny checkpoint its
    # mouths followed the speech slightly more closely than at the peers' 3.5 (truth confidence
    # +0.01-0.02), identity and timing unchanged (docs/design.md#training)
    guidance_audio: float = 5.0
    # weight of (reference only - unconditional); 1 leaves the unconditional branch out: a
    # model that denoises the residual to the reference (the tiny one) draws the reference
    # from it already, and more cost the identity (docs/design.md#training)
    guidance_reference: float = 1.0
    head_speed: float | None = None  # deg/s; None: from expression_from, else 0


@dataclass
class Prepared:
    """A request whose inputs were checked and measured (everything but the denoising)."""

    request: Request
    face: ReferenceFace
    speech: Speech
    features: np.ndarray  # float32[frames, Da] audio features on the 25 fps grid
    expression: np.ndarray | None = None  # float32[frames, De] (None: left out)
    jaw_pose: np.ndarray | None = None  # float32[frames, 3]
    head_speed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


@dataclass
class Result:
    out: Path
    frames: int
    windows: int
    seconds: float  # denoising, decoding and writing (inputs prepared before)
    audio_seconds: float


class Generator:
    """A checkpoint's model (EMA weights, eval mode) and the catalog settings it was trained on;
    `prepare` checks and measures a request's inputs, `run` generates it, `generate` does both."""

    def __init__(self, checkpoint: str | Path, device: str | None = None,
                 models_root: str | Path | None = None, fast: bool = True) -> None:
        from training.config import from_resolved
        from training.diffusion import make_scheduler
        from training.models import build_codec, build_model

        torch.set_flush_denormal(True)  # denormal floats slow CPU arithmetic many times over
        self.path = ckpt.resolve(checkpoint)
        try:
            self.config = ckpt.read_config(self.path)
            spec = from_resolved(self.config["spec"])
        except (ValueError, KeyError) as exc:
            raise ckpt.CheckpointError(f"{self.path}/{ckpt.CONFIG_FILE} is not a training "
                                       f"config ({type(exc).__name__}: {exc})") from exc
        if spec.model.init == "sd15":  # base weights: models_root, else $EMOFORGE_MODELS
            root = ckpt.models_root(models_root, spec.model.models_root)
            ckpt.check_base_weights(self.config, root)
            spec = replace(spec, model=replace(spec.model, models_root=root))
        self.spec, self.model_cfg, self.data_cfg = spec, spec.model, spec.data
        self.settings = CatalogSettings.from_checkpoint(self.config)
        # "clip" (one neutral-relative vector per video) or "frame" (per-frame tokens: a
        # checkpoint trained before clip-level expression)
        self.expression_mode = spec.data.expression_mode
        self.expression_statistics = self.config.get("expression_statistics")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.fast = fast  # sampling.denoise_window's fast path (cached reference, batched CFG)
        self.codec = build_codec(spec.model).to(self.device)  # beside the model, as a VAE
        self.model = build_model(spec.model, spec.data.emotion_classes)
        ckpt.load_weights(self.model, self.path, ema=True)
        self.model.to(self.device).eval()
        self.scheduler = make_scheduler(spec.diffusion, "ddim")
        log.info("generator: %s (%s model, %d px, F=%d, M=%d) on %s", self.path, spec.train.model,
                 spec.model.image_size, spec.model.frames, spec.model.motion_frames, self.device)

    # ------------------------------------------------------------------ inputs
    def check(self, request: Request) -> None:
        """Argument checks that need no file (GenerationInputError)."""
        classes = list(self.data_cfg.emotion_classes)
        if request.emotion is not None and request.emotion not in classes:
            raise GenerationInputError(f"emotion {request.emotion!r} is not one of the "
                                       f"checkpoint's classes {classes}")
        if request.emotion is not None and request.expression_from is not None:
            raise GenerationInputError("give either an emotion or an expression video, not both")
        if not (math.isfinite(request.intensity) and 0 <= request.intensity <= MAX_INTENSITY):
            raise GenerationInputError(f"intensity must be within [0, {MAX_INTENSITY:g}], got "
                                       f"{request.intensity}")
        if request.emotion is not None and self.expression_mode == "clip":
            vector_for_emotion(self.expression_statistics, request.emotion, request.intensity)
        if request.steps < 1:
            raise GenerationInputError(f"steps must be at least 1, got {request.steps}")
        if request.head_speed is not None and request.head_speed < 0:
            raise GenerationInputError(f"head speed must be >= 0 deg/s, got {request.head_speed}")
        if not str(request.out).lower().endswith(".mp4"):
            raise GenerationInputError(f"the output {request.out} must be an .mp4 file")

    def prepare(self, request: Request) -> Prepared:
        """Check and measure the inputs: reference face, audio (+ VAD) and its features, the
        driving expression."""
        self.check(request)
        face = reference_face(request.reference, self.settings)
        speech = read_speech(request.audio, self.settings)
        n = speech.frames
        features = audio_features(speech, self.settings, str(self.device), self.model_cfg.audio_dim)
        prepared = Prepared(request, face, speech, features)
        speed = request.head_speed
        bounded = self.settings.expression_backend in BOUNDED_BACKENDS
        clip = self.expression_mode == "clip"
        if request.emotion is not None and clip:
            self._clip_expression(prepared, vector_for_emotion(
                self.expression_statistics, request.emotion, request.intensity, bounded))
        if request.expression_from is not None:
            traj = expression_trajectory(request.expression_from, self.settings,
                                         self.model_cfg.expression_dim)
            loop = np.arange(n) % len(traj.expression)
            if clip:
                self._clip_expression(prepared, clip_vector(traj.expression, request.intensity,
                                                            bounded))
            else:
                prepared.expression = scale_expression(traj.expression, request.intensity,
                                                       bounded)[loop]
                prepared.jaw_pose = traj.jaw_pose[loop]
            if speed is None:
                prepared.head_speed = geo.head_speed(traj.yaw, traj.pitch, traj.roll)[loop]
        if speed is not None or request.expression_from is None:
            prepared.head_speed = np.full(n, speed or 0.0, np.float32)
        return prepared

    @staticmethod
    def _clip_expression(prepared: Prepared, vector: np.ndarray) -> None:
        """One clip-level expression vector on every frame, no jaw pose (as training gives)."""
        n = prepared.speech.frames
        prepared.expression = np.repeat(vector[None], n, axis=0)
        prepared.jaw_pose = np.zeros((n, 3), np.float32)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def run(self, prepared: Prepared, progress: bool = True) -> Result:
        """Generate a prepared request into its mp4 (written to a temporary name, then renamed)."""
        from tqdm import tqdm

        from pipeline.media import REPRODUCIBLE_X264, VideoWriter
        from training.models import Conditions
        from training.sampling import denoise_window, to_uint8

        started = time.perf_counter()
        req, mcfg, dcfg = prepared.request, self.model_cfg, self.data_cfg
        size, f, m = mcfg.image_size, mcfg.frames, mcfg.motion_frames
        n = prepared.speech.frames
        feats = prepared.features
        dev = self.device
        ref_pixels = self._pixels(prepared.face.crop)  # [1,3,S,S]
        reference = self.codec.encode(ref_pixels)
        face = geo.locator_mask(prepared.face.affine[None], prepared.face.box[None],
                                self.settings.crop_size, size)
        face_mask = torch.from_numpy(face)[None, None, None].expand(1, f, 1, size, size).to(dev)
        mouth_mask = torch.from_numpy(reference_mouth(prepared.face, self.settings.crop_size,
                                                      size))[None, None].to(dev)
        emotion = -1 if req.emotion is None else list(dcfg.emotion_classes).index(req.emotion)
        with_expression = prepared.expression is not None
        drop = {"audio": torch.zeros(1, dtype=torch.bool, device=dev),
                "reference": torch.zeros(1, dtype=torch.bool, device=dev),
                "expression": torch.tensor([not with_expression], device=dev),
                "emotion": torch.tensor([emotion < 0], device=dev),
                "motion": torch.zeros(1, dtype=torch.bool, device=dev)}
        motion = first_window_motion(reference, m)
        generator = torch.Generator().manual_seed(int(req.seed))
        windows = math.ceil(n / f)
        out = Path(req.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".tmp-{os.getpid()}-{out.name}")
        bar = tqdm(total=n, desc="generate", unit="frame", disable=not progress,
                   dynamic_ncols=True, mininterval=1.0)
        try:
            with VideoWriter(str(tmp), size, size, CROP_FPS, AUDIO_RATE,
                             options=REPRODUCIBLE_X264) as writer:  # same seed, same file
                for k in range(windows):
                    index = np.arange(k * f, (k + 1) * f)
                    rows = np.minimum(index, n - 1)  # the last window repeats the last frame
                    cond = Conditions(
                        reference_latent=reference, motion_latents=motion,
                        audio=self._tensor(geo.audio_rows(feats, rows, dcfg.audio_context)),
                        expression=self._tensor(prepared.expression[rows] if with_expression
                                                else np.zeros((f, mcfg.expression_dim))),
                        jaw_pose=self._tensor(prepared.jaw_pose[rows] if with_expression
                                              else np.zeros((f, 3))),
                        emotion=torch.tensor([max(emotion, 0)], device=dev),
                        intensity=torch.tensor([float(req.intensity)], device=dev),
                        face_mask=face_mask, mouth_mask=mouth_mask,
                        head_speed=self._tensor(prepared.head_speed[rows]),
                        drop=drop)
                    shape = (1, f, *reference.shape[1:])
                    latents = denoise_window(self.model, self.scheduler, cond, shape, req.steps,
                                             req.guidance_reference, req.guidance_audio,
                                             generator, fast=self.fast)
                    if m:  # the last M generated latents (earlier ones too when F < M)
                        motion = torch.cat([motion, latents], 1)[:, -m:]
                    with self._autocast():
                        pixels = self.codec.decode(latents.flatten(0, 1)).float()
                    keep = min(f, n - k * f)
                    for image in to_uint8(pixels[:keep]).cpu().numpy():
                        writer.write(image)
                    bar.update(keep)
                writer.close(prepared.speech.audio)
            os.replace(tmp, out)
        finally:
            bar.close()
            if tmp.exists():
                tmp.unlink()
        seconds = time.perf_counter() - started
        log.info("generated %s: %d frames in %d windows, %.1f s (%.2f s/frame)", out, n, windows,
                 seconds, seconds / n)
        return Result(out, n, windows, seconds, len(prepared.speech.audio) / AUDIO_RATE)

    def generate(self, request: Request, progress: bool = True) -> Result:
        return self.run(self.prepare(request), progress)

    def _autocast(self):
        """bf16 autocast on CUDA with the fast path, else nothing."""
        enabled = self.fast and self.device.type == "cuda"
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled)

    def _pixels(self, crop: np.ndarray) -> torch.Tensor:
        """uint8[crop,crop,3] -> float32[1,3,S,S] in [-1,1], resized as training's data.decode
        resizes catalog crops (area when shrinking, bilinear when enlarging)."""
        import cv2

        size = self.model_cfg.image_size
        if crop.shape[0] != size:
            mode = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
            crop = cv2.resize(crop, (size, size), interpolation=mode)
        pixels = torch.from_numpy(crop.astype(np.float32).transpose(2, 0, 1) / 127.5 - 1.0)
        return pixels[None].to(self.device)

    def _tensor(self, values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values, np.float32))[None].to(self.device)


def generate_batch(checkpoint: str | Path, requests: list[Request], device: str | None = None,
                   progress: bool = True, models_root: str | Path | None = None) -> list[Result]:
    """Every request's inputs are checked first (an error names the request), then each is
    generated in turn with one loaded model."""
    for i, request in enumerate(requests):  # missing files: before the model loads
        for what, value in (("reference image", request.reference), ("audio file", request.audio),
                            ("expression video", request.expression_from)):
            if value is not None and not Path(value).is_file():
                raise GenerationInputError(f"request {i + 1} ({request.out}): {what} {value} "
                                           "does not exist")
    gen = Generator(checkpoint, device, models_root)
    prepared = []
    for i, request in enumerate(requests):
        try:
            prepared.append(gen.prepare(request))
        except GenerationInputError as exc:
            raise GenerationInputError(f"request {i + 1} ({request.out}): {exc}") from exc
    return [gen.run(p, progress) for p in prepared]


REQUEST_KEYS = tuple(f.name for f in fields(Request))


def load_requests(path: str | Path, defaults: dict | None = None) -> tuple[str | None, list[Request]]:
    """(checkpoint or None, requests) from a batch TOML: optional top-level `checkpoint` and any
    Request field as a default for all, then one `[[request]]` table per video. Relative paths
    are relative to the TOML file's folder."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise GenerationInputError(f"batch file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise GenerationInputError(f"batch file {path} is not valid TOML: {exc}") from exc
    tables = data.pop("request", None)
    checkpoint = data.pop("checkpoint", None)
    if not isinstance(tables, list) or not tables:
        raise GenerationInputError(f"batch file {path} has no [[request]] tables")
    common = {**(defaults or {}), **data}
    requests = []
    for i, table in enumerate(tables):
        values = {**common, **table}
        unknown = sorted(set(values) - set(REQUEST_KEYS))
        missing = [k for k in ("reference", "audio", "out") if k not in values]
        if unknown or missing:
            raise GenerationInputError(
                f"{path}: request {i + 1}: " + (f"unknown keys {unknown} (valid: "
                                                f"{list(REQUEST_KEYS)}) " if unknown else "")
                + (f"missing {missing}" if missing else ""))
        for key in ("reference", "audio", "out", "expression_from"):
            if values.get(key) is not None:
                values[key] = str(path.parent / values[key])
        try:
            requests.append(Request(**values))
        except TypeError as exc:
            raise GenerationInputError(f"{path}: request {i + 1}: {exc}") from exc
    if checkpoint is not None:
        checkpoint = str(path.parent / checkpoint)
    return checkpoint, requests
