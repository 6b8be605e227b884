"""pipeline.media.read_frames: a small clip's frames as one array, or a clear error; VideoWriter
with one encoder thread (the faces stage's crop clips), and with the options under which the same
frames encode to the same bytes in every process."""

import wave

import numpy as np
import pytest

from pipeline.media import MediaError, VideoWriter, read_frames, write_video
from tests.media import written_under_heap_fills


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


# writes 110 noisy 64 px frames (a generated clip's kind of content) with REPRODUCIBLE_X264
ENCODE_NOISY_CLIP = """
import sys
import cv2
import numpy as np
from pipeline.media import REPRODUCIBLE_X264, write_video
rng = np.random.default_rng(0)
base = rng.integers(0, 256, (8, 8, 3)).astype(float)
frames = []
for t in range(110):
    image = cv2.resize(base + 30 * np.sin(t / 5 + np.arange(3)), (64, 64),
                       interpolation=cv2.INTER_CUBIC) + rng.normal(0, 12, (64, 64, 3))
    frames.append(np.clip(image, 0, 255).astype(np.uint8))
for path in sys.argv[1:]:
    write_video(path, frames, 25, options=REPRODUCIBLE_X264)
"""


def test_reproducible_options_encode_the_same_bytes_whatever_the_heap_held(tmp_path):
    """Two writes in each of three fresh processes whose new heap memory glibc fills with
    different bytes (MALLOC_PERTURB_): six identical files. libx264's macroblock tree read
    such memory on AVX-512 machines, and this clip came out differently from run to run."""
    written = written_under_heap_fills(ENCODE_NOISY_CLIP, tmp_path, files_per_process=2)
    assert len(written) == 6 and len(written[0]) > 10_000
    assert all(w == written[0] for w in written[1:])
