"""The 3DMM expression fit recovers known coefficients, pose and jaw from generated landmarks."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.models.expression import fit_3dmm as m3
from pipeline.models.signal import gaussian_smooth
from pipeline.stages.analyze.base import DecodedTrack
from pipeline.stages.analyze.expression import ExpressionAnalyzer, ExpressionConfig


@pytest.fixture(scope="module")
def basis():
    return m3.load_basis()


def synthetic(basis, T=40, noise_px=0.0, seed=0):
    rng = np.random.default_rng(seed)
    alpha = rng.normal(size=m3.SHAPE_DIM) * 0.8
    beta = rng.normal(size=(T, m3.EXPRESSION_DIM))
    pose = rng.normal(size=(T, 3)) * 0.2  # about +-11 degrees per axis
    scale = 70 + rng.normal(size=T) * 4  # face RMS radius ~70 px in a 256 px crop
    trans = 128 + rng.normal(size=(T, 2)) * 4
    lm = m3.project(basis, alpha, beta, pose, scale, trans)
    lm = lm + rng.normal(size=lm.shape) * noise_px
    return lm, alpha, beta, pose


@pytest.mark.parametrize("noise_px", [0.0, 1.0])
def test_fit_recovers_known_coefficients(basis, noise_px):
    lm, alpha, beta, pose = synthetic(basis, noise_px=noise_px)
    fit = m3.fit_track(lm, m3.FitConfig(iterations=30, landmark_noise=0.01, contour_weight=1.0), basis)
    expr_rmse = np.sqrt(((fit.expression - beta) ** 2).mean())
    corr = np.corrcoef(fit.expression.ravel(), beta.ravel())[0, 1]
    pose_err = np.degrees(np.abs(fit.head_pose - pose)).mean()
    # margins: the truth has unit std per component; a failed fit has rmse ~1 and corr ~0
    assert expr_rmse < (0.3 if noise_px == 0 else 0.5), expr_rmse
    assert corr > (0.97 if noise_px == 0 else 0.88), corr
    assert pose_err < 1.0, pose_err
    assert np.sqrt(((fit.shape - alpha) ** 2).mean()) < 0.5
    assert fit.error_px.mean() < noise_px * 1.3 + 0.15


def test_jaw_pose_follows_mouth_opening(basis):
    """Jaw angle is a monotone read-out of the chin's rotation: check against a direct geometric
    computation on vertices with known expression, and its sign on an opened mouth."""
    T = 30
    lm, alpha, beta, _pose = synthetic(basis, T=T, seed=3)
    fit = m3.fit_track(lm, m3.FitConfig(iterations=30, landmark_noise=0.01, contour_weight=1.0), basis)
    truth = m3.jaw_angle(basis, alpha * basis.shape_std, beta * basis.expr_std)
    assert np.corrcoef(fit.jaw_pose[:, 0], truth)[0, 1] > 0.95
    assert np.abs(fit.jaw_pose[:, 1:]).max() == 0.0
    # moving the chin down (y up is positive) opens the jaw: positive angle
    X0 = basis.vertices(np.zeros(40), np.zeros(10))
    chin_down = np.zeros(10)
    best = np.argmin(basis.expr[m3.CHIN, 1])  # component that lowers the chin most per unit
    chin_down[best] = 2 * basis.expr_std[best]
    assert basis.vertices(np.zeros(40), chin_down)[m3.CHIN, 1] < X0[m3.CHIN, 1]
    assert m3.jaw_angle(basis, np.zeros(40), chin_down[None])[0] > 0.01


def test_unknown_frames_stay_null_and_analyzer_columns(basis):
    lm, _alpha, _beta, _pose = synthetic(basis, T=20, noise_px=0.5, seed=5)
    lm[[3, 4, 11]] = np.nan
    track = DecodedTrack(frames=np.zeros((20, 8, 8, 3), np.uint8), audio=np.zeros(20 * 640, np.float32),
                         landmarks=lm.astype(np.float32), mouth_open=np.zeros(20, np.float32),
                         row={"track_id": "t", "shard": 0})
    analyzer = ExpressionAnalyzer(ExpressionConfig(backend="3dmm", smoothing_sigma_frames=1.0), None)
    analyzer.setup()
    result = analyzer.analyze(track, {})
    assert result.track["expression_status"] == "ok"
    assert result.track["expression_backend"] == "3dmm" and result.track["expression_dim"] == 10
    assert [i for i, e in enumerate(result.frames["expression"]) if e is None] == [3, 4, 11]
    assert len(result.frames["head_pose"][0]) == 3 and len(result.frames["jaw_pose"][0]) == 3
    E = np.array([e for e in result.frames["expression"] if e is not None])
    assert result.track["expression_magnitude"] == pytest.approx(np.linalg.norm(E, axis=1).mean(), rel=1e-5)
    assert result.track["expression_fit_error_px"] < 1.5
    none = track
    none.landmarks = np.full_like(lm, np.nan, dtype=np.float32)
    failed = analyzer.analyze(none, {})
    assert failed.track["expression_status"] == "failed" and "landmarks" in failed.track["expression_error"]


def test_gaussian_smoothing_reduces_noise_and_keeps_gaps():
    rng = np.random.default_rng(0)
    t = np.arange(200)
    clean = np.sin(t / 15.0)[:, None]
    noisy = clean + rng.normal(size=clean.shape) * 0.3
    noisy[50:53] = np.nan
    smooth = gaussian_smooth(noisy, 2.0)
    known = np.isfinite(noisy[:, 0])
    assert np.isnan(smooth[50:53]).all()
    err_raw = np.sqrt(np.nanmean((noisy[known] - clean[known]) ** 2))
    err_smooth = np.sqrt(np.mean((smooth[known] - clean[known]) ** 2))
    assert err_smooth < 0.5 * err_raw
    assert np.array_equal(gaussian_smooth(noisy, 0), noisy, equal_nan=True)


def test_coefficient_step_solves_the_stacked_least_squares(basis):
    """The step's O(T) normal equations (Gram products of the bases) give the minimizer of the
    full regularized problem, built here as one stacked design matrix [alpha, beta_1..beta_T]
    and solved with lstsq: landmarks and prior rows weighted as the step's docstring says."""
    rng = np.random.default_rng(3)
    T, lam = 5, 0.03**2
    R = m3.axis_angle_to_rotation(rng.normal(size=(T, 3)) * 0.3)
    s, t = 60 + rng.normal(size=T), rng.normal(size=(T, 2)) * 5
    x = rng.normal(size=(T, 68, 2)) * 40
    w = np.ones(68)
    w[:17] = 0.5
    alpha, beta = m3._coefficient_step(basis, R, s, t, x, w, lam)
    n = m3.SHAPE_DIM + T * m3.EXPRESSION_DIM
    rows, rhs = [], []
    for f in range(T):
        for k in range(68):
            for i in range(2):
                row = np.zeros(n)
                row[:m3.SHAPE_DIM] = R[f, i] @ basis.shape[k]
                start = m3.SHAPE_DIM + f * m3.EXPRESSION_DIM
                row[start:start + m3.EXPRESSION_DIM] = R[f, i] @ basis.expr[k]
                rows.append(np.sqrt(w[k]) * row)
                rhs.append(np.sqrt(w[k]) * ((x[f, k, i] - t[f, i]) / s[f] - R[f, i] @ basis.mean[k]))
    prior = np.concatenate([np.sqrt(lam) / basis.shape_std, np.tile(np.sqrt(lam) / basis.expr_std, T)])
    design = np.vstack([np.array(rows), np.diag(prior)])
    target = np.concatenate([rhs, np.zeros(n)])
    solution = np.linalg.lstsq(design, target, rcond=None)[0]
    np.testing.assert_allclose(alpha, solution[:m3.SHAPE_DIM], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(beta, solution[m3.SHAPE_DIM:].reshape(T, -1), rtol=1e-7, atol=1e-9)
