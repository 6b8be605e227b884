"""Shot splitting: PyAV frames at reduced width fed to PySceneDetect's detectors, in windows.

The algorithm, in order:

1. Decode the video once with `pipeline.media.iter_frames` at `detect_width` (FFmpeg's scaler;
   about what scenedetect's automatic downscale gives), and feed every frame (BGR) to a
   PySceneDetect detector's `process_frame` (AdaptiveDetector by default, ContentDetector as an
   option) with its own minimum scene length set to 0, so the detector reports every frame whose
   score passes its thresholds ("raw cuts": the first frame of a new shot).
2. Inputs longer than `window_s` are decoded in windows of `window_s` plus `window_overlap_s` on
   each side; a window keeps only the raw cuts whose pts lies in its own nominal range
   [k * window_s, (k + 1) * window_s). Raw cuts depend only on a few neighbouring frames, so the
   stitched list equals the one-piece list whenever the overlap exceeds the detector's context.
   The windows are independent: the scenes stage offers them to the runner as parts of the row,
   which runs them as parallel tasks, so a multi-hour file is never one multi-hour task.
3. The minimum scene length is applied to the stitched list, greedily from the first frame,
   exactly as AdaptiveDetector applies `min_scene_len` (a cut closer than `min_scene_s` to the
   previous accepted cut, or to the first frame, is dropped).
4. Each cut ends the previous clip `trim_s` before the cut and starts the next one `trim_s`
   after it (snapped to frame pts), so transition frames detected a frame late do not leak into
   a clip. Shots longer than `max_clip_s` are split into equal parts (`cut_before = "split"`).

Fades: a gradual transition (a fade through black or a cross-dissolve) changes each frame only a
little, so the adaptive detector, which looks for a frame much more different from its
neighbours than they are from each other, does not cut inside it; the shots on both sides of a
slow fade stay in one clip (the faces stage splits tracks where a face disappears). A fast fade
(a few frames) is detected as a cut inside the transition. tests/pipeline/stages/scenes/test_scenes.py checks
both behaviours.

Times are pts seconds relative to the video stream start; frame numbers are source frame numbers
(`VideoFrame.index`); spans are half-open [start, end).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TypeVar

import numpy as np

from pipeline.media import MediaError, VideoFrame, iter_frames, probe_video

T = TypeVar("T")
log = logging.getLogger(__name__)

DETECTORS = ("adaptive", "content")


@dataclass(frozen=True)
class ScenesConfig:
    """Scene split options. Defaults follow scenedetect's `detect-adaptive` command."""

    detector: str = "adaptive"  # "adaptive" (AdaptiveDetector) or "content" (ContentDetector)
    detect_width: int = 256  # decode width for detection (px); height keeps the aspect
    min_scene_s: float = 0.6  # a cut closer than this to the previous one is dropped (s)
    trim_s: float = 0.08  # frames within this distance of a cut are left out of both clips (s)
    max_clip_s: float = 60.0  # longer shots are split into equal parts no longer than this (s)
    # Inputs longer than window_s are decoded in windows, each a task of its own that the runner
    # runs in parallel (s); the overlap is extra decode on each side of a window (s). Neither
    # changes the clips (tested), so neither is part of the stage's fingerprint.
    window_s: float = field(default=120.0, metadata={"fingerprint": False})
    window_overlap_s: float = field(default=2.0, metadata={"fingerprint": False})
    adaptive_threshold: float = 3.0  # AdaptiveDetector: score / mean neighbour score
    adaptive_window: int = 2  # AdaptiveDetector: frames on each side in the rolling mean
    min_content_val: float = 15.0  # AdaptiveDetector: minimum HSV content score for a cut
    content_threshold: float = 27.0  # ContentDetector: HSV content score threshold
    luma_only: bool = False  # score the luma channel only
    black_level: float = 12.0  # frames with a mean RGB level below this are fade-through-black
    decode_threads: int = 2  # FFmpeg frame threads, besides the detector thread
    scale: str = "FAST_BILINEAR"  # swscale method for the downscale (scenedetect: bilinear)
    skip_loop_filter: bool = True  # skip H.264/HEVC deblocking: ~20% faster decode, same cuts

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(f"scenes.detector must be one of {DETECTORS}, got {self.detector!r}")
        if self.detect_width < 16:
            raise ValueError(f"scenes.detect_width must be >= 16 px, got {self.detect_width}")
        if not 0 <= 2 * self.trim_s < self.min_scene_s:
            raise ValueError(
                f"scenes.trim_s must be >= 0 and less than half of min_scene_s "
                f"({self.min_scene_s}), got {self.trim_s}"
            )
        if self.max_clip_s <= self.min_scene_s:
            raise ValueError(
                f"scenes.max_clip_s ({self.max_clip_s}) must exceed min_scene_s ({self.min_scene_s})"
            )
        if self.window_s < 10 * self.window_overlap_s or self.window_overlap_s < 1.0:
            raise ValueError(
                f"scenes.window_overlap_s must be >= 1 s and window_s >= 10 x overlap, got "
                f"window_s={self.window_s}, window_overlap_s={self.window_overlap_s}"
            )

    def detector_params(self) -> dict:
        """The parameters that decide where cuts fall (recorded with every clip)."""
        params = {"detector": self.detector, "detect_width": self.detect_width, "scale": self.scale,
                  "min_scene_s": self.min_scene_s, "luma_only": self.luma_only,
                  "black_level": self.black_level}
        if self.detector == "adaptive":
            params.update(adaptive_threshold=self.adaptive_threshold,
                          window_width=self.adaptive_window, min_content_val=self.min_content_val)
        else:
            params.update(threshold=self.content_threshold)
        return params

    def describe(self) -> str:
        """Detector and parameters as JSON (the `scenes_detector` column)."""
        full = {**self.detector_params(), "trim_s": self.trim_s, "max_clip_s": self.max_clip_s}
        return json.dumps(full, sort_keys=True)


