"""Reference SyncNet backend: loader on a file of the real format, offset math, windowing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from jobs.media.talking_face import make_clip
from talking_face import face, track_of

from pipeline.models.lip_sync import syncnet_offsets as sync_syncnet
from pipeline.stages.analyze.lip_sync import LipSyncAnalyzer, LipSyncConfig
from pipeline.models.lip_sync.mfcc import mfcc
from pipeline.models.lip_sync.syncnet_offsets import (
    DistanceSync,
    mfcc_windows,
    offset_search,
    video_tensor,
    window_count,
)
from pipeline.models.registry import MissingWeightsError
from pipeline.models.lip_sync.syncnet import build_syncnet, load_syncnet
from pipeline.stages.contract import OK, StageContext


def tiny_random_syncnet_file(root, seed: int = 0):
    """SyncNet v2 architecture with small random weights, saved as syncnet_python's
    syncnet_v2.model is: a pickled state dict (legacy torch serialization)."""
    torch.manual_seed(seed)
    net = build_syncnet()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.1)
        for name, buf in net.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    path = root / "lip_sync" / "syncnet" / "syncnet_v2.model"
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), str(path), _use_new_zipfile_serialization=False)
    return path, net


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    path, net = tiny_random_syncnet_file(root)
    return root, path, net


def test_loader_reads_the_real_format_and_every_tensor(model_root, monkeypatch):
    root, _path, net = model_root
    monkeypatch.setenv("EMOFORGE_MODELS", str(root))
    loaded = load_syncnet()
    ref = net.state_dict()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, ref[name]), name
    assert not loaded.training
    x = torch.rand(2, 3, 5, 224, 224) * 255
    a = torch.randn(2, 1, 13, 20)
    assert loaded.forward_lip(x).shape == (2, 1024) and loaded.forward_aud(a).shape == (2, 1024)


def test_loader_errors_name_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOFORGE_MODELS", str(tmp_path))
    with pytest.raises(MissingWeightsError, match=str(tmp_path / "lip_sync" / "syncnet")):
        load_syncnet()
    bad = tmp_path / "bad.model"
    state = build_syncnet().state_dict()
    state.pop("netfcaud.3.weight")
    torch.save(state, str(bad))
    with pytest.raises(ValueError, match="bad.model.*netfcaud.3.weight"):
        load_syncnet(bad)


def _reference_pdist(video, audio, vshift):
    """syncnet_python's calc_pdist written with torch ops, for comparison."""
    v, a = torch.tensor(video), torch.tensor(audio)
    ap = torch.nn.functional.pad(a, (0, 0, vshift, vshift))
    return torch.stack(
        [
            torch.nn.functional.pairwise_distance(
                v[[i]].repeat(2 * vshift + 1, 1), ap[i : i + 2 * vshift + 1]
            )
            for i in range(len(v))
        ]
    )


@pytest.mark.parametrize("lag", [-7, 0, 4])
def test_offset_math_matches_syncnet_python(lag):
    rng = np.random.default_rng(3)
    video = rng.normal(size=(60, 32))
    audio = np.roll(video, lag, axis=0) + rng.normal(scale=0.1, size=video.shape)
    r = offset_search(video, audio, vshift=15)
    assert isinstance(r, DistanceSync)
    # audio window i + lag matches video window i: the audio lags by `lag`, offset = -lag
    assert r.offset_frames == -lag
    ref = _reference_pdist(video, audio, 15).mean(0).numpy()
    assert np.allclose(r.mean_dists, ref, rtol=1e-5)
    assert r.confidence == pytest.approx(np.median(ref) - ref.min(), rel=1e-5)
    assert r.min_dist == pytest.approx(ref.min(), rel=1e-5)
    assert len(r.frame_confidence) == 65 and np.isnan(r.frame_confidence[:2]).all()


def test_mfcc_windows_are_four_frames_per_video_frame():
    audio = np.zeros(16000, np.float32)
    audio[8000:8160] = 0.5  # a click at 0.5 s = video frame 12.5 = MFCC frame 50
    count = window_count(25, len(audio))
    assert count == 20
    win = mfcc_windows(audio, count)
    assert win.shape == (20, 1, 13, 20)
    full = mfcc(audio * 32768.0).T
    for i in (0, 7, 19):
        assert np.allclose(win[i, 0], full[:, 4 * i : 4 * i + 20], atol=1e-3)
    # the click's energy column sits at index 50 - 4 i of window i (windows 8..12 see it)
    for i in range(8, 13):
        assert int(np.argmax(win[i, 0, 0])) in (50 - 4 * i - 2, 50 - 4 * i - 1, 50 - 4 * i)


def test_video_tensor_is_bgr_224():
    frames = np.zeros((6, 160, 160, 3), np.uint8)
    frames[..., 0] = 200  # red
    t = video_tensor(frames)
    assert t.shape == (3, 6, 224, 224) and t.dtype == np.float32
    assert t[2].mean() == pytest.approx(200) and t[0].max() == 0  # red is the last channel


def test_analyzer_with_syncnet_backend_end_to_end(model_root, monkeypatch, tmp_path):
    root, _, _ = model_root
    monkeypatch.setenv("EMOFORGE_MODELS", str(root))
    clip = make_clip(tmp_path / "c.mp4", face(), "Hello there, my friend.", 0, seed=5)
    ctx = StageContext(
        catalog=str(tmp_path / "cat"), staging=str(tmp_path / "cat" / "_staging" / "r")
    )
    analyzer = LipSyncAnalyzer(LipSyncConfig(backend="syncnet", write_shifted=False), ctx)
    analyzer.setup()
    track = track_of(clip)
    n = 42  # the shortest track lip sync accepts (25 + 15 frames of shift), to keep this fast
    track.frames, track.audio = track.frames[:n], track.audio[: n * 640]
    track.mouth_open, track.landmarks = track.mouth_open[:n], track.landmarks[:n]
    captured = []

    def spy(*args, **kwargs):
        captured.append(offset_search(*args, **kwargs))
        return captured[-1]

    monkeypatch.setattr(sync_syncnet, "offset_search", spy)
    res = analyzer.analyze(track, {})
    row = res.track
    assert row["lip_sync_status"] == OK and row["lip_sync_backend"] == "syncnet"
    (direct,) = captured
    assert direct.mean_dists.shape == (31,)
    assert row["lip_sync_offset_frames"] == direct.offset_frames
    assert -15 <= row["lip_sync_offset_frames"] <= 15
    md = direct.mean_dists
    assert row["lip_sync_confidence"] == pytest.approx(np.median(md) - md.min(), rel=1e-4)
    assert row["lip_sync_min_dist"] == pytest.approx(md.min(), rel=1e-4)
    assert len(res.frames["lip_sync_frame_confidence"]) == track.num_frames


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_syncnet_on_cuda_matches_cpu(model_root, monkeypatch):
    from pipeline.models.lip_sync.syncnet_offsets import SyncNetScorer

    root, _, _ = model_root
    monkeypatch.setenv("EMOFORGE_MODELS", str(root))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(30, 160, 160, 3), dtype=np.uint8)
    audio = rng.normal(scale=0.1, size=30 * 640).astype(np.float32)
    cpu = SyncNetScorer(load_syncnet(device="cpu"), "cpu").score(frames, audio)
    gpu = SyncNetScorer(load_syncnet(device="cuda"), "cuda").score(frames, audio)
    assert np.allclose(cpu.mean_dists, gpu.mean_dists, rtol=1e-3)
    assert cpu.offset_frames == gpu.offset_frames
