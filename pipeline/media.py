"""The one decode path: PyAV for probing, frames (rotation applied, exact pts) and audio.

Every stage reads media through these functions so all of them see the same frames.
Units: times in seconds (float, from pts * time_base), frames uint8[H,W,3] RGB,
audio float32[N] mono in [-1, 1] at the requested sample rate.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from catalog import fs, fs_inputs
from catalog.contract import AUDIO_RATE, CROP_FPS


class MediaError(RuntimeError):
    """A file that cannot be opened or decoded; the message says what and where."""


@dataclass(frozen=True)
class VideoFrame:
    index: int  # source frame number (0-based, in presentation order)
    pts_s: float  # presentation time in seconds, relative to the video stream start
    image: np.ndarray  # uint8[H,W,3] RGB, rotation applied


def open_container(path: str):
    """A PyAV input container for a local path or an object-store URI (s3://; streamed through
    catalog.fs_inputs.open_input in 8 MiB ranged reads, no local copy)."""
    import av  # heavy: loaded on use

    try:
        if fs.is_store_uri(str(path)):
            return av.open(fs_inputs.open_input(str(path)), mode="r")
        return av.open(str(path))
    except Exception as exc:  # noqa: BLE001 - PyAV raises many types; re-raised with context
        raise MediaError(f"cannot open {path}: {type(exc).__name__}: {exc}") from exc


def stream_start_s(stream) -> float:
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def probe(path: str, vfr_tolerance: float = 0.1) -> dict:
    """Container and stream facts for a `videos` row (frame count, duration, fps and variable frame
    rate measured from the demuxed packets; rotation from the first decoded frame). Raises
    MediaError for files without a decodable video."""
    container = open_container(path)
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise MediaError(f"{path}: no video stream (streams: {', '.join(kinds)})")
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        info = {
            "container": container.format.name,
            "video_codec": video.codec_context.name,
            "pix_fmt": video.codec_context.pix_fmt,
            "has_audio": audio is not None,
            "audio_codec": audio.codec_context.name if audio else None,
            "audio_sample_rate": audio.codec_context.sample_rate if audio else None,
            "audio_channels": audio.codec_context.channels if audio else None,
            "audio_start_offset_s": (stream_start_s(audio) - stream_start_s(video)) if audio else None,
        }
        rotation = _first_frame_rotation(container, video)
        container.seek(0)
        pts = _video_packet_pts(container, video)
    except MediaError:
        raise
    except Exception as exc:  # noqa: BLE001 - PyAV errors come in many types
        raise MediaError(f"{path}: probing failed: {type(exc).__name__}: {exc}") from exc
    finally:
        container.close()
    if len(pts) == 0:
        raise MediaError(f"{path}: video stream has no frames")
    tb = float(video.time_base)
    times = np.sort(np.asarray(pts, np.float64)) * tb
    deltas = np.diff(times)
    median = float(np.median(deltas)) if len(deltas) else 0.0
    last = median if median > 0 else (1.0 / float(video.average_rate or 25))
    width, height = video.codec_context.width, video.codec_context.height
    if rotation % 180:
        width, height = height, width
    info.update({
        "frame_count": int(len(times)),
        "duration_s": float(times[-1] - times[0] + last),
        "fps": float(len(times) / (times[-1] - times[0] + last)),
        "variable_fps": bool(len(deltas) > 1 and median > 0
                             and np.max(np.abs(deltas - median)) > vfr_tolerance * median),
        "width": int(width),
        "height": int(height),
        "rotation": int(rotation),
    })
    return info


def _first_frame_rotation(container, video) -> int:
    for frame in container.decode(video):
        return int(round(frame.rotation)) % 360
    raise MediaError("video stream has no decodable frame")


def _video_packet_pts(container, video) -> list[int]:
    pts = []
    for packet in container.demux(video):
        if packet.pts is not None and packet.size:
            pts.append(packet.pts)
    return pts


def probe_video(path: str) -> tuple[float, float]:
    """(duration in s, average fps) of the first video stream from the container's header, without
    demuxing: what the scenes stage plans its decode windows by. `probe` measures them."""
    container = open_container(path)
    try:
        if not container.streams.video:
            raise MediaError(f"{path}: no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1e6 - stream_start_s(stream)
        else:
            duration = math.inf
        return duration, fps
    finally:
        container.close()


def apply_rotation(image: np.ndarray, ccw_degrees: int) -> np.ndarray:
    """Rotate an HxWx3 image counter-clockwise by a multiple of 90 degrees (FFmpeg's display
    matrix angle, as PyAV's `VideoFrame.rotation` reports it), like ffmpeg's autorotate."""
    quarter = (int(round(ccw_degrees / 90.0)) % 4)
    return np.ascontiguousarray(np.rot90(image, k=quarter)) if quarter else image


def iter_frames(
    path: str,
    start_s: float | None = None,
    end_s: float | None = None,
    width: int | None = None,
    rotate: bool = True,
    threads: int = 1,
    interpolation: str = "AREA",
    decoder_options: dict[str, str] | None = None,
) -> Iterator[VideoFrame]:
    """Decode frames in presentation order with pts in [start_s, end_s), decoded and converted
    to RGB with `threads` threads each (the same pixels as swscale's default of one thread per
    CPU, which cost 13% more CPU for a 720p conversion here and would start 16 threads per
    worker on a 16-CPU node).

    `width` downscales (keeping aspect, even height) inside FFmpeg's scaler (`interpolation`:
    an swscale method, area averaging by default; "FAST_BILINEAR" is about half the cost),
    which is much cheaper than converting at full size and resizing. Frame indices count from the stream start, so they stay
    exact after a seek (frames are counted from the keyframe before start_s by pts order)."""
    from av.video.reformatter import VideoReformatter  # heavy: loaded on use

    container = open_container(path)
    try:
        if not container.streams.video:
            raise MediaError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO" if threads > 1 else "SLICE"
        stream.thread_count = threads
        if decoder_options:  # e.g. {"skip_loop_filter": "all"}: faster, for analysis only
            stream.codec_context.options = dict(decoder_options)
        t0 = stream_start_s(stream)
        tb = stream.time_base
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        out_w = out_h = None
        if width is not None and stream.codec_context.width:
            src_w, src_h = stream.codec_context.width, stream.codec_context.height
            out_w = min(int(width), src_w)
            out_h = max(2, int(round(src_h * out_w / src_w / 2)) * 2)
        if start_s:
            container.seek(int((start_s + t0) / tb), stream=stream, backward=True, any_frame=False)
        # One reformatter for the whole stream: frame.to_ndarray(width=...) builds a new scaler
        # context per frame, which costs more than decoding at 720p.
        reformatter = VideoReformatter()
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            pts_s = float(frame.pts * tb) - t0
            if start_s is not None and pts_s < start_s - 1e-6:
                continue
            if end_s is not None and pts_s >= end_s - 1e-6:
                break
            if out_w:
                image = reformatter.reformat(
                    frame, width=out_w, height=out_h, format="rgb24", interpolation=interpolation,
                    threads=threads).to_ndarray()
            else:
                image = reformatter.reformat(frame, format="rgb24", threads=threads).to_ndarray()
            if rotate:  # PyAV 18 exposes the display matrix on frames, not on the stream
                image = apply_rotation(image, frame.rotation)
            yield VideoFrame(index=int(round(pts_s * fps)), pts_s=pts_s, image=image)
    except MediaError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoder errors come in many types
        raise MediaError(f"{path}: decoding failed: {type(exc).__name__}: {exc}") from exc
    finally:
        container.close()


def read_frames(path: str) -> np.ndarray:
    """uint8[T,H,W,3]: every frame of `path` in RGB (small clips: face crops, generated video)."""
    frames = [frame.image for frame in iter_frames(path)]
    if not frames:
        raise MediaError(f"{path}: no decodable video frame")
    return np.stack(frames)


def read_audio(
    path: str,
    sample_rate: int = AUDIO_RATE,
    start_s: float = 0.0,
    end_s: float | None = None,
    relative_to_video: bool = True,
) -> np.ndarray:
    """Mono float32[N] audio resampled to `sample_rate`, aligned by timestamps.

    Times are relative to the video stream's start (the clock frames use) when
    `relative_to_video`; an audio stream that starts later than the video is padded with silence
    at the front, so sample k sits at time start_s + k / sample_rate. Returns an empty array when
    the file has no audio stream. The whole stream is decoded (no seek): a caller that reads
    several spans of one file decodes it once with `decode_audio` and cuts with `audio_span`."""
    audio = decode_audio(path, sample_rate, relative_to_video)
    if audio is None:
        return np.zeros(0, np.float32)
    return audio_span(audio, sample_rate, start_s, end_s)


def decode_audio(path: str, sample_rate: int = AUDIO_RATE,
                 relative_to_video: bool = True) -> np.ndarray | None:
    """Mono float32[N] audio of the whole file at `sample_rate`, sample k at time k / sample_rate
    (see read_audio: silence in front of a late audio stream, a leading part before time 0 cut);
    None when the file has no audio stream."""
    import av  # heavy: loaded on use

    container = open_container(path)
    try:
        if not container.streams.audio:
            return None
        astream = container.streams.audio[0]
        t0 = stream_start_s(container.streams.video[0]) if (
            relative_to_video and container.streams.video
        ) else stream_start_s(astream)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        first_time: float | None = None
        for frame in container.decode(astream):
            if first_time is None and frame.pts is not None:
                first_time = float(frame.pts * astream.time_base) - t0
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    except Exception as exc:  # noqa: BLE001
        raise MediaError(f"{path}: audio decoding failed: {type(exc).__name__}: {exc}") from exc
    finally:
        container.close()
    audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    offset = int(round((first_time or 0.0) * sample_rate))
    if offset > 0:
        audio = np.concatenate([np.zeros(offset, np.float32), audio])
    elif offset < 0:
        audio = audio[-offset:]
    return audio


def audio_span(audio: np.ndarray, sample_rate: int, start_s: float = 0.0,
               end_s: float | None = None) -> np.ndarray:
    """The samples of [start_s, end_s) of float32[N] `audio` whose sample k sits at time
    k / sample_rate (decode_audio's output), zero-padded where it ends before end_s."""
    begin = int(round(start_s * sample_rate))
    end = None if end_s is None else int(round(end_s * sample_rate))
    segment = audio[begin:end]
    if end is not None and len(segment) < end - begin:
        segment = np.concatenate([segment, np.zeros(end - begin - len(segment), np.float32)])
    return segment


# libx264 options under which the same frames encode to the same bytes in every process.
# Its macroblock-tree rate control (on by default) reads uninitialised memory in its AVX-512
# code at some frame widths (the 192 px talking faces, noisy 64 px clips; 256 and 512 px
# encoded the same), so the bytes, and the decoded pixels within the encoder's error, depend on
# what the heap held. Turning it off costs about 1.1-1.25x the file size at the same crf (a
# little more PSNR). For small clips whose figures are compared between runs: generated video,
# synthetic test corpora. docs/design.md#reproducibility.
REPRODUCIBLE_X264 = {"x264-params": "mbtree=0"}


class VideoWriter:
    """An H.264 mp4 fed one uint8[H,W,3] RGB frame at a time (H and W even) at constant `fps`;
    with `audio_rate`, mono float32 audio (AAC) is encoded when it is closed. Use as a context
    manager; `close(audio)` finishes the file (leaving the block without it still closes it).
    `threads`: encoder threads, None for the encoder's own choice (libx264: about 1.5 per core
    plus lookahead). One thread costs about 0.7x the CPU for the same file (256 px face crops:
    0.88 instead of 1.24 CPU-s per 480 frames, 504 vs 518 kB, the same PSNR): right where each
    worker holds one core. `options`: more encoder options, FFmpeg's names (for example
    {"x264-params": "mbtree=0"})."""

    def __init__(self, path: str, width: int, height: int, fps: Fraction | int | float = CROP_FPS,
                 audio_rate: int | None = None, codec: str = "libx264", crf: int = 18,
                 threads: int | None = None, options: dict[str, str] | None = None):
        import av  # heavy: loaded on use

        self.container = av.open(str(path), mode="w")
        self.video = self.container.add_stream(codec, rate=Fraction(fps).limit_denominator(100000))
        self.video.width, self.video.height = width, height
        self.video.pix_fmt = "yuv420p"
        self.video.options = {"crf": str(crf), "preset": "veryfast", **(options or {})}
        if threads is not None:
            self.video.thread_count = threads
        self.audio_rate = audio_rate
        self.audio = None
        if audio_rate is not None:
            self.audio = self.container.add_stream("aac", rate=audio_rate)
            self.audio.layout = "mono"

    def write(self, image: np.ndarray) -> None:
        import av  # heavy: loaded on use

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        for packet in self.video.encode(frame):
            self.container.mux(packet)

    def close(self, audio: np.ndarray | None = None) -> None:
        if self.container is None:
            return
        try:
            for packet in self.video.encode():
                self.container.mux(packet)
            if self.audio is not None:
                encode_audio(self.container, self.audio,
                             np.zeros(0, np.float32) if audio is None else audio, self.audio_rate)
        finally:
            self.container.close()
            self.container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_video(
    path: str,
    frames: np.ndarray | list[np.ndarray],
    fps: Fraction | int | float = CROP_FPS,
    audio: np.ndarray | None = None,
    sample_rate: int = AUDIO_RATE,
    codec: str = "libx264",
    crf: int = 18,
    options: dict[str, str] | None = None,
) -> None:
    """Write uint8[T,H,W,3] RGB frames (H and W even) as H.264 mp4 at constant `fps`,
    with optional mono float32 audio (AAC); `options` as VideoWriter's."""
    height, width = frames[0].shape[:2]
    with VideoWriter(path, width, height, fps, None if audio is None else sample_rate,
                     codec, crf, options=options) as writer:
        for image in frames:
            writer.write(image)
        writer.close(audio)


def encode_audio(container, stream, samples: np.ndarray, sample_rate: int, start_s: float = 0.0) -> None:
    """Encode mono float32[N] samples in [-1, 1] into an open audio `stream` of `container` (in
    1024-sample frames) and flush it. `start_s` delays the stream's first sample."""
    import av  # heavy: loaded on use

    data = np.clip(np.asarray(samples, np.float32), -1, 1).reshape(1, -1)
    start = int(round(start_s * sample_rate))
    for i in range(0, data.shape[1], 1024):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, i : i + 1024]), format="flt", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = start + i
        frame.time_base = Fraction(1, sample_rate)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def replace_audio(video: str, audio: np.ndarray, out: str, sample_rate: int = AUDIO_RATE) -> str:
    """Write `out` (mp4): `video`'s video packets copied without re-encoding, plus mono float32
    `audio` (AAC at `sample_rate`) starting with the video. Written to a temp file in the same
    folder and renamed into place; never overwrites `video`."""
    import av  # heavy: loaded on use

    if os.path.abspath(video) == os.path.abspath(out):
        raise ValueError(f"replace_audio must write a new file, got the source path {video}")
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".mp4")
    os.close(fd)
    source = open_container(video)
    try:
        if not source.streams.video:
            raise MediaError(f"{video}: no video stream")
        vin = source.streams.video[0]
        with av.open(tmp, mode="w", format="mp4") as sink:
            vout = sink.add_stream_from_template(vin)
            aout = sink.add_stream("aac", rate=sample_rate)
            aout.layout = "mono"
            for packet in source.demux(vin):
                if packet.dts is None:
                    continue
                packet.stream = vout
                sink.mux(packet)
            encode_audio(sink, aout, audio, sample_rate)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        source.close()
    return out
