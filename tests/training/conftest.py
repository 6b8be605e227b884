"""A small catalog curated from generated talking faces through the real pipeline, for the
dataset's and the trainer's tests.

`curated_catalog` (session) runs ingest, scenes, faces, analyze (audio features, lip sync,
expression, emotion) and the persons pass under the shared local Ray on four generated clips
(`FIXTURE_CLIPS`): people from real photos speaking espeak-ng sentences (one of them placed at
the frame's left edge, so its crops are padded), and a clip whose speech ends before a flash on
frame FLASH_FRAME (a bright patch beside the face) and a click in that frame's audio (the
alignment check). Curating takes 2.5-3.5 minutes on 2 cores; the finished catalog (1.6 MB) is
kept in $EMOFORGE_CACHE/test_catalogs/<key> (default ~/.cache/emoforge), keyed by a hash of the
code that produces it (catalog/, pipeline/, jobs/media/, jobs/spec.py, this file, the pins;
other keys' catalogs are removed after a day unused), so later sessions and the trainer's tests
reuse it without starting Ray while nothing changed. EMOFORGE_TEST_FRESH_CATALOG=1 curates
afresh into the session's temporary folder; EMOFORGE_TEST_CATALOG=<path> uses a fixture catalog
built earlier as it is (while iterating on tests as pipeline code changes).

Fixtures (session scope):
    curated_catalog      the catalog's path (str)
    curated_thresholds   catalog.Thresholds that keep the fixture's tracks (small faces, a
                         silent stretch, no lip-sync rule)
    curated_index        catalog.select(curated_catalog, curated_thresholds), kept rows only
    curated_tracks       fixture clip name -> its first track row (dict of the tracks table)
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import catalog

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
FPS, RATE = 25, 16000
SAMPLES_PER_FRAME = RATE // FPS
CANVAS = (352, 288)  # source frame width, height (px)
FACE_PX = 200  # side of the rendered face image (the face box is about half of it)
FLASH_FRAME = 68  # source frame of the flash in the alignment clip (the click sits in it)
FLASH_PATCH = (24, 24, 64, 64)  # x0, y0, x1, y1 of the flash in the face image (beside the face)
CLICK_OFFSET_S = 0.02  # the click's centre after the flash frame's start: mid-frame
NOISE_FLOOR = 2e-3  # standard deviation of the noise added to every clip's audio

# Thresholds for the fixture catalog: small generated faces, short clips, and a silent clip.
FIXTURE_THRESHOLDS = catalog.Thresholds(min_face_px_median=48, min_track_s=1.0, min_speech_ratio=0.0,
                                        require_lip_sync=False, max_abs_yaw_deg=90.0)


@dataclass(frozen=True)
class FixtureClip:
    name: str
    photo: str  # "astronaut" or a jobs.media.sources photo name
    text: str  # espeak-ng sentence, from the clip's start
    flash: bool  # the flash patch on FLASH_FRAME and a click in its audio (after the speech)
    seconds: float
    face_x: int  # left edge of the face image in the source frame (px; negative: cut off)
    face_y: int
    seed: int


FIXTURE_CLIPS = (
    FixtureClip("astronaut_talks", "astronaut", "We will meet again tomorrow morning at seven.",
                False, 3.6, 76, 44, 1),
    FixtureClip("happy_talks", "happy.jpg", "Please call Stella and ask her to bring these things.",
                False, 3.6, 90, 40, 2),
    FixtureClip("man_at_edge", "single_face.jpg", "Open the window, it is very warm in here.",
                False, 3.6, -40, 50, 3),
    FixtureClip("flash_click", "astronaut", "Hello there.", True, 3.6, 80, 44, 4),
)


def _face(photo: str, size: int = FACE_PX):
    from jobs.media.talking_face import astronaut_face, photo_face

    return astronaut_face(size) if photo == "astronaut" else photo_face(photo, size)


def background(seed: int, width: int = CANVAS[0], height: int = CANVAS[1]) -> np.ndarray:
    """uint8[H,W,3]: a smooth colour gradient with fixed texture (no faces)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([90 + 60 * xx / width, 110 + 40 * yy / height, 140 - 50 * xx / width], -1)
    texture = rng.normal(0, 6, (height // 8 + 1, width // 8 + 1, 1)).repeat(8, 0).repeat(8, 1)
    return np.clip(base + texture[:height, :width], 0, 255).astype(np.uint8)


def click(audio: np.ndarray, at_s: float, length_s: float = 0.03, amplitude: float = 0.9) -> None:
    """Add a Hann-windowed 3 kHz burst centred at `at_s` into float32[N] 16 kHz audio (30 ms:
    inside one 40 ms frame when centred in it; through two AAC encodes, its Whisper row stands
    out from a -54 dBFS noise floor's rows by about 1.5x)."""
    n = int(length_s * RATE)
    start = int(round(at_s * RATE)) - n // 2
    t = np.arange(n) / RATE
    audio[start: start + n] += amplitude * np.hanning(n) * np.sin(2 * np.pi * 3000 * t)


def write_fixture_clip(clip: FixtureClip, folder: Path) -> Path:
    """Render one clip (H.264 + AAC, 25 fps) into `folder`; returns its path."""
    from jobs.media.talking_face import drive_signal, render, speech, write_clip

    frames_n = int(round(clip.seconds * FPS))
    audio = np.zeros(frames_n * SAMPLES_PER_FRAME, np.float32)
    spoken = speech(clip.text)[: len(audio)]
    audio[: len(spoken)] = spoken
    # a room-noise floor: Whisper's states for digital silence wander (rows stand out at random)
    audio += np.random.default_rng(clip.seed).normal(0, NOISE_FLOOR, len(audio)).astype(np.float32)
    if clip.flash and len(spoken) > (FLASH_FRAME - 12) * SAMPLES_PER_FRAME:
        raise ValueError(f"{clip.name}: the speech must end well before frame {FLASH_FRAME}")
    face = _face(clip.photo)
    faces = render(face, drive_signal(audio, frames_n), seed=clip.seed)
    canvas = background(clip.seed)
    width, height = CANVAS
    x0, y0 = max(0, clip.face_x), max(0, clip.face_y)
    x1, y1 = min(width, clip.face_x + FACE_PX), min(height, clip.face_y + FACE_PX)
    frames = np.repeat(canvas[None], frames_n, 0)
    frames[:, y0:y1, x0:x1] = faces[:, y0 - clip.face_y: y1 - clip.face_y,
                                    x0 - clip.face_x: x1 - clip.face_x]
    if clip.flash:  # a bright patch only: a whole-frame flash reads as a cut to the scene detector
        px0, py0, px1, py1 = FLASH_PATCH
        patch = frames[FLASH_FRAME, clip.face_y + py0: clip.face_y + py1,
                       clip.face_x + px0: clip.face_x + px1]
        patch[:] = np.clip(patch.astype(np.int16) + 120, 0, 255).astype(np.uint8)
        click(audio, FLASH_FRAME / FPS + CLICK_OFFSET_S)
    return write_clip(folder / f"{clip.name}.mp4", frames, audio, crf=20)


def curate(inputs: list[Path], out: Path) -> None:
    """The real pipeline (every stage, bundled models) and the persons pass into `out`."""
    from jobs.curate import curate as curate_spec
    from jobs.spec import build

    curate_spec(build({"job": {"inputs": [str(p) for p in inputs], "out": str(out)},
                       "runner": {"num_shards": 4}}))


def _code_key() -> str:
    """Hash of everything that shapes the fixture catalog: this file, catalog/, pipeline/,
    jobs/media/ (the generators), jobs/spec.py (the job spec) and the dependency pins."""
    digest = hashlib.sha256()
    files = [Path(__file__), REPO / "pyproject.toml"]
    for folder in ("catalog", "pipeline", "jobs/media"):
        files += sorted((REPO / folder).rglob("*.py"))
    files += [REPO / "jobs" / "spec.py", REPO / "jobs" / "curate.py"]
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_fixture_catalog(cache: Path, ensure_ray=None) -> Path:
    """The fixture catalog under `cache/<code key>/catalog`, curated once (atomically) and
    reused while the code that makes it is unchanged. `ensure_ray` starts Ray when needed."""
    target = cache / _code_key() / "catalog"
    if (target / "_manifest.json").is_file():
        os.utime(target.parent)  # in use: not stale
        return target
    if ensure_ray is not None:
        ensure_ray()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=".build-"))
    try:
        inputs = [write_fixture_clip(c, work) for c in FIXTURE_CLIPS]
        curate(inputs, work / "catalog")
        if not (target / "_manifest.json").is_file():
            if target.exists():
                shutil.rmtree(target)
            os.replace(work / "catalog", target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for old in cache.iterdir():  # earlier code versions' catalogs, unused for a day
        stale = time.time() - old.stat().st_mtime > 86400
        if old.is_dir() and old.name != target.parent.name and stale:
            shutil.rmtree(old, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def curated_catalog(request, tmp_path_factory) -> str:
    """Path of the fixture catalog (FIXTURE_CLIPS curated through the real pipeline)."""
    from pipeline.models.registry import cache_root

    given = os.environ.get("EMOFORGE_TEST_CATALOG")
    if given:  # a fixture catalog built earlier (build_fixture_catalog), used as it is
        if not (Path(given) / "_manifest.json").is_file():
            raise FileNotFoundError(f"EMOFORGE_TEST_CATALOG={given} is not a catalog")
        return given
    if os.environ.get("EMOFORGE_TEST_FRESH_CATALOG") == "1":
        cache = tmp_path_factory.mktemp("fixture_catalog")
    else:
        cache = cache_root() / "test_catalogs"
        cache.mkdir(parents=True, exist_ok=True)
    return str(build_fixture_catalog(cache, lambda: request.getfixturevalue("ray_local")))


@pytest.fixture(scope="session")
def curated_thresholds() -> catalog.Thresholds:
    return FIXTURE_THRESHOLDS


@pytest.fixture(scope="session")
def curated_index(curated_catalog) -> pa.Table:
    """`catalog.select` of the fixture catalog with FIXTURE_THRESHOLDS, kept rows only."""
    selected = catalog.select(curated_catalog, FIXTURE_THRESHOLDS)
    return selected.filter(selected["keep"])


@pytest.fixture(scope="session")
def curated_tracks(curated_catalog) -> dict[str, dict]:
    """Fixture clip name -> its first track's row (the tracks table), by the videos' uris."""
    root = curated_catalog
    videos = {v["video_id"]: Path(v["uri"]).stem
              for v in catalog.read_table(root, "videos").to_pylist()}
    out: dict[str, dict] = {}
    for row in sorted(catalog.read_table(root, "tracks").to_pylist(), key=lambda r: r["start_s"]):
        out.setdefault(videos[row["video_id"]], row)
    return out