@dataclass(frozen=True)
class ClipSpan:
    """One clip: frames with pts in [start_s, end_s), source frames [start_frame, end_frame)."""

    start_s: float
    end_s: float
    start_frame: int
    end_frame: int
    cut_before: str  # "start" (video start), "cut" (a detected cut) or "split" (max length)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class SceneScan:
    """What one decode pass saw: every frame's pts and number, and the raw cuts (positions
    into those arrays of the first frame of each new shot, before the minimum length)."""

    pts: np.ndarray = field(default_factory=lambda: np.zeros(0))  # float64[T] s
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # int64[T]
    level: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # float32[T] 0-255
    raw_cuts: list[int] = field(default_factory=list)
    frame_duration_s: float = 0.04  # nominal (1 / average fps), for the last frame's end
    windows: int = 1

    @property
    def frames(self) -> int:
        return len(self.pts)


def make_detector(config: ScenesConfig):
    """A fresh PySceneDetect detector with its own minimum scene length disabled."""
    from scenedetect.detectors import AdaptiveDetector, ContentDetector  # heavy: loaded on use

    if config.detector == "adaptive":
        return AdaptiveDetector(
            adaptive_threshold=config.adaptive_threshold, min_scene_len=0,
            window_width=config.adaptive_window, min_content_val=config.min_content_val,
            luma_only=config.luma_only,
        )
    return ContentDetector(threshold=config.content_threshold, min_scene_len=0,
                           luma_only=config.luma_only)


