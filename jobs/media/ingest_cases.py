"""Odd-but-valid and broken input files for ingest tests, each with its expected metadata."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from catalog.contract import AUDIO_RATE
from jobs.media.synthetic import make_video, tone
from pipeline.media import encode_audio


def _gray(i: int, size=(64, 48)) -> np.ndarray:
    return np.full((size[1], size[0], 3), (i * 7) % 255, np.uint8)


def vfr_video(path: Path) -> Path:
    """30 frames whose durations alternate 1/30 s and 2/30 s (variable frame rate)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 30)
        pts = 0
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(_gray(i), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 30)
            pts += 1 if i % 2 == 0 else 2
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def hevc10_video(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx265", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p10le"
        stream.options = {"x265-params": "log-level=error"}
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(_gray(i, (64, 64)), format="rgb24").reformat(format="yuv420p10le")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def late_audio_video(path: Path, delay_s: float = 0.5) -> Path:
    """1 s of video with an audio stream that starts `delay_s` after the video."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        aud = out.add_stream("aac", rate=AUDIO_RATE)
        aud.layout = "mono"
        for i in range(25):
            for packet in vs.encode(av.VideoFrame.from_ndarray(_gray(i), format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        encode_audio(out, aud, tone(0.5), AUDIO_RATE, start_s=delay_s)
    return path


def audio_only(path: Path, seconds: float = 1.0) -> Path:
    """An AAC-only container (no video stream) of a `seconds` tone."""
    with av.open(str(path), "w", format="mp4") as out:
        aud = out.add_stream("aac", rate=AUDIO_RATE)
        aud.layout = "mono"
        encode_audio(out, aud, tone(seconds), AUDIO_RATE)
    return path


def build_ingest_corpus(folder: Path) -> tuple[dict[str, dict], dict[str, str]]:
    """Writes the files; returns (valid name -> expected metadata, broken name -> error fragment).
    It also writes notes.txt, which is not an input (scan_inputs counts it as ignored)."""
    folder.mkdir(parents=True, exist_ok=True)
    plain = make_video(folder / "plain.mp4", _gray, 25, fps=25, size=(64, 48), audio=tone(1.0))
    make_video(folder / "rotated.mp4", _gray, 10, fps=25, size=(64, 48), rotation=90)
    make_video(folder / "vidéo_名前.mp4", _gray, 10, fps=25, size=(64, 48))
    make_video(folder / "big.mp4", lambda i: np.zeros((3000, 4000, 3), np.uint8), 2, fps=25, size=(4000, 3000))
    make_video(folder / "ntsc.mp4", _gray, 30, fps=Fraction(30000, 1001), size=(64, 48))
    vfr_video(folder / "vfr.mp4")
    hevc10_video(folder / "hevc10.mp4")
    late_audio_video(folder / "late_audio.mp4")
    data = plain.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (folder / "zero.mp4").write_bytes(b"")
    (folder / "random.mp4").write_bytes(np.random.default_rng(0).bytes(20000))
    (folder / "text.mp4").write_text("this is not a video\n" * 50)
    audio_only(folder / "audio_only.mp4")
    audio_only(folder / "voice.m4a", 1.5)  # an audio-only container among the videos: a failed row
    (folder / "notes.txt").write_text("not an input\n")  # ignored, and counted as ignored
    os.symlink(folder / "does-not-exist.mp4", folder / "dangling.mp4")
    valid = {
        "plain.mp4": {"width": 64, "height": 48, "frame_count": 25, "has_audio": True, "fps": 25.0,
                      "variable_fps": False, "rotation": 0, "video_codec": "h264", "audio_sample_rate": 16000},
        "rotated.mp4": {"width": 48, "height": 64, "rotation": 90, "frame_count": 10},
        "vidéo_名前.mp4": {"width": 64, "height": 48, "frame_count": 10, "has_audio": False},
        "big.mp4": {"width": 4000, "height": 3000, "frame_count": 2},
        "ntsc.mp4": {"frame_count": 30, "variable_fps": False},
        "vfr.mp4": {"variable_fps": True, "frame_count": 30},
        "hevc10.mp4": {"video_codec": "hevc", "pix_fmt": "yuv420p10le", "frame_count": 10},
        "late_audio.mp4": {"has_audio": True},
    }
    broken = {
        "truncated.mp4": "invalid data",
        "zero.mp4": "empty file",
        "random.mp4": "Invalid data",
        "text.mp4": "Invalid data",
        "audio_only.mp4": "no video stream",
        "voice.m4a": "no video stream",
        "dangling.mp4": "dangling symbolic link",
    }
    return valid, broken
