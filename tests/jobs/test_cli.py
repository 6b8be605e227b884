"""The CLI's contract: exit codes, config errors that list valid keys, models list."""

from __future__ import annotations

import pytest

from jobs import cli
from jobs.spec import SpecError, build, load


def test_unknown_keys_list_the_valid_ones():
    with pytest.raises(SpecError, match="valid:.*min_face_px"):
        build({"job": {"inputs": ["x"], "stages": ["ingest", "scenes", "faces"]}, "faces": {"min_face": 3}})
    with pytest.raises(SpecError, match="unknown section"):
        build({"job": {"inputs": ["x"]}, "facez": {}})
    with pytest.raises(SpecError, match="unknown stages"):
        build({"job": {"inputs": ["x"], "stages": ["ingest", "faeces"]}})


def test_overrides_and_pipeline_order():
    spec = build({"job": {"inputs": ["x"], "stages": ["scenes", "ingest"]}},
                 ["runner.num_shards=8", "scenes.detector=\"content\""])
    assert spec.stages == ("ingest", "scenes")
    assert spec.runner.num_shards == 8
    assert spec.configs["scenes"].detector == "content"


def test_overrides_reach_nested_analyzer_tables():
    """`--set analyze.audio.transcribe=false` sets the key inside [analyze.audio] and keeps the
    table's other keys (the TOML's or the defaults)."""
    spec = load("jobs/default.toml", ["analyze.audio.transcribe=false",
                                      "analyze.emotion.slow_frame_stride=4",
                                      "analyze.audio.encoder_engine=\"torch\""])
    analyze = spec.configs["analyze"]
    assert analyze.audio.transcribe is False and analyze.audio.encoder_engine == "torch"
    assert analyze.audio.features is True  # untouched keys keep their values
    assert analyze.emotion.slow_frame_stride == 4
    with pytest.raises(SpecError, match="unknown keys"):
        load("jobs/default.toml", ["analyze.audio_transcribe=false"])


def test_default_job_spec_loads():
    spec = load("jobs/default.toml")
    assert spec.stages == ("ingest", "scenes", "faces", "analyze")
    assert spec.configs["analyze"].enabled == ("audio", "lip_sync", "expression", "emotion")


def test_exit_codes(tmp_path, capsys):
    assert cli.main(["curate", "--out", str(tmp_path / "c")]) == 2  # no inputs
    assert "no inputs" in capsys.readouterr().err
    assert cli.main(["curate", "--input", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "c")]) == 2
    (tmp_path / "no_videos").mkdir()  # inputs given by --set (default.toml's own advice) count
    assert cli.main(["curate", "jobs/default.toml", "--out", str(tmp_path / "c"), "--set",
                     f'job.inputs=["{tmp_path / "no_videos"}"]']) == 2
    assert "no video files found in" in capsys.readouterr().err
    assert cli.main(["catalog", "validate", str(tmp_path / "nothing")]) == 2
    (tmp_path / "empty").mkdir()
    assert cli.main(["catalog", "validate", str(tmp_path / "empty")]) == 1  # not a catalog


def test_models_list_shows_files_and_licenses(capsys):
    assert cli.main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "face_detection/mediapipe" in out and "present" in out
    assert "lip_sync/syncnet" in out and "missing" in out
    assert "non-commercial" in out


