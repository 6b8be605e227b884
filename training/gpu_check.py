"""One prepared device check of the base path, in one process without Ray, on data it makes:
`python -m training.gpu_check --out check.json` (scripts/gpu_check.sh runs it after the CUDA
tests).

Parts, each recorded as passed, failed (with the error) or skipped (with the reason):
  model      SD 1.5-shaped random weights written as a diffusers folder (training.base_layout:
             nothing downloaded), the base model built from it on the device
  stage1     `--steps` optimizer steps of stage 1 (images: 1 frame, no motion frames)
  stage2     `--steps` optimizer steps of stage 2 (video: F + M frames, 12 + 4 at base size)
  resume     a stage 2 run in a child process, killed (SIGKILL) after it saved, resumed here:
             the model on the device first, then AdamW built and its state loaded; the state
             tensors must be on the parameters' device and the run must go on
  generate   `--seconds` of video in windows of F frames (motion frames chained from the last
             window), DDIM with guidance (3 branches) and the VAE decode; and one window by the
             per-branch path for comparison
Every step runs under bf16 autocast with gradient checkpointing on CUDA (`--precision` and
`--checkpointing` say otherwise). Batches: smooth random images through the VAE, random audio,
expression and speed conditions (time and memory depend on the shapes, not on the values).
Figures: seconds per step (the first step excluded as warm-up), peak device memory per stage
(GiB, CUDA only), seconds per generated frame.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

REQUIRED = ("torch", "diffusers", "safetensors", "numpy")


@dataclass
class Check:
    """The options of one check (see `parse`)."""

    device: str
    size: int
    reduced: bool
    steps: int
    seconds: float
    sample_steps: int
    precision: bool  # bf16 autocast
    checkpointing: bool
    work: Path
    frames: int | None = None
    motion_frames: int | None = None
    results: dict = field(default_factory=dict)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the JSON written")
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", type=int, default=512, help="image size (px)")
    p.add_argument("--layout", choices=("sd15", "reduced"), default="sd15",
                   help="SD 1.5's widths, or training.base_layout's reduced ones")
    p.add_argument("--frames", type=int, help="window frames F (default: the base's 12)")
    p.add_argument("--motion-frames", type=int, help="motion frames M (default: the base's 4)")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per stage")
    p.add_argument("--seconds", type=float, default=2.0, help="generated video length")
    p.add_argument("--sample-steps", type=int, default=25, help="DDIM steps per window")
    p.add_argument("--precision", choices=("auto", "bf16", "no"), default="auto",
                   help="bf16 autocast: auto = on with CUDA")
    p.add_argument("--checkpointing", choices=("auto", "on", "off"), default="auto",
                   help="gradient checkpointing: auto = on with CUDA")
    p.add_argument("--work", help="folder for the weights and the resume checkpoint "
                   "(default: a temporary one)")
    p.add_argument("--tests-junit", help="JUnit XML of the CUDA-marked tests, summarised in the JSON")
    p.add_argument("--tests-log", help="their pytest log (named in the JSON)")
    p.add_argument("--child", help=argparse.SUPPRESS)  # the resume part's training process
    return p.parse_args(argv)


def test_summary(junit: str | None, log: str | None) -> dict:
    """passed / failed / skipped (with reasons) / errors (collection: a package absent there)
    from pytest's JUnit XML; skipped as a whole when there is none."""
    import xml.etree.ElementTree as ET

    if not junit or not Path(junit).is_file():
        return {"status": "skipped", "reason": "no JUnit XML (pytest absent or not run)"}
    summary: dict = {"passed": [], "failed": [], "skipped": [], "errors": [], "log": log}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}".strip(":")
        if case.find("failure") is not None:
            summary["failed"].append(name)
        elif case.find("error") is not None:
            message = (case.find("error").get("message") or "")[:200]
            summary["errors"].append(f"{name}: {message}")
        elif case.find("skipped") is not None:
            reason = (case.find("skipped").get("message") or "")[:200]
            summary["skipped"].append(f"{name}: {reason}")
        else:
            summary["passed"].append(name)
    summary["status"] = "failed" if summary["failed"] else "passed"
    return summary


def missing_packages() -> list[str]:
    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def model_config(check: Check):
    from training.base_layout import model_overrides
    from training.models import ModelConfig

    extra = {k: v for k, v in (("frames", check.frames), ("motion_frames", check.motion_frames))
             if v is not None}
    values = {**model_overrides(check.reduced), "image_size": check.size, **extra}
    return ModelConfig.base(check.work / "models", **values)


