"""Scene split: generated media with known cuts, fades, slow motion, windows, rotation; real media."""

from __future__ import annotations

import dataclasses
import itertools
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pytest
from media import real_media
from jobs.media.synthetic import fade, make_video, shots, slow_motion

from catalog.schema import stage_output
from pipeline.media import encode_audio, iter_frames
from pipeline.stages.scenes.detect import ScenesConfig, cut_times, detect_scenes, scan
from pipeline.stages.scenes.stage import ScenesStage, clip_id

FPS = 25
SIZE = (192, 108)
CUTS = [30, 75, 140, 170]


@pytest.fixture(scope="module")
def cut_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("scenes") / "cuts.mp4"
    return make_video(path, shots(CUTS, SIZE, seed=1), 200, fps=FPS, size=SIZE)


def frames_of(times: list[float], fps: float = FPS) -> list[int]:
    return [round(t * fps) for t in times]


@pytest.mark.parametrize("detector", ["adaptive", "content"])
def test_every_hard_cut_found_within_one_frame_and_no_extra(cut_video, detector):
    found = frames_of(cut_times(cut_video, ScenesConfig(detector=detector)))
    assert len(found) == len(CUTS), f"expected cuts at {CUTS}, found {found}"
    for true, got in zip(CUTS, found):
        assert abs(true - got) <= 1, f"cut at frame {true} found at {got}"


@pytest.mark.parametrize("seed", [2, 3])
def test_hard_cuts_other_content(tmp_path, seed):
    cuts = [20, 47, 95]
    path = make_video(tmp_path / "c.mp4", shots(cuts, SIZE, seed=seed, pan_px=2.0), 130, size=SIZE)
    found = frames_of(cut_times(path))
    assert len(found) == len(cuts) and all(abs(a - b) <= 1 for a, b in zip(cuts, found)), found


def test_clips_are_pts_exact_trimmed_and_never_span_a_cut(cut_video):
    config = ScenesConfig(trim_s=0.08)
    clips = detect_scenes(cut_video, config)
    assert [c.cut_before for c in clips] == ["start", "cut", "cut", "cut", "cut"]
    pts = {round(f.pts_s, 9) for f in iter_frames(str(cut_video))}
    for clip in clips:
        assert round(clip.start_s, 9) in pts, f"start {clip.start_s} is not a frame pts"
        assert clip.end_frame - clip.start_frame == round(clip.duration_s * FPS)
        for cut in CUTS:
            assert not clip.start_frame < cut < clip.end_frame, f"{clip} spans the cut at {cut}"
    # 0.08 s at 25 fps = 2 frames left out on each side of every cut
    for before, after in itertools.pairwise(clips):
        assert after.start_frame - before.end_frame == 4
    assert clips[0].start_s == 0.0 and clips[-1].end_frame == 200
    assert clips[-1].end_s == pytest.approx(200 / FPS, abs=1e-6)


def test_no_cut_in_a_static_shot_with_slow_motion(tmp_path):
    path = make_video(tmp_path / "slow.mp4", slow_motion(SIZE, n=150), 150, size=SIZE)
    clips = detect_scenes(path)
    assert len(clips) == 1 and clips[0].cut_before == "start"
    assert (clips[0].start_frame, clips[0].end_frame) == (0, 150)


@pytest.mark.parametrize("length", [3, 12])
def test_fade_through_black_splits_and_leaves_the_black_out(tmp_path, length):
    first, second = shots([], SIZE, seed=3), shots([], SIZE, seed=4)
    start, hold = 50, 2
    n = start + 2 * length + hold + 50
    path = make_video(tmp_path / "fade.mp4", fade(first, second, start, length, hold=hold), n,
                      size=SIZE)
    clips = detect_scenes(path)
    assert len(clips) == 2, clips
    black = range(start + length, start + length + hold)
    assert clips[0].end_frame <= black.start and clips[1].start_frame >= black.stop
    # the boundary lies inside the transition, not somewhere else
    assert start <= clips[0].end_frame and clips[1].start_frame <= start + 2 * length + hold + 1


