"""`emoforge bench generate`: seconds per generated frame of the tiny config on this machine.

An untrained tiny checkpoint (speed does not depend on the weights) generates a reference photo
(skimage's astronaut) speaking an espeak-ng sentence, for `steps` DDIM steps, with guidance
(3 model calls per step) and without (1 call). Time is linear in steps: the per-step figure
times 25 is a 25-step run. Reported: the denoise + decode + write time per
frame (inputs prepared once before: face crop, VAD, Whisper features), and the input preparation
once. Peers run other models at other sizes on GPUs: their figures are context, not a comparison.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

PEERS = {
    "hallo": "about 1.6 s per frame on an A100 (512 px, SD 1.5 backbone; ../shared/PEERS.md)",
    "memo": "about 1 s per frame on an H100 (512 px)",
    "note": "not comparable: the tiny config is a 64 px pixel-space model on CPU",
}
SENTENCE = "Hello there, how are you?"


def untrained_checkpoint(out: str | Path, model: dict | None = None, step: int = 0) -> Path:
    """A checkpoint folder (training.checkpoint layout, config.json as the trainer writes it) of
    the tiny config with its initial weights; the catalog stages record the pipeline's default
    faces, audio and expression settings. `model`: ModelConfig overrides."""
    import torch

    from pipeline.analysis.audio import AudioConfig
    from pipeline.analysis.expression import ExpressionConfig
    from pipeline.stages.faces import FacesConfig
    from training import checkpoint as ckpt
    from training import config
    from training.models import build_model

    spec = config.build({"train": {"model": "tiny", "catalog": "none", "out": str(out)},
                         "model": model or {}})
    resolved = spec.resolved()
    torch.manual_seed(0)
    net = build_model(spec.model, spec.data.emotion_classes)
    ema = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
    stages = {name: {"backend": getattr(cfg, "backend", None), "config": dataclasses.asdict(cfg)}
              for name, cfg in (("faces", FacesConfig()), ("audio", AudioConfig()),
                                ("expression", ExpressionConfig()))}
    cfg = {**ckpt.identity(resolved), "spec": resolved, "step": step,
           "catalog": {"root": None, "version": None, "schema_version": None, "stages": stages}}
    return ckpt.save(out, step, net, ema, {"step": step}, cfg)


def run(steps: tuple[int, ...] = (5,)) -> dict:
    import skimage.data
    import skimage.io
    import torch

    from jobs.media.sources import speak
    from training.generate import Generator, Request

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        reference = tmp / "astronaut.png"
        skimage.io.imsave(reference, skimage.data.astronaut())
        audio = speak(SENTENCE, tmp / "speech.wav")
        folder = untrained_checkpoint(tmp / "run")
        gen = Generator(folder, "cpu")
        request = Request(str(reference), str(audio), str(tmp / "out.mp4"))
        started = time.perf_counter()
        prepared = gen.prepare(request)
        prepare_s = time.perf_counter() - started
        for n_steps in steps:
            for ga, gr in ((1.0, 1.0), (3.5, 1.5)):
                prepared.request = dataclasses.replace(request, steps=n_steps, guidance_audio=ga,
                                                       guidance_reference=gr)
                result = gen.run(prepared, progress=False)
                calls = 1 if ga == gr == 1.0 else 3
                results.append({"steps": n_steps, "model_calls_per_step": calls,
                                "frames": result.frames, "seconds": result.seconds,
                                "seconds_per_frame": result.seconds / result.frames,
                                "seconds_per_frame_per_step": result.seconds / result.frames
                                / n_steps})
    return {
        "config": "tiny", "image_size": gen.model_cfg.image_size, "window": gen.model_cfg.frames,
        "motion_frames": gen.model_cfg.motion_frames, "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "audio_seconds": result.audio_seconds,
        "prepare_seconds": prepare_s,
        "prepare_note": "once per request: face detection + crop, audio decode + VAD, Whisper "
                        "encoder features (not in the per-frame figures)",
        "runs": results, "peers": PEERS,
    }