def build(check: Check, stage: int):
    """(model on the device with `stage`'s trainable set, trainable parameters by name, the
    frozen codec beside it)."""
    import torch

    from training.models import build_codec, build_model

    torch.manual_seed(0)
    model = build_model(model_config(check)).to(check.device)
    trainable = model.trainable_parameters(stage)
    model.set_gradient_checkpointing(check.checkpointing)
    names = {id(p): n for n, p in model.named_parameters()}
    codec = build_codec(model_config(check)).to(check.device).eval()
    return model.train(), {names[id(p)]: p for p in trainable}, codec


def synthetic_batch(model, codec, frames: int, motion: int, seed: int) -> dict:
    """A batch of 1: smooth random images (reference, window, motion frames) through the codec,
    random conditions; tensors on the model's device."""
    import torch
    import torch.nn.functional as F

    cfg = model.cfg
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    s = cfg.image_size

    def images(n: int) -> torch.Tensor:
        coarse = torch.rand(n, 3, 8, 8, generator=g) * 2 - 1
        return F.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False)

    with torch.no_grad():
        pixels = images(1 + frames + motion).to(device)
        latents = codec.encode(pixels)
    mask = torch.zeros(1, frames, 1, s, s)
    mask[..., s // 4: 3 * s // 4, s // 4: 3 * s // 4] = 1
    return {
        "reference": latents[:1], "frames": latents[1: 1 + frames][None],
        "motion": latents[1 + frames:][None],
        "audio": torch.randn(1, frames, cfg.audio_context, cfg.audio_dim, generator=g),
        "expression": torch.randn(1, frames, cfg.expression_dim, generator=g),
        "jaw_pose": torch.randn(1, frames, 3, generator=g) * 0.1,
        "emotion": torch.tensor([1]), "intensity": torch.ones(1),
        "face_mask": mask, "mouth_mask": mask[:, 0] * (torch.arange(s) >= s // 2)[:, None],
        "head_speed": torch.rand(1, frames, generator=g) * 20,
    }


def conditions(batch: dict, drop: dict, device):
    from training.models import Conditions

    keys = ("audio", "expression", "jaw_pose", "emotion", "intensity", "face_mask", "mouth_mask",
            "head_speed")
    values = {k: batch[k].to(device) for k in keys}
    return Conditions(reference_latent=batch["reference"], motion_latents=batch["motion"],
                      drop=drop, **values)


def train_steps(check: Check, model, trainable: dict, optimizer, batch: dict, steps: int,
                first: int = 0, after_step=None) -> list[float]:
    """`steps` optimizer steps on `batch` (fresh noise and timestep each step); seconds of each."""
    import torch

    from training.config import DiffusionConfig, DropoutConfig
    from training.diffusion import (add_noise, draw_noise, make_scheduler, masked_loss,
                                    min_snr_weights, sample_generator)

    device = torch.device(check.device)
    scheduler = make_scheduler(DiffusionConfig())
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=check.precision)
    times = []
    for step in range(first, first + steps):
        started = time.perf_counter()
        noise, t, drop = draw_noise(batch["frames"], [sample_generator(0, step, 0)],
                                    DiffusionConfig(), DropoutConfig())
        noisy, target = add_noise(scheduler, batch["frames"], noise, t)
        with autocast:
            prediction = model(noisy, t, conditions(batch, drop, device))
        mask = torch.ones_like(target[:, :, :1])
        loss = masked_loss(prediction, target, mask, min_snr_weights(scheduler, t, 5.0))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(trainable.values()), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            raise RuntimeError(f"step {step}: loss {float(loss)}")
        synchronize(device)
        times.append(time.perf_counter() - started)
        if after_step is not None:
            after_step(step + 1)
    return times


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def optimizer_for(trainable: dict):
    import torch

    return torch.optim.AdamW(list(trainable.values()), lr=1e-5, weight_decay=1e-2)


def window(check: Check, stage: int) -> tuple[int, int]:
    cfg = model_config(check)
    return (1, 0) if stage == 1 else (cfg.frames, cfg.motion_frames)


def stage_part(check: Check, stage: int) -> dict:
    import torch

    device = torch.device(check.device)
    reset_peak(device)
    model, trainable, codec = build(check, stage)
    optimizer = optimizer_for(trainable)
    frames, motion = window(check, stage)
    batch = synthetic_batch(model, codec, frames, motion, seed=stage)
    times = train_steps(check, model, trainable, optimizer, batch, check.steps)
    measured = times[1:] or times
    result = {"frames": frames, "motion_frames": motion, "steps": len(times),
              "trainable_parameters_m": round(sum(p.numel() for p in trainable.values()) / 1e6, 1),
              "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
              "seconds_per_step": round(sum(measured) / len(measured), 3),
              "first_step_seconds": round(times[0], 3), "peak_memory_gib": peak_gib(device)}
    del model, optimizer, trainable
    return result


CHECKPOINT = "resume.pt"


def child(check: Check, folder: Path) -> None:
    """The resume part's training process: stage 2, saves after its second step (atomically),
    then trains on until it is killed."""
    import torch

    model, trainable, codec = build(check, 2)
    optimizer = optimizer_for(trainable)
    frames, motion = window(check, 2)
    batch = synthetic_batch(model, codec, frames, motion, seed=2)

    def save(step: int) -> None:
        if step != 2:
            return
        state = {"step": step, "optimizer": optimizer.state_dict(),
                 "trainable": {n: p.detach().cpu() for n, p in trainable.items()}}
        tmp = folder / f".{CHECKPOINT}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, folder / CHECKPOINT)

    train_steps(check, model, trainable, optimizer, batch, 1000, after_step=save)


def resume_part(check: Check, argv: list[str]) -> dict:
    """Start the child, kill it once it saved, resume its run here."""
    import torch

    reset_peak(torch.device(check.device))  # the child needs the memory this process cached
    folder = check.work / "resume"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CHECKPOINT).unlink(missing_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(folder / "child.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "training.gpu_check", *argv, "--child",
                             str(folder)], stdout=log, stderr=subprocess.STDOUT, env=env)
    started = time.monotonic()
    try:
        while not (folder / CHECKPOINT).is_file():
            if proc.poll() is not None:
                raise RuntimeError(f"the training process ended (exit {proc.returncode}) before "
                                   f"it saved: {(folder / 'child.log').read_text()[-2000:]}")
            if time.monotonic() - started > 600:
                raise RuntimeError("the training process saved nothing in 10 minutes")
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    model, trainable, codec = build(check, 2)  # on the device first ...
    state = torch.load(folder / CHECKPOINT, map_location="cpu")
    with torch.no_grad():
        for name, p in trainable.items():
            p.copy_(state["trainable"][name])
    optimizer = optimizer_for(trainable)  # ... then the optimizer and its state
    optimizer.load_state_dict(state["optimizer"])
    where = {str(v.device) for s in optimizer.state.values() for v in s.values()
             if torch.is_tensor(v) and v.ndim > 0}
    if where != {str(next(iter(trainable.values())).device)}:
        raise RuntimeError(f"optimizer state on {sorted(where)} after resume, parameters on "
                           f"{next(iter(trainable.values())).device}")
    frames, motion = window(check, 2)
    batch = synthetic_batch(model, codec, frames, motion, seed=2)
    train_steps(check, model, trainable, optimizer, batch, 2, first=state["step"])
    counts = {int(s["step"]) for s in optimizer.state.values() if "step" in s}
    if counts != {state["step"] + 2}:
        raise RuntimeError(f"AdamW step counts {sorted(counts)} after resuming at "
                           f"{state['step']} and 2 steps")
    return {"killed_after_step": state["step"], "resumed_steps": 2,
            "optimizer_state_device": sorted(where)[0], "seconds": round(
                time.monotonic() - started, 1)}


