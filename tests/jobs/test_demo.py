"""The demo's goals, judged from evaluation rows built by hand."""

from __future__ import annotations

from jobs.demo import demo_goals, goals_table


def row(face_frames=100, same=True, truth=(0, 0.8), mismatched=0.3, av=(5, 0.2)) -> dict:
    return {"frames": 100, "face_frames": face_frames,
            "identity": {"dlib": {"same_person": same}},
            "lip_sync_truth": {"driving": {"offset_frames": truth[0], "confidence": truth[1]},
                               "mismatched": {"offset_frames": 3, "confidence": mismatched}},
            "lip_sync": {"av_corr": {"offset_frames": av[0], "confidence": av[1]}}}


def test_a_clip_in_sync_by_the_truth_measure_meets_every_goal():
    goals = demo_goals(row())
    assert goals["all_met"] and goals["lips_in_sync"]["ok"]
    assert "all demo goals met: yes" in goals_table(goals)


def test_each_goal_fails_on_its_own():
    assert not demo_goals(row(face_frames=89))["face_found"]["ok"]
    assert demo_goals(row(face_frames=90))["face_found"]["ok"]
    assert not demo_goals(row(same=None))["same_person"]["ok"]
    # the truth offset within a frame but no better than another sentence: not in sync
    assert not demo_goals(row(truth=(1, 0.3), mismatched=0.35))["lips_in_sync"]["ok"]
    assert not demo_goals(row(truth=(2, 0.8)))["lips_in_sync"]["ok"]
    missed = demo_goals(row(truth=(13, 0.4)))
    assert not missed["all_met"] and "all demo goals met: NO" in goals_table(missed)


def test_av_corr_alone_can_show_the_lips_in_sync():
    off_truth = dict(truth=(13, 0.4))
    assert demo_goals(row(**off_truth, av=(-1, 0.6)))["lips_in_sync"]["ok"]
    assert not demo_goals(row(**off_truth, av=(0, 0.59)))["lips_in_sync"]["ok"]
    assert not demo_goals(row(**off_truth, av=(None, None)))["lips_in_sync"]["ok"]
