"""The shared spec loader: dotted overrides, [select] merging, sections, TOML errors."""

from __future__ import annotations

import pytest

from catalog.select import LIP_SYNC_RULES, Thresholds
from catalog.spec import (
    SpecError,
    check_sections,
    dataclass_from,
    parse_value,
    read_toml,
    select_from,
    with_overrides,
)


def test_dotted_overrides_reach_nested_tables_and_leave_the_input_as_read():
    data = {"select": {"lip_sync_rules": {"av_corr": {"min_confidence": 0.5}}, "min_track_s": 2.0}}
    out = with_overrides(data, ["select.lip_sync_rules.av_corr.min_confidence=0.7",
                                "select.emotions=[\"happy\", \"sad\"]", "runner.num_shards=8"],
                         "curate")
    assert out["select"] == {"lip_sync_rules": {"av_corr": {"min_confidence": 0.7}},
                             "min_track_s": 2.0, "emotions": ["happy", "sad"]}
    assert out["runner"] == {"num_shards": 8}
    assert data["select"]["lip_sync_rules"]["av_corr"]["min_confidence"] == 0.5


def test_override_values_are_read_as_toml_and_bare_words_as_text():
    assert parse_value("0.7") == 0.7 and parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2] and parse_value('"x y"') == "x y"
    assert parse_value("content") == "content"


@pytest.mark.parametrize("override", ["select", "select.=1", "min_face_px_median=3", "=3"])
def test_malformed_overrides_are_errors(override):
    with pytest.raises(SpecError, match="not section.key=value"):
        with_overrides({}, [override], "curate")


def test_an_override_below_a_value_is_an_error():
    with pytest.raises(SpecError, match="select.min_face_px_median is a value, not a table"):
        with_overrides({"select": {"min_face_px_median": 96}}, ["select.min_face_px_median.x=1"], "train")


def test_select_is_merged_rule_by_rule_onto_the_defaults():
    t = select_from({"lip_sync_rules": {"av_corr": {"min_confidence": 0.7}}, "min_face_px_median": 128})
    assert t.lip_sync_rules == {"av_corr": {"max_abs_offset_frames": 1, "min_confidence": 0.7},
                                "syncnet": LIP_SYNC_RULES["syncnet"]}
    assert t.min_face_px_median == 128 and t.min_track_s == Thresholds().min_track_s
    with pytest.raises(SpecError, match=r"\[select\].*unknown thresholds.*valid:.*min_face_px_median"):
        select_from({"min_face": 3})


def test_sections_of_the_other_command_name_it():
    with pytest.raises(SpecError, match=r"\[train\] belongs to `emoforge train`.*valid: job, "):
        check_sections(["job", "train"], "curate")
    with pytest.raises(SpecError, match=r"\[runner\] belongs to `emoforge curate`.*valid: train, "):
        check_sections(["runner"], "train")
    with pytest.raises(SpecError, match=r"unknown sections \['trian'\] for `emoforge train`; valid"):
        check_sections(["trian"], "train")


def test_dataclass_from_lists_the_valid_keys_and_makes_tuples():
    with pytest.raises(SpecError, match=r"\[select\] has unknown keys \['x'\]; valid: .*emotions"):
        dataclass_from(Thresholds, {"x": 1}, "select")
    assert dataclass_from(Thresholds, {"emotions": ["happy"]}, "select").emotions == ("happy",)


def test_missing_and_malformed_spec_files_are_errors(tmp_path):
    with pytest.raises(SpecError, match="missing.toml does not exist"):
        read_toml(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[select\nmin_face_px_median = 3\n")
    with pytest.raises(SpecError, match="bad.toml is not valid TOML"):
        read_toml(tmp_path / "bad.toml")
