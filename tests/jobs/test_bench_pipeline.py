"""`emoforge bench pipeline`: --seconds reaches the bench, other benches refuse it, and the
rates it reports are the arithmetic they claim."""

from __future__ import annotations

import json
import os
import sys
import types

import numpy as np
import pytest

from jobs import cli
from jobs.bench.pipeline import _row_with, rates


def test_seconds_reaches_a_bench_that_takes_it(tmp_path, monkeypatch):
    seen = {}
    bench = types.ModuleType("sized_bench")

    def run(files=None, seconds=20.0):
        seen.update(files=files, seconds=seconds)
        return {"ok": True}

    bench.run = run
    monkeypatch.setitem(sys.modules, "sized_bench", bench)
    monkeypatch.setitem(cli.BENCHES, "sized", "sized_bench")
    out = tmp_path / "r.json"
    assert cli.main(["bench", "sized", "--seconds", "118", "--out", str(out)]) == 0
    assert seen == {"files": None, "seconds": 118.0}
    assert json.loads(out.read_text())["ok"] is True
    assert cli.main(["bench", "sized"]) == 0 and seen["seconds"] == 20.0  # its own default


def test_seconds_is_refused_by_a_bench_without_it(monkeypatch, capsys):
    bench = types.ModuleType("plain_bench")
    bench.run = lambda files=None: {}
    monkeypatch.setitem(sys.modules, "plain_bench", bench)
    monkeypatch.setitem(cli.BENCHES, "plain", "plain_bench")
    assert cli.main(["bench", "plain", "--seconds", "5"]) == 2
    assert "--seconds" in capsys.readouterr().err


def test_emoforge_bench_pipeline_runs_the_pipeline_bench(monkeypatch, capsys):
    """`emoforge bench pipeline` calls jobs.bench.pipeline.run and prints what it returns."""
    import jobs.bench.pipeline as pipeline_bench

    calls = []
    monkeypatch.setattr(pipeline_bench, "run",
                        lambda files=None, seconds=20.0: calls.append(seconds) or {"rtf": 1.5})
    assert cli.main(["bench", "pipeline", "--seconds", "7"]) == 0
    assert calls == [7.0] and json.loads(capsys.readouterr().out)["rtf"] == 1.5


def test_rates_are_video_seconds_per_second_and_core_hours():
    r = rates(30.0, 120.0, 2)  # 120 s of video in 30 s on 2 cores
    assert r["rtf"] == 4.0 and r["rtf_per_core"] == 2.0
    assert r["core_hours_per_1000h"] == pytest.approx(500.0)  # 1000 h * 2 cores / 4


def test_child_rows_keep_their_ancestors_columns():
    video = {"uri": "a.mp4", "fps": 25.0, "start_s": None}
    clip = {"clip_id": "c", "start_s": 1.0, "fps": None}
    row = _row_with(video, clip)
    assert row == {"uri": "a.mp4", "fps": 25.0, "clip_id": "c", "start_s": 1.0}


def test_tree_cpu_is_split_by_process_and_task(tmp_path):
    """Hand-made records: worker 11 started before ray.init ended (1 s then), set up faces and
    ran two faces rows, its write fused with the map (the map's 6 s inside the write's 6.5 s);
    worker 12 ran one analyze row; 13 ran no task of ours (a Ray process)."""
    from jobs.bench.pipeline import read_worker_stats, split_tree_cpu

    me = os.getpid()
    events = {11: [
        {"kind": "chain", "names": ["faces"], "cpu_before": 3.0, "cpu_after": 7.0,
         "setup_cpu": 0.5, "busy_s": {"faces": 3.4}},
        {"kind": "write", "names": ["faces"], "cpu_before": 2.5, "cpu_after": 9.0,
         "setup_cpu": 0.0, "nested_cpu": 6.0},
        {"kind": "chain", "names": ["faces"], "cpu_before": 7.0, "cpu_after": 9.0,
         "setup_cpu": 0.0, "busy_s": {"faces": 2.0}}],
        12: [{"kind": "chain", "names": ["ingest", "scenes"], "cpu_before": 2.0,
              "cpu_after": 5.0, "setup_cpu": 1.0, "busy_s": {"ingest": 0.5, "scenes": 1.5}}]}
    for pid, rows in events.items():
        (tmp_path / f"{pid}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = read_worker_stats(str(tmp_path))
    by_pid = {me: 10.0, 11: 10.0, 12: 6.0, 13: 4.0}
    at_init = {me: 3.0, 11: 1.0, 13: 1.5}
    split = split_tree_cpu(by_pid, at_init, stats)
    assert split["ray_init"] == 5.5
    assert split["driver"] == 7.0
    assert split["ray_system"] == 2.5
    assert split["setup"] == {"faces": 0.5, "ingest+scenes": 1.0}
    # faces: (4 - 0.5) + 2; the chain's 2 s shared 1:3 by busy time
    assert split["work"] == {"faces": 5.5, "ingest": 0.5, "scenes": 1.5}
    assert split["sink"] == 0.5
    # worker 11: 9 s after init, 6.5 of it in our tasks; worker 12: 6 s, 3 in the task
    assert split["worker_other"] == 5.5
    assert split["worker_processes"]["11"]["before_first_task"] == 2.0
    total = (split["ray_init"] + split["driver"] + split["ray_system"] + split["sink"]
             + split["worker_other"] + sum(split["setup"].values()) + sum(split["work"].values()))
    assert total == sum(by_pid.values())


def test_decode_and_landmarks_follows_the_face_and_finds_it_again(tmp_path):
    """The bench's 'unavoidable work' pass on a clip whose truth is known: 40 real frames with a
    face, 15 grey frames without one, 20 with the face again: every frame decoded, the face found
    in exactly the 60 frames that hold it (followed, lost on the grey, detected again)."""
    from jobs.bench.pipeline import decode_and_landmarks
    from jobs.media.sources import media_file
    from pipeline.media import iter_frames, write_video

    source = str(media_file("WolfgangLanger_Pexels.mp4"))
    real = [f.image for _, f in zip(range(60), iter_frames(source))]
    grey = [np.full_like(real[0], 128) for _ in range(15)]
    path = tmp_path / "face_gap_face.mp4"
    write_video(str(path), np.stack(real[:40] + grey + real[40:]))
    got = decode_and_landmarks([str(path)])
    assert got["frames"] == 75
    assert got["frames_with_face"] == 60
    assert 0 < got["landmarks_cpu_s"] <= got["cpu_s"]