def _scan_range(
    path: str, config: ScenesConfig, fps: float, start_s: float | None, end_s: float | None
) -> tuple[list[float], list[int], list[float], list[int]]:
    """Decode [start_s, end_s) and return (pts, frame numbers, mean levels, raw cut positions).

    Decoding, scaling and colour conversion run in a second thread (FFmpeg and OpenCV release
    the GIL) while this one runs the detector, as scenedetect's own decode thread does."""
    from scenedetect.common import FrameTimecode  # heavy: loaded on use

    detector = make_detector(config)
    rate = Fraction(fps).limit_denominator(1_000_000)  # FrameTimecode converts floats per call
    tail: deque[tuple[int, float]] = deque(maxlen=2 * config.adaptive_window + 1)
    pts: list[float] = []
    index: list[int] = []
    level: list[float] = []
    cuts: list[int] = []
    frames = iter_frames(path, start_s=start_s, end_s=end_s, width=config.detect_width,
                         threads=config.decode_threads, interpolation=config.scale,
                         decoder_options={"skip_loop_filter": "all"} if config.skip_loop_filter else None)
    for position, (pts_s, frame_index, mean, bgr) in enumerate(prefetch(frames, _prepare)):
        pts.append(pts_s)
        index.append(frame_index)
        level.append(mean)
        for cut in detector.process_frame(FrameTimecode(position, fps=rate), bgr):
            cuts.append(cut.frame_num)
        tail.append((position, float(getattr(detector, "_frame_score", 0.0) or 0.0)))
    for cut in detector.post_process(FrameTimecode(max(0, len(pts) - 1), fps=rate)):
        cuts.append(cut.frame_num)
    if config.detector == "adaptive":
        cuts.extend(_adaptive_tail_cuts(list(tail), len(pts), config))
    return pts, index, level, cuts


def _prepare(frame: VideoFrame) -> tuple[float, int, float, np.ndarray]:
    """(pts s, frame number, mean RGB level 0-255, uint8[H,W,3] BGR) of a decoded frame."""
    import cv2  # heavy: loaded on use

    bgr = cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
    mean = cv2.mean(bgr)
    return frame.pts_s, frame.index, (mean[0] + mean[1] + mean[2]) / 3.0, bgr


