"""`emoforge bench pipeline`: --seconds reaches the bench, other benches refuse it, and the
rates it reports are the arithmetic they claim."""

from __future__ import annotations

import json
import sys
import types

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


def test_pipeline_bench_is_registered():
    assert cli.BENCHES["pipeline"] == "jobs.bench.pipeline"


def test_rates_are_video_seconds_per_second_and_core_hours():
    r = rates(30.0, 120.0, 2)  # 120 s of video in 30 s on 2 cores
    assert r["rtf"] == 4.0 and r["rtf_per_core"] == 2.0
    assert r["core_hours_per_1000h"] == pytest.approx(500.0)  # 1000 h * 2 cores / 4


def test_child_rows_keep_their_ancestors_columns():
    video = {"uri": "a.mp4", "fps": 25.0, "start_s": None}
    clip = {"clip_id": "c", "start_s": 1.0, "fps": None}
    row = _row_with(video, clip)
    assert row == {"uri": "a.mp4", "fps": 25.0, "clip_id": "c", "start_s": 1.0}
