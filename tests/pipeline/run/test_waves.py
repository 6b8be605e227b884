"""Waves in flight (runner.waves_in_flight > 1): the same catalog as one wave at a time, and a run
that dies in one wave's commit while others run resumes to that catalog."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from catalog_compare import assert_same_catalog
from jobs.media.synthetic import make_video

import catalog
import pipeline.run.staging as staging_module
from pipeline.run import runner

pytestmark = pytest.mark.ray


def _inputs(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):  # 1 s each (longer than the minimum scene), different lengths of shots
        path = folder / f"w{i:02d}.mp4"
        make_video(path, lambda k, i=i: np.full((32, 32, 3), (i * 29 + (k // (5 + i)) * 60) % 255, np.uint8),
                   25, size=(32, 32))
        files.append(str(path))
    return files


def test_waves_in_flight_give_the_same_catalog_and_resume(tmp_path, ray_local, monkeypatch):
    files = _inputs(tmp_path / "in", 5)
    stages = ["ingest", "scenes"]
    reference = tmp_path / "one-by-one"
    runner.run_stages(files, str(reference), stages, {}, runner.RunnerConfig(wave_videos=1, waves_in_flight=1))

    flight = runner.RunnerConfig(wave_videos=1, waves_in_flight=3)
    out = tmp_path / "in-flight"
    result = runner.run_stages(files, str(out), stages, {}, flight)
    assert result.shards_committed == len(list((out / "_commits").glob("*.json")))
    assert_same_catalog(out, reference)
    assert catalog.validate(out) == []
    assert not (out / "_staging").exists() or not any((out / "_staging").iterdir())

    original = staging_module.commit_shard
    calls = {"n": 0}

    def crashing_commit(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # one wave dies between its file moves and its record
            kwargs["before_record"] = lambda: (_ for _ in ()).throw(RuntimeError("power cut"))
        return original(*args, **kwargs)

    monkeypatch.setattr(staging_module, "commit_shard", crashing_commit)
    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="power cut"):
        runner.run_stages(files, str(crashed), stages, {}, flight)
    assert len(list((crashed / "_commits").glob("*.json"))) < result.shards_committed
    monkeypatch.setattr(staging_module, "commit_shard", original)
    runner.run_stages(files, str(crashed), stages, {}, flight)
    assert_same_catalog(crashed, reference)
    assert catalog.validate(crashed) == []
    rows = catalog.read_table(crashed, "videos").to_pylist()
    assert sorted(r["uri"] for r in rows) == sorted(files)
