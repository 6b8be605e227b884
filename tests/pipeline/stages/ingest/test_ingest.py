"""Ingest through the Ray runner: broken inputs become failed rows with reasons, odd inputs are
ok with correct metadata, duplicates are skipped, all in one job."""

from __future__ import annotations

import math
import os
import shutil

import numpy as np
import pytest

import catalog
from jobs.media.ingest_cases import build_ingest_corpus
from jobs.media.synthetic import make_video
from jobs.spec import expand_inputs, scan_inputs
from pipeline.run import runner
from pipeline.stages.ingest.stage import IngestConfig

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, ray_local):
    folder = tmp_path_factory.mktemp("inputs")
    valid, broken = build_ingest_corpus(folder)
    shutil.copy(folder / "plain.mp4", folder / "plain_copy.mp4")
    out = tmp_path_factory.mktemp("cat") / "catalog"
    files, ignored = scan_inputs((str(folder),))
    assert ignored == {".txt": 1}  # notes.txt: counted, not silently dropped
    result = runner.run_stages(files, str(out), ["ingest"], {"ingest": IngestConfig()})
    rows = {r["uri"].rsplit("/", 1)[-1]: r for r in catalog.read_table(out, "videos").to_pylist()}
    return out, rows, valid, broken, result


def test_every_input_is_a_row(ingested):
    out, rows, valid, broken, result = ingested
    assert set(rows) == set(valid) | set(broken) | {"plain_copy.mp4"}
    assert "voice.m4a" in broken and "notes.txt" not in rows
    assert all(os.path.isabs(r["uri"]) for r in rows.values())
    assert catalog.validate(out) == []


def test_relative_inputs_give_absolute_uris(tmp_path, monkeypatch, ray_local):
    make_video(tmp_path / "in" / "a.mp4", lambda i: np.full((48, 64, 3), 9 * i, np.uint8), 5,
               size=(64, 48))
    monkeypatch.chdir(tmp_path)
    assert scan_inputs(("in",)) == ([str(tmp_path / "in" / "a.mp4")], {})
    runner.run_stages(["in/a.mp4"], "cat", ["ingest"], {"ingest": IngestConfig()})
    monkeypatch.chdir("/")  # the catalog reads the same from anywhere
    (row,) = catalog.read_table(tmp_path / "cat", "videos").to_pylist()
    assert row["uri"] == str(tmp_path / "in" / "a.mp4") and row["ingest_status"] == "ok"


def test_broken_inputs_fail_with_reason(ingested):
    _, rows, _, broken, _ = ingested
    for name, fragment in broken.items():
        assert rows[name]["ingest_status"] == "failed", name
        assert fragment.lower() in rows[name]["ingest_error"].lower(), (name, rows[name]["ingest_error"])


def test_odd_inputs_are_ok_with_metadata(ingested):
    _, rows, valid, _, _ = ingested
    for name, expected in valid.items():
        row = rows[name]
        assert row["ingest_status"] == "ok", (name, row["ingest_error"])
        for key, value in expected.items():
            got = row[key]
            if isinstance(value, float):
                assert math.isclose(got, value, rel_tol=1e-3), (name, key, got)
            else:
                assert got == value, (name, key, got)
    assert rows["ntsc.mp4"]["fps"] == pytest.approx(29.97, abs=0.01)
    # the container's start time, as ffprobe reports it: 0.5 s minus AAC's 1024-sample priming
    assert rows["late_audio.mp4"]["audio_start_offset_s"] == pytest.approx(0.5 - 1024 / 16000, abs=0.01)
    assert rows["plain.mp4"]["audio_start_offset_s"] == pytest.approx(0.0, abs=0.05)
    assert rows["plain.mp4"]["duration_s"] == pytest.approx(1.0, abs=0.01)


def test_duplicate_is_skipped_and_points_to_original(ingested):
    _, rows, _, _, _ = ingested
    original, copy = rows["plain.mp4"], rows["plain_copy.mp4"]
    assert original["ingest_status"] == "ok" and original["duplicate_of"] is None
    assert copy["ingest_status"] == "skipped"
    assert copy["duplicate_of"] == original["video_id"]
    assert copy["content_sha256"] == original["content_sha256"]
    assert copy["video_id"] != original["video_id"]


def test_rerun_reuses_everything(ingested):
    out, rows, _, _, _ = ingested
    files = [r["uri"] for r in rows.values()]
    result = runner.run_stages(expand_inputs(tuple(files)), str(out), ["ingest"], {"ingest": IngestConfig()})
    assert result.shards_committed == 0 and result.shards_up_to_date > 0
