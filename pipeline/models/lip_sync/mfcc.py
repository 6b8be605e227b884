"""MFCC at 100 Hz in numpy, with the conventions SyncNet was trained on (13 coefficients).

Follows the definitions of python_speech_features' `mfcc` defaults (the features syncnet_python
feeds SyncNet): 25 ms rectangular windows every 10 ms, pre-emphasis 0.97, a 512-point power
spectrum, 26 triangular mel filters from 0 Hz to Nyquist, log, orthonormal DCT-II, sinusoidal
liftering with L=22, and coefficient 0 replaced by the log frame energy.
"""

from __future__ import annotations

import math

import numpy as np

from catalog.contract import AUDIO_RATE

EPS = np.finfo(float).eps


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray | float:
    """Mel scale (HTK): 2595 * log10(1 + hz / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray | float:
    """Inverse of `hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def frame_signal(signal: np.ndarray, frame_len: int, frame_step: int) -> np.ndarray:
    """Split float[N] into float[F, frame_len] frames every `frame_step` samples.

    F = 1 if N <= frame_len else 1 + ceil((N - frame_len) / frame_step); the tail is zero-padded
    so the last frame is complete."""
    signal = np.asarray(signal, dtype=np.float64).reshape(-1)
    n = len(signal)
    count = 1 if n <= frame_len else 1 + math.ceil((n - frame_len) / frame_step)
    padded_len = (count - 1) * frame_step + frame_len
    padded = np.concatenate([signal, np.zeros(max(0, padded_len - n))])
    idx = np.arange(frame_len)[None, :] + frame_step * np.arange(count)[:, None]
    return padded[idx]


def pre_emphasis(signal: np.ndarray, coeff: float = 0.97) -> np.ndarray:
    """y[0] = x[0], y[n] = x[n] - coeff * x[n-1]."""
    signal = np.asarray(signal, dtype=np.float64).reshape(-1)
    if len(signal) == 0:
        return signal
    return np.concatenate([signal[:1], signal[1:] - coeff * signal[:-1]])


def mel_filterbank(
    nfilt: int = 26,
    nfft: int = 512,
    sample_rate: int = AUDIO_RATE,
    low_hz: float = 0.0,
    high_hz: float | None = None,
) -> np.ndarray:
    """float[nfilt, nfft//2+1] triangular filters on FFT bins, equally spaced in mel.

    Filter edges are FFT bins floor((nfft + 1) * hz / sample_rate) of nfilt + 2 mel points."""
    high_hz = high_hz or sample_rate / 2
    mels = np.linspace(hz_to_mel(low_hz), hz_to_mel(high_hz), nfilt + 2)
    bins = np.floor((nfft + 1) * mel_to_hz(mels) / sample_rate)
    bank = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        for i in range(int(lo), int(mid)):
            bank[j, i] = (i - lo) / (mid - lo)
        for i in range(int(mid), int(hi)):
            bank[j, i] = (hi - i) / (hi - mid)
    return bank


def dct2_ortho(x: np.ndarray) -> np.ndarray:
    """Orthonormal DCT-II along the last axis (float[..., N] -> float[..., N])."""
    n = x.shape[-1]
    k = np.arange(n)[:, None]
    basis = np.cos(np.pi * k * (2 * np.arange(n)[None, :] + 1) / (2 * n))
    scale = np.full(n, math.sqrt(2.0 / n))
    scale[0] = math.sqrt(1.0 / n)
    return (x @ basis.T) * scale


def lifter(cepstra: np.ndarray, L: int = 22) -> np.ndarray:
    """Multiply coefficient n by 1 + (L / 2) * sin(pi * n / L)."""
    if L <= 0:
        return cepstra
    n = np.arange(cepstra.shape[-1])
    return cepstra * (1.0 + (L / 2.0) * np.sin(np.pi * n / L))


def mfcc(
    signal: np.ndarray,
    sample_rate: int = AUDIO_RATE,
    numcep: int = 13,
    nfilt: int = 26,
    nfft: int = 512,
    win_s: float = 0.025,
    step_s: float = 0.01,
    preemph: float = 0.97,
    ceplifter: int = 22,
    append_energy: bool = True,
) -> np.ndarray:
    """float64[F, numcep] MFCC of a mono signal float[N] (any scale; SyncNet saw int16 scale).

    F = 1 + ceil((N - 400) / 160) at 16 kHz: 100 frames per second, frame f covers samples
    [160 f, 160 f + 400)."""
    frame_len = _round_half_up(win_s * sample_rate)
    frame_step = _round_half_up(step_s * sample_rate)
    frames = frame_signal(pre_emphasis(signal, preemph), frame_len, frame_step)
    power = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, EPS, energy)
    feat = power @ mel_filterbank(nfilt, nfft, sample_rate).T
    feat = np.where(feat == 0, EPS, feat)
    cep = lifter(dct2_ortho(np.log(feat))[:, :numcep], ceplifter)
    if append_energy:
        cep[:, 0] = np.log(energy)
    return cep
