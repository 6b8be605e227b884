"""Lip-sync backends behind one factory: `load_lip_sync(backend)` -> a scorer of one track.

- "av_corr" (bundled, no weights): correlation of the mouth opening with the speech envelope
  (pipeline/models/lip_sync/av_sync.py); confidence is a correlation difference in [0, 2].
- "syncnet" (reference weights under the model root): SyncNet v2 embeddings with
  syncnet_python's offset search (pipeline/models/lip_sync/syncnet_offsets.py); confidence is a distance
  difference (median - min).
Offsets are in 25 fps frames, positive = audio leads. The two confidences are different scales:
the keep rules per backend are `catalog.select.LIP_SYNC_RULES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pipeline.models.lip_sync.av_sync import av_sync
from pipeline.models.lip_sync.syncnet import SYNCNET, load_syncnet
from pipeline.models.lip_sync.syncnet_offsets import SyncNetScorer
from pipeline.models.registry import ModelSpec

LIP_SYNC_BACKENDS = ("av_corr", "syncnet")


@dataclass(frozen=True)
class SyncMeasurement:
    """offset_frames (positive = audio leads), confidence (the backend's scale), min_dist
    (syncnet's smallest mean distance, else None), frame_confidence float32[T] (NaN where
    undefined)."""

    offset_frames: int
    confidence: float
    min_dist: float | None
    frame_confidence: np.ndarray


class LipSyncScorer(Protocol):
    name: str

    def score(self, frames: np.ndarray, audio: np.ndarray,
              mouth_open: np.ndarray | None = None) -> SyncMeasurement:
        """frames uint8[T,S,S,3] RGB face crops on the 25 fps grid, audio float32[T*640] 16 kHz
        mono, mouth_open float[T] inner-lip gap over mouth width (NaN = unknown; av_corr
        needs it, syncnet ignores it)."""
        ...


class AvCorrScorer:
    """The bundled method: needs the mouth opening, not the pixels."""

    name = "av_corr"

    def __init__(self, max_offset_frames: int = 15):
        self.max_offset_frames = max_offset_frames

    def score(self, frames: np.ndarray, audio: np.ndarray,
              mouth_open: np.ndarray | None = None) -> SyncMeasurement:
        if mouth_open is None:
            raise ValueError("av_corr lip sync needs mouth_open float[T] (pipeline.models.geometry"
                             ".mouth_open of each frame's 68 landmarks)")
        r = av_sync(np.asarray(mouth_open, np.float64), audio, self.max_offset_frames)
        return SyncMeasurement(r.offset_frames, r.confidence, None, r.frame_confidence)


class SyncNetLipSync:
    """The reference backend: SyncNet v2 on the crops (weights from the model root)."""

    name = "syncnet"

    def __init__(self, max_offset_frames: int = 15, device: str = "cpu", batch_size: int = 20):
        self.scorer = SyncNetScorer(load_syncnet(device=device), device, batch_size, max_offset_frames)

    def score(self, frames: np.ndarray, audio: np.ndarray,
              mouth_open: np.ndarray | None = None) -> SyncMeasurement:
        r = self.scorer.score(frames, audio)
        return SyncMeasurement(r.offset_frames, r.confidence, r.min_dist, r.frame_confidence)


def lip_sync_specs(backend: str) -> list[ModelSpec]:
    """The weights `backend` loads (none for av_corr)."""
    check_backend(backend)
    if backend == "syncnet":
        return [SYNCNET]
    return []


def check_backend(backend: str) -> None:
    if backend not in LIP_SYNC_BACKENDS:
        raise ValueError(f"lip_sync backend must be one of {LIP_SYNC_BACKENDS}, got {backend!r}")


def load_lip_sync(backend: str = "av_corr", max_offset_frames: int = 15, device: str = "cpu",
                  batch_size: int = 20) -> LipSyncScorer:
    """A lip-sync scorer searching audio shifts of +-`max_offset_frames` 25 fps frames.
    syncnet: `device` (torch) and `batch_size` (windows per forward pass)."""
    check_backend(backend)
    if backend == "syncnet":
        return SyncNetLipSync(max_offset_frames, device, batch_size)
    return AvCorrScorer(max_offset_frames)
