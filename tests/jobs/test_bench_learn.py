"""bench learn's lip-sync measure against the renderer's truth, its goals, and (slow) the bench
itself: a short training on the synthetic talking-face corpus whose mouths follow the audio."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from jobs.bench.learn import expression_video, training_overrides, verdict
from jobs.bench.lip_truth import (
    box_at_size, clip_truth, mouth_darkness, separation, sync_goals)
from jobs.media.talking_corpus import TalkingClip
from jobs.media.talking_face import (
    SENTENCES, drive_signal, mouth_interior_box, render, speech)
from pipeline.models.lip_sync.av_sync import correlate_offsets
from pipeline.media import write_video
from tests.media import written_under_heap_fills
from tests.talking_face import face
from training import config

SIZE = 64  # the tiny model's frames
REPO = Path(__file__).resolve().parents[2]


def resized(frames: np.ndarray, size: int = SIZE) -> np.ndarray:
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])


def test_the_interior_box_holds_the_mouth_interior_the_renderer_draws():
    still = dict(motion_px=0.0, rot_deg=0.0, blur_sigma=0.0, noise=0.0)
    closed, opened = render(face(), np.array([0.0, 1.0]), **still).astype(np.float64)
    interior_colour = np.array([70, 25, 30])  # render's dark mouth interior
    drawn = (np.abs(opened - interior_colour).max(-1) < 20) & ~(
        np.abs(closed - interior_colour).max(-1) < 20)
    x0, y0, x1, y1 = (round(v) for v in mouth_interior_box(face().landmarks))
    inside = np.zeros(drawn.shape, bool)
    inside[y0:y1, x0:x1] = True
    assert drawn.sum() > 200
    assert (drawn & inside).sum() / drawn.sum() > 0.9  # the rest: anti-aliased edges
    darkening = (closed - opened).mean(-1)
    assert darkening[inside].mean() > 80  # grey levels, of 255


def test_box_at_size_scales_to_the_model_size_and_stays_in_the_frame():
    x0, y0, x1, y1 = mouth_interior_box(face().landmarks)
    bx0, by0, bx1, by1 = box_at_size(face().landmarks, 160, SIZE)
    assert bx0 == int(np.floor(x0 * SIZE / 160)) and by1 == int(np.ceil(y1 * SIZE / 160))
    assert bx0 < bx1 <= SIZE and by0 < by1 <= SIZE
    assert box_at_size(face().landmarks * 10, 160, SIZE)[2:] == (SIZE, SIZE)  # clipped


def test_mouth_darkness_is_minus_the_mean_grey_in_the_box():
    frames = np.full((2, 8, 8, 3), 200, np.uint8)
    frames[1, 2:4, 3:6] = 50
    np.testing.assert_allclose(mouth_darkness(frames, (3, 2, 6, 4)), [-200.0, -50.0])


@pytest.fixture(scope="module")
def talking():
    """The astronaut rendered speaking a sentence at 64 px, with its driving and another audio."""
    audio, other = speech(SENTENCES[1]), speech(SENTENCES[2])
    frames = len(audio) // 640
    opening = drive_signal(audio, frames)
    video = resized(render(face(), opening, seed=3))
    return video, audio, other, box_at_size(face().landmarks, 160, SIZE), opening


def test_a_rendered_clip_is_in_sync_with_its_truth_and_not_with_another_sentence(talking):
    video, audio, other, box, _ = talking
    result = clip_truth(video, box, audio, other)
    assert result["driving"]["offset_frames"] == 0
    assert result["driving"]["confidence"] > 0.8
    assert result["driving"]["confidence"] > result["mismatched"]["confidence"] + 0.3


@pytest.mark.parametrize("delay", [3, -5])
def test_an_injected_offset_is_recovered(talking, delay):
    video, audio, _, box, opening = talking
    # the video shows the mouth `delay` frames late (positive: the audio leads)
    shifted = render(face(), np.roll(opening, delay), seed=3)
    result = clip_truth(resized(shifted), box, audio)
    assert result["driving"]["offset_frames"] == delay


def test_separation_is_the_ratio_a_mouth_that_follows_the_audio_reaches(talking):
    """A rendered clip's mouth follows its audio exactly (up to the renderer's blur, noise and
    head motion): its confidence against its own audio over that against another sentence is
    the separation of the two audios."""
    video, audio, other, box, _ = talking
    rendered = clip_truth(video, box, audio, other)
    ratio = rendered["driving"]["confidence"] / rendered["mismatched"]["confidence"]
    assert separation(audio, other, len(video)) == pytest.approx(ratio, rel=0.15)
    assert separation(audio, audio, len(video)) == pytest.approx(1.0)


def test_the_expression_video_is_the_identity_s_clip_whose_sentence_separates_best(tmp_path):
    """Of an identity's clips, --expression-from takes the one against whose sentence a mouth
    rendered for the driving audio scores the highest ratio; never the driving sentence itself,
    never another identity's clip."""
    driving = speech(SENTENCES[1])
    frames = len(driving) // 640
    box = box_at_size(face().landmarks, 160, SIZE)
    mouth = resized(render(face(), drive_signal(driving, frames), seed=3))
    clips, ratio = [], {}
    for identity, k in (("a", 1), ("a", 0), ("a", 3), ("a", 4), ("b", 2)):
        audio = speech(SENTENCES[k])
        path = tmp_path / f"{identity}_s{k}.mp4"
        write_video(str(path), np.zeros((len(audio) // 640, 16, 16, 3), np.uint8), audio=audio)
        clips.append(TalkingClip(path, identity, k))
        if identity == "a":
            truth = clip_truth(mouth, box, driving, audio)
            ratio[k] = truth["driving"]["confidence"] / truth["mismatched"]["confidence"]
    chosen = expression_video(clips, "a", driving)
    assert chosen.identity == "a" and chosen.sentence == max(ratio, key=ratio.get) != 1


def test_the_share_of_the_perfect_confidence_removes_each_sentence_s_own_scale():
    """Rendered clips follow their truth exactly (up to the renderer's blur, noise and head
    motion), yet their confidences differ with the sentence; as shares of each sentence's
    perfect confidence they agree."""
    box = box_at_size(face().landmarks, 160, SIZE)
    confidence, share = [], []
    for sentence in SENTENCES:
        audio = speech(sentence)
        opening = drive_signal(audio, len(audio) // 640)
        driving = clip_truth(resized(render(face(), opening, seed=3)), box, audio)["driving"]
        perfect = correlate_offsets(opening, opening).confidence  # the truth against itself
        assert driving["perfect_confidence"] == pytest.approx(perfect)
        assert driving["share"] == pytest.approx(driving["confidence"] / perfect)
        confidence.append(driving["confidence"])
        share.append(driving["share"])
    assert np.ptp(confidence) > 0.1  # 1.00-1.19 over the corpus's sentences
    assert np.ptp(share) < np.ptp(confidence) / 2
    assert min(share) > 0.9 and max(share) < 1.05


def test_verdict_checks_each_goal_per_identity_and_mode():
    """Truth against 0.9x the same identity's real clip, av_corr against the catalog's keep
    threshold (0.6), the expression video's own sentence at half the driving audio's at most;
    the pass counts per mode and the overall verdict."""
    def truth(confidence, perfect=1.0):
        return {"offset_frames": 0, "confidence": confidence, "perfect_confidence": perfect,
                "share": confidence / perfect}

    def row(speaker, mode, truth_conf, av_conf, av_offset=0, same=True, own=None):
        out = {"speaker": speaker, "mode": mode,
               "lip_sync": {"av_corr": {"offset_frames": av_offset, "confidence": av_conf}},
               "lip_sync_mismatched": {"av_corr": {"offset_frames": 3, "confidence": 0.3}},
               "lip_sync_truth": {"driving": truth(truth_conf),
                                  "mismatched": {"offset_frames": 5, "confidence": 0.2}},
               "identity": {"dlib": {"same_person": same}}}
        if own is not None:
            out["lip_sync_truth_expression_audio"] = {"offset_frames": 2, "confidence": own}
        return out

    real = [{"speaker": "a", "lip_sync_truth": {"driving": truth(1.0)}},
            {"speaker": "b", "lip_sync_truth": {"driving": truth(0.5)}}]
    rows = [row("a", "emotion", 0.95, 0.7), row("b", "emotion", 0.44, 0.5, av_offset=2),
            row("a", "expression_from", 0.92, 0.65, own=0.4),
            row("b", "expression_from", 0.6, 0.8, same=False, own=0.35)]
    out = verdict(rows, real)
    a_emotion, b_emotion, a_expr, b_expr = out["per_identity"]
    assert a_emotion["truth"]["in_real_range"] and a_emotion["truth"]["real_confidence"] == 1.0
    assert not b_emotion["truth"]["in_real_range"]  # 0.44 < 0.9 x 0.5
    assert a_emotion["av_corr"]["in_real_range"] and not b_emotion["av_corr"]["in_real_range"]
    assert not b_emotion["av_corr"]["offset_within_1"]
    assert a_expr["follows_driving_audio"]["ok"]  # 0.92 >= 2 x 0.4
    assert not b_expr["follows_driving_audio"]["ok"]  # 0.6 < 2 x 0.35
    assert "follows_driving_audio" not in a_emotion
    assert out["passed"]["emotion"]["truth_in_real_range"] == [1, 2]
    assert out["passed"]["emotion"]["av_corr_keep_threshold"] == [1, 1]  # all but one
    assert out["passed"]["expression_from"]["same_person"] == [1, 2]
    assert out["passed"]["expression_from"]["follows_driving_audio"] == [1, 2]
    assert out["all_goals_met"] is False
    assert verdict([row("a", "emotion", 0.95, 0.7)], real[:1])["all_goals_met"] is True
    # a real clip saying a sentence whose perfect confidence is 1.2: 1.14 is 0.95 of it, and
    # 0.88 on a sentence whose perfect confidence is 1 is 0.88 of that, above 0.9 x 0.95
    real_c = [{"speaker": "c", "lip_sync_truth": {"driving": truth(1.14, perfect=1.2)}}]
    checked = verdict([row("c", "emotion", 0.88, 0.7)], real_c)["per_identity"][0]["truth"]
    assert checked["in_real_range"] and checked["real_confidence"] == 1.14
    assert checked["confidence"] < 0.9 * checked["real_confidence"]
    assert sync_goals({}, {}, None) == {"offset_frames": None, "offset_within_1": None,
                                        "confidence": None, "mismatched_confidence": None,
                                        "above_mismatched": None, "in_real_range": None}


def test_a_corpus_clip_encodes_to_the_same_bytes_whatever_the_heap_held(tmp_path):
    """The bench's corpus is the same on every run (and so its catalog and training): a clip
    written in fresh processes whose new heap memory glibc fills with different bytes
    (MALLOC_PERTURB_) comes out byte for byte the same. libx264's macroblock tree read such
    memory at the corpus's 192 px on AVX-512 machines and each run encoded it differently."""
    code = ("import sys; from pathlib import Path; "
            "from jobs.media.talking_corpus import face_of, write_talking_clip; "
            "from jobs.media.talking_face import SENTENCES; "
            "write_talking_clip(Path(sys.argv[1]), face_of('anger', 192), SENTENCES[3], seed=5)")
    written = written_under_heap_fills(code, tmp_path)
    assert len(written) == 3 and len(written[0]) > 10_000
    assert written[1] == written[0] and written[2] == written[0]


def test_the_bench_sets_only_its_catalog_budget_and_an_asked_for_seed(tmp_path):
    """The shipped config as jobs/train_tiny.toml has it, but for the bench's own settings:
    the seed stays the config's unless one is asked for."""
    shipped = config.load(REPO / "jobs" / "train_tiny.toml")
    default = config.load(REPO / "jobs" / "train_tiny.toml",
                          training_overrides(tmp_path / "cat", tmp_path / "run", 30.0, 2300))
    seeded = config.load(REPO / "jobs" / "train_tiny.toml",
                         training_overrides(tmp_path / "cat", tmp_path / "run", 30.0, 2300, seed=3))
    assert default.train.seed == shipped.train.seed == 0 and seeded.train.seed == 3
    assert default.train.catalog == str(tmp_path / "cat") and default.train.max_steps == 2300
    assert default.train.max_minutes == 30.0 and default.train.out == str(tmp_path / "run")
    assert default.optim == shipped.optim and default.dropout == shipped.dropout
    assert seeded.model == shipped.model and seeded.data == shipped.data


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the suite's default is 900 s a test
def test_bench_learn_generates_lips_that_follow_the_driving_speech(tmp_path):
    """bench learn end to end with its defaults (corpus, curation, jobs/train_tiny.toml as
    shipped trained learn.LEARN_STEPS steps, generation in both modes, evaluation: 23 to 27
    minutes on 2 cores). The renderer's truth says whether each identity's generated mouth
    follows the held-out sentence. At the bench's goals: within a frame and better than another
    sentence for every identity, and with an expression video of another sentence, at least
    twice as closely as that video's own sentence. Below the goals, as the training seed moves
    them across (docs/benchmarks.md, `learn`: 0.86-0.997x over three seeds): most of the way to
    a real clip of the same identity at the model's size, and the face the photo's person."""
    from jobs.bench import learn

    result = learn.run(out=tmp_path / "bench_learn")
    # the figures beside the work folder, as `emoforge bench learn --out` writes them
    (tmp_path / "bench_learn.json").write_text(json.dumps(result, indent=1, default=str))
    assert result["train"]["steps"] == learn.LEARN_STEPS
    assert [o.split("=")[0] for o in result["train"]["overrides"]] == [
        "train.catalog", "train.out", "train.max_minutes", "train.max_steps"]
    passed = result["verdict"]["passed"]
    for mode in learn.MODES:
        per = [p for p in result["verdict"]["per_identity"] if p["mode"] == mode]
        assert len(per) == 4
        assert passed[mode]["truth_offset_within_1"] == [4, 4], per
        assert all(p["truth"]["above_mismatched"] for p in per), per
        if mode == "expression_from":
            assert passed[mode]["follows_driving_audio"] == [4, 4], per
        shares = [p["truth"]["share"] / p["truth"]["real_share"] for p in per]
        assert min(shares) > 0.8, per
        margin = np.mean([p["truth"]["confidence"] - p["truth"]["mismatched_confidence"]
                          for p in per])
        assert margin > 0.2, per
        assert sum(bool(p["same_person"]) for p in per) >= 3, per