def test_cross_dissolve_is_not_cut_as_documented(tmp_path):
    first, second = shots([], SIZE, seed=3), shots([], SIZE, seed=4)
    path = make_video(tmp_path / "dissolve.mp4",
                      fade(first, second, 50, 25, through_black=False), 125, size=SIZE)
    assert len(detect_scenes(path)) == 1


def test_min_scene_length_drops_the_second_of_two_close_cuts(tmp_path):
    path = make_video(tmp_path / "close.mp4", shots([40, 45, 90], SIZE, seed=5), 120, size=SIZE)
    assert frames_of(cut_times(path, ScenesConfig(min_scene_s=0.6))) == [40, 90]
    assert len(frames_of(cut_times(path, ScenesConfig(min_scene_s=0.1, trim_s=0.0)))) == 3


def test_long_shot_split_into_equal_parts_at_most_max_clip(tmp_path):
    path = make_video(tmp_path / "long.mp4", slow_motion(SIZE, n=250), 250, size=SIZE)
    clips = detect_scenes(path, ScenesConfig(max_clip_s=3.0))
    assert [c.cut_before for c in clips] == ["start", "split", "split", "split"]
    assert all(c.duration_s <= 3.0 + 1e-6 for c in clips)
    lengths = [c.end_frame - c.start_frame for c in clips]
    assert sum(lengths) == 250 and max(lengths) - min(lengths) <= 1, lengths  # equal parts
    assert all(a.end_frame == b.start_frame for a, b in itertools.pairwise(clips))


def test_windows_give_the_same_clips_as_one_piece(tmp_path):
    # 40 s with cuts right at, just before and just after the 10 s window edges
    cuts = [100, 249, 250 + 30, 499, 510, 620, 751, 900]
    path = make_video(tmp_path / "long.mp4", shots(cuts, (128, 72), seed=6), 1000,
                      size=(128, 72), gop=50)
    one = scan(str(path), ScenesConfig())
    windowed = scan(str(path), ScenesConfig(window_s=10.0, window_overlap_s=1.0))
    assert (one.windows, windowed.windows) == (1, 4)
    assert np.array_equal(one.pts, windowed.pts) and np.array_equal(one.index, windowed.index)
    assert one.raw_cuts == windowed.raw_cuts
    whole = detect_scenes(path)
    assert whole == detect_scenes(path, ScenesConfig(window_s=10.0, window_overlap_s=1.0))
    starts = [c.start_frame for c in whole if c.cut_before == "cut"]
    expected = [100, 249, 280, 499, 620, 751, 900]  # 510 is within 0.6 s of 499: dropped
    assert [s - 2 for s in starts] == pytest.approx(expected, abs=1)


def test_rotated_input_gives_the_clips_of_its_unrotated_twin(tmp_path):
    frames_fn = shots([25, 60], (160, 96), seed=7)
    plain = make_video(tmp_path / "plain.mp4", frames_fn, 90, size=(160, 96))
    rotated = make_video(tmp_path / "rotated.mp4", frames_fn, 90, size=(160, 96), rotation=90)
    assert next(iter_frames(str(rotated))).image.shape == (160, 96, 3)  # rotation applied
    assert detect_scenes(rotated) == detect_scenes(plain)
    assert len(detect_scenes(plain)) == 3


def test_config_errors_name_the_option():
    with pytest.raises(ValueError, match="scenes.detector"):
        ScenesConfig(detector="transnet")
    with pytest.raises(ValueError, match="trim_s"):
        ScenesConfig(trim_s=0.5, min_scene_s=0.6)
    with pytest.raises(ValueError, match="window_overlap_s"):
        ScenesConfig(window_s=5.0, window_overlap_s=1.0)


