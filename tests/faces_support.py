"""Helpers for the faces tests: run FacesStage on a file, real face patches, generated clips."""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa

from pipeline import media
from pipeline.stages.contract import StageContext
from pipeline.stages.faces.stage import FacesConfig, FacesStage


@functools.lru_cache(maxsize=4)
def stage_for(config: FacesConfig, root: str) -> FacesStage:
    stage = FacesStage(config, StageContext(root, f"{root}/_staging/run"))
    stage.setup()
    return stage


def probe(uri: str) -> dict:
    import av

    with av.open(uri) as c:
        s = c.streams.video[0]
        dur = float(s.duration * s.time_base) if s.duration else c.duration / 1e6
        return {"fps": float(s.average_rate or 25), "width": s.width, "height": s.height,
                "has_audio": bool(c.streams.audio), "duration": dur}


def run_faces(uri: str, root: str, config: FacesConfig | None = None, clip_id: str = "clip0",
              start_s: float = 0.0, end_s: float | None = None) -> dict:
    info = probe(str(uri))
    row = {"clip_id": clip_id, "video_id": "video0", "shard": 0, "start_s": start_s,
           "end_s": end_s if end_s is not None else info["duration"] + 1.0, "uri": str(uri),
           "fps": info["fps"], "width": info["width"], "height": info["height"], "rotation": 0,
           "has_audio": info["has_audio"]}
    stage = stage_for(config or FacesConfig(), str(root))
    out = stage.process(pa.Table.from_pylist([row]))
    assert out.schema.equals(stage.output_schema())
    return out.to_pylist()[0]


@functools.cache
def face_patch(name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A real face photo cut around its face -> (uint8[size,size,3] RGB, face box float[4] in the
    patch, measured once on the still with the bundled detector and landmarker)."""
    import cv2

    from pipeline.models.geometry import face_box_from_68
    from pipeline.models.faces.mediapipe import MediapipeFaces

    if name == "astronaut":
        from skimage import data

        image = data.astronaut()
    else:
        from jobs.media.sources import media_file

        image = cv2.cvtColor(cv2.imread(str(media_file(name))), cv2.COLOR_BGR2RGB)
    model = MediapipeFaces()
    det = model.detect(image)[0]
    cx, cy = (det.box[:2] + det.box[2:]) / 2
    side = float(max(det.box[2:] - det.box[:2])) * 1.7
    m = np.array([[size / side, 0, size / 2 - cx * size / side],
                  [0, size / side, size / 2 - cy * size / side]], np.float32)
    patch = cv2.warpAffine(image, m, (size, size), borderMode=cv2.BORDER_REPLICATE)
    det = model.detect(patch)[0]
    box = face_box_from_68(model.landmarks(patch, det.box, det.keypoints).points68)
    return patch, box


def background(w: int, h: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    import cv2

    noise = rng.integers(60, 200, (h // 8, w // 8, 3), dtype=np.uint8)
    return cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR)


def paste(frame: np.ndarray, patch: np.ndarray, x: int, y: int) -> None:
    """Paste a patch with a soft elliptical edge at (x, y) top-left (in place, clipped)."""
    h, w = patch.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    alpha = np.clip(1.2 - (((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2), 0, 1)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, frame.shape[1]), min(y + h, frame.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    a = alpha[y0 - y:y1 - y, x0 - x:x1 - x, None]
    region = frame[y0:y1, x0:x1].astype(np.float32)
    frame[y0:y1, x0:x1] = (a * patch[y0 - y:y1 - y, x0 - x:x1 - x] + (1 - a) * region).astype(
        np.uint8)


def write_clip(path, frames: list[np.ndarray], fps=25, audio: np.ndarray | None = None) -> str:
    media.write_video(str(path), np.stack(frames), fps, audio, 16000)
    return str(path)
