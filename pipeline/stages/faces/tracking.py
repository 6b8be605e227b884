"""Per-clip face tracking: detect every few frames, follow with the landmarker in between.

A track follows one face: the landmarker runs on the region given by the previous frame's
landmarks (cheap), the detector runs every `detect_stride` frames (and every frame while a track
is lost) to find new faces and re-acquire lost ones. A new face is extended backwards over the
frames since the last detection (a small ring buffer), so track starts are frame-exact. A track
ends when its face is missing for more than `max_missed_frames`, when its identity embedding
(checked every `identity_every` frames, and whenever the face patch drifted from its look at the
last check, e.g. a crossfade) moves beyond the backend's threshold, or at the clip end
(clips end at cuts). Per frame, each track may keep a loose crop (see pipeline.stages.faces.crop) so the
final smoothed crop is cut after the clip was decoded once.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipeline.media import VideoFrame
from pipeline.models.faces import Detection, FaceBackend, Landmarks
from pipeline.models.geometry import face_box_from_68, iou, iou_matrix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackerConfig:
    detect_stride: int = 25  # source frames between detections (new faces are backfilled)
    detect_width: int = 640  # frames wider than this are downscaled for detection (px)
    max_missed_frames: int = 12  # a track ends after this many frames without its face
    identity_every: int = 50  # frames between identity checks of a track
    identity_threshold: float = 0.6  # embedding distance that ends a track (backend scale)
    match_iou: float = 0.3  # a detection belongs to a track above this IoU
    min_box_px: float = 8.0  # landmark boxes smaller than this count as lost
    jump_iou: float = 0.5  # a box overlapping the previous frame's less than this: a cut
    appearance_corr: float = 0.6  # face patch correlation below this triggers an identity check
    mesh: bool = False  # keep the 478-point mesh per frame (mesh backends)


@dataclass
class Observation:
    """One face in one source frame. box float32[4] source px; points68 float32[68,2] source px;
    mesh float16[478,3] or None; det_score: detector confidence when detected in this frame."""

    index: int
    pts_s: float
    box: np.ndarray
    points68: np.ndarray
    presence: float
    det_score: float = float("nan")
    mesh: np.ndarray | None = None
    thumb: np.ndarray | None = None  # float32[256] zero-mean unit-norm 16x16 gray face patch


@dataclass
class FaceTrack:
    """A followed face: observations by source frame (missed frames absent), identity samples,
    loose crops keyed by source frame ((pts, crop); the crop None once written, see
    pipeline.stages.faces.crop), and why it ended."""

    key: int
    obs: dict[int, Observation] = field(default_factory=dict)
    embeddings: list[np.ndarray] = field(default_factory=list)
    crops: dict[int, object] = field(default_factory=dict)
    faces_in_frame: dict[int, int] = field(default_factory=dict)
    missed: int = 0
    force_identity: bool = False
    pending: tuple[Observation, Landmarks] | None = None
    ended: str | None = None
    last: Observation | None = None
    last_landmarks: Landmarks | None = None
    verified_thumb: np.ndarray | None = None  # face patch at the last identity check

    @property
    def first_index(self) -> int:
        return min(self.obs)

    @property
    def last_index(self) -> int:
        return max(self.obs)


class Tracker:
    """Feed frames in order with `step`; `finish` returns every track (ended or not).

    on_frame(track, frame, observation_or_None) is called for each active track and frame (also
    for backfilled frames), e.g. to keep a loose crop for the 25 fps grid."""

    def __init__(self, backend: FaceBackend, config: TrackerConfig,
                 on_frame: Callable[[FaceTrack, VideoFrame, Observation | None], None] | None = None):
        self.backend = backend
        self.config = config
        self.on_frame = on_frame
        self.active: list[FaceTrack] = []
        self.done: list[FaceTrack] = []
        self.ring: collections.deque[VideoFrame] = collections.deque(maxlen=config.detect_stride)
        self.count = 0
        self.next_key = 0
        self.detections = 0

    # ---- per frame ------------------------------------------------------------------------
    def step(self, frame: VideoFrame) -> None:
        image = frame.image
        for track in self.active:
            self._follow(track, frame)
        lost = any(t.missed > 0 or t.pending for t in self.active)
        if self.count % self.config.detect_stride == 0 or lost:
            self._detect(frame)
        for track in self.active:
            if track.pending is not None:  # no detection confirmed the changed face
                track.pending = None
                track.missed += 1
        self._dedupe(frame)
        n = sum(1 for t in self.active if frame.index in t.obs)
        for track in list(self.active):
            ob = track.obs.get(frame.index)
            if ob is not None:
                track.faces_in_frame[frame.index] = n
                self._check_identity(track, frame, ob)
            if track.missed > self.config.max_missed_frames:
                self._end(track, "face lost")
            elif track in self.active and self.on_frame is not None:
                self.on_frame(track, frame, ob)
        self.ring.append(frame)
        self.count += 1
        del image

    def finish(self, reason: str = "clip end") -> list[FaceTrack]:
        for track in list(self.active):
            self._end(track, reason)
        tracks = sorted(self.done, key=lambda t: t.first_index)
        return [t for t in tracks if t.obs]

    # ---- internals ------------------------------------------------------------------------
    def _observe(self, frame: VideoFrame, lm: Landmarks, det: Detection | None) -> Observation | None:
        if lm.presence < self.backend.presence_threshold:
            return None
        box = face_box_from_68(lm.points68)
        if min(box[2] - box[0], box[3] - box[1]) < self.config.min_box_px:
            return None
        mesh = lm.mesh.astype(np.float16) if (self.config.mesh and lm.mesh is not None) else None
        return Observation(frame.index, frame.pts_s, box, np.asarray(lm.points68, np.float32),
                           float(lm.presence), det.score if det else float("nan"), mesh,
                           thumbnail(frame.image, box))

    def _landmarks(self, image, box, keypoints=None, prev=None) -> Landmarks:
        return self.backend.landmarker.landmarks(image, box, keypoints=keypoints, prev=prev,
                                                 mesh=self.config.mesh)

    def _follow(self, track: FaceTrack, frame: VideoFrame) -> None:
        lm = self._landmarks(frame.image, track.last.box, prev=track.last_landmarks)
        ob = self._observe(frame, lm, None)
        if ob is None:
            track.missed += 1
            return
        if track.missed == 0 and iou(ob.box, track.last.box) < self.config.jump_iou:
            log.debug("track %d: box jump at frame %d (a cut)", track.key, frame.index)
            self._end(track, "cut (face box jumped)")
            self._start(frame, ob, lm, backfill=False)
            return
        if float(ob.thumb @ track.last.thumb) < self.config.appearance_corr:
            track.pending = (ob, lm)  # the face changed abruptly: a detection must confirm it
            return
        self._add(track, ob, lm)

    def _add(self, track: FaceTrack, ob: Observation, lm: Landmarks) -> None:
        track.obs[ob.index] = ob
        track.last, track.last_landmarks, track.missed = ob, lm, 0

    def _detect(self, frame: VideoFrame) -> None:
        import cv2  # heavy: loaded on use

        image = frame.image
        scale = 1.0
        if image.shape[1] > self.config.detect_width:
            scale = self.config.detect_width / image.shape[1]
            small = cv2.resize(image, (self.config.detect_width, round(image.shape[0] * scale)),
                               interpolation=cv2.INTER_AREA)
        else:
            small = image
        dets = self.backend.detector.detect(small)
        self.detections += 1
        for d in dets:
            d.box = d.box / scale
            if d.keypoints is not None:
                d.keypoints = d.keypoints / scale
        if not dets:
            return
        tracks = list(self.active)
        boxes = np.array([(t.pending[0] if t.pending else t.last).box for t in tracks]
                         ) if tracks else np.zeros((0, 4))
        ious = iou_matrix(np.array([d.box for d in dets]), boxes)
        used: set[int] = set()
        for i in np.argsort([-d.score for d in dets]):
            det = dets[i]
            j = int(np.argmax(ious[i])) if len(tracks) else -1
            if j >= 0 and ious[i, j] > self.config.match_iou:
                if j in used:
                    continue
                used.add(j)
                track = tracks[j]
                ob = track.obs.get(frame.index)
                if ob is not None:
                    ob.det_score = det.score
                elif track.pending is not None:  # confirmed: same place, maybe someone else
                    ob, lm = track.pending
                    ob.det_score, track.pending = det.score, None
                    self._add(track, ob, lm)
                    track.force_identity = True
                else:  # lost track: re-acquire from the detection
                    lm = self._landmarks(image, det.box, det.keypoints)
                    ob = self._observe(frame, lm, det)
                    if ob is not None:
                        self._add(track, ob, lm)
                        track.force_identity = True  # the face could be someone else now
                continue
            if ious.shape[1] and ious[i].max() > self.config.match_iou:
                continue
            lm = self._landmarks(image, det.box, det.keypoints)
            ob = self._observe(frame, lm, det)
            if ob is not None:
                self._start(frame, ob, lm)

    def _start(self, frame: VideoFrame, ob: Observation, lm: Landmarks,
               backfill: bool = True) -> FaceTrack:
        track = FaceTrack(key=self.next_key)
        self.next_key += 1
        self._add(track, ob, lm)
        embedding = self.backend.identity.embed(frame.image, ob.points68)
        track.embeddings.append(embedding)
        track.verified_thumb = ob.thumb
        if backfill:
            self._backfill(track, ob, lm)
        self.active.append(track)
        return track

    def _backfill(self, track: FaceTrack, ob: Observation, lm: Landmarks) -> None:
        """Follow the new face backwards through the frames since the last detection."""
        prev_lm, prev_ob = lm, ob
        for past in reversed(self.ring):
            back = self._landmarks(past.image, prev_ob.box, prev=prev_lm)
            bob = self._observe(past, back, None)
            if bob is None:
                break
            track.obs[bob.index] = bob
            prev_lm, prev_ob = back, bob
        if self.on_frame is None:
            return
        for past in self.ring:
            if past.index in track.obs:
                self.on_frame(track, past, track.obs[past.index])

    def _check_identity(self, track: FaceTrack, frame: VideoFrame, ob: Observation) -> None:
        age = ob.index - track.first_index
        # a gradual change (a crossfade, a morph) never trips the frame-to-frame check in
        # _follow: re-check identity when the face drifted from its look at the last check
        drifted = (track.verified_thumb is not None and ob.thumb is not None
                   and float(ob.thumb @ track.verified_thumb) < self.config.appearance_corr)
        due = age > 0 and age % self.config.identity_every == 0
        if not (track.force_identity or drifted or due):
            return
        track.force_identity = False
        embedding = self.backend.identity.embed(frame.image, ob.points68)
        distance = float(np.linalg.norm(embedding - track.embeddings[0]))
        if distance <= self.config.identity_threshold:
            track.embeddings.append(embedding)
            track.verified_thumb = ob.thumb
            return
        log.debug("track %d: identity distance %.2f at frame %d", track.key, distance, ob.index)
        del track.obs[ob.index]
        lm = track.last_landmarks
        self._end(track, f"identity change (distance {distance:.2f})")
        new = FaceTrack(key=self.next_key)
        self.next_key += 1
        self._add(new, ob, lm)
        new.embeddings.append(embedding)
        new.verified_thumb = ob.thumb
        new.faces_in_frame[ob.index] = track.faces_in_frame.pop(ob.index, 1)
        self.active.append(new)

    def _dedupe(self, frame: VideoFrame) -> None:
        """Two tracks that converged on one face: the younger one ends."""
        current = [t for t in self.active if frame.index in t.obs]
        if len(current) < 2:
            return
        ious = iou_matrix(np.array([t.obs[frame.index].box for t in current]),
                          np.array([t.obs[frame.index].box for t in current]))
        for a in range(len(current)):
            for b in range(a + 1, len(current)):
                if ious[a, b] > 0.5 and current[a] in self.active and current[b] in self.active:
                    younger = max(current[a], current[b], key=lambda t: t.first_index)
                    del younger.obs[frame.index]
                    self._end(younger, "merged into an overlapping track")

    def _end(self, track: FaceTrack, reason: str) -> None:
        if track in self.active:
            self.active.remove(track)
        track.ended = reason
        # drop trailing loose crops past the last observation
        if track.obs:
            last = track.last_index
            for k in [k for k in track.crops if k > last]:
                del track.crops[k]
        self.done.append(track)


def thumbnail(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """float32[256]: the face box as a 16x16 gray patch, zero mean, unit norm (cut detection).
    Boxes larger than 64 px are point-sampled to 64x64 first, then area-averaged to 16x16 (4x4
    blocks): about 40 us instead of 150 for an area resize of the whole box."""
    import cv2  # heavy: loaded on use

    h, w = image.shape[:2]
    x0, y0, x1, y1 = box.tolist()
    x0, x1 = min(max(int(x0 + 0.5), 0), w), min(max(int(x1 + 0.5), 0), w)
    y0, y1 = min(max(int(y0 + 0.5), 0), h), min(max(int(y1 + 0.5), 0), h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return np.zeros(256, np.float32)
    patch = image[y0:y1, x0:x1]
    if min(x1 - x0, y1 - y0) > 64:
        patch = cv2.resize(patch, (64, 64), interpolation=cv2.INTER_NEAREST)
    gray = cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY)
    gray = cv2.resize(gray, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    gray -= np.add.reduce(gray) / 256.0
    return gray / max(float(np.sqrt(gray @ gray)), 1e-6)