def _declared_model_specs() -> list[tuple[str, str, str]]:
    """(file, task, backend pattern) of every `ModelSpec(...)` call in the source: a regex, where
    an f-string's fields stand for any name."""
    import ast
    import re
    from pathlib import Path

    def pattern(node: ast.expr) -> str:
        if isinstance(node, ast.Constant):
            return re.escape(node.value)
        if isinstance(node, ast.JoinedStr):
            return "".join(re.escape(v.value) if isinstance(v, ast.Constant) else r"[\w.-]+"
                           for v in node.values)
        raise AssertionError(f"ModelSpec field {ast.unparse(node)} is neither text nor f-string")

    repo = Path(__file__).resolve().parents[2]
    found = []
    for package in ("catalog", "pipeline", "training", "jobs"):
        for path in sorted((repo / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                name = getattr(node, "func", None)
                if isinstance(node, ast.Call) and getattr(name, "id", getattr(name, "attr", "")) \
                        == "ModelSpec":
                    fields = {k.arg: k.value for k in node.keywords}
                    found.append((str(path.relative_to(repo)), pattern(fields["task"]),
                                  pattern(fields["backend"])))
    return found


def test_models_list_names_every_model_spec_the_code_declares():
    """`emoforge models list` in a fresh interpreter (nothing imported beforehand) names every
    ModelSpec declared anywhere in the code, the training-only weights included."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    declared = _declared_model_specs()
    keys = {f"{task}/{backend}" for _, task, backend in declared}
    assert {"diffusion/sd15", "metrics/inception", "metrics/i3d"} <= keys  # the scan sees them
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "models", "list"], cwd=repo,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    listed = [line.split()[0] for line in done.stdout.splitlines() if "/" in line.split(" ")[0]]
    missing = [f"{file}: {task}/{backend}" for file, task, backend in declared
               if not any(re.fullmatch(f"{task}/{backend}", key) for key in listed)]
    assert not missing, "declared but not listed:\n" + "\n".join(missing)


def test_commercial_only_refuses_restricted_weights(tmp_path, capsys):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"\0")
    code = cli.main(["curate", "--input", str(video), "--out", str(tmp_path / "c"), "--commercial-only",
                     "--set", 'analyze.expression.backend="3dmm"'])
    assert code == 2
    err = capsys.readouterr().err
    assert "expression/3dmm" in err and "research-only" in err


def test_bench_writes_the_result_with_the_machine(tmp_path, monkeypatch, capsys):
    import json
    import sys
    import types

    import numpy as np

    bench = types.ModuleType("tiny_bench")
    bench.run = lambda files=None: {"files": files, "ratio": np.float64(2.5)}
    monkeypatch.setitem(sys.modules, "tiny_bench", bench)
    monkeypatch.setitem(cli.BENCHES, "tiny", "tiny_bench")
    out = tmp_path / "r.json"
    assert cli.main(["bench", "tiny", "a.mp4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["files"] == ["a.mp4"] and result["ratio"] == 2.5  # numpy scalars as numbers
    assert result["machine"]["cores"] >= 1 and result["machine"]["python"]
    assert json.loads(capsys.readouterr().out) == result


def test_bench_options_reach_only_the_benches_that_take_them(monkeypatch, capsys):
    import sys
    import types

    seen = {}
    bench = types.ModuleType("tiny_bench")
    bench.run = lambda files=None, repeats=2: seen.update(repeats=repeats) or {}
    monkeypatch.setitem(sys.modules, "tiny_bench", bench)
    monkeypatch.setitem(cli.BENCHES, "tiny", "tiny_bench")
    assert cli.main(["bench", "tiny", "--repeats", "3"]) == 0 and seen == {"repeats": 3}
    assert cli.main(["bench", "tiny", "--minutes", "5"]) == 2
    assert "takes no --minutes" in capsys.readouterr().err


def test_input_is_repeatable_and_takes_several_files():
    args = cli.build_parser().parse_args(["curate", "--input", "a.mp4", "b.mp4", "--input", "c.mp4"])
    assert args.input == ["a.mp4", "b.mp4", "c.mp4"]


def test_a_key_error_inside_the_library_is_a_runtime_failure(monkeypatch, capsys):
    def broken(args):
        return {}["missing"]

    monkeypatch.setattr(cli, "cmd_models_list", broken)
    assert cli.main(["models", "list"]) == 1  # not 2: the user's command was fine
    assert "KeyError" in capsys.readouterr().err


def test_select_section_and_overrides_in_a_spec():
    spec = build({"job": {"inputs": ["x"]}, "select": {"min_face_px_median": 128, "emotions": ["happy"]}},
                 ["select.lip_sync_rules.av_corr.min_confidence=0.8", "select.balance_by=\"emotion\""])
    assert spec.select.min_face_px_median == 128 and spec.select.emotions == ("happy",)
    assert spec.select.lip_sync_rules["av_corr"] == {"max_abs_offset_frames": 1, "min_confidence": 0.8}
    assert spec.select.balance_by == "emotion"
    assert spec.resolved()["select"]["emotions"] == ["happy"]
    with pytest.raises(SpecError, match=r"\[select\].*unknown thresholds"):
        build({"job": {"inputs": ["x"]}, "select": {"min_face": 3}})


def test_scan_inputs_counts_what_it_ignores(tmp_path):
    from jobs.spec import scan_inputs

    for name in ("b.mp4", "a.MOV", "voice.m4a", "talk.wav", "notes.txt", "x.txt", "README"):
        (tmp_path / "in" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"\0")
    files, ignored = scan_inputs([str(tmp_path / "in")])
    assert [f.rsplit("/", 1)[-1] for f in files] == ["a.MOV", "b.mp4", "talk.wav", "voice.m4a"]
    assert ignored == {"(none)": 1, ".txt": 2}
    assert scan_inputs(["s3://bucket/v.mp4"]) == (["s3://bucket/v.mp4"], {})
