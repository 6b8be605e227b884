"""`emoforge bench sync` (jobs/bench_sync.py): the ROC AUC helper and the calibrated keep rule."""

from __future__ import annotations


import numpy as np
import pytest

from jobs.bench.sync import roc_auc, run


def test_roc_auc_known_values():
    assert roc_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert roc_auc(np.array([1.0]), np.array([2.0])) == 0.0
    assert roc_auc(np.array([1.0, 3.0]), np.array([2.0, 2.0])) == 0.5
    assert roc_auc(np.array([2.0]), np.array([2.0, -np.inf])) == 0.75  # a tie counts one half


def test_small_bench_separates_in_sync_from_shifted_and_unrelated():
    report = run(clips_per_set=3, max_photos=0, real=False)
    assert report["offset_within_1_frame"] == {"in_sync": 1.0, "shifted": 1.0}
    assert report["roc_auc_keep_rule"] >= 0.95
    assert report["kept_fraction"]["shifted"] == 0.0 and report["kept_fraction"]["unrelated"] == 0.0


@pytest.mark.slow
def test_full_bench_keep_rule_auc_at_least_095():
    report = run(clips_per_set=16)
    assert report["roc_auc_keep_rule"] >= 0.95, {k: v for k, v in report.items() if k != "rows"}
    assert report["true_positive_rate"] >= 0.9 and report["false_positive_rate"] <= 0.05
