"""SyncNet offset search with syncnet_python's math (reference lip-sync backend).

Embeddings: video window i = frames i..i+4 (224x224 BGR, 0..255), audio window i = MFCC frames
4i..4i+19 (13 coefficients at 100 Hz of int16-scale audio), for i < min(T, N // 640) - 5.
For every window i and shift j in 0..2V, d[i, j] = ||v_i - a_{i+j-V}|| with zero audio
embeddings outside the track; mean distance m[j] = mean_i d[i, j];
offset = V - argmin_j m[j] (positive = audio leads); confidence = median_j m - min_j m;
per-frame confidence = median_j m - d[i, j*], median-filtered over 9 windows, placed at the
window's center frame i + 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from catalog.contract import AUDIO_RATE, SAMPLES_PER_FRAME
from pipeline.models.lip_sync.mfcc import mfcc
from pipeline.models.lip_sync.syncnet import CROP, MFCC_PER_FRAME, MFCC_WINDOW, WINDOW

INT16_SCALE = 32768.0


@dataclass(frozen=True)
class DistanceSync:
    """offset (frames, positive = audio leads), confidence (median - min of mean distances),
    min_dist, mean distances float[2V+1] by shift index, per-frame confidence float[T] (NaN
    where no window is centered)."""

    offset_frames: int
    confidence: float
    min_dist: float
    mean_dists: np.ndarray
    frame_confidence: np.ndarray


def window_count(num_frames: int, num_samples: int) -> int:
    """Number of 5-frame windows syncnet_python evaluates (0 when too short)."""
    return max(0, min(num_frames, num_samples // SAMPLES_PER_FRAME) - WINDOW)


def mfcc_windows(audio: np.ndarray, count: int) -> np.ndarray:
    """float32[count,1,13,20] MFCC windows of float32[N] audio in [-1, 1] (int16-scaled)."""
    cc = mfcc(np.asarray(audio, np.float64) * INT16_SCALE, AUDIO_RATE).T  # [13, F]
    out = np.stack(
        [cc[:, MFCC_PER_FRAME * i : MFCC_PER_FRAME * i + MFCC_WINDOW] for i in range(count)]
    )
    return out[:, None].astype(np.float32)


def resized_bgr(frames: np.ndarray) -> np.ndarray:
    """uint8[T,S,S,3] RGB crops -> uint8[T,224,224,3] BGR (kept as bytes: 150 KB a frame)."""
    import cv2  # heavy: loaded on use

    interp = cv2.INTER_AREA if frames.shape[1] > CROP else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (CROP, CROP), interpolation=interp) for f in frames])[..., ::-1]


def video_tensor(frames: np.ndarray) -> np.ndarray:
    """uint8[T,S,S,3] RGB crops -> float32[3,T,224,224] BGR 0..255 (syncnet_python's input)."""
    return np.ascontiguousarray(resized_bgr(frames).transpose(3, 0, 1, 2), dtype=np.float32)


def offset_search(
    video_emb: np.ndarray, audio_emb: np.ndarray, vshift: int = 15, num_frames: int | None = None
) -> DistanceSync:
    """syncnet_python's calc_pdist + offset/confidence on float[W,D] embeddings."""
    from scipy.signal import medfilt  # heavy: loaded on use

    w = len(video_emb)
    padded = np.concatenate(
        [np.zeros((vshift, audio_emb.shape[1])), audio_emb, np.zeros((vshift, audio_emb.shape[1]))]
    )
    dists = np.stack(
        [
            np.linalg.norm(video_emb[i][None] - padded[i : i + 2 * vshift + 1] + 1e-6, axis=1)
            for i in range(w)
        ]
    )  # [W, 2V+1]
    mean = dists.mean(axis=0)
    best = int(np.argmin(mean))
    med = float(np.median(mean))
    fconf = med - dists[:, best]
    fconf = medfilt(fconf, kernel_size=9) if w >= 9 else fconf
    t = num_frames if num_frames is not None else w + WINDOW
    per_frame = np.full(t, np.nan, np.float32)
    per_frame[2 : 2 + w] = fconf[: max(0, t - 2)]
    return DistanceSync(vshift - best, med - float(mean[best]), float(mean[best]), mean, per_frame)


class SyncNetScorer:
    """Embeds a track with a loaded SyncNet and runs the offset search."""

    def __init__(self, model, device: str = "cpu", batch_size: int = 20, vshift: int = 15):
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self.vshift = vshift

    def embeddings(self, frames: np.ndarray, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(float32[W,1024] video, float32[W,1024] audio) embeddings of a track."""
        import torch  # heavy: loaded on use

        count = window_count(len(frames), len(audio))
        if count <= 0:
            raise ValueError(
                f"track too short for SyncNet: {len(frames)} frames, "
                f"{len(audio)} samples (need more than {WINDOW} frames)"
            )
        video = resized_bgr(frames)  # float windows are built per batch (memory: T x 150 KB)
        cc = torch.from_numpy(mfcc_windows(audio, count))
        vid_out, aud_out = [], []
        with torch.no_grad():
            for start in range(0, count, self.batch_size):
                idx = range(start, min(count, start + self.batch_size))
                clips = np.stack([video[i : i + WINDOW] for i in idx]).transpose(0, 4, 1, 2, 3)
                batch = torch.from_numpy(clips.astype(np.float32)).to(self.device)
                vid_out.append(self.model.forward_lip(batch).cpu().numpy())
                aud_out.append(
                    self.model.forward_aud(cc[idx.start : idx.stop].to(self.device)).cpu().numpy()
                )
        return np.concatenate(vid_out), np.concatenate(aud_out)

    def score(self, frames: np.ndarray, audio: np.ndarray) -> DistanceSync:
        """Offset and confidence of uint8[T,S,S,3] RGB crops against float32[N] 16 kHz audio."""
        video_emb, audio_emb = self.embeddings(frames, audio)
        return offset_search(video_emb, audio_emb, self.vshift, num_frames=len(frames))
