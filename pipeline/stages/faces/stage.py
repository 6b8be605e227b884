"""The faces stage: every face in every clip as a track, with a 25 fps face-crop clip per track."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from catalog.contract import AUDIO_RATE, CROP_FPS
from catalog.layout import media_relpath
from pipeline import media
from pipeline.models.faces import load_face_backend
from pipeline.models.geometry import CROP_SCALE, CROP_SIZE, CROP_SMOOTH_SIGMA, CropSpec
from pipeline.models.registry import ModelSpec, get_spec
from pipeline.models.thresholds import identity_distance
from pipeline.stages.contract import FAILED, OK, SKIPPED, Stage
from pipeline.stages.faces.crop import LooseCropper, crop_geometry
from pipeline.stages.faces.rows import frame_rows, track_id, track_row
from pipeline.stages.faces.tracking import Tracker, TrackerConfig

log = logging.getLogger(__name__)

AUDIO_CACHE_BYTES = 256 << 20  # a video's decoded audio kept for its next tracks: 70 min at 16 kHz


@dataclass(frozen=True)
class FacesConfig:
    """Options of the faces stage (TOML section [faces])."""

    backend: str = "mediapipe"  # mediapipe (bundled), mtcnn (bundled), insightface (reference)
    identity: str = "dlib"  # dlib (bundled, 128-d) or arcface (reference, 512-d)
    # source frames between detections (every frame while a face is lost); at most
    # min_track_frames, so that every face on screen long enough to make a track meets a detection
    detect_stride: int = 25
    detect_width: int = 640  # frames are downscaled to this width for detection (px)
    min_face_px: int = 64  # tracks whose median face side is smaller are skipped (px)
    min_track_frames: int = 25  # tracks with fewer source frames (1 s at 25 fps) are skipped
    max_missed_frames: int = 12  # a track ends after this many frames without its face
    identity_every: int = 50  # frames between identity checks (a change ends the track)
    identity_threshold: float | None = None  # None: per backend (pipeline/models/thresholds.py)
    crop_size: int = CROP_SIZE  # face-crop side (px); portrait=True makes it PORTRAIT_SIZE
    crop_scale: float = CROP_SCALE  # crop side over the face box side; portrait: PORTRAIT_SCALE
    portrait: bool = False  # wider 512 px head-and-shoulders crop
    smooth_sigma: float = CROP_SMOOTH_SIGMA  # smoothing of the crop geometry (25 fps frames)
    # 25 fps frames between writes of a track's crop clip while tracking: each track holds up to
    # about this many loose crops (0.44 MB each at 256 px, 1.8 MB for portraits)
    crop_flush_frames: int = 250
    mesh: bool = False  # write the float16 [T,478,3] mesh sidecar (mediapipe only)
    threads: int = 1  # inference threads per worker


class FacesStage(Stage):
    name = "faces"
    level = "clips"
    requires = ("clip_id", "video_id", "shard", "start_s", "end_s", "uri", "fps", "width",
                "height", "rotation", "has_audio")
    after = ("scenes",)
    Config = FacesConfig
    version = "2"  # 2: loose crops cut with cv2.resize (pipeline.stages.faces.crop.loose_crop)
    uses_models = True
    # one core a worker: decoding and the landmark model keep a core busy, so half a CPU only
    # doubled the worker processes (each about 1.3 GiB, with its own start-up and set-up);
    # measured on the 118 s bench input: faces 27 s instead of 32 s wall on 2 CPUs
    num_cpus = 1.0

    def model_specs(self) -> list[ModelSpec]:
        cfg = self.config
        tasks = {"mediapipe": [("face_detection", "mediapipe"), ("face_landmarks", "mediapipe")],
                 "mtcnn": [("face_detection", "mtcnn"), ("face_landmarks", "dlib68")],
                 "insightface": [("face_detection", "insightface"),
                                 ("face_landmarks", "insightface")]}[cfg.backend]
        ident = ("identity", "dlib") if cfg.identity == "dlib" else ("identity", "arcface")
        return [get_spec(t, b) for t, b in tasks + [ident]]

    def setup(self) -> None:
        self.backend = load_face_backend(self.config.backend, self.config.identity, self.config.threads)
        if self.config.detect_stride > self.config.min_track_frames:
            log.warning("faces: detect_stride %d > min_track_frames %d: a face on screen for "
                        "fewer than %d frames can be missed although it would make a track",
                        self.config.detect_stride, self.config.min_track_frames,
                        self.config.detect_stride)

    def _audio(self, uri: str, start_s: float, end_s: float) -> np.ndarray:
        """float32 16 kHz audio of [start_s, end_s) of the video, the same samples as
        media.read_audio gives, from the whole file's audio decoded once per video and process
        (each track of each clip read the whole stream again: 0.3 CPU-s a track for 118 s of
        AAC, quadratic in a video's length). Videos whose audio exceeds AUDIO_CACHE_BYTES are
        read per track."""
        key = (uri, os.stat(uri).st_mtime_ns if os.path.exists(uri) else None)
        cached = getattr(self, "_audio_cache", None)
        if cached is None or cached[0] != key:
            self._audio_cache = None  # free the previous video's audio first
            audio = media.decode_audio(uri, AUDIO_RATE)
            if audio is not None and audio.nbytes > AUDIO_CACHE_BYTES:
                return media.audio_span(audio, AUDIO_RATE, start_s, end_s)
            cached = self._audio_cache = (key, audio)
        if cached[1] is None:
            return np.zeros(0, np.float32)
        return media.audio_span(cached[1], AUDIO_RATE, start_s, end_s)

    def crop_spec(self) -> CropSpec:
        cfg = self.config
        return CropSpec.resolve(cfg.crop_size, cfg.crop_scale, cfg.smooth_sigma, cfg.portrait)

    def resolved_for(self, stage: str) -> dict:
        return {"crop": dataclasses.asdict(self.crop_spec())}

    def tracker_config(self) -> TrackerConfig:
        cfg = self.config
        threshold = (identity_distance(self.backend.identity.name) if cfg.identity_threshold is None
                     else cfg.identity_threshold)
        return TrackerConfig(detect_stride=cfg.detect_stride, detect_width=cfg.detect_width,
                             max_missed_frames=cfg.max_missed_frames,
                             identity_every=cfg.identity_every, identity_threshold=threshold,
                             mesh=cfg.mesh and self.backend.has_mesh)

    def process_row(self, row: dict) -> dict:
        started = time.perf_counter()
        fps = float(row.get("fps") or 25.0)
        spec = self.crop_spec()
        # each track's crop clip streams into _partial/ while the clip is tracked (bounded
        # memory) and moves to its media path once the track is kept
        cropper = LooseCropper(spec, fps, os.path.join(self.context.staging, "_partial"),
                               AUDIO_RATE, self.config.crop_flush_frames)
        tracker = Tracker(self.backend, self.tracker_config(), cropper)
        decoded, size = 0, (int(row.get("width") or 0), int(row.get("height") or 0))
        try:
            for frame in media.iter_frames(row["uri"], row["start_s"], row["end_s"]):
                size = (frame.image.shape[1], frame.image.shape[0])
                tracker.step(frame)
                decoded += 1
            tracks = tracker.finish()
            out = self._clip_row(row, tracks, decoded, size, fps, spec, cropper)
        finally:
            cropper.discard_all()  # the clips of skipped or failed tracks
        out["faces_seconds"] = time.perf_counter() - started
        log.info("faces: clip %s: %d frames, %d tracks, %d detections, %.2f s", row["clip_id"],
                 decoded, len(tracks), tracker.detections, out["faces_seconds"])
        return out

    def _clip_row(self, row: dict, tracks: list, decoded: int, size, fps: float, spec: CropSpec,
                  cropper: LooseCropper) -> dict:
        out: dict[str, Any] = {"track_count": len(tracks), "tracks": [],
                               "faces_max_simultaneous": max(
                                   (max(t.faces_in_frame.values(), default=1) for t in tracks),
                                   default=0)}
        if decoded == 0:
            out.update(faces_status=FAILED, faces_error=(
                f"no frames decoded from {row['uri']} in [{row['start_s']}, {row['end_s']}) s"))
        elif not tracks:
            out.update(faces_status=SKIPPED, faces_error=f"no face found in {decoded} frames")
        else:
            out.update(faces_status=OK, faces_error=None)
        tracks.sort(key=lambda t: (t.first_index, float(t.obs[t.first_index].box[0])))
        for index, track in enumerate(tracks):
            tid = track_id(row["clip_id"], track.first_index, index)
            out["tracks"].append(self._track(row, tid, index, track, size, fps, spec, cropper))
        return out

    def _track(self, row: dict, tid: str, index: int, track, size, fps: float,
               spec: CropSpec, cropper: LooseCropper) -> dict:
        cfg = self.config
        out = track_row(row, tid, index, track, size, fps)
        out.update(identity_backend=self.backend.identity.name, faces_backend=cfg.backend,
                   frames=[])
        length = track.last_index - track.first_index + 1
        if length < cfg.min_track_frames:
            return {**out, "faces_status": SKIPPED, "faces_error":
                    f"track has {length} frames < min_track_frames={cfg.min_track_frames}"}
        if out["face_px_median"] < cfg.min_face_px:
            return {**out, "faces_status": SKIPPED, "faces_error":
                    f"face too small: median {out['face_px_median']:.0f} px < "
                    f"min_face_px={cfg.min_face_px}"}
        try:
            return {**out, **self._crop(row, tid, track, size, fps, spec, cropper)}
        except Exception as exc:  # noqa: BLE001 - per-track boundary: the clip's other tracks go on
            log.warning("faces: track %s failed: %s", tid, exc)
            return {**out, "faces_status": FAILED, "faces_error": f"{type(exc).__name__}: {exc}"}

    def _crop(self, row: dict, tid: str, track, size, fps: float, spec: CropSpec,
              cropper: LooseCropper) -> dict:
        crops = crop_geometry(track, spec, fps)
        count = len(crops.pts_s)
        samples = count * AUDIO_RATE // CROP_FPS
        audio = None
        if row.get("has_audio"):
            audio = self._audio(row["uri"], crops.start_s, crops.start_s + count / CROP_FPS)
        if audio is None or len(audio) == 0:
            audio = np.zeros(samples, np.float32)
        shard = int(row.get("shard") or 0)
        rel = media_relpath(shard, tid, "crop.mp4")
        sharpness = cropper.finish(track, crops, audio[:samples],
                                   self.context.staging_media(shard, rel))
        mesh_rel = None
        if crops.mesh is not None and self.config.mesh:
            mesh_rel = media_relpath(shard, tid, "mesh.npy")
            np.save(self.context.staging_media(shard, mesh_rel), crops.mesh.astype(np.float16))
        frames, pose = frame_rows(tid, crops, size)
        return {**pose, "frame_count": count, "sharpness": sharpness,
                "crop_path": rel, "crop_size": spec.size, "mesh_path": mesh_rel, "frames": frames,
                "start_s": crops.start_s, "end_s": crops.end_s,
                "faces_status": OK, "faces_error": None}