def generate_part(check: Check) -> dict:
    """`check.seconds` of frames window by window (fast path), and one window per-branch."""
    import math

    import torch

    from training.config import DiffusionConfig
    from training.diffusion import make_scheduler
    from training.models import Conditions
    from training.sampling import denoise_window

    device = torch.device(check.device)
    reset_peak(device)
    model, _, codec = build(check, 2)
    model.eval()
    cfg = model.cfg
    f, m = cfg.frames, cfg.motion_frames
    n = math.ceil(check.seconds * 25)
    batch = synthetic_batch(model, codec, f, 0, seed=5)
    reference = batch["reference"]
    motion = reference[:, None].expand(1, m, *reference.shape[1:]).clone()
    scheduler = make_scheduler(DiffusionConfig(), "ddim")
    generator = torch.Generator().manual_seed(0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=device.type == "cuda")

    def one_window(fast: bool) -> torch.Tensor:
        cond = Conditions(reference_latent=reference, motion_latents=motion,
                          **{k: batch[k].to(device) for k in (
                              "audio", "expression", "jaw_pose", "emotion", "intensity",
                              "face_mask", "mouth_mask", "head_speed")})
        latents = denoise_window(model, scheduler, cond, (1, f, *reference.shape[1:]),
                                 check.sample_steps, 1.5, 3.5, generator, fast=fast)
        with torch.no_grad(), autocast:
            codec.decode(latents.flatten(0, 1))
        return latents

    windows = math.ceil(n / f)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(windows):
        latents = one_window(True)
        if m:
            motion = torch.cat([motion, latents], 1)[:, -m:]
    synchronize(device)
    fast_s = time.perf_counter() - started
    started = time.perf_counter()
    one_window(False)
    synchronize(device)
    per_branch_s = time.perf_counter() - started
    return {"frames": n, "windows": windows, "window_frames": f, "sample_steps":
            check.sample_steps, "guidance": {"audio": 3.5, "reference": 1.5},
            "seconds": round(fast_s, 2), "seconds_per_frame": round(fast_s / n, 4),
            "per_branch_seconds_per_frame": round(per_branch_s / f, 4),
            "peak_memory_gib": peak_gib(device),
            "note": "denoising and VAE decoding of synthetic inputs; no face crop, Whisper "
                    "features or mp4 writing (generation's CPU-side steps)"}


