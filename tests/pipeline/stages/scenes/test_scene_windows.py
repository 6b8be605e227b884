"""Long videos' scene windows run as parallel Ray tasks (Stage.parts): the clips equal the
one-piece scan's, and a window whose worker dies every time fails its video, not the job."""

from __future__ import annotations

from pathlib import Path

import pytest
from jobs.media.synthetic import make_video, shots

import catalog
from pipeline.run import runner
from pipeline.stages.scenes.detect import ScenesConfig, detect_scenes
from pipeline.stages.contract import StageContext
from pipeline.stages.scenes.stage import ScenesStage
from pipeline.run.workers import StageWorker

pytestmark = pytest.mark.ray
CUTS = [100, 249, 280, 499, 510, 620, 751, 900]  # at, before and after the 10 s window edges
WINDOWED = ScenesConfig(window_s=10.0, window_overlap_s=1.0)


def _long_video(folder: Path, name: str = "long.mp4", seed: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if not path.exists():
        make_video(path, shots(CUTS, (128, 72), seed=seed), 1000, size=(128, 72), gop=50)
    return path


def test_window_tasks_give_the_one_piece_clips(tmp_path, ray_local):
    path = _long_video(tmp_path)
    context = StageContext(catalog=str(tmp_path / "cat"), staging=str(tmp_path / "staging"))
    worker = StageWorker(["scenes"], [WINDOWED], context, max_attempts=2)
    stage = worker.stages[0]
    row = {"uri": str(path), "video_id": "v", "shard": 0, "duration_s": 40.0}
    assert len(stage.parts(row)) == 4
    import pyarrow as pa

    result = worker._in_parts(stage, pa.Table.from_pylist([row])).to_pylist()[0]
    one_piece = detect_scenes(path)  # a single decode of the whole file
    assert [(c["start_frame"], c["end_frame"]) for c in result["clips"]] == \
        [(c.start_frame, c.end_frame) for c in one_piece]
    starts = [c["start_frame"] - 2 for c in result["clips"] if c["cut_before"] == "cut"]
    assert starts == pytest.approx([100, 249, 280, 499, 620, 751, 900], abs=1)  # 510: too close
    short = {**row, "duration_s": 9.0}
    assert worker._in_parts(ScenesStage(ScenesConfig(), context), pa.Table.from_pylist([short])) is None


def test_curate_with_window_tasks_equals_one_piece_catalog(tmp_path, ray_local):
    path = _long_video(tmp_path / "in")
    windowed, whole = tmp_path / "windowed", tmp_path / "whole"
    runner.run_stages([str(path)], str(windowed), ["ingest", "scenes"], {"scenes": WINDOWED})
    runner.run_stages([str(path)], str(whole), ["ingest", "scenes"], {"scenes": ScenesConfig(window_s=600.0)})
    columns = ["clip_id", "start_s", "end_s", "start_frame", "end_frame", "cut_before"]
    assert catalog.read_table(windowed, "clips", columns=columns).to_pylist() == \
        catalog.read_table(whole, "clips", columns=columns).to_pylist()
    # window sizes are how the work is split, not what it computes: one fingerprint
    assert catalog.read_manifest(windowed)["stages"]["scenes"]["fingerprint"] == \
        catalog.read_manifest(whole)["stages"]["scenes"]["fingerprint"]


@pytest.mark.slow
def test_a_window_that_kills_its_worker_fails_only_its_video(tmp_path, ray_local):
    good = _long_video(tmp_path / "in", "good.mp4")
    poison = _long_video(tmp_path / "in", "poison.mp4", seed=7)  # not a duplicate of good
    out = tmp_path / "cat"
    runner.run_stages([str(good), str(poison)], str(out), ["ingest", "crashing_stage:CrashingWindows"],
               {"crashing_stage:CrashingWindows": WINDOWED},
               runner.RunnerConfig(max_attempts=2))
    rows = {Path(r["uri"]).name: r for r in catalog.read_table(out, "videos").to_pylist()}
    assert rows["poison.mp4"]["scenes_status"] == "failed"
    assert "worker crashed while decoding" in rows["poison.mp4"]["scenes_error"]
    assert rows["good.mp4"]["scenes_status"] == "ok"
    assert rows["good.mp4"]["scene_count"] == len(detect_scenes(good))
    assert catalog.validate(out) == []
