"""The analyze stage never drops per-frame output silently; the faces stage honours its config."""

from __future__ import annotations

import logging

from pipeline.stages.analyze.base import AnalyzerResult
from pipeline.stages.analyze.stage import _checked_frames, _frame_rows


def test_a_per_frame_column_of_the_wrong_length_fails_the_analyzer_loudly(caplog):
    good = AnalyzerResult({"emotion_status": "ok", "emotion_label": "happy"},
                          {"emotion_probs": [[0.5, 0.5]] * 4})
    assert _checked_frames("emotion", good, 4, "t0") is good
    bad = AnalyzerResult({"expression_status": "ok", "expression_dim": 10},
                         {"expression": [[0.0] * 10] * 3, "jaw_pose": [[0.0] * 3] * 4})
    with caplog.at_level(logging.WARNING):
        checked = _checked_frames("expression", bad, 4, "t0")
    assert checked.track["expression_status"] == "failed"
    assert "expression has 3 values" in checked.track["expression_error"]
    assert "4 frames" in checked.track["expression_error"]
    assert checked.track["expression_dim"] == 10 and checked.frames == {}
    assert "t0" in caplog.text and "expression has 3 values" in caplog.text
    rows = _frame_rows({"emotion": good, "expression": checked}, 4)
    assert rows == [{"emotion_probs": [0.5, 0.5]}] * 4


def test_an_identity_threshold_of_zero_is_honoured_not_replaced_by_the_default():
    from types import SimpleNamespace

    from pipeline.models.thresholds import IDENTITY_DISTANCE
    from pipeline.stages.faces.stage import FacesConfig, FacesStage

    stage = FacesStage(FacesConfig(identity_threshold=0.0), None)
    stage.backend = SimpleNamespace(identity=SimpleNamespace(name="dlib"), has_mesh=True)
    assert stage.tracker_config().identity_threshold == 0.0
    stage = FacesStage(FacesConfig(), None)
    stage.backend = SimpleNamespace(identity=SimpleNamespace(name="dlib"), has_mesh=True)
    assert stage.tracker_config().identity_threshold == IDENTITY_DISTANCE["dlib"]
