"""`emoforge bench`: FILES may be folders, an input without video is a usage error naming it,
and every parameter of every bench is an `emoforge bench` option listed in --help."""

from __future__ import annotations

import functools
import importlib
import inspect

import numpy as np
import pytest

from jobs import cli
from jobs.bench import BENCHES, OPTIONS, BenchInputError, video_inputs
from jobs.bench import scale as scale_bench
from pipeline.media import VideoWriter


def _video(path, frames: int = 5) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with VideoWriter(str(path), 32, 32, fps=25, threads=1) as writer:
        for i in range(frames):
            writer.write(np.full((32, 32, 3), 40 * i, np.uint8))
    return str(path)


@pytest.fixture
def video_folder(tmp_path):
    folder = tmp_path / "videos"
    videos = [_video(folder / "b.mp4"), _video(folder / "nested" / "a.mov")]
    (folder / "notes.txt").write_text("not a video")
    return folder, videos


def _recording(monkeypatch, module, seen: dict):
    real = module.run

    @functools.wraps(real)  # the same signature: the CLI passes what `run` takes
    def run(**kwargs):
        seen.update(kwargs)
        return {"bench": "recorded"}

    monkeypatch.setattr(module, "run", run)


def test_a_folder_is_expanded_as_curate_expands_it(video_folder):
    folder, videos = video_folder
    assert video_inputs([str(folder)]) == sorted(videos)
    assert scale_bench.inputs([str(folder)]) == sorted(videos)


def test_bench_scale_takes_a_folder(video_folder, monkeypatch, capsys):
    folder, videos = video_folder
    seen: dict = {}
    _recording(monkeypatch, scale_bench, seen)
    assert cli.main(["bench", "scale", str(folder), "--repeats", "1", "--workdir", "w"]) == 0
    assert seen == {"files": sorted(videos), "repeats": 1, "out": "w"}


def test_bench_scale_on_a_folder_without_video_is_a_usage_error(tmp_path, capsys):
    empty = tmp_path / "no_video"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    assert cli.main(["bench", "scale", str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"input {empty} holds no video files" in err and ".txt" in err
    assert "ZeroDivisionError" not in err


def test_a_file_without_video_is_a_usage_error_naming_it(tmp_path, capsys):
    broken = tmp_path / "in" / "broken.mp4"
    broken.parent.mkdir()
    broken.write_bytes(b"not a container")
    assert cli.main(["bench", "scale", str(broken.parent)]) == 2
    assert f"input {broken} yields no video" in capsys.readouterr().err
    assert cli.main(["bench", "scenes", str(tmp_path / "missing")]) == 2
    assert "missing does not exist" in capsys.readouterr().err
    with pytest.raises(BenchInputError, match="broken.mp4"):
        scale_bench.inputs([str(broken)])


def test_every_bench_parameter_is_an_emoforge_bench_option():
    for name, module_name in BENCHES.items():
        params = set(inspect.signature(importlib.import_module(module_name).run).parameters)
        options = {o.param for o in OPTIONS if name in o.benches}
        assert params - {"files"} == options, name


def test_every_bench_option_is_listed_in_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    text = capsys.readouterr().out
    for option in OPTIONS:
        assert option.flag in text
    for name in BENCHES:
        assert name in text


def test_pipeline_options_reach_the_pipeline_bench(monkeypatch):
    from jobs.bench import pipeline as pipeline_bench

    seen: dict = {}
    _recording(monkeypatch, pipeline_bench, seen)
    assert cli.main(["bench", "pipeline", "--no-ray", "--seconds", "3", "--set", "a.b=1",
                     "--set", "c.d=2", "--compare", "e.f=3"]) == 0
    assert seen == {"files": None, "ray": False, "seconds": 3.0, "overrides": ["a.b=1", "c.d=2"],
                    "compare": ["e.f=3"]}
    seen.clear()
    assert cli.main(["bench", "pipeline", "--emotion-strides"]) == 0
    assert seen == {"files": None, "emotion_strides": True}


def test_an_option_of_another_bench_is_refused(capsys):
    assert cli.main(["bench", "simulate", "--no-ray"]) == 2
    assert "bench simulate takes no --no-ray" in capsys.readouterr().err
    assert cli.main(["bench", "train", "--steps", "1", "2"]) == 2
    assert "bench train takes one --steps value, got 2" in capsys.readouterr().err
