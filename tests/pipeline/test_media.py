"""pipeline.media.read_frames: a small clip's frames as one array, or a clear error; VideoWriter
with one encoder thread (the faces stage's crop clips)."""

import wave

import numpy as np
import pytest

from pipeline.media import MediaError, VideoWriter, read_frames, write_video


def test_read_frames_gives_every_frame_in_order(tmp_path):
    levels = [30, 90, 150, 210]  # flat grey frames: H.264 at crf 18 keeps each level within a few
    frames = np.stack([np.full((32, 48, 3), v, np.uint8) for v in levels])
    path = tmp_path / "grey.mp4"
    write_video(str(path), frames)
    read = read_frames(str(path))
    assert read.shape == (4, 32, 48, 3) and read.dtype == np.uint8
    assert np.allclose(read.reshape(4, -1).mean(axis=1), levels, atol=3)


def test_read_frames_of_audio_only_is_a_media_error(tmp_path):
    path = tmp_path / "speech.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.zeros(1600, np.int16).tobytes())
    with pytest.raises(MediaError, match="no video stream"):
        read_frames(str(path))


def test_a_one_thread_writer_keeps_moving_frames_in_order(tmp_path):
    """A bright square sweeping right over 30 frames of noise comes back where it was drawn."""
    rng = np.random.default_rng(0)
    frames = []
    for k in range(30):
        image = rng.integers(0, 60, (64, 96, 3), dtype=np.uint8)
        image[20:40, 2 * k:2 * k + 20] = 240
        frames.append(image)
    path = tmp_path / "sweep.mp4"
    with VideoWriter(str(path), 96, 64, threads=1) as writer:
        for image in frames:
            writer.write(image)
    read = read_frames(str(path))
    assert read.shape == (30, 64, 96, 3)
    columns = [int(np.argmax(f[20:40].mean(axis=(0, 2)) > 150)) for f in read]
    assert columns == [2 * k for k in range(30)]
