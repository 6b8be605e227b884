"""`emoforge bench generate`: seconds per generated frame on this machine, of the tiny config and
of the reduced base (SD 1.5's layout with few channels, VAE latents: training.base_layout), each
with the fast sampling path (ReferenceNet once per window, guidance branches in one call) and
the per-branch path (each of the 3 model calls of a step runs the ReferenceNet), side by side.

Untrained checkpoints (speed does not depend on the weights) generate a reference photo
(skimage's astronaut) speaking an espeak-ng sentence for `steps` DDIM steps with guidance
(3 branches per step). Time is linear in steps: the per-step figure times 25 is a 25-step run.
Reported: the denoise + decode + write time per frame (inputs prepared once before: face crop,
VAD, Whisper features; a 1-step run first as warm-up), the input preparation once, and how far
the two paths' outputs differ: the latents of every window (recorded at the sampler) and the
decoded uint8 video frames (H.264 may round a small difference to a few levels). Peers run other models at other sizes on GPUs: their figures are
context, not a comparison.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import skimage.data
import skimage.io

from jobs.media.sources import speak
from pipeline.stages.analyze.audio import AudioConfig
from pipeline.stages.analyze.expression import ExpressionConfig
from pipeline.stages.faces.stage import FacesConfig

PEERS = {
    "hallo": "about 1.6 s per frame on an A100 (512 px, SD 1.5 backbone; ../shared/PEERS.md)",
    "memo": "about 1 s per frame on an H100 (512 px)",
    "note": "not comparable: the tiny config is a 64 px pixel-space model on CPU",
}
SENTENCE = "Hello there."


def untrained_checkpoint(out: str | Path, model: dict | None = None, step: int = 0,
                         train: dict | None = None,
                         expression_statistics: dict | None = None) -> Path:
    """A checkpoint folder (training.checkpoint layout, config.json as the trainer writes it) of
    the tiny config (or `train`'s preset) with its initial weights; the catalog stages record the
    pipeline's default faces, audio and expression settings. `model`: ModelConfig overrides;
    `train`: [train] values (e.g. model="base", models_root=...); `expression_statistics`: what
    training.expression.emotion_statistics would have recorded (default: none)."""
    import torch  # heavy: torch

    from training import checkpoint as ckpt  # heavy: training imports torch
    from training import config  # heavy: training imports torch
    from training.models import build_model  # heavy: training imports torch

    spec = config.build({"train": {"model": "tiny", "catalog": "none", "out": str(out),
                                   **(train or {})},
                         "model": model or {}})
    resolved = spec.resolved()
    torch.manual_seed(0)
    net = build_model(spec.model, spec.data.emotion_classes)
    ema = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
    stages = {name: {"backend": getattr(cfg, "backend", None), "config": dataclasses.asdict(cfg)}
              for name, cfg in (("faces", FacesConfig()), ("audio", AudioConfig()),
                                ("expression", ExpressionConfig()))}
    cfg = {**ckpt.identity(resolved), "spec": resolved, "step": step,
           "expression_statistics": expression_statistics,
           "catalog": {"root": None, "version": None, "schema_version": None, "stages": stages}}
    return ckpt.save(out, step, net, ema, {"step": step}, cfg)


def decode_frames(path: Path):
    """uint8[T,H,W,3] frames of an mp4 (PyAV)."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def compare_paths(name: str, folder: Path, reference: Path, audio: Path, steps: int,
                  tmp: Path) -> dict:
    """One untrained checkpoint generating the same request with the fast and the per-branch
    sampling path: seconds per frame of each, and the difference of their decoded frames."""
    from training.generate import Generator, Request  # heavy: training imports torch

    import training.sampling as sampling  # heavy: training imports torch

    gen = Generator(folder, "cpu")
    started = time.perf_counter()
    prepared = gen.prepare(Request(str(reference), str(audio), str(tmp / f"{name}.mp4")))
    prepare_s = time.perf_counter() - started
    prepared.request = dataclasses.replace(prepared.request, steps=1)
    gen.run(prepared, progress=False)  # warm-up (first-call allocations), not timed
    runs, videos, latents = [], {}, {}
    real = sampling.denoise_window
    for fast in (False, True):
        gen.fast = fast
        windows = latents[fast] = []

        def recorded(*args, **kwargs):  # the latents of each window, to compare the paths
            out = real(*args, **kwargs)
            windows.append(out.clone())
            return out

        out = tmp / f"{name}-{'fast' if fast else 'per-branch'}.mp4"
        prepared.request = dataclasses.replace(prepared.request, out=str(out), steps=steps,
                                               guidance_audio=3.5, guidance_reference=1.5)
        sampling.denoise_window = recorded
        try:
            result = gen.run(prepared, progress=False)
        finally:
            sampling.denoise_window = real
        videos[fast] = decode_frames(out).astype(np.int16)
        runs.append({"path": "fast" if fast else "per-branch",
                     "reference_net_runs_per_window": 1 if fast else 3 * steps,
                     "model_calls_per_step": 1 if fast else 3,
                     "frames": result.frames, "seconds": round(result.seconds, 2),
                     "seconds_per_frame": round(result.seconds / result.frames, 4),
                     "seconds_per_frame_per_step": round(result.seconds / result.frames / steps,
                                                         5)})
    diff = np.abs(videos[True] - videos[False])
    cfg = gen.model_cfg
    return {"config": name, "image_size": cfg.image_size, "codec": cfg.codec,
            "window": cfg.frames, "motion_frames": cfg.motion_frames, "steps": steps,
            "parameters_m": round(sum(p.numel() for p in gen.model.parameters()) / 1e6, 2),
            "audio_seconds": round(result.audio_seconds, 2), "prepare_seconds": round(prepare_s, 2),
            "runs": runs, "speedup": round(runs[0]["seconds"] / runs[1]["seconds"], 2),
            "latents_max_abs_difference": max(float((a - b).abs().max())
                                              for a, b in zip(latents[True], latents[False])),
            "first_window_latents_max_abs_difference": float(
                (latents[True][0] - latents[False][0]).abs().max()),
            "video_max_abs_difference": int(diff.max()),
            "video_mean_abs_difference": round(float(diff.mean()), 4)}


def run(steps: tuple[int, ...] = (3,)) -> dict:
    """Both configs, both sampling paths, `steps[0]` DDIM steps with guidance."""
    import torch  # heavy: torch

    from training.base_layout import model_overrides, write_sd15  # heavy: training imports torch

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        reference = tmp / "astronaut.png"
        skimage.io.imsave(reference, skimage.data.astronaut())
        audio = speak(SENTENCE, tmp / "speech.wav")
        models = tmp / "models"
        write_sd15(models, reduced=True)
        folders = {
            "tiny": untrained_checkpoint(tmp / "tiny"),
            "base-reduced": untrained_checkpoint(
                tmp / "base", model_overrides(reduced=True),
                train={"model": "base", "models_root": str(models)}),
        }
        configs = [compare_paths(name, folder, reference, audio, steps[0], tmp)
                   for name, folder in folders.items()]
    return {"device": "cpu", "torch_threads": torch.get_num_threads(), "configs": configs,
            "prepare_note": "once per request: face detection + crop, audio decode + VAD, Whisper "
                            "encoder features (not in the per-frame figures)",
            "peers": PEERS}
