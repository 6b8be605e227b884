"""Job and training specs through one loader: the same overrides resolve the same way."""

from __future__ import annotations

import dataclasses

import pytest

from catalog.spec import COMMAND_SECTIONS, SpecError
from jobs import cli
from jobs import spec as job_spec
from pipeline.stages.registry import STAGE_CLASSES
from training import config as train_config

SELECT_OVERRIDES = [
    "select.lip_sync_rules.av_corr.min_confidence=0.7",
    "select.lip_sync_rules.syncnet.max_abs_offset_frames=2",
    "select.min_face_px_median=128",
    'select.emotions=["happy", "neutral"]',
    'select.balance_by="emotion"',
]


def test_the_same_select_overrides_resolve_the_same_in_curate_and_train():
    curate = job_spec.build({"job": {"inputs": ["x"]}, "select": {"min_track_s": 2.0}},
                            SELECT_OVERRIDES)
    train = train_config.build({"select": {"min_track_s": 2.0}}, SELECT_OVERRIDES)
    assert curate.select == train.select
    assert curate.resolved()["select"] == train.resolved()["select"]
    assert train.select.lip_sync_rules == {
        "av_corr": {"max_abs_offset_frames": 1, "min_confidence": 0.7},
        "syncnet": {"max_abs_offset_frames": 2, "min_confidence": 3.0}}
    assert train.select.min_track_s == 2.0 and train.select.emotions == ("happy", "neutral")


def test_the_training_spec_takes_nested_overrides_from_its_toml():
    spec = train_config.load("jobs/train_tiny.toml", SELECT_OVERRIDES[:1])
    assert spec.select.lip_sync_rules["av_corr"]["min_confidence"] == 0.7
    assert spec.select.min_face_px_median == 64  # the TOML's value, kept


@pytest.mark.parametrize("build", [
    lambda o: job_spec.build({"job": {"inputs": ["x"]}}, o),
    lambda o: train_config.build({}, o),
])
def test_unknown_keys_list_the_valid_ones_in_both_commands(build):
    with pytest.raises(SpecError, match=r"unknown thresholds \['min_face'\]; valid:.*min_face_px_median"):
        build(["select.min_face=3"])


def test_a_key_of_the_other_command_names_it():
    with pytest.raises(SpecError, match=r"\[train\] belongs to `emoforge train`"):
        job_spec.build({"job": {"inputs": ["x"]}}, ["train.max_steps=5"])
    with pytest.raises(SpecError, match=r"\[job\] belongs to `emoforge curate`"):
        train_config.build({"job": {"inputs": ["x"]}})
    with pytest.raises(SpecError, match=r"\[faces\] belongs to `emoforge curate`"):
        train_config.build({}, ["faces.min_face_px=32"])
    with pytest.raises(SpecError, match=r"\[train\] has unknown keys \['max_step'\]; valid:.*max_steps"):
        train_config.build({}, ["train.max_step=5"])


def test_curate_sections_are_the_runner_stages_and_the_job_sections():
    stage_sections = set(COMMAND_SECTIONS["curate"]) - {"job", "runner", "storage", "select"}
    assert stage_sections == set(STAGE_CLASSES)


def test_a_curate_spec_is_what_the_runner_takes_whole(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('[job]\ninputs = ["a.mp4"]\nstages = ["scenes", "ingest"]\n'
                    '[runner]\nnum_shards = 4\n[select]\nmin_face_px_median = 100\n')
    job = job_spec.load(path, ["select.lip_sync_rules.av_corr.min_confidence=0.7"])
    assert job.stages == ("ingest", "scenes") and job.runner.num_shards == 4
    assert set(job.configs) == {"ingest", "scenes"}
    resolved = job.resolved()
    assert resolved["select"]["min_face_px_median"] == 100
    assert resolved["select"]["lip_sync_rules"]["av_corr"]["min_confidence"] == 0.7
    assert resolved["runner"] == dataclasses.asdict(job.runner)


def test_the_cli_reports_spec_errors_of_both_commands_as_usage_errors(tmp_path, capsys):
    assert cli.main(["train", "jobs/train_tiny.toml", "--set", "select.min_face=3"]) == 2
    assert "valid:" in capsys.readouterr().err
    assert cli.main(["curate", "--input", "a.mp4", "--out", str(tmp_path / "c"),
                     "--set", "train.max_steps=5"]) == 2
    assert "belongs to `emoforge train`" in capsys.readouterr().err
    assert cli.main(["curate", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml does not exist" in capsys.readouterr().err
