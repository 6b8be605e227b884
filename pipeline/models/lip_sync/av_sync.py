"""Bundled lip-sync method: correlate the measured mouth opening with the speech envelope.

No network weights: a real audio-visual method. Per 25 fps frame,
- mouth: the inner-lip gap over mouth width measured from landmarks (frames/ `mouth_open`);
- audio: the log energy of the 300-3400 Hz speech band (25 ms Hann windows every 10 ms, the four
  windows centered within 20 ms of the frame's time averaged), floored 50 dB below its peak.
Both signals are band-limited in time (a 0.6 s moving average removed, then a 3-frame smoothing),
then, for every audio shift k in -V..V frames, the Pearson correlation r(k) between mouth[t] and
audio[t + k] over the overlapping frames is computed.

offset = -argmax_k r(k) (positive offset = audio leads, as in syncnet_python);
confidence = r(k*) - median_k r(k): a correlation difference in [0, 2], near 0.2-0.4 for
unrelated speech; generated in-sync talking faces score 0.68-1.11 (`emoforge bench sync`; the
keep rule is LIP_SYNC_RULES["av_corr"] in catalog/select.py).
Per-frame confidence: z_mouth[t] * z_audio[t + k*] minus the median over shifts of the same
product, median-filtered over 9 frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from catalog.contract import AUDIO_RATE, CROP_FPS, SAMPLES_PER_FRAME
from pipeline.models.lip_sync.mfcc import frame_signal
from pipeline.models.signal import fill_gaps

BAND_HZ = (300.0, 3400.0)
FLOOR_DB = 50.0
DETREND_S = 0.6
MIN_OVERLAP = 25  # frames that must overlap at every shift


@dataclass(frozen=True)
class CorrelationSync:
    """Result of the correlation search: offset in frames (positive = audio leads), confidence
    (r(k*) - median r), correlations float[2V+1] by audio shift -V..V, per-frame
    confidence float[T]."""

    offset_frames: int
    confidence: float
    correlations: np.ndarray
    frame_confidence: np.ndarray


def speech_envelope(audio: np.ndarray, frames: int, sample_rate: int = AUDIO_RATE) -> np.ndarray:
    """float64[frames] speech-band log energy (dB) per 25 fps frame of float32[N] audio."""
    win, hop, nfft = int(0.025 * sample_rate), sample_rate // 100, 512
    lead = 3 * hop  # center frame t's four windows on its time t / 25 s
    padded = np.concatenate(
        [np.zeros(lead), audio.astype(np.float64), np.zeros(frames * SAMPLES_PER_FRAME)]
    )
    padded = padded[: frames * SAMPLES_PER_FRAME + win]
    spec = np.abs(np.fft.rfft(frame_signal(padded, win, hop) * np.hanning(win), nfft)) ** 2
    freqs = np.fft.rfftfreq(nfft, 1.0 / sample_rate)
    band = spec[:, (freqs >= BAND_HZ[0]) & (freqs <= BAND_HZ[1])].sum(axis=1)
    db = 10 * np.log10(band + 1e-12)
    db = np.maximum(db, db.max() - FLOOR_DB)
    per = sample_rate // (CROP_FPS * hop)  # 4 envelope frames per video frame
    db = np.concatenate([db, np.full(max(0, frames * per - len(db)), db.min())])[: frames * per]
    return db.reshape(frames, per).mean(axis=1)


def band_limit(x: np.ndarray, fps: int = CROP_FPS) -> np.ndarray:
    """Remove the 0.6 s moving average, smooth over 3 frames, z-score (float64[T])."""
    x = fill_gaps(x)
    k = max(3, round(DETREND_S * fps) | 1)
    pad = np.pad(x, k // 2, mode="edge")
    x = x - np.convolve(pad, np.ones(k) / k, mode="valid")
    x = np.convolve(np.pad(x, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    std = x.std()
    return (x - x.mean()) / std if std > 1e-9 else np.zeros_like(x)


def correlate_offsets(mouth: np.ndarray, envelope: np.ndarray, vshift: int = 15) -> CorrelationSync:
    """Search audio shifts -vshift..vshift frames; see the module docstring for the scale.

    mouth, envelope: float[T] per 25 fps frame (T >= MIN_OVERLAP + vshift)."""
    t = min(len(mouth), len(envelope))
    if t < MIN_OVERLAP + vshift:
        raise ValueError(
            f"need at least {MIN_OVERLAP + vshift} frames for shifts of +-{vshift}, got {t}"
        )
    m, e = band_limit(mouth[:t]), band_limit(envelope[:t])
    shifts = np.arange(-vshift, vshift + 1)
    corr = np.zeros(len(shifts))
    products = np.full((len(shifts), t), np.nan)
    for j, k in enumerate(shifts):
        a = m[max(0, -k) : t - max(0, k)]
        b = e[max(0, k) : t - max(0, -k)]
        a, b = a - a.mean(), b - b.mean()
        denom = np.sqrt((a * a).sum() * (b * b).sum())
        corr[j] = float((a * b).sum() / denom) if denom > 1e-12 else 0.0
        products[j, max(0, -k) : t - max(0, k)] = (
            m[max(0, -k) : t - max(0, k)] * b / max(b.std(), 1e-9)
        )
    best = int(np.argmax(corr))
    conf = float(corr[best] - np.median(corr))
    frame_conf = products[best] - np.nanmedian(products, axis=0)
    frame_conf = np.nan_to_num(frame_conf, nan=0.0)
    frame_conf = median_filter(frame_conf, 9) if t >= 9 else frame_conf
    return CorrelationSync(-int(shifts[best]), conf, corr, frame_conf.astype(np.float32))


def median_filter(x: np.ndarray, kernel: int) -> np.ndarray:
    """scipy.signal.medfilt(x, kernel) for float[T] (odd kernel, zeros beyond the ends), in numpy:
    importing scipy.signal costs seconds per worker process (its import parses docstrings)."""
    half = kernel // 2
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(x, half), kernel)
    return np.median(windows, axis=1)


def av_sync(mouth_open: np.ndarray, audio: np.ndarray, vshift: int = 15) -> CorrelationSync:
    """Lip-sync offset and confidence of float[T] mouth opening against float32[T*640] audio."""
    return correlate_offsets(mouth_open, speech_envelope(audio, len(mouth_open)), vshift)
