"""The catalog's time-base contract: face-crop clips are 25 fps with 16 kHz mono audio.

The one definition of these numbers; `frames/` rows, crop clips, audio sidecars and lip-sync
offsets are all on this grid (DESIGN section 2).
"""

CROP_FPS = 25  # frames per second of every face-crop clip and of frames/ (the grid)
AUDIO_RATE = 16000  # samples per second of the crop clips' mono audio
SAMPLES_PER_FRAME = AUDIO_RATE // CROP_FPS  # 640 audio samples per grid frame