def prefetch(items: Iterator, transform: Callable[..., T], depth: int = 16) -> Iterator[T]:
    """`transform(item)` for each of `items`, computed in a background thread `depth` items
    ahead; its exceptions are re-raised here, and stopping early stops and closes `items`."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                value = transform(item)
                while not stop.is_set():
                    try:
                        buffer.put((value, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer and re-raised
            buffer.put((done, exc))
            return
        finally:
            close = getattr(items, "close", None)
            if stop.is_set() and close is not None:
                close()
        buffer.put((done, None))

    thread = threading.Thread(target=produce, name="scenes-decode", daemon=True)
    thread.start()
    try:
        while True:
            item, error = buffer.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                buffer.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()


def _adaptive_tail_cuts(tail: list[tuple[int, float]], n: int, config: ScenesConfig) -> list[int]:
    """AdaptiveDetector never scores the last `adaptive_window` frames (it needs that many frames
    after each one); score them against the neighbours they have, with the same rule."""
    width = config.adaptive_window
    out = []
    for i, (position, score) in enumerate(tail):
        if position < max(width, n - width):
            continue
        near = [s for j, (q, s) in enumerate(tail) if j != i and abs(q - position) <= width]
        mean = sum(near) / len(near) if near else 0.0
        if abs(mean) < 1e-5:
            ratio = 255.0 if score >= config.min_content_val else 0.0
        else:
            ratio = min(score / mean, 255.0)
        if ratio >= config.adaptive_threshold and score >= config.min_content_val:
            out.append(position)
    return out


@dataclass(frozen=True)
class Window:
    """One decode window of a video: frames with pts in [lo, hi) are kept; [start, end) is
    decoded (the window plus `window_overlap_s` on each side; None: from the start / to the end)."""

    number: int
    lo: float
    hi: float
    start: float | None
    end: float | None


@dataclass
class WindowScan:
    """What one window's decode kept: its frames' pts, numbers and levels, the raw cuts as
    positions into them, and the seconds it took."""

    pts: list[float]
    index: list[int]
    level: list[float]
    cuts: list[int]
    fps: float  # the stream's average rate
    seconds: float = 0.0


def windows(duration_s: float, config: ScenesConfig) -> list[Window]:
    """The decode windows of a video of `duration_s` seconds: one when it is not longer than
    `window_s` plus the overlap (or its length is unknown), else ceil(duration / window_s)."""
    count = 1
    if math.isfinite(duration_s) and duration_s > config.window_s + config.window_overlap_s:
        count = math.ceil(duration_s / config.window_s)
    out = []
    for k in range(count):
        lo = k * config.window_s if k else -math.inf
        hi = (k + 1) * config.window_s if k < count - 1 else math.inf
        start = max(0.0, lo - config.window_overlap_s) if k else None
        end = hi + config.window_overlap_s if math.isfinite(hi) else None
        out.append(Window(k, lo, hi, start, end))
    return out


def window_seconds(duration_s: float, config: ScenesConfig) -> list[float]:
    """Seconds each window decodes (the cluster simulation's cost of each scenes part)."""
    parts = windows(duration_s, config)
    return [min(w.end if w.end is not None else duration_s, duration_s) - (w.start or 0.0)
            for w in parts]


def scan_window(path: str, config: ScenesConfig, fps: float, window: Window) -> WindowScan:
    """Decode one window and keep the frames (and raw cuts) in its nominal range."""
    started = time.perf_counter()
    pts, index, level, cuts = _scan_range(path, config, fps, window.start, window.end)
    keep = [i for i, t in enumerate(pts) if window.lo - 1e-6 <= t < window.hi - 1e-6]
    first = keep[0] if keep else 0
    cut_set = set(cuts)
    log.debug("%s: window %d [%s, %s): %d frames, %d raw cuts", path, window.number + 1,
              window.lo, window.hi, len(keep), len(cuts))
    return WindowScan(pts=[pts[i] for i in keep], index=[index[i] for i in keep],
                      level=[level[i] for i in keep], cuts=[p - first for p in keep if p in cut_set],
                      fps=fps, seconds=time.perf_counter() - started)


def stitch(path: str, parts: list[WindowScan]) -> SceneScan:
    """The windows' scans, in order, as one scan. Raw cuts depend only on a few neighbouring
    frames, so this equals the one-piece scan whenever the overlap exceeds the detector's
    context; a cut on a window's first frame counts, except on the video's first frame."""
    all_pts: list[float] = []
    all_index: list[int] = []
    all_level: list[float] = []
    raw: list[int] = []
    for part in parts:
        if not part.pts:
            continue
        offset = len(all_pts)
        raw.extend(c + offset for c in part.cuts if offset or c != 0)
        all_pts.extend(part.pts)
        all_index.extend(part.index)
        all_level.extend(part.level)
    if not all_pts:
        raise MediaError(f"{path}: no decodable video frames")
    return SceneScan(pts=np.asarray(all_pts, np.float64), index=np.asarray(all_index, np.int64),
                     level=np.asarray(all_level, np.float32), raw_cuts=sorted(set(raw)),
                     frame_duration_s=1.0 / parts[0].fps, windows=len(parts))


def plan_windows(path: str, config: ScenesConfig,
                 duration_s: float | None = None) -> tuple[float, list[Window]]:
    """(the stream's fps, its decode windows); `duration_s` (ingest's) or the container's."""
    probed_duration, fps = probe_video(path)
    duration = duration_s if duration_s and duration_s > 0 else probed_duration
    return fps, windows(duration, config)


def scan(path: str, config: ScenesConfig, duration_s: float | None = None) -> SceneScan:
    """Decode the video (in windows when longer than `config.window_s`) and find raw cuts."""
    fps, parts = plan_windows(path, config, duration_s)
    return stitch(path, [scan_window(path, config, fps, w) for w in parts])


def dark_runs(result: SceneScan, black_level: float) -> list[tuple[int, int]]:
    """Half-open position runs [i, j) of frames darker than `black_level` (fades through black)."""
    dark = np.concatenate([[False], result.level < black_level, [False]])
    edges = np.flatnonzero(dark[1:] != dark[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def boundaries(result: SceneScan, config: ScenesConfig) -> list[tuple[str, int, int]]:
    """Shot boundaries in order: ("cut", p, p) for a detected cut at position p (minimum scene
    length applied, greedily from the first frame as AdaptiveDetector does) and ("black", i, j)
    for a run of black frames [i, j). Detector cuts within `adaptive_window` frames of a black
    run belong to that fade and are dropped."""
    runs = dark_runs(result, config.black_level)
    reach = max(2, config.adaptive_window)
    events: list[tuple[int, int, str, int]] = [(i, 0, "black", j) for i, j in runs]
    for p in result.raw_cuts:
        if p > 0 and not any(i - reach <= p <= j + reach for i, j in runs):
            events.append((p, 1, "cut", p))
    out: list[tuple[str, int, int]] = []
    last = float(result.pts[0])
    for position, _, kind, stop in sorted(events):
        if kind == "black":
            out.append((kind, position, stop))
            last = float(result.pts[min(stop, len(result.pts) - 1)])
        elif result.pts[position] - last >= config.min_scene_s - 1e-6:
            out.append((kind, position, position))
            last = float(result.pts[position])
    return out


def spans(result: SceneScan, config: ScenesConfig) -> list[ClipSpan]:
    """Clip spans from a scan: cuts (trimmed by `trim_s` on each side), black runs left out,
    shots longer than `max_clip_s` split into equal parts."""
    pts = result.pts
    n = len(pts)
    end_of_video = float(pts[-1] + result.frame_duration_s)

    def first_at_or_after(t: float) -> int:
        return int(np.searchsorted(pts, t - 1e-6, side="left"))

    scenes: list[tuple[int, int]] = []  # (first position, end position exclusive)
    first = 0
    for kind, i, j in boundaries(result, config):
        if kind == "cut":
            scenes.append((first, first_at_or_after(pts[i] - config.trim_s)))
            first = first_at_or_after(pts[i] + config.trim_s)
        else:
            scenes.append((first, i))
            first = j
    scenes.append((first, n))

    out: list[ClipSpan] = []
    for first, stop in scenes:
        if stop <= first:
            continue
        t0 = float(pts[first])
        t1 = float(pts[stop]) if stop < n else end_of_video
        parts = max(1, math.ceil((t1 - t0) / config.max_clip_s - 1e-9))
        while True:
            edges = [first] + [first_at_or_after(t0 + k * (t1 - t0) / parts)
                               for k in range(1, parts)] + [stop]
            times = [float(pts[e]) if e < n else end_of_video for e in edges]
            if all(b - a <= config.max_clip_s + 1e-6 for a, b in itertools.pairwise(times)):
                break
            parts += 1
        for k in range(parts):
            a, b = edges[k], edges[k + 1]
            if b <= a:
                continue
            kind = "split" if k else ("cut" if out else "start")
            out.append(ClipSpan(
                start_s=times[k], end_s=times[k + 1], start_frame=int(result.index[a]),
                end_frame=int(result.index[b]) if b < n else int(result.index[-1]) + 1,
                cut_before=kind,
            ))
    return out


def detect_scenes(path: str, config: ScenesConfig | None = None,
                  duration_s: float | None = None) -> list[ClipSpan]:
    """Clip spans of one video file (see the module docstring for the algorithm)."""
    config = config or ScenesConfig()
    return spans(scan(str(path), config, duration_s), config)


def cut_times(path: str, config: ScenesConfig | None = None) -> list[float]:
    """The pts (s) of the first frame of every new shot: detected cuts after the minimum scene
    length, and the first frame after each run of black frames."""
    config = config or ScenesConfig()
    result = scan(str(path), config)
    return [float(result.pts[j]) for _, _, j in boundaries(result, config) if j < result.frames]