def run_part(check: Check, name: str, fn, *args) -> None:
    started = time.perf_counter()
    try:
        figures = fn(*args)
        check.results[name] = {"status": "passed", **figures,
                               "wall_seconds": round(time.perf_counter() - started, 1)}
    except Exception as exc:  # noqa: BLE001 - a failed part is recorded, the others still run
        check.results[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                               "traceback": traceback.format_exc()[-3000:]}
    print(f"gpu_check: {name}: {check.results[name]['status']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    missing = missing_packages()
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                    "args": {k: v for k, v in vars(args).items() if k != "child"},
                    "python": sys.version.split()[0], "missing_packages": missing}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not args.child:
        report["cuda_tests"] = test_summary(args.tests_junit, args.tests_log)
    if missing:
        report["parts"] = {name: {"status": "skipped", "reason": f"needs {missing} (carry "
                                  "their wheels in scripts/gpu_wheels)"}
                           for name in ("model", "stage1", "stage2", "resume", "generate")}
        out.write_text(json.dumps(report, indent=1))
        print(f"gpu_check: skipped: {missing} missing", flush=True)
        return 0
    import torch

    on_cuda = args.device.startswith("cuda")
    if on_cuda and not torch.cuda.is_available():
        report["parts"] = {"model": {"status": "failed", "error": "CUDA is not available"}}
        out.write_text(json.dumps(report, indent=1))
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        check = Check(device=args.device, size=args.size, reduced=args.layout == "reduced",
                      steps=args.steps, seconds=args.seconds, sample_steps=args.sample_steps,
                      precision=args.precision == "bf16" or (args.precision == "auto"
                                                              and on_cuda),
                      checkpointing=args.checkpointing == "on" or (args.checkpointing == "auto"
                                                                   and on_cuda),
                      work=Path(args.work or tmp), frames=args.frames,
                      motion_frames=args.motion_frames)
        if args.child:
            child(check, Path(args.child))
            return 0
        report["torch"] = torch.__version__
        report["device_name"] = (torch.cuda.get_device_name(0) if on_cuda else "cpu")
        report["bf16_autocast"], report["gradient_checkpointing"] = (check.precision,
                                                                     check.checkpointing)
        run_part(check, "model", write_weights, check)
        if check.results["model"]["status"] == "passed":
            run_part(check, "stage1", stage_part, check, 1)
            run_part(check, "stage2", stage_part, check, 2)
            run_part(check, "resume", resume_part, check,
                     [*argv_without_out(argv), "--out", os.devnull, "--work", str(check.work)])
            run_part(check, "generate", generate_part, check)
        report["parts"] = check.results
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    failed = [n for n, r in report["parts"].items() if r["status"] == "failed"]
    print(f"gpu_check: wrote {out}; failed: {failed or 'none'}", flush=True)
    return 1 if failed else 0


def write_weights(check: Check) -> dict:
    """The SD 1.5-shaped folder, then one model build on the device (timed)."""
    from training.base_layout import write_sd15

    started = time.perf_counter()
    write_sd15(check.work / "models", reduced=check.reduced)
    written = time.perf_counter() - started
    started = time.perf_counter()
    model, trainable, codec = build(check, 1)
    built = time.perf_counter() - started
    cfg = model.cfg
    result = {"layout": "reduced" if check.reduced else "sd15", "image_size": cfg.image_size,
              "frames": cfg.frames, "motion_frames": cfg.motion_frames,
              "write_seconds": round(written, 1), "build_seconds": round(built, 1),
              "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}
    del model, trainable, codec
    return result


def argv_without_out(argv: list[str]) -> list[str]:
    """The parent's options for the child, less --out and --work (given anew)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--out", "--work", "--tests-junit", "--tests-log"):
            skip = True
            continue
        if arg.startswith(("--out=", "--work=", "--tests-junit=", "--tests-log=")):
            continue
        out.append(arg)
    return out


if __name__ == "__main__":
    sys.exit(main())