def test_real_media_cuts():
    clips = detect_scenes(real_media("face_noface.mov"))
    assert len(clips) == 2
    assert clips[0].end_s <= 2.45 and 2.35 <= clips[1].start_s <= 2.55
    clips = detect_scenes(real_media("noface_face.mov"))
    cuts = [3.95, 6.35]
    assert abs(clips[1].start_s - 3.95) < 0.15 and abs(clips[0].end_s - 3.95) < 0.15
    assert abs(clips[-1].end_s - 6.35) < 0.05
    for clip in clips:
        for cut in cuts:
            assert not clip.start_s + 0.05 < cut < clip.end_s - 0.05, f"{clip} spans {cut}"
    for name in ("single_face.mp4", "no_face.mp4", "WolfgangLanger_Pexels.mp4"):
        assert len(detect_scenes(real_media(name))) == 1, name


def test_stage_rows_ids_and_failures(cut_video, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "text.mp4"
    text.write_text("not a video")
    audio_only = tmp_path / "audio.m4a"
    _write_audio_only(audio_only)
    uris = [str(cut_video), str(empty), str(text), str(audio_only)]
    batch = pa.table({
        "uri": uris, "duration_s": [8.0, 0.0, 0.0, 1.0], "fps": [25.0, 0.0, 0.0, 0.0],
        "frame_count": [200, 0, 0, 0], "video_id": ["v0", "v1", "v2", "v3"], "shard": [3, 1, 1, 2],
    })
    stage = ScenesStage(ScenesConfig(), None)
    stage.setup()
    out = stage.process(batch)
    assert out.schema.equals(stage_output(("scenes",), "videos"))
    rows = out.to_pylist()
    assert rows[0]["scenes_status"] == "ok" and rows[0]["scene_count"] == 5
    clip = rows[0]["clips"][1]
    assert clip["clip_id"] == clip_id("v0", clip["start_s"], clip["end_s"])
    assert clip["shard"] == 3 and clip["clip_index"] == 1 and clip["video_id"] == "v0"
    assert '"detector": "adaptive"' in clip["scenes_detector"]
    assert len({c["clip_id"] for c in rows[0]["clips"]}) == 5
    for row, why in zip(rows[1:], ["cannot open", "cannot open", "no video stream"]):
        assert row["scenes_status"] == "failed" and why in row["scenes_error"], row
        assert row["clips"] is None
    again = stage.process(batch.slice(0, 1)).to_pylist()[0]
    assert [c["clip_id"] for c in again["clips"]] == [c["clip_id"] for c in rows[0]["clips"]]


def test_stage_config_changes_the_fingerprint():
    a = ScenesStage(ScenesConfig(), None).fingerprints()["scenes"]
    b = ScenesStage(dataclasses.replace(ScenesConfig(), trim_s=0.0), None).fingerprints()["scenes"]
    assert a != b


def _write_audio_only(path) -> None:
    import av

    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        stream.layout = "mono"
        encode_audio(out, stream, 0.1 * np.sin(np.arange(16000) / 5), 16000)


def test_variable_frame_rate_spans_are_exact_pts(tmp_path):
    import av

    frames_fn = shots([40, 90], (128, 72), seed=2)
    path = tmp_path / "vfr.mp4"
    durations = np.random.default_rng(0).choice([20, 40, 60], size=130)  # ms per frame
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 128, 72, "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        t = 0
        for i in range(130):
            frame = av.VideoFrame.from_ndarray(frames_fn(i), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            t += int(durations[i])
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    pts = [f.pts_s for f in iter_frames(str(path))]
    clips = detect_scenes(path, ScenesConfig(trim_s=0.0))
    assert [c.start_s for c in clips] == [0.0, pts[40], pts[90]]
    assert [c.end_s for c in clips[:2]] == [pts[40], pts[90]]
    assert clips[-1].end_s > pts[-1]
