"""MFCC (numpy) against known values: mel scale, framing, filter bank, DCT, python_speech_features."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.fft import dct

from pipeline.models.lip_sync.mfcc import (
    dct2_ortho,
    frame_signal,
    hz_to_mel,
    lifter,
    mel_filterbank,
    mel_to_hz,
    mfcc,
    pre_emphasis,
)


def test_mel_scale_known_points():
    assert hz_to_mel(0.0) == pytest.approx(0.0)
    assert hz_to_mel(700.0) == pytest.approx(2595 * math.log10(2), rel=1e-12)  # 781.17
    assert hz_to_mel(1000.0) == pytest.approx(999.99, abs=0.01)
    hz = np.array([50.0, 440.0, 4000.0, 8000.0])
    assert np.allclose(mel_to_hz(hz_to_mel(hz)), hz)


def test_framing_counts_offsets_and_zero_padding():
    x = np.arange(1, 1001, dtype=np.float64)
    frames = frame_signal(x, 400, 160)
    assert frames.shape == (5, 400)  # 1 + ceil((1000 - 400) / 160)
    assert frames[1, 0] == 161 and frames[4, 0] == 641
    assert frames[4, 359] == 1000 and np.all(frames[4, 360:] == 0)
    assert frame_signal(np.ones(300), 400, 160).shape == (1, 400)
    # 1 s at 16 kHz gives 99 frames: the 100 Hz rate syncnet_python pairs with 25 fps (4 per frame)
    assert mfcc(np.random.default_rng(0).normal(size=16000)).shape == (99, 13)


def test_pre_emphasis_and_lifter_known_values():
    assert np.allclose(pre_emphasis(np.array([1.0, 2.0, 3.0])), [1.0, 2.0 - 0.97, 3.0 - 1.94])
    lifted = lifter(np.ones((1, 13)), 22)
    assert lifted[0, 0] == pytest.approx(1.0)
    assert lifted[0, 11] == pytest.approx(1 + 11 * math.sin(math.pi / 2))  # 12.0


def test_filterbank_triangles_on_known_bins():
    bank = mel_filterbank(26, 512, 16000)
    assert bank.shape == (26, 257)
    # first filters (python_speech_features 0.6): start bins 1, 3, 5, 8, 11, 14; peaks 2, 4, 7, ...
    assert [int(np.nonzero(r)[0][0]) for r in bank[:6]] == [1, 3, 5, 8, 11, 14]
    assert [int(np.argmax(r)) for r in bank[:6]] == [2, 4, 7, 10, 13, 16]
    assert np.allclose(bank.max(axis=1), 1.0)
    assert np.all(bank[:, 256] == 0)  # the last edge bin is excluded


def test_dct_matches_scipy_orthonormal_dct2():
    x = np.random.default_rng(1).normal(size=(4, 26))
    assert np.allclose(dct2_ortho(x), dct(x, type=2, axis=1, norm="ortho"))


def test_tone_lands_in_the_filter_with_most_weight_on_its_bin():
    t = np.arange(16000) / 16000
    tone = np.sin(2 * np.pi * 1000 * t)  # FFT bin 32 of 512 at 16 kHz (31.25 Hz per bin)
    frames = frame_signal(pre_emphasis(tone), 400, 160)
    spectrum = (np.abs(np.fft.rfft(frames, 512)) ** 2 / 512).mean(0)
    assert int(np.argmax(spectrum)) == 32
    bank = mel_filterbank()
    # edges at bins 24, 29, 34, 39: filter 9 rises 29..34 (0.6 at bin 32), filter 8 falls (0.4)
    assert bank[9, 32] == pytest.approx(0.6) and bank[8, 32] == pytest.approx(0.4)
    assert int(np.argmax(spectrum @ bank.T)) == 9


# Reference rows computed with python_speech_features 0.6 `mfcc(x, 16000)` (syncnet_python's
# feature) for the int16 signal below: frames 0, 10 and 48 of 49.
REFERENCE = np.array(
    [
        [
            19.22514,
            21.466373,
            5.548617,
            -9.942306,
            -23.463916,
            -31.225641,
            -29.37466,
            -20.303391,
            -6.584669,
            6.130184,
            14.543686,
            15.762788,
            11.420853,
        ],
        [
            19.386582,
            22.510328,
            -0.194471,
            -22.016516,
            -32.68387,
            -27.555397,
            -11.978798,
            0.289131,
            4.164306,
            2.02031,
            2.825287,
            8.007952,
            13.865506,
        ],
        [
            20.311707,
            9.494172,
            -20.062844,
            13.206695,
            -4.862269,
            -59.375369,
            -29.56115,
            15.163551,
            -10.695956,
            -11.098239,
            36.550107,
            27.41299,
            -9.912109,
        ],
    ]
)


def test_mfcc_matches_python_speech_features_values():
    t = np.arange(8000) / 16000
    x = 8000 * np.sin(2 * np.pi * 440 * t) + 3000 * np.sin(2 * np.pi * (300 + 2000 * t) * t)
    x = x.astype(np.int16)
    out = mfcc(x, 16000)
    assert out.shape == (49, 13)
    assert np.allclose(out[[0, 10, 48]], REFERENCE, atol=2e-5)
    # coefficient 0 is the log frame energy (appendEnergy)
    frames = frame_signal(pre_emphasis(x.astype(np.float64)), 400, 160)
    energy = (np.abs(np.fft.rfft(frames, 512)) ** 2 / 512).sum(1)
    assert np.allclose(out[:, 0], np.log(energy))
